"""The relational CLI end to end through real subprocesses: a tiny pretrain -> zero-shot -> fine-tune run,
evaluate --json, predict to CSV, `schema` and `baseline`, and bad input answered with one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from panformer.engine.errors import UserError
from tests.cli import assert_user_error
from tests.relational.helpers import cli, cli_inprocess, small_shop

TINY_RECIPE = """\
description: tiny relational transformer for the tests
data:
  source: {source}
  cache_dir: {cache}
  demo_customers: 60
  max_cells: 40
  children_per_table: 3
  task: {{name: churn, kind: binary}}
pretrain: {{sources: ["demo:stream:1"], steps: 3, batch_size: 32}}
model: {{dim: 16, depth: 1, num_heads: 2, mlp_ratio: 2.0}}
train: {{epochs: 1, batch_size: 64, lr: 0.003, device: cpu}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("relational")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(source="demo", cache=root / "data"))
    result = cli("train", "--recipe", str(recipe), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root


def test_train_reports_zero_shot_trees_and_majority(trained):
    test = json.loads((trained / "run" / "metrics.json").read_text())["test"]
    for key in ("auroc", "accuracy", "zeroshot_auroc", "zeroshot_val_auroc", "trees_auroc", "majority_accuracy",
                "pretrain_loss"):
        assert key in test, key
    assert 0 <= test["auroc"] <= 1 and 0 <= test["zeroshot_auroc"] <= 1 and test["majority_auroc"] == 0.5


def test_evaluate_json_and_predict_csv(trained):
    result = cli("evaluate", "--checkpoint", str(trained / "run"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= metrics["auroc"] <= 1 and "trees_auroc" in metrics and "zeroshot_auroc" in metrics

    queries = trained / "queries.csv"
    pd.DataFrame({"entity_id": [1, 2, 3], "timestamp": ["2024-10-15", "2024-10-15", "2024-11-01"]}).to_csv(
        queries, index=False)
    out = trained / "pred" / "churn.csv"
    result = cli("predict", "--checkpoint", str(trained / "run"), "--input", str(queries), "--output", str(out),
                 "--plot")
    assert result.returncode == 0, result.stderr
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["entity_id", "timestamp", "churn_probability", "churn"]
    assert len(pred) == 3 and pred.churn_probability.between(0, 1).all()
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_schema_and_baseline_verbs(trained):
    path = small_shop(trained / "data", customers=60)
    result = cli_inprocess("schema", "--data", f"duckdb:///{path}")
    assert result.exit_code == 0, result.output
    assert "orders" in result.stdout and "customer_id -> customers" in result.stdout
    result = cli_inprocess("baseline", "--recipe", str(trained / "tiny.yaml"), "--json")
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(result.stdout.strip().splitlines()[-1])["trees_auroc"] <= 1


def test_bad_input_is_one_line_and_exit_2(trained, tmp_path):
    assert_user_error(cli_inprocess("schema", "--data", "postgresql://nobody@127.0.0.1:1/none"), "cannot read the database")
    assert_user_error(cli_inprocess("schema", "--data", f"duckdb:///{tmp_path / 'absent.duckdb'}"), "no such DuckDB file")

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TINY_RECIPE.format(source="demo", cache=trained / "data").replace(
        "task: {name: churn, kind: binary}",
        "task: {name: churn, kind: binary, entity_table: customers, sql: 'SELECT customer_id, 1 AS label FROM customers'}"))
    out = tmp_path / "run"
    assert_user_error(cli_inprocess("train", "--recipe", str(recipe), "--out", str(out)), "data.task.sql", "timestamp")
    assert not out.exists()

    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text("tables:\n  orders: {foreign_keys: {customer_id: clients}}\n")
    path = small_shop(trained / "data", customers=60)
    assert_user_error(cli_inprocess("schema", "--data", f"duckdb:///{path}", "--schema-file", str(schema_file)),
                      "missing table 'clients'")

    queries = tmp_path / "queries.csv"
    queries.write_text("customer,when\n1,2024-10-01\n")
    out_csv = tmp_path / "p.csv"
    assert_user_error(cli_inprocess("predict", "--checkpoint", str(trained / "run"), "--input", str(queries),
                          "--output", str(out_csv)), "entity_id")
    assert not out_csv.exists()
    assert_user_error(cli_inprocess("train", "--recipe", "nope"), "unknown recipe")


def test_relbench_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network, without waiting on DNS
    out = tmp_path / "run"
    result = cli_inprocess("train", "--recipe", "demo", "--data", "relbench:rel-f1/driver-dnf", "--out", str(out))
    assert_user_error(result, "relbench:rel-f1/driver-dnf", "cannot load the RelBench dataset")
    assert not out.exists()


REGRESSION_SQL = (
    "SELECT c.customer_id AS entity_id, t.ts AS timestamp, (SELECT coalesce(sum(o.amount), 0) FROM orders o "
    "WHERE o.customer_id = c.customer_id AND o.order_time > t.ts AND o.order_time <= t.ts + INTERVAL 30 DAY) "
    "AS label FROM (SELECT range AS ts FROM range(TIMESTAMP '2024-03-01', TIMESTAMP '2024-12-01', "
    "INTERVAL 30 DAY)) t JOIN customers c ON c.signup_time <= t.ts"
)


def test_regression_task_in_process(trained, tmp_path):
    from panformer.engine.config import validate_recipe
    from panformer.engine.trainer import Trainer
    from panformer.relational.domain import RelationalDomain

    domain = RelationalDomain()
    raw = {"domain": "relational", "data": {
        "source": "demo", "cache_dir": str(trained / "data"), "demo_customers": 60, "max_cells": 40,
        "children_per_table": 3,
        "task": {"name": "spend", "kind": "regression", "entity_table": "customers", "sql": REGRESSION_SQL}},
        "model": {"dim": 16, "depth": 1, "num_heads": 2}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    result = Trainer(domain, validate_recipe(domain.recipe_type_for, raw, source="test"), run_dir=tmp_path / "r").fit()
    test = result.test_metrics
    assert test["mae"] > 0 and test["trees_mae"] > 0 and test["mean_mae"] > 0
    assert "zeroshot_auroc" not in test  # not pretrained


def test_relbench_local_dataset_trains_offline(tmp_path):
    from panformer.engine.config import validate_recipe
    from panformer.engine.trainer import Trainer
    from panformer.relational.domain import RelationalDomain
    from tests.relational.helpers import write_relbench_folder

    folder = write_relbench_folder(tmp_path / "rel-shop", customers=60)
    domain = RelationalDomain()
    raw = {"domain": "relational", "data": {"source": f"relbench:{folder}/churn", "max_cells": 40,
                                            "children_per_table": 3},
           "model": {"dim": 16, "depth": 1, "num_heads": 2}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    result = Trainer(domain, validate_recipe(domain.recipe_type_for, raw, source="test"), run_dir=tmp_path / "r").fit()
    assert 0 <= result.test_metrics["auroc"] <= 1 and 0 <= result.test_metrics["trees_auroc"] <= 1


def test_init_from_a_pretrained_run_scores_zero_shot(trained, tmp_path):
    from panformer.engine.config import validate_recipe
    from panformer.engine.trainer import Trainer
    from panformer.relational.domain import RelationalDomain

    domain = RelationalDomain()
    raw = {"domain": "relational",
           "data": {"source": "demo", "cache_dir": str(trained / "data"), "demo_customers": 60, "max_cells": 40,
                    "children_per_table": 3, "baseline": False},
           "pretrain": {"steps": 0, "init_from": str(trained / "run")},
           "model": {"dim": 16, "depth": 1, "num_heads": 2}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    result = Trainer(domain, validate_recipe(domain.recipe_type_for, raw, source="test"), run_dir=tmp_path / "r").fit()
    assert 0 <= result.test_metrics["zeroshot_auroc"] <= 1 and "pretrain_loss" not in result.test_metrics
    raw["model"]["dim"] = 32
    with pytest.raises(UserError, match="init_from"):
        Trainer(domain, validate_recipe(domain.recipe_type_for, raw, source="test"), run_dir=tmp_path / "r2").fit()


def test_pretraining_leaves_no_gradients_for_fine_tuning_to_clip(trained):
    """A stale gradient on the frozen head counted in fine-tuning's clip norm, so a resumed run (which skips
    pretraining) clipped differently from the uninterrupted one."""
    from panformer.engine.config import validate_recipe
    from panformer.relational.domain import RelationalDomain

    domain = RelationalDomain()
    raw = {"domain": "relational",
           "data": {"source": "demo", "cache_dir": str(trained / "data"), "demo_customers": 60, "max_cells": 40,
                    "children_per_table": 3, "baseline": False},
           "pretrain": {"sources": ["demo:stream:1"], "steps": 2, "batch_size": 32},
           "model": {"dim": 16, "depth": 1, "num_heads": 2}, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    recipe = validate_recipe(domain.recipe_type_for, raw, source="test")
    task = domain.task(recipe)
    splits = task.load_splits(recipe)
    model = task.build_model(recipe, splits.info)
    task.fit_statistics(model, splits)
    assert [name for name, p in model.named_parameters() if p.grad is not None] == []
    assert not model.number_head.weight.requires_grad  # binary task: the number head stays frozen
