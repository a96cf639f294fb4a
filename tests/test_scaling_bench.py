"""apps/bench/scaling.py: the throughput the engine logs per epoch, read back by the scaling report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def test_failure_line_skips_torchrun_banner():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "bench"))
    from scaling import failure_line

    stderr = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'music21'\n" + "=" * 60 + "\n"
    assert failure_line(stderr) == "ModuleNotFoundError: No module named 'music21'"
    assert failure_line("") == "(no output)"


def test_a_run_past_its_timeout_is_killed_with_its_children(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "bench"))
    from scaling import failure_line, run_group

    marker = tmp_path / "child-alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    result = run_group([sys.executable, "-c", parent], timeout=1, env=dict(os.environ))
    assert result.returncode != 0 and failure_line(result.stderr).startswith("TimeoutError")
    time.sleep(4)
    assert not marker.exists()  # the grandchild died with the group
