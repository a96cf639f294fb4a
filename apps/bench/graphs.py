"""Graphs benchmark: our models next to torch_geometric baselines and simple heuristics, on the same splits.

- node classification (Karate club, a synthetic block model), graph classification (one vs two cycles) and
  graph regression (triangles): our GPS transformer (shared_attention) next to PyG's GCN, GIN, GAT and
  GPSConv, all trained by the same engine with the same recipe budget (epochs, lr, batch) and splits;
- dynamic link prediction on the synthetic temporal graph: Todyformer-style model next to the recency
  (most-recent-neighbour) and popularity heuristics, scored on the same candidates (MRR, 20 negatives);
- intrusion detection on synthetic NetFlow: self-supervised anomaly scores (masked flow reconstruction over
  the host graph), the supervised classifier with and without that pretraining (also with one labelled
  training window), ablations (no host attention, no host graph), next to scikit-learn's IsolationForest;
- image classification on scikit-learn's digits: SAG-ViT next to the bare CNN trunk and a plain ViT.

Selection on validation, test scored once; mean ± std over seeds (model initialisation and data order; the
splits stay fixed, except on the Karate club, whose 11 test nodes are redrawn `--karate-splits` times).

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/graphs.py --seeds 2 --karate-splits 20 --out apps/bench/results/graphs-cpu.md
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
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.graphs.domain import GraphsDomain
from panformer.graphs.flows import isolation_forest_scores

DOMAIN = GraphsDomain()


def baseline(name: str, recipe: str) -> str:
    """The override that swaps the recipe's model for a PyG baseline of the same width, depth and dropout."""
    model = load_recipe(DOMAIN.recipe_type_for, "graphs", recipe).model
    return f"model={{name: {name}, dim: {model.dim}, depth: {model.depth}, dropout: {model.dropout}}}"


# (title, recipe, metric); baselines get the recipe's width, depth and dropout (and its whole training budget).
STATIC = [
    ("Karate club (pyg:KarateClub), node classification", "karate", "accuracy"),
    ("Block model (synthetic:sbm, 400 nodes), node classification", "sbm", "accuracy"),
    ("One vs two cycles (synthetic:cycles), graph classification", "demo", "accuracy"),
    ("Triangles per node (synthetic:triangles), graph regression, MAE", "triangles", "mae"),
]
STATIC_MODELS = ["gps", "gcn", "gin", "gat", "pyg-gps"]
LABELS = {"gps": "ours: GPS (shared_attention)", "gcn": "PyG GCN", "gin": "PyG GIN", "gat": "PyG GAT",
          "pyg-gps": "PyG GPSConv"}



def fit(recipe: str, overrides: list[str], seed: int) -> tuple[dict[str, float], float]:
    loaded = load_recipe(DOMAIN.recipe_type_for, "graphs", recipe,
                         overrides=[*overrides, f"train.seed={seed}", "train.device=cpu"])
    with TemporaryDirectory() as tmp:
        result = Trainer(DOMAIN, loaded, run_dir=Path(tmp) / "run").fit()
    return result.test_metrics, result.seconds


def over_seeds(recipe: str, overrides: list[str], seeds: int, *, splits: int = 1) -> tuple[list[dict[str, float]], float]:
    """Test metrics of every (split, seed) run and the mean training time; split 0 is the recipe's own."""
    runs = [fit(recipe, [*overrides, f"data.split_seed={split}"] if split else overrides, seed)
            for split in range(splits) for seed in range(seeds)]
    return [m for m, _ in runs], statistics.fmean(s for _, s in runs)


def isolation_forest(seeds: int, *, host_statistics_too: bool) -> list[dict[str, float]]:
    loaded = load_recipe(DOMAIN.recipe_type_for, "graphs", "flows", overrides=["train.device=cpu"])
    splits = DOMAIN.task(loaded).load_splits(loaded)
    return [isolation_forest_scores(splits, host_statistics_too=host_statistics_too, seed=seed)
            for seed in range(seeds)]


