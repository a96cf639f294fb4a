"""The default classification recipe (issue 20): the convolution-stem transformer, its training-time
augmentation, the seed ensemble, and the `--panel` benchmark that compares it with aeon's classifiers."""

from __future__ import annotations

import importlib.util
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
from panformer.timeseries.models.inception_transformer import InceptionModule, InceptionTransformer
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


def test_dilated_stem_branches_see_their_whole_span_and_no_further() -> None:
    """Branch i of a module reads kernels[i] taps spaced dilations[i] apart: an impulse reaches exactly
    span // 2 steps either side, so 9 taps at dilation 4 see 33 steps at the cost of 9."""
    torch.manual_seed(0)
    module = InceptionModule(1, 16, kernels=(9, 9, 9), dilations=(1, 2, 4)).eval()
    impulse = torch.zeros(1, 1, 101)
    impulse[0, 0, 50] = 1.0
    for conv, reach in zip(module.convs, (4, 8, 16), strict=True):
        touched = conv(impulse).abs().sum(1)[0].nonzero().flatten()
        assert (touched.min().item(), touched.max().item()) == (50 - reach, 50 + reach)
        assert conv.weight.shape[-1] == 9
    assert module(impulse).shape == (1, 16, 101)


def test_dilated_spans_longer_than_the_series_shrink_the_dilation_first() -> None:
    model = InceptionTransformer(channels=1, num_classes=2, max_length=24, dim=16, kernels=(9, 9, 9),
                                 dilations=(1, 2, 4))
    pairs = [(conv.kernel_size[0], conv.dilation[0]) for conv in model.stem[0].convs]
    assert pairs == [(9, 1), (9, 2), (9, 2)]  # span 33 > 23 steps: dilation 4 -> 2 (span 17)
    assert model(torch.randn(2, 1, 24), torch.tensor([24, 7])).shape == (2, 2)


def test_long_series_embedding_keeps_fast_oscillations_in_any_phase() -> None:
    """A series longer than stem_length is convolved at full resolution and its rectified features averaged
    over windows: a 4-step cycle reads the same in every window whatever its phase (ACSF1's appliances repeat
    such a cycle), where an embedding of fixed patches would see a different patch for each phase."""
    torch.manual_seed(0)
    model = InceptionTransformer(channels=1, num_classes=2, max_length=64, dim=16, stem_length=16).eval()
    assert model.input_stride == 4
    cycle = torch.tensor([0.9, 0.5, 1.3, -1.0]).repeat(16)[None, None, :]
    valid = torch.ones(1, 1, 64, dtype=torch.bool)
    windows = [model.embed(cycle.roll(phase, -1), valid)[0][0, :, 2:-2] for phase in range(4)]
    for other in windows[1:]:
        torch.testing.assert_close(other, windows[0])
    assert windows[0].abs().sum() > 0


def test_recipe_sets_the_stem_dilations() -> None:
    recipe = load_recipe(ClassificationRecipe, "timeseries", "classification",
                         overrides=["model.kernels=[9,9,9]", "model.dilations=[1,4,16]"])
    model = ClassificationTask().build_model(recipe, {"channels": 1, "classes": ["a", "b"], "max_length": 500,
                                                      "mean": [0.0], "std": [1.0]})
    member = model.members[0] if isinstance(model, Ensemble) else model
    assert [conv.dilation[0] for conv in member.stem[0].convs] == [1, 4, 16]


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


