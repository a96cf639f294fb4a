"""Time-series benchmark: our models next to strong simple baselines, side by side in one run.

Classification: our three classifiers next to MiniRocket. Forecasting: our forecasters next to
seasonal naive on the same test windows. `--panel`: the default classification recipe (what `train`
runs without --recipe) on the panel of issue 20, next to MiniRocket and aeon's InceptionTime.

Each of our models trains with a fixed recipe (no tuning on test), selects its checkpoint on a validation
split carved from the training data (the panel's default recipe has none: it trains on the whole training
split with a fixed schedule, as InceptionTime does), and is scored once on the test split; repeated over seeds, the
table shows mean ± std. MiniRocket (aeon) is the strong non-deep baseline, fitted on the whole training
split as its authors do. Variable-length datasets are right-padded with zeros for MiniRocket only.

    .venv/bin/python apps/bench/timeseries.py --seeds 3 --out apps/bench/results/timeseries-cpu.md
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/timeseries.py --panel --seeds 3 --out panel.md
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/timeseries.py --panel --holdout 0.3 --set model.members=2

`--holdout F` is for development: it scores on a held-out part of each TRAINING split, never on test.

CPU seconds are the process's user + system CPU time (with OMP_NUM_THREADS=1 one core's worth), which
other jobs on a shared machine do not inflate; wall seconds are also shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

# Before aeon loads numba: MiniRocket's OpenMP pool would otherwise start one thread per core that keeps
# spinning after the fit, slowing (and adding CPU seconds to) the next dataset's training in this process.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import torch

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.timeseries.classification import ClassificationRecipe
from panformer.timeseries.data import load_split, stratified_split
from panformer.timeseries.domain import TimeSeriesDomain

# Dataset -> (base recipe, overrides). Short series get shorter patches; nothing is tuned on test.
DATASETS = {
    "BasicMotions": ("basicmotions", []),
    "JapaneseVowels": ("japanesevowels", []),
    "ArrowHead": ("basicmotions", ["data.source=aeon:ArrowHead", "train.batch_size=16"]),
    "ItalyPowerDemand": ("basicmotions", ["data.source=aeon:ItalyPowerDemand", "model.patch=4",
                                          "model.stride=2", "train.batch_size=16"]),
}
FORECAST_RECIPES = ["forecast-airline", "forecast-airline-ili", "forecast-uschange"]
MODELS = {
    "transformer": [],
    "vsformer": ["model.name=vsformer"],
    "mptsnet": ["model.name=mptsnet"],
}


def recipe_for(dataset: str, model: str, seed: int) -> ClassificationRecipe:
    base, overrides = DATASETS[dataset]
    recipe = load_recipe(ClassificationRecipe, "timeseries", base, overrides=[*overrides, f"train.seed={seed}",
                                                                             "train.device=cpu"])
    raw = recipe.model_dump()
    raw["model"] = {"name": model, **{k: v for k, v in raw["model"].items() if k in ("dim", "num_heads", "dropout")}}
    if model != "mptsnet":
        raw["model"] |= {"patch": recipe.model.patch, "stride": recipe.model.stride, "depth": recipe.model.depth}
    return ClassificationRecipe.model_validate(raw)


def run_ours(dataset: str, model: str, seeds: int) -> tuple[list[float], list[float]]:
    accuracies, seconds = [], []
    for seed in range(seeds):
        with TemporaryDirectory() as tmp:
            result = Trainer(TimeSeriesDomain(), recipe_for(dataset, model, seed), run_dir=Path(tmp) / "run").fit()
        accuracies.append(result.test_metrics["accuracy"])
        seconds.append(result.seconds)
    return accuracies, seconds


def padded(series: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(series), series[0].shape[0], length), dtype=np.float32)
    for i, s in enumerate(series):
        out[i, :, : s.shape[1]] = np.nan_to_num(s)
    return out


def run_minirocket(dataset: str, seeds: int) -> tuple[list[float], list[float]]:
    from aeon.classification.convolution_based import MiniRocketClassifier

    runs = run_aeon(dataset, seeds, lambda seed: MiniRocketClassifier(random_state=seed))
    return runs.accuracy, runs.wall


def run_forecasting(recipe_name: str, seeds: int) -> list[str]:
    """Test MASE and sMAPE over seeds for our model; seasonal naive on the same test windows."""
    from panformer.timeseries.forecast_metrics import seasonal_naive_metrics
    from panformer.timeseries.forecasting import ForecastingRecipe

    domain = TimeSeriesDomain()
    mase, smape, seconds = [], [], []
    for seed in range(seeds):
        recipe = load_recipe(ForecastingRecipe, "timeseries", recipe_name,
                             overrides=[f"train.seed={seed}", "train.device=cpu"])
        with TemporaryDirectory() as tmp:
            result = Trainer(domain, recipe, run_dir=Path(tmp) / "run").fit()
        mase.append(result.test_metrics["mase"])
        smape.append(result.test_metrics["smape"])
        seconds.append(result.seconds)
    splits = domain.task(recipe).load_splits(recipe)
    naive = seasonal_naive_metrics(splits.test, season=splits.info["season"], horizon=splits.info["horizon"])
    return [recipe_name, recipe.data.source, recipe.model.name, fmt(mase), f"{naive['mase']:.4f}",
            fmt(smape), f"{naive['smape']:.4f}", f"{statistics.fmean(seconds):.0f}"]


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


# Issue 20's panel: small and larger univariate UCR sets, two multivariate UEA sets; all bundled with aeon.
PANEL = ["ArrowHead", "GunPoint", "OSULeaf", "ACSF1", "ItalyPowerDemand", "BasicMotions", "JapaneseVowels"]


@dataclass
class Runs:
    """Test accuracy, wall and CPU seconds of one contender on one dataset, one entry per seed."""

    accuracy: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def extend(self, other: Runs) -> None:
        self.accuracy += other.accuracy
        self.wall += other.wall
        self.cpu += other.cpu

    def cell(self) -> str:
        return f"{fmt(self.accuracy)} ({statistics.fmean(self.wall):.0f} s, {statistics.fmean(self.cpu):.0f} CPU s)"


def write_ts(path: Path, series: list[np.ndarray], labels: np.ndarray) -> None:
    """A UEA/UCR `.ts` file of labelled series (each (C, T_i); NaN written as '?', the format's missing value)."""
    equal = len({s.shape[1] for s in series}) == 1
    header = [f"@problemName {path.stem}", "@timeStamps false", "@missing true",
              f"@univariate {str(series[0].shape[0] == 1).lower()}", f"@dimensions {series[0].shape[0]}",
              f"@equalLength {str(equal).lower()}", *([f"@seriesLength {series[0].shape[1]}"] if equal else []),
              f"@classLabel true {' '.join(sorted(set(labels.tolist())))}", "@data"]
    rows = [":".join(",".join("?" if np.isnan(v) else repr(float(v)) for v in channel) for channel in s) + f":{label}"
            for s, label in zip(series, labels, strict=True)]
    path.write_text("\n".join(header + rows) + "\n")


def holdout_source(dataset: str, fraction: float, folder: Path, *, split: int = 0) -> str:
    """Development data: a stratified `fraction` of the dataset's TRAINING split becomes the scored set.

    `split` numbers the draw: 0 is the fixed development split, others are further independent draws.

    The model trains on the rest (with its recipe's validation split, if any); the test split is never read,
    so design decisions made on these scores do not see test.
    """
    train = load_split(f"aeon:{dataset}", "train")
    kept, held = stratified_split(train.labels, fraction=fraction, seed=HOLDOUT_SEED + split)
    for split, idx in (("TRAIN", kept), ("TEST", held)):
        write_ts(folder / f"{dataset}_{split}.ts", [train.series[i] for i in idx], train.labels[idx])
    return str(folder)


HOLDOUT_SEED = 1234  # the development splits' draws, fixed for every dataset apart from the seeds of the runs


def run_default_recipe(dataset: str, seeds: int, overrides: list[str], source: str | None = None) -> Runs:
    """The `classification` recipe as `train --data aeon:<dataset>` runs it."""
    runs = Runs()
    for seed in range(seeds):
        recipe = load_recipe(ClassificationRecipe, "timeseries", "classification", overrides=[
            f"data.source={source or f'aeon:{dataset}'}", f"train.seed={seed}", "train.device=cpu", *overrides])
        cpu = time.process_time()
        with TemporaryDirectory() as tmp:
            result = Trainer(TimeSeriesDomain(), recipe, run_dir=Path(tmp) / "run").fit()
        runs.cpu.append(time.process_time() - cpu)
        chosen = (f"validation accuracy {result.val_metrics['accuracy']:.4f} at" if "accuracy" in result.val_metrics
                  else "no validation split: kept")
        print(f"{dataset} seed {seed}: {chosen} epoch {result.best_epoch + 1} of {recipe.train.epochs}, "
              f"{runs.cpu[-1]:.0f} CPU s", flush=True)
        runs.accuracy.append(result.test_metrics["accuracy"])
        runs.wall.append(result.seconds)
    return runs


def run_aeon(dataset: str, seeds: int, make_classifier, source: str | None = None) -> Runs:
    """An aeon classifier fitted on the whole training split (as its authors do), scored on test."""
    source = source or f"aeon:{dataset}"
    train, test = load_split(source, "train"), load_split(source, "test")
    length = max(train.max_length, test.max_length, 9)  # MiniRocket's kernels span 9 steps
    x_train, x_test = padded(train.series, length), padded(test.series, length)
    runs = Runs()
    for seed in range(seeds):
        wall, cpu = time.perf_counter(), time.process_time()
        clf = make_classifier(seed).fit(x_train, train.labels)
        runs.accuracy.append(float((clf.predict(x_test) == test.labels).mean()))
        runs.wall.append(time.perf_counter() - wall)
        runs.cpu.append(time.process_time() - cpu)
    return runs


def verdict(ours: Runs, rocket: Runs) -> str:
    """Ahead of MiniRocket, tied, within one standard deviation (the larger of the two), or behind by how much."""
    gap = statistics.fmean(rocket.accuracy) - statistics.fmean(ours.accuracy)
    spread = max(statistics.pstdev(ours.accuracy), statistics.pstdev(rocket.accuracy))
    if gap < 0:
        return "ahead"
    if gap == 0:
        return "tied"
    return "within 1 std" if gap <= spread else f"behind by {gap:.4f}"


def run_panel(args: argparse.Namespace) -> str:
    from aeon.classification.convolution_based import MiniRocketClassifier

    inception = importlib.util.find_spec("tensorflow") is not None  # aeon's deep models need it
    rocket_seeds = args.baseline_seeds or args.seeds
    splits = f" x {args.holdout_splits} held-out splits" if args.holdout and args.holdout_splits > 1 else ""
    header = ["dataset", f"ours: default recipe ({args.seeds} seeds{splits})",
              f"MiniRocket, aeon ({rocket_seeds} seeds{splits})", "InceptionTime, aeon", "ours vs MiniRocket"]
    rows = []
    for dataset in args.datasets:
        ours, rocket = Runs(), Runs()
        # Development: each held-out split scores every seed of both contenders; the cells pool them all.
        for split in range(args.holdout_splits if args.holdout else 1):
            with TemporaryDirectory() as tmp:
                source = holdout_source(dataset, args.holdout, Path(tmp), split=split) if args.holdout else None
                ours.extend(run_default_recipe(dataset, args.seeds, args.set, source))
                rocket.extend(run_aeon(dataset, rocket_seeds, lambda seed: MiniRocketClassifier(random_state=seed),
                                       source))
        if inception and not args.holdout:
            from aeon.classification.deep_learning import InceptionTimeClassifier

            incept = run_aeon(dataset, rocket_seeds, lambda seed: InceptionTimeClassifier(
                n_epochs=args.inception_epochs, random_state=seed)).cell()
        else:
            incept = "not run (development split)" if args.holdout else "not run (needs tensorflow)"
        rows.append([dataset, ours.cell(), rocket.cell(), incept, verdict(ours, rocket)])
        print(" | ".join(rows[-1]), flush=True)
    command = " ".join(["apps/bench/timeseries.py --panel", f"--datasets {' '.join(args.datasets)}",
                        f"--seeds {args.seeds}", *([f"--baseline-seeds {rocket_seeds}"] if args.baseline_seeds else []),
                        *([f"--set {' '.join(args.set)}"] if args.set else []),
                        *([f"--holdout {args.holdout}"] if args.holdout else []),
                        *([f"--holdout-splits {args.holdout_splits}"] if args.holdout and args.holdout_splits > 1 else [])])
    load = os.getloadavg()
    lines = [
        "# Time-series classification panel: " + (f"accuracy on a held-out {args.holdout:.0%} of each TRAINING "
                                                  "split (development; test not read)" if args.holdout
                                                  else "test accuracy") + ", mean ± std over seeds",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} .venv/bin/python {command}`  ",
        f"Hardware: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average at the "
        f"end {load[0]:.1f}), torch {torch.__version__}. Ours: the `classification` recipe (designed on held-out "
        "parts of the training splits, `--holdout`), trained on the whole training split with its fixed schedule, "
        "test scored once per seed. Each cell: accuracy (mean wall s, mean CPU s per seed). 'within 1 std': "
        "MiniRocket's mean minus ours is at most the larger of the two stds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", action="store_true", help="the default recipe on issue 20's panel vs aeon")
    parser.add_argument("--datasets", nargs="+", choices=sorted({*DATASETS, *PANEL}),
                        help=f"default: {' '.join(DATASETS)}; with --panel: {' '.join(PANEL)}")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--forecast", nargs="*", default=FORECAST_RECIPES, help="forecasting recipes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--baseline-seeds", type=int, help="--panel: seeds for the aeon baselines (default --seeds)")
    parser.add_argument("--inception-epochs", type=int, default=1500, help="--panel: aeon InceptionTime's epochs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="--panel: overrides of the default recipe (smoke tests; the table's command shows them)")
    parser.add_argument("--holdout", type=float, metavar="FRACTION",
                        help="--panel, for development: score on this stratified fraction of each TRAINING split "
                        "(both contenders train on the rest); the test split is never read")
    parser.add_argument("--holdout-splits", type=int, default=1, metavar="K",
                        help="--holdout: repeat on K independent held-out draws (cells pool K x seeds runs); one "
                        "small split saturates or ranks by one series")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.panel:
        args.datasets = args.datasets or PANEL
        text = run_panel(args)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return
    args.datasets = args.datasets or list(DATASETS)
    if unknown := sorted(set(args.datasets) - set(DATASETS)):
        parser.error(f"--datasets {' '.join(unknown)}: only with --panel; without it use {' '.join(DATASETS)}")

    header = ["dataset", *args.models, "MiniRocket (aeon)", "mean train time, ours (s)"]
    rows = []
    for dataset in args.datasets:
        cells, times = [], []
        for model in args.models:
            accuracies, seconds = run_ours(dataset, model, args.seeds)
            cells.append(fmt(accuracies))
            times.append(f"{model} {statistics.fmean(seconds):.0f}")
        rocket, rocket_seconds = run_minirocket(dataset, args.seeds)
        cells.append(f"{fmt(rocket)} ({statistics.fmean(rocket_seconds):.0f}s)")
        rows.append([dataset, *cells, ", ".join(times)])
        print(" | ".join(rows[-1]), flush=True)

    forecast_rows = []
    for recipe_name in args.forecast:
        forecast_rows.append(run_forecasting(recipe_name, args.seeds))
        print(" | ".join(forecast_rows[-1]), flush=True)

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Time-series classification: test accuracy, mean ± std over seeds",
        "",
        f"Command: `.venv/bin/python apps/bench/timeseries.py --seeds {args.seeds}`  ",
        f"Hardware: CPU ({cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"torch {torch.__version__}. "
        f"Seeds: {args.seeds}. Selection on a validation split of the training data; test scored once per seed.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "# Forecasting: test MASE and sMAPE, mean ± std over seeds, next to seasonal naive",
        "",
        "Same test windows for both (the last `horizon` steps of each series); selection on validation MASE.",
        "",
        "| recipe | data | model | MASE (ours) | MASE (seasonal naive) | sMAPE (ours) | sMAPE (seasonal naive) "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in forecast_rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
