"""Time-series benchmark: our models next to strong simple baselines, side by side in one run.

Classification: our three classifiers next to MiniRocket. Forecasting: our forecasters next to
seasonal naive on the same test windows.

Each of our models trains with a fixed recipe (no tuning on test), selects its checkpoint on a validation
split carved from the training data, and is scored once on the test split; repeated over seeds, the
table shows mean ± std. MiniRocket (aeon) is the strong non-deep baseline, fitted on the whole training
split as its authors do. Variable-length datasets are right-padded with zeros for MiniRocket only.

    .venv/bin/python apps/bench/timeseries.py --seeds 3 --out apps/bench/results/timeseries-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.timeseries.classification import ClassificationRecipe
from panformer.timeseries.data import load_split
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

    train, test = load_split(f"aeon:{dataset}", "train"), load_split(f"aeon:{dataset}", "test")
    length = max(train.max_length, test.max_length, 9)  # MiniRocket's kernels span 9 steps
    x_train, x_test = padded(train.series, length), padded(test.series, length)
    accuracies, seconds = [], []
    for seed in range(seeds):
        started = time.perf_counter()
        clf = MiniRocketClassifier(random_state=seed).fit(x_train, train.labels)
        accuracies.append(float((clf.predict(x_test) == test.labels).mean()))
        seconds.append(time.perf_counter() - started)
    return accuracies, seconds


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--forecast", nargs="*", default=FORECAST_RECIPES, help="forecasting recipes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

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
