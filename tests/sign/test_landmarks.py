"""The ASL-Signs Parquet schema: round trip, missing hands as NaN rows, bad files rejected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from panformer.engine.errors import UserError
from panformer.sign.landmarks import (
    COLUMNS,
    PART_SIZES,
    Landmarks,
    landmarks_table,
    read_landmarks,
    write_landmarks,
)


def random_landmarks(frames: int = 5, seed: int = 0) -> Landmarks:
    rng = np.random.default_rng(seed)
    landmarks = Landmarks.missing(frames, parts=tuple(PART_SIZES))
    for array in landmarks.parts.values():
        array[:] = rng.random(array.shape, dtype=np.float32)
    landmarks.parts["left_hand"][1:3] = np.nan  # a hand the tracker missed
    return landmarks


def test_round_trip_keeps_every_value_and_nan(tmp_path):
    original = random_landmarks()
    path = write_landmarks(tmp_path / "seq.parquet", original)
    table = pd.read_parquet(path)
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 5 * sum(PART_SIZES.values())  # 543 rows per frame, as in ASL Signs
    assert set(table["type"]) == set(PART_SIZES)
    back = read_landmarks(path)
    np.testing.assert_array_equal(back.frames, original.frames)
    for part, array in original.parts.items():
        np.testing.assert_allclose(back.parts[part], array, rtol=1e-6)
    assert np.isnan(back.parts["left_hand"][1:3]).all() and np.isfinite(back.parts["left_hand"][0]).all()


def test_absent_hand_rows_read_as_nan(tmp_path):
    table = landmarks_table(random_landmarks(frames=3))
    table = table[table["type"] != "right_hand"]
    table.to_parquet(tmp_path / "no_right.parquet", index=False)
    back = read_landmarks(tmp_path / "no_right.parquet")
    assert back.parts["right_hand"].shape == (3, 21, 3) and np.isnan(back.parts["right_hand"]).all()


def test_wrong_columns_is_a_user_error(tmp_path):
    pd.DataFrame({"frame": [0], "kind": ["pose"], "x": [0.1]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="missing columns"):
        read_landmarks(tmp_path / "bad.parquet")


def test_unknown_type_and_not_parquet_are_user_errors(tmp_path):
    table = landmarks_table(random_landmarks(frames=1))
    table.loc[0, "type"] = "tail"
    table.to_parquet(tmp_path / "tail.parquet", index=False)
    with pytest.raises(UserError, match="unknown landmark types"):
        read_landmarks(tmp_path / "tail.parquet")
    (tmp_path / "text.parquet").write_text("frame,type\n")
    with pytest.raises(UserError, match="not a readable Parquet"):
        read_landmarks(tmp_path / "text.parquet")
