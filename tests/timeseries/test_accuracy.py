"""The first slice's target: BasicMotions test accuracy >= 0.95 with the committed recipe, on CPU (its time is measured in the note, not asserted: CI machines are shared)."""

from __future__ import annotations

from panformer.engine.config import load_recipe
from panformer.engine.trainer import Trainer
from panformer.timeseries.classification import ClassificationRecipe
from panformer.timeseries.domain import TimeSeriesDomain


def test_basicmotions_recipe_reaches_target(tmp_path):
    recipe = load_recipe(ClassificationRecipe, "timeseries", "basicmotions", overrides=["train.device=cpu"])
    result = Trainer(TimeSeriesDomain(), recipe, run_dir=tmp_path / "run").fit()
    assert result.test_metrics["accuracy"] >= 0.95
