"""The unchanged `train` command under torchrun: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_train_under_torchrun_with_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "panformer.timeseries.cli", "train", "--recipe", "basicmotions", "--out", str(out),
           "--set", "train.epochs=2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # Rank 0 alone writes: one log line per epoch, not one per rank.
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "checkpoints" / "BEST").is_file()
