"""Intrusion detection: host statistics, the masked-reconstruction objective, validation-chosen thresholds,
self-supervised anomaly scores, pretraining with few labels, and the IsolationForest baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from panformer.engine.cli import load_model
from panformer.graphs.flows import (
    DetectionMetrics,
    FlowGraphModel,
    best_f1_threshold,
    collate_windows,
    host_statistics,
    isolation_forest_scores,
    synthetic_flows,
    windows_of,
)
from tests.graphs.helpers import DOMAIN, train

DATA = {"source": "synthetic:flows", "synthetic_flows": 4000, "window": 500}
TINY = {"name": "flowgraph", "dim": 16, "depth": 1, "num_heads": 2, "dropout": 0.0}


def test_host_statistics_count_fan_out_and_fan_in():
    edges = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 2]])  # host 0 sends 3 flows to 2 peers
    stats = torch.expm1(host_statistics(edges, 3)).round()
    assert stats.tolist() == [[3, 0, 2, 0], [1, 2, 1, 1], [0, 2, 0, 2]]


def test_threshold_is_chosen_on_validation_and_kept_for_test():
    score, label = np.array([0.1, 0.2, 0.3, 0.8, 0.9]), np.array([0, 0, 0, 1, 1])
    assert best_f1_threshold(score, label) == 0.8
    assert best_f1_threshold(score, np.zeros(5, int)) > 0.9  # no attacks: nothing flagged
    threshold = torch.zeros(())
    val = DetectionMetrics(calibrate=True)
    val.update({"target": torch.tensor(label)}, (torch.tensor(score), threshold))
    assert val.compute()["macro_f1"] == 1.0 and float(threshold) == np.float32(0.8)
    test = DetectionMetrics()  # scores shift at test time: the validation threshold stays
    test.update({"target": torch.tensor([0, 1])}, (torch.tensor([0.85, 0.95]), threshold))
    assert test.compute()["accuracy"] == 0.5 and float(threshold) == np.float32(0.8)


def test_hidden_flows_are_scored_from_their_context_only():
    window = windows_of(synthetic_flows(flows=600, seed=1), ["IN_BYTES", "OUT_BYTES", "IN_PKTS"], 600)[0]
    batch = collate_windows([window])
    torch.manual_seed(0)
    model = FlowGraphModel(in_features=3, dim=16, depth=1, num_heads=2, dropout=0.0).eval()
    hidden = torch.zeros(600, dtype=torch.bool)
    hidden[:10] = True
    changed = dict(batch, features=batch["features"].clone())
    changed["features"][:10] *= 3  # the hidden flows' own features must not reach the model
    torch.testing.assert_close(model.encode(batch, hidden=hidden), model.encode(changed, hidden=hidden))
    scores = model.anomaly_scores(batch, mask_ratio=0.25)
    torch.testing.assert_close(scores, model.anomaly_scores(batch, mask_ratio=0.25))  # deterministic
    assert scores.shape == (600,) and torch.isfinite(scores).all()
    nll = model.hidden_nll(batch, mask_ratio=0.25)  # (E, F + 2 * 4): features, then both hosts' counts
    assert nll.shape == (600, 3 + 8)
    torch.testing.assert_close(scores, nll.mean(-1))
    model.anomaly_score = "hosts"
    torch.testing.assert_close(model.anomaly_scores(batch, mask_ratio=0.25), nll[:, 3:].mean(-1))


def test_anomaly_scores_find_attacks_without_labels(tmp_path):
    result = train({"task": "intrusion-detection", "data": DATA, "model": {**TINY, "objective": "reconstruct", "anomaly_score": "hosts"},
                    "train": {"epochs": 8, "batch_size": 1, "lr": 0.005}}, tmp_path / "anomaly")
    test = result.test_metrics
    # measured with the host-count score: ROC-AUC 0.95, PR-AUC 0.65 (0.85 / 0.28 when scored on all targets);
    # 10% of flows are attacks, so chance is 0.5 and 0.1
    assert test["roc_auc"] > 0.85 and test["pr_auc"] > 0.4, test
    loaded = load_model(DOMAIN, tmp_path / "anomaly", torch.device("cpu"))
    forest = isolation_forest_scores(loaded.task.load_splits(loaded.recipe), host_statistics_too=True)
    assert 0.5 < forest["roc_auc"] < 1 and 0 <= forest["macro_f1"] <= 1
    assert float(loaded.model.threshold) != 0  # chosen on validation, saved with the weights
    flows = loaded.task.demo_input(loaded.recipe, loaded.info, tmp_path)
    out = tmp_path / "scores.csv"
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=flows, output_path=out,
                        device=torch.device("cpu"))
    table = pd.read_csv(out)
    assert len(table) == 500 and set(table["predicted"]) <= {0, 1} and "anomaly_score" in table


def test_pretrained_classifier_learns_from_two_labelled_windows(tmp_path):
    result = train({"task": "intrusion-detection", "data": {**DATA, "label_fraction": 0.4},
                    "model": {**TINY, "dim": 32}, "pretrain": {"epochs": 4},
                    "train": {"epochs": 15, "batch_size": 1, "lr": 0.01}}, tmp_path / "few")
    info = load_model(DOMAIN, tmp_path / "few", torch.device("cpu")).info
    assert info["split_windows"]["train"] == 5 and info["labelled_train_windows"] == 2
    assert result.test_metrics["macro_f1"] > 0.9, result.test_metrics  # measured: 0.99
