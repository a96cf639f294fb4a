"""Features: per-part normalisation, lower-body landmarks dropped, mirroring swaps hands, masked frames."""

from __future__ import annotations

import numpy as np

from panformer.sign.features import (
    FEATURES,
    HAND_POINTS,
    POINTS,
    Augment,
    augment,
    sequence_features,
)
from panformer.sign.synthetic import SIGNS, mirror_landmarks, perform

L = slice(0, HAND_POINTS)  # point ranges in the per-frame (P, 3) block
R = slice(HAND_POINTS, 2 * HAND_POINTS)


def two_handed(seed: int = 0):
    sign = next(s for s in SIGNS if s.two_handed)
    landmarks = perform(sign, np.random.default_rng(seed))
    for part in ("left_hand", "right_hand"):  # every hand seen, for exact comparisons
        landmarks.parts[part] = np.nan_to_num(landmarks.parts[part], nan=0.5)
    return landmarks


def points(features: np.ndarray) -> np.ndarray:
    return features[:, : POINTS * 3].reshape(len(features), POINTS, 3)


def test_shape_and_hand_relative_coordinates():
    features, valid = sequence_features(two_handed(), max_frames=64)
    assert features.shape == (len(valid), FEATURES) and valid.all()
    np.testing.assert_allclose(points(features)[:, 0], 0, atol=1e-6)  # hands are relative to their wrist
    np.testing.assert_allclose(points(features)[:, HAND_POINTS], 0, atol=1e-6)


def test_features_ignore_where_and_how_big_the_signer_is():
    base = two_handed()
    moved = two_handed()
    for array in moved.parts.values():
        array[..., :2] = 0.8 * array[..., :2] + 0.07
        array[..., 2] *= 0.8
    a, _ = sequence_features(base, max_frames=64)
    b, _ = sequence_features(moved, max_frames=64)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_lower_body_landmarks_do_not_matter():
    base = two_handed()
    invented = two_handed()
    invented.parts["pose"][:, 25:] += 0.3  # knees and feet, below the frame
    np.testing.assert_array_equal(sequence_features(base, max_frames=64)[0],
                                  sequence_features(invented, max_frames=64)[0])


def test_mirroring_swaps_the_hands():
    landmarks = two_handed()
    original = points(sequence_features(landmarks, max_frames=64)[0])
    mirrored = points(sequence_features(mirror_landmarks(landmarks), max_frames=64)[0])
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored[:, L], original[:, R] * flip, atol=1e-5)
    np.testing.assert_allclose(mirrored[:, R], original[:, L] * flip, atol=1e-5)


def test_frames_without_hands_are_masked_and_pose_only_still_counts():
    landmarks = two_handed()
    landmarks.parts["left_hand"][3:6] = np.nan
    landmarks.parts["right_hand"][3:6] = np.nan
    features, valid = sequence_features(landmarks, max_frames=64)
    assert not valid[3:6].any() and valid[:3].all() and valid[6:].all()
    assert np.isfinite(features).all() and (features[3:6, -2:] == 0).all()  # presence flags off
    landmarks.parts["left_hand"][:] = np.nan
    landmarks.parts["right_hand"][:] = np.nan
    _, valid = sequence_features(landmarks, max_frames=64)
    assert valid.all()  # no hand ever seen: the pose frames are used


def test_long_sequences_are_subsampled():
    features, valid = sequence_features(two_handed(), max_frames=8)
    assert features.shape[0] == 8 and valid.shape == (8,)


def test_augmentation_changes_values_and_length_but_keeps_missing_hands_missing():
    landmarks = two_handed()
    landmarks.parts["right_hand"][0] = np.nan
    out = augment(landmarks, np.random.default_rng(3), Augment(mirror_probability=0.0, time_warp=0.5))
    assert out.num_frames != landmarks.num_frames or not np.allclose(out.parts["pose"], landmarks.parts["pose"])
    assert np.isnan(out.parts["right_hand"][0]).all()
    no_change = augment(landmarks, np.random.default_rng(3), Augment(0.0, 0.0, 0.0, 0.0, 0.0))
    np.testing.assert_allclose(no_change.parts["pose"], landmarks.parts["pose"], atol=1e-6)
    mirrored = augment(landmarks, np.random.default_rng(3), Augment(0.0, 0.0, 0.0, 0.0, 1.0))
    np.testing.assert_allclose(mirrored.parts["left_hand"][..., 1], landmarks.parts["right_hand"][..., 1])
