"""apps/bench/molecules.py: its options, the epochs of several passes, and a tiny learning curve end to end on
CPU from an .npz with RDKit and ASE blocked (as on the GPU machine), plots redrawn from the saved numbers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.molecules.domain import EnergyForceTask, MoleculeRecipe
from panformer.molecules.structures import Structure, write_npz

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "apps" / "bench" / "molecules.py"


def _bench():
    if "molecules_bench" in sys.modules:
        return sys.modules["molecules_bench"]
    sys.path.insert(0, str(BENCH.parent))  # the bench imports its neighbour hardware.py
    spec = importlib.util.spec_from_file_location("molecules_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["molecules_bench"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _structures(molecules: int = 30, conformers: int = 3) -> list[Structure]:
    """Small H/C/O molecules with energies that depend on the geometry, a few conformers each."""
    rng = np.random.default_rng(0)
    out = []
    for m in range(molecules):
        numbers = rng.choice([1, 1, 6, 8], size=3 + m % 4)
        for c in range(conformers):
            positions = rng.normal(scale=1.2, size=(len(numbers), 3))
            distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(len(numbers))
            energy = float(-2.0 * len(numbers) + 0.5 * (1 / distance).sum())
            out.append(Structure(numbers, positions, energy, rng.normal(scale=0.5, size=positions.shape),
                                 molecule=f"mol{m}", name=f"mol{m}-c{c}"))
    return out


def test_sizes_and_budgets_are_checked_and_ordered():
    bench = _bench()
    assert bench.parse_sizes("4000,all,1000") == [1000, 4000, None]
    with pytest.raises(UserError, match="--sizes 10,x"):
        bench.parse_sizes("10,x")
    args = bench.parse_args(["--sizes", "100,all", "--seconds", "5,20", "--out", "x.md"])
    assert args.seconds == [5.0, 20.0]
    assert bench.parse_args(["--sizes", "100,all", "--seconds", "7", "--out", "x.md"]).seconds == [7.0, 7.0]
    with pytest.raises(UserError, match="one per size"):
        bench.parse_args(["--sizes", "100,200,all", "--seconds", "5,20", "--out", "x.md"])


def test_an_epoch_of_several_passes_repeats_the_training_split_only(tmp_path):
    bench = _bench()
    data = write_npz(tmp_path / "set.npz", _structures())
    recipe = load_recipe(MoleculeRecipe, "molecules", "demo", overrides=[f"data.source={data}", "train.device=cpu"])
    plain = EnergyForceTask().load_splits(recipe)
    tripled = bench.PassesTask(passes=3).load_splits(recipe)
    assert len(tripled.train) == 3 * len(plain.train)
    assert sorted(tripled.train.indices.tolist()) == sorted(plain.train.indices.tolist() * 3)
    assert np.array_equal(tripled.val.indices, plain.val.indices)
    assert np.array_equal(tripled.test.indices, plain.test.indices)
    assert tripled.info == plain.info and tripled.fingerprint == plain.fingerprint


def test_a_fractional_pass_adds_a_random_subset_of_the_training_split(tmp_path):
    bench = _bench()
    data = write_npz(tmp_path / "set.npz", _structures())
    recipe = load_recipe(MoleculeRecipe, "molecules", "demo", overrides=[f"data.source={data}", "train.device=cpu"])
    plain = EnergyForceTask().load_splits(recipe).train.indices.tolist()
    longer = bench.PassesTask(passes=2.5).load_splits(recipe).train.indices.tolist()
    assert len(longer) == 2 * len(plain) + round(0.5 * len(plain))
    counts = [longer.count(i) for i in plain]
    assert set(counts) == {2, 3} and counts.count(3) == round(0.5 * len(plain))
    assert longer[-counts.count(3):] != sorted(longer[-counts.count(3):])  # drawn at random, not the first ones
    assert len(bench.PassesTask(passes=1e-6).load_splits(recipe).train) == 1  # never an empty epoch


def test_a_timed_run_trains_its_budget_and_is_scored_once(tmp_path):
    bench = _bench()
    data = write_npz(tmp_path / "set.npz", _structures(12, 2))
    shared = (f"data.source={data}", "data.val_fraction=0.2", "data.test_fraction=0.2", "train.batch_size=4",
              "train.device=cpu", "model.dim=16", "model.depth=1", "model.num_heads=2")
    job = bench.Job("direct", None, 0, shared, seconds=2.0, passes=None, validations=2)
    outcome = bench.run_job(job, str(tmp_path / "runs"))
    assert 2.0 <= outcome.train_seconds < 3.0  # the trainer's clock: the budget, and at most the step crossing it
    assert outcome.passes > 1  # small set, several passes in the budget
    assert outcome.best_epoch in (0, 1) and outcome.test["energy_mae_eV"] > 0 and outcome.val["energy_mae_eV"] > 0


BLOCKED = textwrap.dedent("""
    import importlib.abc, runpy, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"rdkit", "ase"}:
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).parent))
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_a_tiny_learning_curve_runs_end_to_end_without_rdkit(tmp_path):
    data = write_npz(tmp_path / "set.npz", _structures())
    out = tmp_path / "out" / "curve.md"
    command = [sys.executable, "-c", BLOCKED, str(BENCH), "--data", str(data), "--sizes", "12,all", "--seconds", "1,2",
               "--seeds", "1", "--models", "direct", "schnet", "--batch-size", "16", "--device", "cpu",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| 12 (4 mol) | coordinate transformer (direct forces) | 1 |" in table
    assert "| 72 (24 mol), all | SchNet (torch-geometric) | 1 |" in table
    assert "## Learning curve" in table and "best transformer / SchNet energy" in table
    runs = json.loads((tmp_path / "out" / "curve-runs.json").read_text())
    assert {(r["model"], r["size"]) for r in runs} == {("direct", 12), ("schnet", 12), ("direct", None),
                                                       ("schnet", None)}
    for r in runs:  # each run trained for its budget on the trainer's clock
        budget = 1.0 if r["size"] == 12 else 2.0
        assert r["budget_seconds"] == budget and budget <= r["train_seconds"] < budget + 1.0
        assert r["passes"] > 0 and r["test"]["energy_mae_eV"] > 0
    attention = json.loads((tmp_path / "out" / "curve-attention-distance.json").read_text())
    assert len(attention["layers"]) == 6  # coordformer-paper: 6 layers of 8 heads
    assert all(len(layer["effective_radius_A"]) == 8 for layer in attention["layers"].values())
    for name in ("curve-curve.png", "curve-attention-distance.png"):
        (tmp_path / "out" / name).unlink()
    redrawn = subprocess.run([sys.executable, str(BENCH), "--plots-from", str(out)], cwd=REPO, capture_output=True,
                             text=True, timeout=120, env=env)
    assert redrawn.returncode == 0, redrawn.stderr[-2000:]
    assert (tmp_path / "out" / "curve-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "curve-attention-distance.png").is_file()
