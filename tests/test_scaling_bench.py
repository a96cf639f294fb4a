"""apps/bench/scaling.py: the throughput the engine logs per epoch, read back by the scaling report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scaling_report_reads_the_engines_throughput(tmp_path):
    out = tmp_path / "scaling.md"
    cmd = [sys.executable, str(ROOT / "apps/bench/scaling.py"), "--run", "timeseries:demo", "--procs", "1",
           "--epochs", "2", "--device", "cpu", "--work", str(tmp_path / "runs"), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs/timeseries-demo-1/log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["train_samples_per_s"] > 0 and row["train_seconds"] > 0 for row in rows)
    table = out.read_text()
    assert f"| timeseries | demo | 1 | {rows[1]['train_samples_per_s']:.1f} | 100.0% |" in table
