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


def test_driver_writes_a_table_per_size(tmp_path):
    out = tmp_path / "scale.md"
    subprocess.run([sys.executable, str(SCRIPT), "--domain", "relational", "--sizes", "2k,4k", "--out", str(out),
                    "--workdir", str(tmp_path)], check=True, capture_output=True, text=True)
    text = out.read_text()
    assert "| 2,000 |" in text and "| 4,000 |" in text and "Time grows as size^" in text
    assert [p.name for p in tmp_path.iterdir()] == ["scale.md"]  # generated data removed