def test_circular_shift_and_mirror_permute_each_series_within_its_length() -> None:
    torch.manual_seed(0)
    values = torch.randn(64, 2, 20)
    lengths = torch.full((64,), 20)
    lengths[0] = 12
    values[0, :, 12:] = 0.0  # batch padding
    rolled = augmented(values, lengths, AugmentConfig(circular_shift=True))
    mirrored = augmented(values, lengths, AugmentConfig(mirror=True))
    both = augmented(values, lengths, AugmentConfig(circular_shift=True, mirror=True))
    for out in (rolled, mirrored, both):  # the same steps, rearranged, the same way in every channel; padding kept
        torch.testing.assert_close(out[1:].sort(-1).values, values[1:].sort(-1).values)
        torch.testing.assert_close(out[0, :, :12].sort(-1).values, values[0, :, :12].sort(-1).values)
        assert torch.equal(out[0, :, 12:], values[0, :, 12:])
    def is_roll(a: torch.Tensor, b: torch.Tensor) -> bool:
        return any(torch.equal(a, b.roll(r, -1)) for r in range(b.shape[-1]))
    assert all(is_roll(rolled[i], values[i]) for i in range(1, 64))
    assert is_roll(rolled[0, :, :12], values[0, :, :12])
    assert sum(not torch.equal(rolled[i], values[i]) for i in range(64)) > 55  # a random roll, rarely none
    flipped = [torch.equal(mirrored[i], values[i].flip(-1)) for i in range(1, 64)]
    kept = [torch.equal(mirrored[i], values[i]) for i in range(1, 64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 10 < sum(flipped) < 53
    assert all(is_roll(both[i], values[i]) or is_roll(both[i], values[i].flip(-1)) for i in range(1, 64))


def test_symmetries_are_adopted_when_the_training_split_shows_them() -> None:
    from panformer.timeseries.invariance import detect_invariances

    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 96, endpoint=False)
    shapes = rng.uniform(size=(10, 3, 2))  # 10 classes, each 3 bumps: (place, height)

    def curve(label: int, *, start: float, reverse: bool) -> np.ndarray:
        bumps = sum(h * np.exp(-(((t - start - at) % 1.0) ** 2) / 0.002) for at, h in shapes[label])
        return ((bumps[::-1] if reverse else bumps) + 0.05 * rng.standard_normal(96))[None]

    labels = np.repeat(np.arange(10), 2)
    # Closed outlines traced from any point, each class once in either direction: both symmetries.
    outlines = [curve(c, start=rng.uniform(), reverse=bool(i % 2)) for i, c in enumerate(labels)]
    found = detect_invariances(outlines, labels)
    assert found.circular_shift and found.mirror and found.shifted_mirrored >= 0.8 > found.shifted
    # A cycle caught at any phase, never reversed: shifts help 1-NN, reflections add nothing; not adopted.
    phases = detect_invariances([curve(c, start=rng.uniform(), reverse=False) for c in labels], labels)
    assert phases.shifted >= phases.plain + 0.05 and not phases.circular_shift
    fixed = detect_invariances([curve(c, start=0.3, reverse=False) for c in labels], labels)  # a fixed time
    assert not fixed.circular_shift and fixed.plain > 0.9
    unequal = detect_invariances([np.zeros((1, 5)), np.zeros((1, 6)), np.zeros((1, 5))], np.array([0, 1, 0]))
    assert not unequal.circular_shift and "unequal" in unequal.summary()


def test_auto_symmetries_are_resolved_on_the_training_split_and_recorded(tmp_path: Path) -> None:
    recipe = load_recipe(ClassificationRecipe, "timeseries", "classification")
    assert recipe.data.augment.circular_shift == "auto" and recipe.data.augment.mirror == "auto"
    task = ClassificationTask(augment=recipe.data.augment)
    splits = task.load_splits(recipe, source="aeon:ArrowHead")  # outlines drawn from a fixed start: none
    assert task.augment.circular_shift is False and splits.info["symmetries"]["plain"] > 0.8
    assert splits.info["augment"]["circular_shift"] is False


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


def _panel_bench():
    spec = importlib.util.spec_from_file_location("timeseries_bench", ROOT / "apps/bench/timeseries.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_holdout_scores_on_part_of_the_training_split_never_test(tmp_path: Path) -> None:
    """`--panel --holdout F` (development): both contenders train on part of the TRAINING split and are
    scored on the rest, stratified; every held-out series is a training series (none from test)."""
    from panformer.timeseries.data import load_split

    bench = _panel_bench()
    source = bench.holdout_source("JapaneseVowels", 0.3, tmp_path)  # multivariate, of varying length
    train, test = load_split("aeon:JapaneseVowels", "train"), load_split("aeon:JapaneseVowels", "test")
    kept, held = load_split(source, "train"), load_split(source, "test")
    assert len(kept.series) + len(held.series) == len(train.series)
    assert abs(len(held.series) - 0.3 * len(train.series)) <= len(set(train.labels))
    assert set(held.labels) == set(train.labels)
    known = {s.tobytes(): label for s, label in zip(train.series, train.labels, strict=True)}
    assert all(known.get(s.tobytes()) == label for s, label in zip(held.series + kept.series,
                                                                    [*held.labels, *kept.labels], strict=True))
    assert not {s.tobytes() for s in test.series} & {s.tobytes() for s in held.series}


def test_further_holdout_splits_are_other_draws_of_the_training_split(tmp_path: Path) -> None:
    """`--holdout-splits K`: split k > 0 holds out other training series than the fixed development split."""
    from panformer.timeseries.data import load_split

    bench = _panel_bench()
    (tmp_path / "0").mkdir(), (tmp_path / "1").mkdir()
    first = load_split(bench.holdout_source("GunPoint", 0.3, tmp_path / "0"), "test")
    second = load_split(bench.holdout_source("GunPoint", 0.3, tmp_path / "1", split=1), "test")
    train = {s.tobytes() for s in load_split("aeon:GunPoint", "train").series}
    held = [{s.tobytes() for s in part.series} for part in (first, second)]
    assert len(held[0]) == len(held[1]) and held[0] != held[1]
    assert held[0] <= train and held[1] <= train


def test_panel_bench_keeps_minirocket_threads_from_slowing_later_training() -> None:
    """In one `--panel` process MiniRocket (numba's OpenMP pool) runs between datasets; its pool must not leave
    torch's later convolutions running on a second, spinning thread (that doubled CPU seconds and slowed the
    next dataset's training many times over)."""
    code = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("timeseries_bench", {str(ROOT / "apps/bench/timeseries.py")!r})
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)
import numpy as np, torch
from aeon.classification.convolution_based import MiniRocketClassifier
MiniRocketClassifier(random_state=0).fit(np.random.randn(20, 1, 50).astype(np.float32), np.arange(20) % 2)
process, thread = time.process_time(), time.thread_time()
for _ in range(100):
    torch.nn.functional.conv1d(torch.randn(16, 16, 400), torch.randn(16, 16, 9)).sum()
print(time.process_time() - process, time.thread_time() - thread)
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    process, main_thread = (float(v) for v in out.stdout.split()[-2:])
    assert process < 1.5 * main_thread + 0.05, out.stdout
