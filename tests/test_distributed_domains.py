"""Every domain's `train` under torchrun: 2 CPU processes on gloo, its demo recipe shrunk to a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from panformer.engine.domain import registered_domains

# Per domain: overrides that make the demo recipe a few steps on tiny data ({tmp}: a fresh folder).
SHRINK = {
    "timeseries": [],
    "sign": ["data.cache_dir={tmp}/sign", "data.synthetic.signs=4", "data.synthetic.signers=6",
             "data.synthetic.repetitions=1"],
    "speech": ["data.cache_dir={tmp}/speech", "data.corpus.train_variants=2", "data.corpus.val_variants=1",
               "data.corpus.test_variants=1", "data.corpus.utterances_per_speaker=2", "data.train_mixtures=8",
               "data.val_mixtures=4", "data.test_mixtures=4"],
    "music": ["data.cache_dir={tmp}/music", "data.max_pieces=10"],
    "graphs": ["data.synthetic_size=48"],
    "molecules": ["data.cache_dir={tmp}/molecules", "data.molecules=24"],
    "relational": ["data.demo_customers=150", "pretrain.steps=5"],
}


@pytest.mark.parametrize("domain", sorted(registered_domains()))
def test_demo_recipe_trains_on_two_gloo_processes(domain, tmp_path):
    if domain not in SHRINK:
        pytest.fail(f"add the {domain} domain to SHRINK: every domain must train under torchrun")
    overrides = ["train.epochs=1", *(o.format(tmp=tmp_path) for o in SHRINK[domain])]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", f"panformer.{domain}.cli", "train", "--recipe", "demo", "--out", str(out), "--device", "cpu"]
    for override in overrides:
        cmd += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # written by rank 0 alone
