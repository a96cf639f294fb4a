"""From landmarks to model input: body-part selection, per-part normalisation, velocities, augmentation.

Legend: T frames, P selected points (21 left hand + 21 right hand + 25 upper-body pose), F features per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from panformer.sign.landmarks import Landmarks
from panformer.sign.synthetic import mirror_landmarks

HAND_POINTS = 21
# Pose landmarks 25..32 (knees, ankles, feet) are usually below the frame and invented by the model.
UPPER_POSE = np.arange(25)
POINTS = 2 * HAND_POINTS + len(UPPER_POSE)
# Per frame: normalised (x, y, z) of every point, their velocities, and left/right hand presence flags.
FEATURES = 2 * POINTS * 3 + 2


@dataclass(frozen=True)
class Augment:
    """Random training-time changes to a sequence (raw image coordinates)."""

    rotate_degrees: float = 15.0
    scale: float = 0.15
    shift: float = 0.05
    time_warp: float = 0.25
    mirror_probability: float = 0.5


def augment(landmarks: Landmarks, rng: np.random.Generator, cfg: Augment) -> Landmarks:
    """Mirror (swapping hands), rotate/scale/shift about the image centre and resample time."""
    if rng.random() < cfg.mirror_probability:
        landmarks = mirror_landmarks(landmarks)
    angle = math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], np.float32)
    shift = rng.uniform(-cfg.shift, cfg.shift, 2).astype(np.float32)
    # Time warp: play the sequence at a random speed (resampled by nearest frame).
    t = landmarks.num_frames
    new_t = max(2, round(t * (1.0 + rng.uniform(-cfg.time_warp, cfg.time_warp))))
    index = np.clip(np.round(np.linspace(0, t - 1, new_t)).astype(int), 0, t - 1)
    parts = {}
    for name, array in landmarks.parts.items():
        array = array[index].copy()
        xy = array[..., :2] - 0.5
        array[..., :2] = xy @ rotation.T + 0.5 + shift
        array[..., 2] *= scale
        parts[name] = array
    return Landmarks(frames=np.arange(new_t), parts=parts)


def _normalise_hand(hand: np.ndarray) -> np.ndarray:
    """(T, 21, 3) -> the same, relative to the wrist and divided by the hand's size (NaN stays NaN).

    The size is the median wrist-to-middle-knuckle distance over the frames where the hand is seen,
    so a hand keeps its shape changes but not the signer's distance from the camera.
    """
    relative = hand - hand[:, :1]
    size = np.nanmedian(np.linalg.norm(relative[:, 9, :2], axis=-1)) if np.isfinite(relative[:, 9, 0]).any() else 1
    return relative / max(float(size), 1e-4)


def _normalise_pose(pose: np.ndarray) -> np.ndarray:
    """(T, 25, 3) -> relative to the shoulder midpoint, in shoulder widths (median over frames)."""
    centre = np.nanmean(pose[:, [11, 12]], axis=(0, 1)) if np.isfinite(pose[:, [11, 12]]).any() else np.zeros(3)
    width = np.linalg.norm(pose[:, 11, :2] - pose[:, 12, :2], axis=-1)
    width = float(np.nanmedian(width)) if np.isfinite(width).any() else 1.0
    return (pose - centre) / max(width, 1e-4)


def sequence_features(landmarks: Landmarks, *, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks -> (features (T, F) float32, valid (T,) bool), T <= max_frames.

    A frame where neither hand is seen is a masked token; if no hand is ever seen, every frame with a
    pose is kept, so the pose alone still gives an answer. Missing values become 0 after normalisation.
    """
    t = landmarks.num_frames
    nan = np.full((t, HAND_POINTS, 3), np.nan, np.float32)
    left = landmarks.parts.get("left_hand", nan)
    right = landmarks.parts.get("right_hand", nan)
    pose = landmarks.parts.get("pose", np.full((t, 33, 3), np.nan, np.float32))[:, UPPER_POSE]
    points = np.concatenate([_normalise_hand(left), _normalise_hand(right), _normalise_pose(pose)], axis=1)
    present = np.stack([np.isfinite(left[:, 0, 0]), np.isfinite(right[:, 0, 0])], axis=-1)
    velocity = np.diff(points, axis=0, prepend=points[:1])
    values = np.concatenate([points.reshape(t, -1), velocity.reshape(t, -1)], axis=1)
    values = np.nan_to_num(values, nan=0.0)
    features = np.concatenate([values, present.astype(np.float32)], axis=1).astype(np.float32)
    valid = present.any(axis=1) if present.any() else np.isfinite(pose[:, 11, 0]) | np.isfinite(pose[:, 12, 0])
    if t > max_frames:  # keep the whole sign, uniformly subsampled
        index = np.round(np.linspace(0, t - 1, max_frames)).astype(int)
        features, valid = features[index], valid[index]
    return features, valid
