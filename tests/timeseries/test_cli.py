"""The CLI contract, exercised on the time-series domain through real subprocesses."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from panformer.timeseries.data import aeon_data_dir
from tests.cli import assert_user_error

BIN = Path(sys.executable).parent
TEST_TS = aeon_data_dir() / "BasicMotions" / "BasicMotions_TEST.ts"


def cli(*args: str, tool: str = "panformer-timeseries") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ts") / "run"
    result = cli("train", "--recipe", "basicmotions", "--data", "aeon:BasicMotions", "--out", str(out),
                 "--set", "train.epochs=3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out



def test_train_writes_a_run_folder(run_dir):
    assert (run_dir / "recipe.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "loss"}
    assert (run_dir / "checkpoints" / "BEST").is_file()
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 3


def test_evaluate_json_last_line(run_dir):
    result = cli("evaluate", "--checkpoint", str(run_dir), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])


def test_predict_writes_labels_and_probabilities(run_dir, tmp_path):
    out = tmp_path / "pred.csv"
    result = cli("predict", "--checkpoint", str(run_dir), "--input", str(TEST_TS), "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    probs = [float(v) for k, v in rows[0].items() if k.startswith("prob_")]
    assert len(probs) == 4 and abs(sum(probs) - 1) < 1e-4
    assert rows[0]["label"] in {"badminton", "running", "standing", "walking"}


def test_info_and_recipes(run_dir):
    info = cli("info", "--checkpoint", str(run_dir))
    assert info.returncode == 0 and "timeseries" in info.stdout and "sha256:" in info.stdout
    recipes = cli("recipes")
    assert recipes.returncode == 0
    assert {line.split()[0] for line in recipes.stdout.splitlines()} >= {"basicmotions", "demo"}


def test_umbrella_discovers_the_domain():
    result = cli("timeseries", "recipes", tool="panformer")
    assert result.returncode == 0 and "basicmotions" in result.stdout


def test_unknown_recipe_is_exit_2():
    assert_user_error(cli("train", "--recipe", "nonexistent"), "unknown recipe 'nonexistent'", "basicmotions")


def test_bad_override_is_exit_2(tmp_path):
    result = cli("train", "--recipe", "basicmotions", "--set", "train.epochz=3", "--out", str(tmp_path / "r"))
    assert_user_error(result, "train.epochz")
    assert not (tmp_path / "r").exists()


def test_corrupt_ts_file_is_exit_2_and_writes_nothing(run_dir, tmp_path):
    bad = tmp_path / "broken.ts"
    bad.write_text("@problemName broken\n@univariate maybe\n@data\n1,2,3:oops\n")
    out = tmp_path / "pred.csv"
    result = cli("predict", "--checkpoint", str(run_dir), "--input", str(bad), "--output", str(out))
    assert_user_error(result, str(bad))
    assert list(tmp_path.iterdir()) == [bad]


def test_checkpoint_from_another_domain_is_exit_2(run_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    best = other / "checkpoints" / (other / "checkpoints" / "BEST").read_text().strip()
    config = json.loads((best / "config.json").read_text())
    config["domain"] = "speech"
    (best / "config.json").write_text(json.dumps(config))
    assert_user_error(cli("info", "--checkpoint", str(other)), "'speech' domain")


def test_missing_checkpoint_is_exit_2(tmp_path):
    assert_user_error(cli("evaluate", "--checkpoint", str(tmp_path / "nope")), "does not exist")


def test_evaluate_defaults_to_the_data_trained_on(tmp_path):
    out = tmp_path / "jv"
    trained = cli("train", "--recipe", "basicmotions", "--data", "aeon:JapaneseVowels", "--out", str(out),
                  "--set", "train.epochs=1", "--set", "train.batch_size=64", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    result = cli("evaluate", "--checkpoint", str(out), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert json.loads(result.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(saved["accuracy"])
