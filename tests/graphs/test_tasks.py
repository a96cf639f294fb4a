"""Every task trains in-process on tiny offline data and learns what a trivial model cannot."""

from __future__ import annotations

import pandas as pd
import torch

from panformer.engine.cli import load_model
from tests.graphs.helpers import DOMAIN, train

TINY_GPS = {"name": "gps", "dim": 16, "depth": 2, "num_heads": 2, "dropout": 0.0}


def test_node_classification_full_graph_and_sampled(tmp_path):
    data = {"source": "synthetic:sbm", "synthetic_size": 200, "lap_pe": 4, "walk_steps": 4, "max_distance": 4,
            "steps_per_epoch": 5}
    full = train({"task": "node-classification", "data": data, "model": TINY_GPS,
                  "train": {"epochs": 6, "batch_size": 1, "lr": 0.01}}, tmp_path / "full")
    assert full.test_metrics["accuracy"] > 0.7  # 4 communities: chance is 0.25
    sampled = train({"task": "node-classification", "data": {**data, "sampling": {"fanout": [5, 3]}},
                     "model": {**TINY_GPS, "attention": "sparse"}, "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}},
                    tmp_path / "sampled")
    assert sampled.test_metrics["accuracy"] > 0.5


def test_cycles_need_more_than_message_passing(tmp_path):
    data = {"source": "synthetic:cycles", "synthetic_size": 120, "lap_pe": 2, "walk_steps": 4, "max_distance": 12}
    gps = train({"task": "graph-classification", "data": data, "model": TINY_GPS,
                 "train": {"epochs": 25, "batch_size": 24, "lr": 0.005}}, tmp_path / "gps")
    gin = train({"task": "graph-classification", "data": data, "model": {"name": "gin", "dim": 16, "depth": 2},
                 "train": {"epochs": 3, "batch_size": 24, "lr": 0.005}}, tmp_path / "gin")
    assert gps.test_metrics["accuracy"] >= 0.9
    assert gin.test_metrics["accuracy"] <= 0.6  # 1-WL cannot tell one cycle from two


def test_graph_regression_counts_triangles(tmp_path):
    result = train({"task": "graph-regression",
                    "data": {"source": "synthetic:triangles", "synthetic_size": 150, "lap_pe": 0, "walk_steps": 4,
                             "max_distance": 0},
                    "model": {**TINY_GPS, "attention": "none"}, "train": {"epochs": 10, "batch_size": 16, "lr": 0.01}},
                   tmp_path / "tri")
    assert result.test_metrics["r2"] > 0.5


def test_sagvit_on_digits_trains_and_predicts_images(tmp_path):
    result = train({"task": "image-classification", "data": {"source": "sklearn:digits", "max_images": 300},
                    "model": {"name": "sagvit", "dim": 16, "depth": 1, "num_heads": 2, "dropout": 0.0},
                    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003}}, tmp_path / "digits")
    assert result.test_metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1
    loaded = load_model(DOMAIN, tmp_path / "digits", torch.device("cpu"))
    images = loaded.task.demo_input(loaded.recipe, loaded.info, tmp_path)
    out = tmp_path / "digits.csv"
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=images, output_path=out,
                        device=torch.device("cpu"))
    table = pd.read_csv(out)
    assert len(table) == 8 and set(table["predicted"].astype(str)) <= set(loaded.info["classes"])


def test_link_prediction_beats_recency(tmp_path):
    result = train({"task": "link-prediction",
                    "data": {"source": "synthetic:temporal", "synthetic_nodes": 60, "synthetic_events": 2500,
                             "history": 8, "patch": 4, "eval_negatives": 10},
                    "model": {"name": "todyformer", "dim": 32, "depth": 1, "num_heads": 2, "dropout": 0.0},
                    "train": {"epochs": 4, "batch_size": 64, "lr": 0.005}}, tmp_path / "link")
    test = result.test_metrics
    assert test["mrr"] > test["mrr_recency"] + 0.04, test  # measured: 0.59 vs 0.49
    loaded = load_model(DOMAIN, tmp_path / "link", torch.device("cpu"))
    queries = loaded.task.demo_input(loaded.recipe, loaded.info, tmp_path)
    out = tmp_path / "links.csv"
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=queries, output_path=out,
                        device=torch.device("cpu"))
    table = pd.read_csv(out)
    assert len(table) == 5 * loaded.recipe.data.top_k and (table.groupby("src")["rank"].min() == 1).all()


def test_intrusion_detection_uses_the_host_graph(tmp_path):
    data = {"source": "synthetic:flows", "synthetic_flows": 4000, "window": 500}
    model = {"name": "flowgraph", "dim": 16, "depth": 1, "num_heads": 2, "dropout": 0.0}
    graph = train({"task": "intrusion-detection", "data": data, "model": model,
                   "train": {"epochs": 12, "batch_size": 1, "lr": 0.005}}, tmp_path / "graph")
    alone = train({"task": "intrusion-detection", "data": data, "model": {**model, "use_hosts": False},
                   "train": {"epochs": 12, "batch_size": 1, "lr": 0.005}}, tmp_path / "alone")
    # Scans sized like normal traffic are only visible through the scanner's fan-out.
    assert graph.test_metrics["macro_f1"] > alone.test_metrics["macro_f1"] + 0.05
    assert graph.test_metrics["macro_f1"] > 0.85
    loaded = load_model(DOMAIN, tmp_path / "graph", torch.device("cpu"))
    flows = loaded.task.demo_input(loaded.recipe, loaded.info, tmp_path)
    out = tmp_path / "flows.csv"
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=flows, output_path=out,
                        device=torch.device("cpu"))
    table = pd.read_csv(out)
    assert len(table) == 500 and set(table["predicted"]) <= {0, 1}
