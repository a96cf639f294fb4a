"""apps/bench/natten.py: the ours-vs-NATTEN benchmark runs end to end in its tiny CPU mode and writes its
table (one row per case and the NAT classifier). Skipped when natten is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("natten")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_natten_bench_smoke_mode_writes_the_table(tmp_path):
    out = tmp_path / "natten.md"
    cmd = [sys.executable, str(ROOT / "apps/bench/natten.py"), "--smoke", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6 and "stride 4 (blocked)" in rows[3] and "NAT classifier" in rows[-1]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        ours, theirs, ratio = float(cells[2].split()[0]), float(cells[3]), float(cells[4])
        assert ours > 0 and theirs > 0 and abs(ratio - ours / theirs) < 0.01 + 0.01 * ratio, row
