"""Smoke test of the scale benchmark (apps/bench/scale.py) at tiny sizes: every registered domain's
generator and measurement run, and the driver writes the results table with its growth line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "apps" / "bench" / "scale.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("scale_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("engine", ["duckdb", "sqlite"])
def test_relational_generator_and_measurement(tmp_path, engine):
    bench = load_bench()
    bench.generate_relational(tmp_path, 3000, engine=engine)
    counts = bench.relational_counts(3000)
    assert sum(counts.values()) == 3000
    result = bench.measure_relational(tmp_path, 3000, engine=engine)
    assert result["task_rows"] > 0 and result["contexts_per_s"] > 0
    assert result["source_untouched"] == 1.0


def test_speech_generator_and_measurement(tmp_path):
    bench = load_bench()
    bench.generate_speech(tmp_path, 30)
    split = tmp_path / "Libri2Mix" / "wav8k" / "min"
    assert len(list((split / "train-360" / "mix_clean").iterdir())) == 24
    result = bench.measure_speech(tmp_path, 30)
    assert result["startup_s"] > 0 and result["dynamic_mix_audio_s_per_s"] > 0


@pytest.mark.slow
def test_sign_generator_and_measurement(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "SIGN_STEPS", 1)
    bench.generate_sign(tmp_path, 30)
    assert len(list(tmp_path.glob("train_landmark_files/*/*.parquet"))) == 30
    assert (tmp_path / "train.csv").read_text().startswith("path,participant_id,sequence_id,sign\n")
    result = bench.measure_sign(tmp_path, 30)
    assert result["load_sequences_per_s"] > 0 and result["cpu_step_sequences_per_s"] > 0
    assert result["skipped_items"] <= 1  # the one corrupt file, when the signer split puts it in train


@pytest.mark.slow
def test_sign_extract_generator_and_measurement(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "EXTRACT_FRAMES", 6)
    bench.generate_sign_videos(tmp_path, 2)
    result = bench.measure_sign_extract(tmp_path, 2)
    assert result["frames"] == 12 and result["extract_fps_per_core"] > 0 and result["raw_mediapipe_fps_per_core"] > 0


def test_driver_writes_a_table_per_size(tmp_path):
    out = tmp_path / "scale.md"
    subprocess.run([sys.executable, str(SCRIPT), "--domain", "relational", "--sizes", "2k,4k", "--out", str(out),
                    "--workdir", str(tmp_path)], check=True, capture_output=True, text=True)
    text = out.read_text()
    assert "| 2,000 |" in text and "| 4,000 |" in text and "Time grows as size^" in text
    assert [p.name for p in tmp_path.iterdir()] == ["scale.md"]  # generated data removed


def test_music_generator_and_measurement(tmp_path):
    bench = load_bench()
    bench.generate_music(tmp_path, 40)
    result = bench.measure_music(tmp_path, 40)
    assert result["skipped"] == 2 and result["pieces"] == 38  # the corrupt file and the one without notes
    assert result["second_read_s"] < result["first_read_s"]  # the pre-tokenised cache, not a second parse
    assert result["ours_files_per_s"] > 0 and result["remi_files_per_s"] > 0 and result["train_windows"] > 0


def test_timeseries_generator_and_measurement(tmp_path):
    bench = load_bench()
    bench.generate_timeseries(tmp_path, 20_000)
    result = bench.measure_timeseries(tmp_path, 20_000)
    assert result["train_windows"] == 20 * (1000 - 36 - 12 - 12 - 12 + 1)  # 20 series of 1,000 hourly steps
    assert result["windows_per_s"] > 0


def test_molecules_generator_and_measurement(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "MOLECULES_LABELLED", 2)
    bench.generate_molecules(tmp_path, 40)
    result = bench.measure_molecules(tmp_path, 40)
    assert 0 < result["train_structures"] < 40 and result["label_structures_per_s"] > 0
