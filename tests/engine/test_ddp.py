"""The unchanged `train` command under torchrun (2 CPU processes, gloo): DDP and FSDP2, and a run that
resumes on another number of processes from the same (unsharded, name-keyed) checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def train(out: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "panformer.timeseries.cli", "train", "--recipe", "basicmotions",
           "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_train_under_torchrun_with_two_gloo_processes(tmp_path, strategy):
    out = tmp_path / strategy
    result = train(out, "--out", str(out), "--set", "train.epochs=2", "--set", f"train.distributed={strategy}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["test"]["accuracy"] > 0.4  # 4 classes (chance 0.25) after 2 epochs: the model learns
    # Rank 0 alone writes: one log line per epoch, not one per rank.
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "checkpoints" / "BEST").is_file()


def test_a_sharded_run_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    result = train(out, "--out", str(out), "--set", "train.epochs=2", "--set", "train.distributed=fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    # One process takes over the 2-process sharded run and trains one more epoch.
    result = train(out, "--resume", str(out), "--set", "train.epochs=3", processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 1
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "epoch-0002"
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_train_under_torchrun_with_two_nccl_processes(tmp_path, strategy):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    out = tmp_path / strategy
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "panformer.timeseries.cli", "train", "--recipe", "basicmotions", "--device", "cuda",
           "--out", str(out), "--set", "train.epochs=2", "--set", f"train.distributed={strategy}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


def test_collectives_use_the_backends_device(monkeypatch):
    import torch

    from panformer.engine import distributed

    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device("cuda", 1)  # NCCL reduces CUDA tensors only
