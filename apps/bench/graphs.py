"""Graphs benchmark: our models next to torch_geometric baselines and simple heuristics, on the same splits.

- node classification (Karate club, a synthetic block model), graph classification (one vs two cycles) and
  graph regression (triangles): our GPS transformer (shared_attention) next to PyG's GCN, GIN, GAT and
  GPSConv, all trained by the same engine with the same recipe budget (epochs, lr, batch) and splits;
- dynamic link prediction on the synthetic temporal graph: Todyformer-style model next to the recency
  (most-recent-neighbour) and popularity heuristics, scored on the same candidates (MRR, 20 negatives);
- intrusion detection on synthetic NetFlow: the flow graph with and without host attention, next to
  flow-features-only scoring;
- image classification on scikit-learn's digits: SAG-ViT next to the bare CNN trunk and a plain ViT.

Selection on validation, test scored once; mean ± std over seeds (model initialisation and data order; the
splits stay fixed).

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/graphs.py --seeds 2 --out apps/bench/results/graphs-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.graphs.domain import GraphsDomain

DOMAIN = GraphsDomain()


def baseline(name: str, dim: int, depth: int, dropout: float) -> str:
    return f"model={{name: {name}, dim: {dim}, depth: {depth}, dropout: {dropout}}}"


# (title, recipe, metric, {row label: overrides}); baselines get the recipe's width, depth and dropout.
STATIC = [
    ("Karate club (pyg:KarateClub), node classification", "karate", "accuracy", 32, 2, 0.3),
    ("Block model (synthetic:sbm, 400 nodes), node classification", "sbm", "accuracy", 48, 2, 0.2),
    ("One vs two cycles (synthetic:cycles), graph classification", "demo", "accuracy", 32, 2, 0.0),
    ("Triangles per node (synthetic:triangles), graph regression, MAE", "triangles", "mae", 32, 2, 0.0),
]
STATIC_MODELS = ["gps", "gcn", "gin", "gat", "pyg-gps"]
LABELS = {"gps": "ours: GPS (shared_attention)", "gcn": "PyG GCN", "gin": "PyG GIN", "gat": "PyG GAT",
          "pyg-gps": "PyG GPSConv"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fit(recipe: str, overrides: list[str], seed: int) -> tuple[dict[str, float], float]:
    loaded = load_recipe(DOMAIN.recipe_type_for, "graphs", recipe,
                         overrides=[*overrides, f"train.seed={seed}", "train.device=cpu"])
    with TemporaryDirectory() as tmp:
        result = Trainer(DOMAIN, loaded, run_dir=Path(tmp) / "run").fit()
    return result.test_metrics, result.seconds


def over_seeds(recipe: str, overrides: list[str], seeds: int) -> tuple[list[dict[str, float]], float]:
    runs = [fit(recipe, overrides, seed) for seed in range(seeds)]
    return [m for m, _ in runs], statistics.fmean(s for _, s in runs)


def cell(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/graphs-cpu.md"))
    parser.add_argument("--skip-images", action="store_true", help="leave out the digits comparison (slowest)")
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [
        "# Graphs: our models next to PyG baselines and heuristics, on the same splits",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python apps/bench/graphs.py "
        f"--seeds {args.seeds}`  ",
        f"Hardware: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores visible, "
        f"shared with other jobs during the run; torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
        "Test metrics, mean ± std over seeds; selection on validation.",
        "",
    ]
    for title, recipe, metric, dim, depth, dropout in STATIC:
        lines += [f"## {title}", "", f"| model | test {metric} | mean train time (s) |", "|---|---|---|"]
        for model in STATIC_MODELS:
            overrides = [] if model == "gps" else [baseline(model, dim, depth, dropout)]
            runs, seconds = over_seeds(recipe, overrides, args.seeds)
            lines.append(f"| {LABELS[model]} | {cell(runs, metric)} | {seconds:.1f} |")
            print(lines[-1], flush=True)
        lines.append("")

    runs, seconds = over_seeds("temporal-link", [], args.seeds)
    lines += ["## Dynamic link prediction (synthetic:temporal), MRR against 20 negatives (10 historical)", "",
              "| model | test MRR | test Hits@10 | mean train time (s) |", "|---|---|---|---|",
              f"| ours: Todyformer-style (GIN patches + shared_attention) | {cell(runs, 'mrr')} | "
              f"{cell(runs, 'hits10')} | {seconds:.1f} |",
              f"| recency (most recent neighbour first) | {cell(runs, 'mrr_recency')} | | |",
              f"| popularity (highest degree so far first) | {cell(runs, 'mrr_popularity')} | | |", ""]
    print(lines[-4:], flush=True)

    lines += ["## Intrusion detection (synthetic:flows, NF-UNSW-NB15-v3 columns), per-flow scores", "",
              "| model | macro F1 | attack F1 | PR-AUC | ROC-AUC | mean train time (s) |", "|---|---|---|---|---|---|"]
    for label, overrides in [("ours: flow graph, GINEConv + host attention", []),
                             ("flow graph, GINEConv only (no attention)", ["model.attention=false"]),
                             ("flow features only (no host graph)", ["model.use_hosts=false"])]:
        runs, seconds = over_seeds("flows", overrides, args.seeds)
        lines.append(f"| {label} | {cell(runs, 'macro_f1')} | {cell(runs, 'f1')} | {cell(runs, 'pr_auc')} | "
                     f"{cell(runs, 'roc_auc')} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    lines.append("")

    if not args.skip_images:
        lines += ["## Digits (sklearn:digits, 8x8 upscaled to 32x32), image classification", "",
                  "| model | test accuracy | mean train time (s) |", "|---|---|---|"]
        for label, overrides in [("ours: SAG-ViT (ResNet-18 patches, GATConv, shared_attention encoder)", []),
                                 ("bare CNN (the same ResNet-18 trunk, pooled)", ["model={name: cnn}"]),
                                 ("plain ViT (pixel patches, shared_attention encoder)", ["model={name: vit}"])]:
            runs, seconds = over_seeds("digits-sagvit", overrides, args.seeds)
            lines.append(f"| {label} | {cell(runs, 'accuracy')} | {seconds:.1f} |")
            print(lines[-1], flush=True)
        lines.append("")
    lines.append(f"Total wall time: {time.perf_counter() - started:.0f} s.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
