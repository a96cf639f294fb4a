"""The ASL-Signs landmark Parquet schema: one row per (frame, body part, landmark), read and written.

A file holds `frame, row_id, type, landmark_index, x, y, z`; `type` is face, left_hand, pose or right_hand.
A hand that is not seen in a frame appears as rows of NaN coordinates (or not at all).
In memory a sequence is one array per body part, (T, N, 3) float32, NaN where a landmark is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path

COLUMNS = ("frame", "row_id", "type", "landmark_index", "x", "y", "z")
# Landmarks per body part, as the MediaPipe face mesh, hand and pose models give them.
PART_SIZES = {"face": 468, "left_hand": 21, "pose": 33, "right_hand": 21}


@dataclass
class Landmarks:
    """One recorded sequence. frames: (T,) frame numbers; parts: {type: (T, N, 3) float32}."""

    frames: np.ndarray
    parts: dict[str, np.ndarray]

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @classmethod
    def missing(cls, num_frames: int, parts: tuple[str, ...] = ("left_hand", "pose", "right_hand")) -> Landmarks:
        """A sequence of `num_frames` frames where nothing was seen yet (all NaN), to be filled in."""
        return cls(
            frames=np.arange(num_frames),
            parts={p: np.full((num_frames, PART_SIZES[p], 3), np.nan, np.float32) for p in parts},
        )


def read_landmarks(path: Path, *, parts: tuple[str, ...] | None = None) -> Landmarks:
    """Read and validate a landmark Parquet file; parts absent from the file are all-NaN.

    `parts` keeps only those body parts (training needs hands and pose, not the 468 face points that are
    most of an ASL-Signs file). Read with pyarrow: `row_id` is skipped and `type` turned into dictionary
    codes, so no Python object is made per row.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: landmark file not found")
    try:
        parquet = pq.ParquetFile(path)
        missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names and c != "row_id"]
        if missing:
            raise UserError(f"{path}: missing columns {', '.join(missing)}; a landmark file needs "
                            f"{', '.join(COLUMNS)} (ASL-Signs schema)")
        table = parquet.read(columns=[c for c in COLUMNS if c != "row_id"], use_threads=False)
    except UserError:
        raise
    except Exception as err:  # pyarrow raises several types for a file that is not (whole) Parquet
        raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: the landmark file has no rows")
    types = table.column("type").combine_chunks()
    if not pa.types.is_dictionary(types.type):
        types = types.dictionary_encode()
    names = types.dictionary.to_pylist()
    unknown = sorted(set(names) - set(PART_SIZES))
    if unknown:
        raise UserError(f"{path}: unknown landmark types {unknown}; expected {', '.join(PART_SIZES)}")
    codes = types.indices.to_numpy(zero_copy_only=False)
    frame = table.column("frame").to_numpy()
    frames = np.unique(frame)
    wanted = [part for part in PART_SIZES if parts is None or part in parts]
    # Only the wanted parts' rows go on (the face mesh is 86% of an ASL-Signs file).
    keep = np.isin(codes, [names.index(part) for part in wanted if part in names])
    codes, frame_pos = codes[keep], np.searchsorted(frames, frame[keep])
    index = table.column("landmark_index").to_numpy()[keep].astype(np.int64)
    coords = np.stack([table.column(c).to_numpy(zero_copy_only=False)[keep] for c in ("x", "y", "z")], -1)
    result = {}
    for part in wanted:
        size = PART_SIZES[part]
        rows = codes == names.index(part) if part in names else np.zeros(len(codes), bool)
        if part == "face" and not rows.any():
            continue  # face landmarks are optional (the recogniser does not use them)
        if (index[rows] < 0).any() or (index[rows] >= size).any():
            raise UserError(f"{path}: {part} landmark_index outside 0..{size - 1}")
        array = np.full((len(frames), size, 3), np.nan, np.float32)
        array[frame_pos[rows], index[rows]] = coords[rows]
        result[part] = array
    return Landmarks(frames=frames, parts=result)


def landmarks_table(landmarks: Landmarks) -> pd.DataFrame:
    """The long ASL-Signs table of a sequence: every landmark of every part in every frame (NaN if unseen)."""
    pieces = []
    for part in PART_SIZES:
        if part not in landmarks.parts:
            continue
        array = landmarks.parts[part]
        t, n, _ = array.shape
        frame = np.repeat(landmarks.frames, n)
        index = np.tile(np.arange(n), t)
        pieces.append(pd.DataFrame({
            "frame": frame.astype(np.int16),
            "row_id": [f"{f}-{part}-{i}" for f, i in zip(frame, index, strict=True)],
            "type": part,
            "landmark_index": index.astype(np.int16),
            "x": array[..., 0].reshape(-1).astype(np.float64),
            "y": array[..., 1].reshape(-1).astype(np.float64),
            "z": array[..., 2].reshape(-1).astype(np.float64),
        }))
    return pd.concat(pieces).sort_values(["frame", "type", "landmark_index"], kind="stable").reset_index(drop=True)


def write_landmarks(path: Path, landmarks: Landmarks) -> Path:
    """Write a sequence as an ASL-Signs Parquet file, atomically."""
    with atomic_path(Path(path)) as tmp:
        landmarks_table(landmarks).to_parquet(tmp, index=False)
    return Path(path)
