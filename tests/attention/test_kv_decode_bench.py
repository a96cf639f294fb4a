"""apps/bench/kv_decode.py: the decode-step benchmark runs end to end in its tiny CPU mode, and its fused path
agrees with today's dequantise-then-attend path on every precision row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kv_decode_bench_tiny_mode_writes_the_report(tmp_path):
    out = tmp_path / "kv-decode.md"
    cmd = [sys.executable, str(ROOT / "apps/bench/kv_decode.py"), "--tiny", "--device", "cpu", "--dtype", "float32",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in out.read_text().splitlines() if line.startswith("| B=")]
    precisions = ("fp32", "K8V8", "K4V4", "K2V2", "K4V4@token", "K8V4")
    assert [line.split(" | ")[1] for line in table] == list(precisions) * 2  # two tiny shapes
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "fp32":  # the unquantised baseline row
            continue
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[7]) > 0 and int(cells[13]) > 0
        assert float(cells[14]) < 1e-4, line  # fp32: the fused path equals dequantise + attention
