"""Forecasting panel: our forecaster next to seasonal naive and ETS on the same test windows.

Each dataset trains one recipe (selection on validation MASE, test scored once); the two statistical
baselines (`panformer.timeseries.baselines`, the ones `evaluate` prints) are fitted at every test window
on the whole known past of each series. Besides aeon's Airline and Uschange, two public CSVs that ship
inside statsmodels are read as a user would give them, with the default `forecast` recipe (season from
the time index): macrodata (split year/quarter columns, 12 variables) and sunspots (yearly).

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/forecasting_panel.py --out apps/bench/results/forecasting-panel-cpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.timeseries.baselines import baseline_metrics
from panformer.timeseries.domain import TimeSeriesDomain
from panformer.timeseries.forecasting import ForecastingRecipe


def statsmodels_csv(name: str) -> str:
    import statsmodels.datasets

    return str(Path(statsmodels.datasets.__file__).parent / name / f"{name}.csv")


# Panel row -> (recipe, data source or None for the recipe's own). No setting is tuned on test.
PANEL = {
    "Airline": ("forecast-airline", None),
    "Uschange": ("forecast-uschange", None),
    "macrodata": ("forecast", statsmodels_csv("macrodata")),
    "sunspots": ("forecast", statsmodels_csv("sunspots")),
}


def run(name: str, seeds: int) -> list[str]:
    recipe_name, source = PANEL[name]
    domain = TimeSeriesDomain()
    mase, coverage, seconds = [], [], []
    for seed in range(seeds):
        overrides = [f"train.seed={seed}", "train.device=cpu", *([f"data.source={source}"] if source else [])]
        recipe = load_recipe(ForecastingRecipe, "timeseries", recipe_name, overrides=overrides)
        with TemporaryDirectory() as tmp:
            result = Trainer(domain, recipe, run_dir=Path(tmp) / "run").fit()
        mase.append(result.test_metrics["mase"])
        coverage.append(result.test_metrics["coverage"])
        seconds.append(result.seconds)
    splits = domain.task(recipe).load_splits(recipe)
    info, quantiles = splits.info, recipe.model.quantiles
    started = time.perf_counter()
    baselines = baseline_metrics(splits.test, season=info["season"], horizon=info["horizon"],
                                 level=quantiles[-1] - quantiles[0])
    baseline_seconds = time.perf_counter() - started
    windows = len(splits.test) * len(info["variables"])
    return [
        name, recipe_name, f"{info['season']} ({info['season_from']})", f"{info['horizon']}", f"{windows}",
        fmt(mase), f"{baselines['seasonal_naive']['mase']:.3f}", f"{baselines['ets']['mase']:.3f}",
        fmt(coverage), f"{baselines['seasonal_naive']['coverage']:.3f}", f"{baselines['ets']['coverage']:.3f}",
        f"{statistics.fmean(seconds):.0f} / {baseline_seconds:.0f}",
    ]


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(PANEL), choices=list(PANEL))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    rows = []
    for name in args.datasets:
        rows.append(run(name, args.seeds))
        print(" | ".join(rows[-1]), flush=True)
    header = ["data", "recipe", "season (from)", "H", "test windows x variables", "MASE ours", "MASE seasonal naive",
              "MASE ETS", "coverage ours", "coverage seasonal naive", "coverage ETS", "train / baselines (s)"]
    lines = [
        "# Forecasting panel: test MASE and 80% interval coverage, ours vs seasonal naive and ETS",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python apps/bench/forecasting_panel.py --seeds {args.seeds}`  ",
        f"Hardware: CPU {cpu_name()} ({os.cpu_count()} cores, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.__version__}; "
        f"total {time.perf_counter() - started:.0f} s wall clock.  ",
        "Ours: the recipe trained with seeds 0..N-1 (mean ± std when N > 1), checkpoint selected on validation "
        "MASE, test scored once; its interval is the 0.1-0.9 quantile pair. Baselines on the same test windows, "
        "fitted at each window on the whole past of the series: seasonal naive (Gaussian interval from its "
        "in-sample residuals) and statsmodels' ETS (additive errors, trend and season chosen by AICc, exact "
        "80% interval). MASE < 1 beats in-sample seasonal naive; nominal coverage is 0.80.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
