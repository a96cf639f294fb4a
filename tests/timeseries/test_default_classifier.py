"""The default classification recipe (issue 20): the convolution-stem transformer, its training-time
augmentation, the seed ensemble, and the `--panel` benchmark that compares it with aeon's classifiers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from panformer.engine.config import load_recipe
from panformer.timeseries.classification import (
    AugmentConfig,
    ClassificationRecipe,
    ClassificationTask,
    InceptionTransformerConfig,
    augmented,
)
from panformer.timeseries.cli import app
from panformer.timeseries.domain import TimeSeriesDomain
from panformer.timeseries.models.common import Ensemble
from panformer.timeseries.models.inception_transformer import InceptionTransformer
from tests.cli import invoke

ROOT = Path(__file__).resolve().parents[2]


def test_default_recipe_is_the_convolution_stem_transformer_ensemble() -> None:
    recipe = load_recipe(ClassificationRecipe, "timeseries", "classification")
    assert isinstance(recipe.model, InceptionTransformerConfig)
    assert recipe.model.members > 1
    assert recipe.data.augment.scale > 0 and recipe.data.augment.shift > 0
    assert TimeSeriesDomain().default_recipe("aeon:ArrowHead").name == "classification"


def test_a_series_reads_the_same_alone_and_padded_in_a_batch() -> None:
    """Zero past the end after every stem module, max-pooling over zeros, pooling that counts real steps
    (before the stem and into tokens) and key padding: a short series' logits do not depend on what it was
    batched with."""
    torch.manual_seed(0)
    model = InceptionTransformer(channels=2, num_classes=3, max_length=50, dim=16, depth=1, num_heads=2,
                                 stem_depth=2, kernels=(3, 5, 9), max_tokens=8, stem_length=20).eval()
    short, long = torch.randn(1, 2, 37) - 1.0, torch.randn(1, 2, 50)  # negative values: -inf max-pool padding shows
    alone = model(short, torch.tensor([37]))
    batch = torch.cat([torch.nn.functional.pad(short, (0, 13)), long])
    together = model(batch, torch.tensor([37, 50]))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)
    assert (model.input_stride, model.pool_stride) == (3, 3)  # 50 steps -> 17 for the stem -> 6 tokens


def test_missing_values_give_finite_outputs_and_gradients_after_augmentation() -> None:
    torch.manual_seed(0)
    model = InceptionTransformer(channels=3, num_classes=4, max_length=40, dim=16, depth=1, num_heads=2,
                                 stem_depth=1)
    values = torch.randn(2, 3, 40)
    values[0, 1, 5:9] = float("nan")
    values = augmented(values, torch.tensor([40, 31]), AugmentConfig(scale=0.2, shift=0.2))
    logits = model(values, torch.tensor([40, 31]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_kernels_longer_than_the_series_are_capped() -> None:
    model = InceptionTransformer(channels=1, num_classes=2, max_length=12, dim=16, kernels=(9, 19, 39))
    widths = [conv.kernel_size[0] for conv in model.stem[0].convs]
    assert widths == [9, 11, 11]
    assert model(torch.randn(3, 1, 12), torch.tensor([12, 12, 5])).shape == (3, 2)


def test_augmentation_scales_about_the_mean_and_shifts_within_each_series() -> None:
    torch.manual_seed(0)
    ramp = torch.arange(20, dtype=torch.float32).expand(64, 1, 20).clone()
    lengths = torch.full((64,), 20)
    lengths[0] = 10
    ramp[0, :, 10:] = 0.0  # batch padding
    shifted = augmented(ramp, lengths, AugmentConfig(shift=0.2))
    assert not torch.equal(shifted, ramp)
    # A shift keeps the ramp's order and values (edges repeated), moves at most 20% of the length, and
    # leaves the padding past a series' end alone.
    assert (shifted.diff(dim=-1)[1:] >= 0).all()
    assert ((shifted[1:] - ramp[1:]).abs() <= 4).all()
    assert torch.equal(shifted[0, :, 10:], ramp[0, :, 10:]) and shifted[0, :, :10].max() <= 9
    scaled = augmented(ramp[1:], lengths[1:], AugmentConfig(scale=0.2))
    torch.testing.assert_close(scaled.mean(-1), ramp[1:].mean(-1))  # the level stays
    assert scaled.std(-1).std() > 0.05 * ramp[1:].std(-1).mean()  # amplitudes differ between series
    assert augmented(ramp, lengths, AugmentConfig()) is ramp


def test_loss_augments_in_training_only() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(augment=AugmentConfig(scale=0.3, shift=0.3))
    model = InceptionTransformer(channels=1, num_classes=2, max_length=30, dim=16, depth=1, num_heads=2,
                                 stem_depth=1, dropout=0.0)
    batch = {"values": torch.randn(4, 1, 30), "lengths": torch.full((4,), 30), "target": torch.tensor([0, 1, 0, 1])}
    model.eval()
    first, second = task.loss(model, batch)[0], task.loss(model, batch)[0]
    assert torch.equal(first, second)
    model.train()  # no dropout; batch norm is deterministic: only the augmentation can differ
    assert not torch.equal(task.loss(model, batch)[0], task.loss(model, batch)[0])


def test_ensemble_trains_each_member_and_predicts_their_mean_probability() -> None:
    torch.manual_seed(0)
    members = [InceptionTransformer(channels=1, num_classes=3, max_length=16, dim=16, depth=1, num_heads=2,
                                    stem_depth=1, dropout=0.0) for _ in range(3)]
    model = Ensemble(members).eval()
    values, lengths, target = torch.randn(5, 1, 16), torch.full((5,), 16), torch.tensor([0, 1, 2, 0, 1])
    probs = torch.stack([m(values, lengths).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(model(values, lengths).exp(), probs)
    task = ClassificationTask()
    eval_loss, _ = task.loss(model, {"values": values, "lengths": lengths, "target": target})
    torch.testing.assert_close(eval_loss, torch.nn.functional.nll_loss(probs.log(), target))
    model.train()
    for m in members:  # batch norm in eval: the same forward as above, now in training mode
        for module in m.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.eval()
    train_loss, outputs = task.loss(model, {"values": values, "lengths": lengths, "target": target})
    each = torch.stack([torch.nn.functional.cross_entropy(m(values, lengths), target) for m in members])
    torch.testing.assert_close(train_loss, each.mean())
    torch.testing.assert_close(outputs.exp(), probs)


def _ucr_tsv(folder: Path, name: str, *, rng: np.random.Generator, n: int) -> None:
    """Two classes, a bump early or late in the series (the UCR .tsv layout: label first, no header)."""
    for split in ("TRAIN", "TEST"):
        rows = []
        for i in range(n):
            label = i % 2
            x = rng.normal(0, 0.3, 40)
            x[8 + 20 * label: 14 + 20 * label] += 3
            rows.append("\t".join([str(label + 1), *(f"{v:.4f}" for v in x)]))
        (folder / f"{name}_{split}.tsv").write_text("\n".join(rows) + "\n")


def test_train_without_recipe_on_a_ucr_folder_then_predict(tmp_path: Path) -> None:
    """`train --data FOLDER` with no --recipe runs the default recipe (shortened) on the user's UCR files;
    the ensemble checkpoint is saved whole and `predict` reads it back."""
    data = tmp_path / "data"
    data.mkdir()
    _ucr_tsv(data, "Bumps", rng=np.random.default_rng(0), n=24)
    run = tmp_path / "run"
    result = invoke(app, "train", "--data", str(data), "--out", str(run), "--device", "cpu",
                    "--set", "train.epochs=20", "--set", "train.lr=3e-3", "--set", "model.stem_depth=1",
                    "--set", "model.dim=16", "--set", "model.num_heads=2")
    assert result.exit_code == 0, result.output
    assert "classification" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.75
    out = tmp_path / "labels.csv"
    result = invoke(app, "predict", "--checkpoint", str(run), "--input", str(data / "Bumps_TEST.tsv"),
                    "--output", str(out))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == 24 and (table["label"] == table["true_label"]).mean() >= 0.75
    probabilities = table[["prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_panel_bench_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "panel.md"
    cmd = [sys.executable, str(ROOT / "apps/bench/timeseries.py"), "--panel", "--datasets", "ItalyPowerDemand",
           "--seeds", "1", "--set", "train.epochs=1", "model.members=1", "model.stem_depth=1", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ItalyPowerDemand"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 5
    ours, rocket = (float(c.split(" ± ")[0]) for c in cells[1:3])
    assert 0 <= ours <= 1 and rocket > 0.9  # MiniRocket really ran; ours trained one epoch
    assert cells[3] in ("not run (needs tensorflow)",) or "±" in cells[3]
    assert cells[4] in ("ahead", "tied") or cells[4].startswith(("within", "behind by"))
    assert "--set train.epochs=1 model.members=1 model.stem_depth=1" in text
