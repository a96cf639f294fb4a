"""Classification from CSV/Parquet tables (long form with a label column), and Parquet predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.engine.trainer import Trainer
from panformer.timeseries.classification import ClassificationRecipe, ClassificationTask
from panformer.timeseries.data import read_labelled_table
from panformer.timeseries.domain import TimeSeriesDomain
from panformer.timeseries.models.transformer import SeriesTransformer


def long_table(n: int, seed: int) -> pd.DataFrame:
    """Sines (label 'smooth') and square waves (label 'sharp'), 2 variables, lengths 30-40."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "smooth" if i % 2 else "sharp"
        length = int(rng.integers(30, 41))
        t = np.arange(length)
        wave = np.sin(t / 3 + rng.normal()) if label == "smooth" else np.sign(np.sin(t / 3 + rng.normal()))
        for step in range(length):
            for var, value in (("a", wave[step]), ("b", -wave[step] + 0.1 * rng.normal())):
                rows.append({"id": f"s{i}", "time": step, "variable": var, "value": value, "label": label})
    return pd.DataFrame(rows)


def test_labelled_long_csv_trains_and_predicts_to_parquet(tmp_path):
    long_table(24, 0).to_csv(tmp_path / "waves_TRAIN.csv", index=False)
    long_table(12, 1).to_csv(tmp_path / "waves_TEST.csv", index=False)
    recipe = load_recipe(ClassificationRecipe, "timeseries", "basicmotions", overrides=[
        f"data.source={tmp_path / 'waves_TRAIN.csv'}", "train.epochs=15", "train.device=cpu"])
    result = Trainer(TimeSeriesDomain(), recipe, run_dir=tmp_path / "run").fit()
    assert result.test_metrics["accuracy"] >= 0.9  # an easy problem: a broken reader would not learn it

    from panformer.engine.cli import load_model

    loaded = load_model(TimeSeriesDomain(), tmp_path / "run", torch.device("cpu"))
    out = tmp_path / "pred.parquet"
    ClassificationTask().predict(loaded.model, recipe=loaded.recipe, info=loaded.info,
                                 input_path=tmp_path / "waves_TEST.csv", output_path=out, device=torch.device("cpu"))
    table = pd.read_parquet(out)
    assert len(table) == 12 and {"label", "true_label", "prob_sharp", "prob_smooth"} <= set(table.columns)


def test_two_labels_for_one_series_is_a_user_error(tmp_path):
    frame = long_table(2, 0)
    frame.loc[frame.index[0], "label"] = "other"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="more than one label"):
        read_labelled_table(tmp_path / "bad.csv")


def test_signature_features_enter_the_tokens():
    torch.manual_seed(0)
    plain = SeriesTransformer(channels=2, num_classes=2, max_length=32, dim=16, num_heads=2)
    torch.manual_seed(0)
    with_sig = SeriesTransformer(channels=2, num_classes=2, max_length=32, dim=16, num_heads=2, signature_depth=2)
    x, lengths = torch.randn(3, 2, 32), torch.tensor([32, 20, 9])
    assert not torch.allclose(plain(x, lengths), with_sig(x, lengths))
    with_sig(x, lengths).sum().backward()
    assert with_sig.signature.proj.weight.grad.abs().sum() > 0
