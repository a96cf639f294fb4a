"""A synthetic, offline sign dataset: procedurally animated hand and arm landmark trajectories.

This is NOT sign language data. Each of ten made-up "signs" is a hand path (wave, circle, tap ...) at a
place on the body with a hand shape that may change over time, sometimes with both hands. Every performer
(a "signer") gets their own speed, body size, camera offset, jitter, handedness and dropped hand frames,
so a signer-independent split has to generalise across people, as with real data. Files are written in the
ASL-Signs Parquet schema (no face rows) with a `labels.csv` of `path, label, signer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from panformer.engine.files import atomic_path, write_text_atomic
from panformer.sign.landmarks import Landmarks, write_landmarks

# Finger curl (radians per joint) for thumb, index, middle, ring, pinky.
SHAPES = {
    "open": (0.1, 0.0, 0.0, 0.0, 0.0),
    "fist": (0.9, 1.4, 1.4, 1.4, 1.4),
    "point": (0.8, 0.0, 1.4, 1.4, 1.4),
    "vee": (0.8, 0.0, 0.0, 1.4, 1.4),
    "claw": (0.4, 0.7, 0.7, 0.7, 0.7),
    "pinch": (0.5, 0.6, 1.3, 1.3, 1.3),
}


@dataclass(frozen=True)
class SignSpec:
    """A made-up sign: where the dominant hand is, how it moves, and its hand shape from start to end."""

    name: str
    anchor: tuple[float, float]  # offset from the right shoulder, in shoulder widths (x right, y down)
    path: str  # wave_x, nod_y, circle, down, up, forward, zigzag
    shape_start: str
    shape_end: str
    two_handed: bool = False


SIGNS = (
    SignSpec("synthetic-hello", (-0.2, -1.0), "wave_x", "open", "open"),
    SignSpec("synthetic-thanks", (0.4, -0.7), "forward", "open", "open"),
    SignSpec("synthetic-yes", (0.1, 0.2), "nod_y", "fist", "fist"),
    SignSpec("synthetic-no", (0.1, -0.2), "nod_y", "vee", "pinch"),
    SignSpec("synthetic-please", (0.5, 0.5), "circle", "open", "open"),
    SignSpec("synthetic-more", (0.5, 0.4), "wave_x", "pinch", "pinch", two_handed=True),
    SignSpec("synthetic-drink", (0.4, 0.3), "up", "claw", "claw"),
    SignSpec("synthetic-eat", (0.45, -0.6), "nod_y", "pinch", "pinch"),
    SignSpec("synthetic-help", (0.4, 0.9), "up", "fist", "open", two_handed=True),
    SignSpec("synthetic-stop", (0.3, -0.3), "down", "open", "point"),
)


# Bump when the generator changes, so cached datasets of an older generator are rebuilt.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class SyntheticSpec:
    signs: int = 10
    signers: int = 24
    repetitions: int = 3
    seed: int = 0


def _path(kind: str, phase: np.ndarray, *, amplitude: float, cycles: float) -> np.ndarray:
    """Dominant-hand displacement (T, 2) in shoulder widths for a motion kind at phase in [0, 1]."""
    angle = 2 * np.pi * cycles * phase
    zero = np.zeros_like(phase)
    moves = {
        "wave_x": (amplitude * np.sin(angle), zero),
        "nod_y": (zero, amplitude * np.sin(angle)),
        "circle": (amplitude * np.cos(angle), amplitude * np.sin(angle)),
        "down": (zero, 2 * amplitude * phase),
        "up": (zero, -2 * amplitude * phase),
        "forward": (-1.5 * amplitude * phase, 1.5 * amplitude * phase),
        "zigzag": (2 * amplitude * phase - amplitude, amplitude * np.abs(np.sin(angle))),
    }
    dx, dy = moves[kind]
    return np.stack([dx, dy], axis=-1)


def _hand(wrist: np.ndarray, angle: np.ndarray, curls: np.ndarray, size: float, *, mirror: bool) -> np.ndarray:
    """21 hand landmarks (T, 21, 3): wrist, then 4 joints per finger from thumb to pinky.

    wrist (T, 2); angle (T,) the direction the fingers point (radians, 0 = up); curls (T, 5).
    Curling a joint shortens its image-plane projection and moves it towards the camera (z).
    """
    t = len(wrist)
    side = -1.0 if mirror else 1.0
    spread = side * np.array([-0.9, -0.3, 0.0, 0.25, 0.5])  # finger directions relative to the hand axis
    knuckle = np.array([0.35, 0.9, 0.95, 0.9, 0.8]) * size
    segment = np.array([0.35, 0.45, 0.5, 0.45, 0.35]) * size
    out = np.zeros((t, 21, 3), np.float32)
    out[:, 0, :2] = wrist
    for f in range(5):
        direction = angle + spread[f]
        unit = np.stack([np.sin(direction), -np.cos(direction)], axis=-1)  # (T, 2), image y points down
        point = wrist + knuckle[f] * unit
        depth = np.zeros(t)
        out[:, 1 + 4 * f, :2] = point
        for j in range(1, 4):
            bend = curls[:, f] * j
            point = point + (segment[f] * np.cos(bend))[:, None] * unit
            depth = depth - segment[f] * np.sin(bend)
            out[:, 1 + 4 * f + j, :2] = point
            out[:, 1 + 4 * f + j, 2] = depth
    return out


# Pose landmarks (MediaPipe order) of a person facing the camera, in shoulder widths from the shoulder
# midpoint; the person's left is the image right. Knees, ankles and feet (25..32) lie below the frame.
_BODY = np.array([
    (0.0, -1.3), (0.1, -1.4), (0.15, -1.4), (0.2, -1.4), (-0.1, -1.4), (-0.15, -1.4), (-0.2, -1.4),
    (0.3, -1.3), (-0.3, -1.3), (0.08, -1.1), (-0.08, -1.1), (0.5, 0.0), (-0.5, 0.0), (0.6, 0.9), (-0.6, 0.9),
    (0.6, 1.6), (-0.6, 1.6), (0.6, 1.8), (-0.6, 1.8), (0.58, 1.8), (-0.58, 1.8), (0.55, 1.7), (-0.55, 1.7),
    (0.35, 2.2), (-0.35, 2.2), (0.35, 3.3), (-0.35, 3.3), (0.35, 4.3), (-0.35, 4.3), (0.35, 4.4),
    (-0.35, 4.4), (0.4, 4.5), (-0.4, 4.5),
], np.float32)
# Pose landmark pairs that swap when a person is mirrored (left <-> right).
POSE_MIRROR_PAIRS = ((1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
                     (21, 22), (23, 24), (25, 26), (27, 28), (29, 30), (31, 32))


def perform(sign: SignSpec, rng: np.random.Generator) -> Landmarks:
    """One performance of `sign` by a random performer (right-handed; mirror it for a left-hander)."""
    frames = int(rng.integers(18, 49))  # speed: 0.6 .. 1.6 s at 30 fps
    shoulder = rng.uniform(0.18, 0.3)  # body size: shoulder width as a fraction of the image
    centre = np.array([0.5, 0.45]) + rng.normal(0, 0.04, 2)  # camera offset
    noise = rng.uniform(0.003, 0.015)
    phase = np.linspace(0, 1, frames) ** rng.uniform(0.8, 1.25)  # uneven speed within the sign
    amplitude = rng.uniform(0.15, 0.45)
    cycles = rng.uniform(1.5, 2.5)
    anchor = np.array(sign.anchor) + rng.normal(0, 0.18, 2)

    body = np.repeat(_BODY[None], frames, axis=0) * shoulder + centre
    right_shoulder = body[:, 12]
    right_wrist = right_shoulder + (anchor + _path(sign.path, phase, amplitude=amplitude, cycles=cycles)) * shoulder
    blend = np.clip(phase * 1.5 - 0.25, 0, 1)[:, None]
    curls = (1 - blend) * np.array(SHAPES[sign.shape_start]) + blend * np.array(SHAPES[sign.shape_end])
    curls = curls + rng.normal(0, 0.2, 5)
    tilt = rng.normal(0, 0.2) + 0.15 * np.sin(2 * np.pi * phase)
    right = _hand(right_wrist, tilt, curls, 0.45 * shoulder, mirror=False)

    left_shoulder = body[:, 11]
    if sign.two_handed:
        offset = (anchor + _path(sign.path, phase, amplitude=amplitude, cycles=cycles)) * shoulder
        left_wrist = left_shoulder + offset * np.array([-1, 1])
        left = _hand(left_wrist, -tilt, curls, 0.45 * shoulder, mirror=True)
    else:  # the other hand rests at the waist, often out of view
        left_wrist = left_shoulder + np.array([0.1, 2.0]) * shoulder + rng.normal(0, 0.005, (frames, 2))
        left = _hand(left_wrist, np.full(frames, np.pi), np.tile(SHAPES["claw"], (frames, 1)), 0.45 * shoulder,
                     mirror=True)

    # Arms follow the hands: wrist, hand points and an elbow between shoulder and wrist.
    for wrist, hand, side in ((right_wrist, right, 0), (left_wrist, left, 1)):
        w, e = (16, 14) if side == 0 else (15, 13)
        shoulder_xy = right_shoulder if side == 0 else left_shoulder
        body[:, w] = wrist
        body[:, e] = 0.5 * (shoulder_xy + wrist) + np.array([0.0, 0.35]) * shoulder
        for pose_index, hand_index in ((w + 2, 17), (w + 4, 5), (w + 6, 1)):
            body[:, pose_index] = hand[:, hand_index, :2]

    pose = np.zeros((frames, 33, 3), np.float32)
    pose[..., :2] = body
    pose[..., 2] = -0.3
    landmarks = Landmarks.missing(frames)
    landmarks.parts["pose"][:] = pose
    landmarks.parts["right_hand"][:] = right
    landmarks.parts["left_hand"][:] = left
    for part in landmarks.parts.values():
        part += rng.normal(0, noise, part.shape).astype(np.float32)

    # The tracker misses hands now and then; a resting hand is mostly out of view.
    drop = rng.uniform(0, 0.15)
    landmarks.parts["right_hand"][rng.random(frames) < drop] = np.nan
    if not sign.two_handed and rng.random() < 0.7:
        landmarks.parts["left_hand"][:] = np.nan
    else:
        landmarks.parts["left_hand"][rng.random(frames) < drop] = np.nan
    return landmarks


def mirror_landmarks(landmarks: Landmarks) -> Landmarks:
    """The same sequence seen in a mirror: x -> 1 - x, left and right hands (and pose sides) swapped."""
    parts = {name: array.copy() for name, array in landmarks.parts.items()}
    for array in parts.values():
        array[..., 0] = 1.0 - array[..., 0]
    if "pose" in parts:
        pose = parts["pose"]
        for a, b in POSE_MIRROR_PAIRS:
            pose[:, [a, b]] = pose[:, [b, a]]
    left, right = parts.get("left_hand"), parts.get("right_hand")
    if left is not None and right is not None:
        parts["left_hand"], parts["right_hand"] = right, left
    return Landmarks(frames=landmarks.frames.copy(), parts=parts)


def build_synthetic(folder: Path, spec: SyntheticSpec) -> Path:
    """Write (or reuse) the dataset in `folder`; returns its `labels.csv`. Same spec, same bytes."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    stamp = folder / "spec.json"
    wanted = json.dumps({**asdict(spec), "generator": GENERATOR_VERSION}, sort_keys=True)
    if labels.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return labels
    signs = SIGNS[: spec.signs]
    rows = []
    for signer in range(spec.signers):
        performer = np.random.default_rng([spec.seed, signer])
        left_handed = performer.random() < 0.25
        for sign_index, sign in enumerate(signs):
            for rep in range(spec.repetitions):
                rng = np.random.default_rng([spec.seed, signer, sign_index, rep])
                landmarks = perform(sign, rng)
                if left_handed:
                    landmarks = mirror_landmarks(landmarks)
                name = f"signer{signer:03d}/{sign.name}-{rep}.parquet"
                write_landmarks(folder / name, landmarks)
                rows.append({"path": name, "label": sign.name, "signer": f"signer{signer:03d}"})
    with atomic_path(labels) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_text_atomic(stamp, wanted)
    return labels


def dataset_digest(folder: Path) -> str:
    """A short hash of every file in the dataset (for the determinism test and fingerprints)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.parquet")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