def paired_gap(ours: list[dict[str, float]], other: list[dict[str, float]], key: str) -> str:
    """Mean and standard error of ours minus other, paired by (split, seed)."""
    gaps = [a[key] - b[key] for a, b in zip(ours, other, strict=True)]
    error = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
    return f"{statistics.fmean(gaps):+.4f} ± {error:.4f}"


def cell(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/graphs-cpu.md"))
    parser.add_argument("--karate-splits", type=int, default=20, help="node splits of the Karate club (11 test nodes)")
    parser.add_argument("--skip-images", action="store_true", help="leave out the digits comparison (slowest)")
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [
        "# Graphs: our models next to PyG baselines and heuristics, on the same splits",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python apps/bench/graphs.py "
        f"--seeds {args.seeds} --karate-splits {args.karate_splits}`  ",
        f"Hardware: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores visible, "
        f"shared with other jobs during the run; torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
        "Test metrics, mean ± std over seeds (and node splits); selection on validation.",
        "",
    ]
    for title, recipe, metric in STATIC:
        splits = args.karate_splits if recipe == "karate" else 1
        note = f" ({splits} node splits x {args.seeds} seeds)" if splits > 1 else ""
        lines += [f"## {title}{note}", "",
                  f"| model | test {metric} | ours minus this model, paired (± s.e.) | mean train time (s) |",
                  "|---|---|---|---|"]
        ours: list[dict[str, float]] = []
        for model in STATIC_MODELS:
            overrides = [] if model == "gps" else [baseline(model, recipe)]
            runs, seconds = over_seeds(recipe, overrides, args.seeds, splits=splits)
            ours = ours or runs
            gap = "" if model == "gps" else paired_gap(ours, runs, metric)
            lines.append(f"| {LABELS[model]} | {cell(runs, metric)} | {gap} | {seconds:.1f} |")
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
              "Thresholds: 0.5 for classifiers; for anomaly scores the best-F1 threshold on validation.", "",
              "| model | labels used for | macro F1 | attack F1 | PR-AUC | ROC-AUC | mean train time (s) |",
              "|---|---|---|---|---|---|---|"]
    one_window = ["data.label_fraction=0.15"]  # 1 of the 8 training windows
    for label, labels, recipe, overrides in [
        ("ours, self-supervised: masked flow reconstruction, score = reconstruction error of the hosts' counts", "threshold only",
         "flows-anomaly", []),
        ("ours, self-supervised, trained on benign flows only (GraphIDS' setting)", "threshold, benign filter",
         "flows-anomaly", ["data.train_on=benign"]),
        ("ours, classifier: GINEConv + host attention", "training", "flows", []),
        ("ours, classifier after 15 epochs of masked-reconstruction pretraining", "training", "flows",
         ["pretrain.epochs=15"]),
        ("ours, classifier, 1 of 8 training windows labelled, pretrained on all 8", "1 window", "flows",
         [*one_window, "pretrain.epochs=15"]),
        ("ours, classifier, 1 of 8 training windows labelled, no pretraining", "1 window", "flows", one_window),
        ("the same, 4x the epochs (60)", "1 window", "flows", [*one_window, "train.epochs=60"]),
        ("classifier, GINEConv only (no attention)", "training", "flows", ["model.attention=false"]),
        ("classifier, flow features only (no host graph)", "training", "flows", ["model.use_hosts=false"]),
    ]:
        runs, seconds = over_seeds(recipe, overrides, args.seeds)
        lines.append(f"| {label} | {labels} | {cell(runs, 'macro_f1')} | {cell(runs, 'f1')} | {cell(runs, 'pr_auc')} | "
                     f"{cell(runs, 'roc_auc')} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    for label, host_statistics_too in [("IsolationForest (scikit-learn) on the flow features", False),
                                       ("IsolationForest on the flow features + both hosts' fan-out/fan-in", True)]:
        runs = isolation_forest(args.seeds, host_statistics_too=host_statistics_too)
        lines.append(f"| {label} | threshold only | {cell(runs, 'macro_f1')} | {cell(runs, 'f1')} | "
                     f"{cell(runs, 'pr_auc')} | {cell(runs, 'roc_auc')} | |")
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
