"""Files as users have them (issue #25), each written here in its own layout: the UCR archive's `.tsv`
and the same rows as CSV, Weka `.arff`, wide CSV with a class column, the Monash `.tsf`, Nixtla's
`unique_id, ds, y`, statsmodels' split `year, quarter`; the season from the time index; the statistical
baselines of `evaluate`; and which recipe `train` picks without --recipe (issue #23)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.engine.trainer import Trainer
from panformer.timeseries.baselines import baseline_metrics
from panformer.timeseries.cli import app
from panformer.timeseries.data import load_split
from panformer.timeseries.domain import TimeSeriesDomain
from panformer.timeseries.forecast_metrics import seasonal_naive_metrics
from panformer.timeseries.forecasting import ForecastingRecipe
from panformer.timeseries.tabular import read_table
from panformer.timeseries.time_index import future_times, infer_season
from panformer.timeseries.windows import make_forecast_splits
from tests.cli import assert_user_error, invoke


def ucr_rows(n: int, length: int, seed: int) -> pd.DataFrame:
    """UCR layout: class label first, then the values; classes 1 (sine) and 2 (square wave)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    rows = []
    for i in range(n):
        label = 1 + i % 2
        wave = np.sin(t / 3 + rng.normal())
        rows.append([label, *(wave if label == 1 else np.sign(wave))])
    return pd.DataFrame(rows)


# --- classification files -----------------------------------------------------------------------


def test_ucr_tsv_and_the_same_rows_as_headerless_csv_read_with_labels(tmp_path):
    for split, seed in (("TRAIN", 0), ("TEST", 1)):
        frame = ucr_rows(10, 24, seed)
        frame.iloc[0, 20:] = np.nan  # the archive pads shorter series with NaN
        frame.to_csv(tmp_path / f"Waves_{split}.tsv", sep="\t", header=False, index=False)
        frame.to_csv(tmp_path / f"Waves_{split}.csv", header=False, index=False)
    for suffix in (".tsv", ".csv"):
        train = load_split(str(tmp_path / f"Waves_TRAIN{suffix}"), "train")
        test = load_split(str(tmp_path / f"Waves_TRAIN{suffix}"), "test")  # _TEST found beside _TRAIN
        assert train.labels.tolist()[:4] == ["1", "2", "1", "2"] and len(test.series) == 10
        assert train.series[0].shape == (1, 19) and train.series[1].shape == (1, 24)  # padding dropped
        np.testing.assert_allclose(train.series[1][0], ucr_rows(10, 24, 0).iloc[1, 1:].to_numpy(), rtol=1e-6)


def test_ucr_tsv_trains_without_a_recipe(tmp_path):
    ucr_rows(12, 24, 0).to_csv(tmp_path / "Waves_TRAIN.tsv", sep="\t", header=False, index=False)
    ucr_rows(6, 24, 1).to_csv(tmp_path / "Waves_TEST.tsv", sep="\t", header=False, index=False)
    out = tmp_path / "run"
    result = invoke(app, "train", "--data", str(tmp_path / "Waves_TRAIN.tsv"), "--out", str(out),
                    "--set", "train.epochs=1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "using 'classification'" in result.stderr
    assert "accuracy" in json.loads((out / "metrics.json").read_text())["test"]


def test_arff_reads_through_aeon(tmp_path):
    lines = ["@relation waves", *[f"@attribute t{i} numeric" for i in range(5)], "@attribute target {a,b}", "@data",
             "1,2,3,4,5,a", "5,4,3,2,1,b"]
    (tmp_path / "W_TRAIN.arff").write_text("\n".join(lines) + "\n")
    loaded = load_split(str(tmp_path / "W_TRAIN.arff"), "train")
    assert loaded.labels.tolist() == ["a", "b"]
    np.testing.assert_array_equal(loaded.series[1], [[5, 4, 3, 2, 1]])


@pytest.mark.parametrize("label", ["label", "class", "target"])
def test_wide_csv_one_series_per_row_with_a_class_column(tmp_path, label):
    frame = ucr_rows(4, 6, 0)
    frame.columns = [label, *[f"t{i}" for i in range(6)]]
    frame.to_csv(tmp_path / "rows_TRAIN.csv", index=False)
    loaded = load_split(str(tmp_path / "rows_TRAIN.csv"), "train")
    assert loaded.labels.tolist() == ["1", "2", "1", "2"] and loaded.series[0].shape == (1, 6)


def test_bad_rows_name_the_file_and_the_layout(tmp_path):
    frame = ucr_rows(3, 5, 0).astype(object)
    frame.iloc[1, 3] = "oops"
    frame.to_csv(tmp_path / "bad_TRAIN.csv", header=False, index=False)
    with pytest.raises(UserError) as err:
        load_split(str(tmp_path / "bad_TRAIN.csv"), "train")
    message = str(err.value)
    assert str(tmp_path / "bad_TRAIN.csv") in message and "'oops'" in message and "UCR layout" in message
    # Labels missing from the test file: the error says how each file was read and what to add.
    frame = pd.DataFrame({"id": ["a"] * 3, "time": range(3), "x": [1.0, 2, 3]})
    frame.assign(label="u").to_csv(tmp_path / "s_TRAIN.csv", index=False)
    frame.to_csv(tmp_path / "s_TEST.csv", index=False)
    result = invoke(app, "train", "--recipe", "classification", "--data", str(tmp_path / "s_TRAIN.csv"),
                    "--out", str(tmp_path / "r"))
    assert_user_error(result, "s_TEST.csv has no class labels", "id column 'id'", "label/class/target")


# --- forecasting files --------------------------------------------------------------------------


def test_tsf_reads_through_aeon_with_time_labels_and_season(tmp_path):
    path = tmp_path / "sales.tsf"
    path.write_text("# sales\n@relation sales\n@attribute series_name string\n@attribute start_timestamp date\n"
                    "@frequency monthly\n@horizon 6\n@missing false\n@equallength false\n@data\n"
                    "T1:2020-01-01 00-00-00:1,2,3,4,5\nT2:2021-06-01 00-00-00:7,8,9\n")
    table = read_table(path)
    assert table.ids == ["T1", "T2"] and table.variables == ["value"]
    np.testing.assert_array_equal(table.values[1], [[7, 8, 9]])
    assert table.times[1].tolist() == ["2021-06", "2021-07", "2021-08"] and table.season == 12


def nixtla_frame(with_text: bool = False) -> pd.DataFrame:
    ds = pd.date_range("2020-01-01", periods=60, freq="D")
    frames = [pd.DataFrame({"unique_id": uid, "ds": ds, "y": level + np.sin(np.arange(60) * 2 * np.pi / 7),
                            "price": 1.0 + np.arange(60) / 60}) for uid, level in (("store_1", 5.0), ("store_2", 9.0))]
    frame = pd.concat(frames)
    if with_text:
        frame["promo"] = "yes"
    return frame


def test_nixtla_long_form_reads_with_exogenous_columns(tmp_path):
    nixtla_frame().to_csv(tmp_path / "nixtla.csv", index=False)
    table = read_table(tmp_path / "nixtla.csv")
    assert table.ids == ["store_1", "store_2"] and table.variables == ["y", "price"]
    assert table.exogenous == ["price"] and table.season == 7  # daily
    assert table.values[1][0, 0] == pytest.approx(9.0)


def test_nixtla_exogenous_columns_are_left_out_with_a_note(tmp_path, capsys):
    nixtla_frame().to_csv(tmp_path / "nixtla.csv", index=False)
    recipe = load_recipe(ForecastingRecipe, "timeseries", "forecast",
                         overrides=[f"data.source={tmp_path / 'nixtla.csv'}", "data.context=14", "data.horizon=7"])
    splits = TimeSeriesDomain().task(recipe).load_splits(recipe)
    assert splits.info["variables"] == ["y"] and splits.info["season"] == 7
    notes = capsys.readouterr().err
    assert "exogenous columns price are left out" in notes and "season 7 (daily time index)" in notes


def test_nixtla_text_column_error_says_how_the_file_was_read(tmp_path):
    path = tmp_path / "nixtla.csv"
    nixtla_frame(with_text=True).to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        read_table(path)
    message = str(err.value)
    for needle in (str(path), "column 'promo'", "time column 'ds'", "id column 'unique_id'", "data.time_column"):
        assert needle in message, message


def macro_frame(quarters: int = 80) -> pd.DataFrame:
    """statsmodels' macrodata layout: year, quarter, then the variables."""
    t = np.arange(quarters)
    return pd.DataFrame({"year": 1959 + t // 4, "quarter": 1 + t % 4, "realgdp": 100 + t + 3 * (t % 4 == 3),
                         "unemp": 5 + np.sin(t / 5)})


def test_split_year_quarter_columns_are_the_time_index(tmp_path):
    macro_frame().to_csv(tmp_path / "macro.csv", index=False)
    table = read_table(tmp_path / "macro.csv")
    assert table.variables == ["realgdp", "unemp"]  # year and quarter are not forecast
    assert table.times[0][:2].tolist() == ["1959Q1", "1959Q2"] and table.season == 4
    month = pd.DataFrame({"Year": [2020] * 3, "Month": [3, 1, 2], "sales": [3.0, 1, 2]})
    month.to_csv(tmp_path / "month.csv", index=False)
    table = read_table(tmp_path / "month.csv")
    assert table.times[0].tolist() == ["2020-01", "2020-02", "2020-03"] and table.variables == ["sales"]
    np.testing.assert_array_equal(table.values[0], [[1, 2, 3]])


@pytest.mark.parametrize(
    ("labels", "season"),
    [
        (["1959Q1", "1959Q2", "1959Q3"], 4),
        (["1970 Q1", "1970 Q2", "1970 Q3"], 4),
        (["2020-01", "2020-02", "2020-03"], 12),
        (["2020-01-31", "2020-02-29", "2020-03-31"], 12),
        (["2020-01-06", "2020-01-13", "2020-01-20"], 52),
        (["2020-01-01", "2020-01-02", "2020-01-03"], 7),
        (["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00"], 24),
    ],
)
def test_season_is_inferred_from_the_time_index(labels, season):
    assert infer_season(labels)[0] == season


def test_no_season_from_step_numbers_and_future_labels_continue_the_calendar():
    assert infer_season(["1", "2", "3"]) is None
    assert future_times(np.array(["2009Q1", "2009Q2", "2009Q3"]), 2) == ["2009Q4", "2010Q1"]
    assert future_times(np.array(["1960-11", "1960-12", "1961-01"]), 1) == ["1961-02"]
    assert future_times(np.array(["2024-01-01", "2024-01-02", "2024-01-03"]), 1) == ["2024-01-04"]


def test_a_pinned_season_wins_over_the_inferred_one(tmp_path):
    macro_frame().to_csv(tmp_path / "macro.csv", index=False)
    overrides = [f"data.source={tmp_path / 'macro.csv'}", "data.context=16", "data.horizon=4"]
    task = TimeSeriesDomain().task(load_recipe(ForecastingRecipe, "timeseries", "forecast", overrides=overrides))
    auto = load_recipe(ForecastingRecipe, "timeseries", "forecast", overrides=overrides)
    pinned = load_recipe(ForecastingRecipe, "timeseries", "forecast", overrides=[*overrides, "data.season=2"])
    assert task.load_splits(auto).info["season"] == 4
    assert task.load_splits(pinned).info["season"] == 2


def test_quarterly_training_predicts_real_quarters_and_evaluate_reports_season_and_baselines(tmp_path):
    macro_frame().to_csv(tmp_path / "macro.csv", index=False)
    out = tmp_path / "run"
    result = invoke(app, "train", "--data", str(tmp_path / "macro.csv"), "--out", str(out), "--set", "train.epochs=1",
                    "--set", "data.context=16", "--set", "data.horizon=4", "--set", "model.patch=4",
                    "--set", "model.stride=2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "using 'forecast'" in result.stderr and "season 4 (quarterly time index)" in result.stderr
    result = invoke(app, "evaluate", "--checkpoint", str(out), "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["season"] == 4
    for name in ("seasonal_naive", "ets"):
        assert {f"{name}_mase", f"{name}_coverage", f"{name}_width"} <= set(metrics)
    result = invoke(app, "predict", "--checkpoint", str(out), "--input", str(tmp_path / "macro.csv"),
                    "--output", str(tmp_path / "pred.csv"))
    assert result.exit_code == 0, result.output
    forecast = pd.read_csv(tmp_path / "pred.csv")
    assert set(forecast["variable"]) == {"realgdp", "unemp"}
    assert forecast["time"].iloc[:4].tolist() == ["1979Q1", "1979Q2", "1979Q3", "1979Q4"]


# --- baselines ----------------------------------------------------------------------------------


def test_baselines_score_the_test_windows_like_the_model():
    rng = np.random.default_rng(0)
    t = np.arange(96)
    series = [(10 + np.tile([1.0, 5.0, 3.0, 2.0], 24) + 0.05 * t + 0.1 * rng.normal(size=96))[None].astype(np.float32)]
    splits = make_forecast_splits(series, context=16, horizon=4, val_steps=8, test_steps=12, season=4)
    scores = baseline_metrics(splits.test, season=4, horizon=4, level=0.8)
    naive = seasonal_naive_metrics(splits.test, season=4, horizon=4)
    assert scores["seasonal_naive"]["mase"] == pytest.approx(naive["mase"])  # the same forecasts, same windows
    assert scores["ets"]["mase"] < scores["seasonal_naive"]["mase"]  # ETS follows the trend the naive misses
    for name in ("seasonal_naive", "ets"):
        assert 0 <= scores[name]["coverage"] <= 1 and scores[name]["width"] > 0
    assert "coverage" not in baseline_metrics(splits.test, season=4, horizon=4, level=None)["ets"]


# --- the recipe `train` picks without --recipe (issue #23) --------------------------------------


def test_default_recipe_follows_the_kind_of_data(tmp_path):
    domain = TimeSeriesDomain()
    ucr_rows(2, 5, 0).to_csv(tmp_path / "U_TRAIN.tsv", sep="\t", header=False, index=False)
    ucr_rows(2, 5, 0).to_csv(tmp_path / "U_TRAIN.csv", header=False, index=False)
    pd.DataFrame({"t0": [1.0], "t1": [2.0], "class": ["a"]}).to_csv(tmp_path / "rows.csv", index=False)
    nixtla_frame().to_csv(tmp_path / "nixtla.csv", index=False)
    macro_frame().to_parquet(tmp_path / "macro.parquet")
    (tmp_path / "m.tsf").write_text("@frequency monthly\n@data\nT1:1,2,3\n")
    (tmp_path / "w.arff").write_text("@relation w\n@data\n")
    expected = {
        "aeon:ArrowHead": "classification", "aeon:BasicMotions": "classification", "aeon:Airline": "forecast",
        str(tmp_path / "U_TRAIN.tsv"): "classification", str(tmp_path / "U_TRAIN.csv"): "classification",
        str(tmp_path / "rows.csv"): "classification", str(tmp_path / "w.arff"): "classification",
        str(tmp_path): "classification", str(tmp_path / "nixtla.csv"): "forecast",
        str(tmp_path / "macro.parquet"): "forecast", str(tmp_path / "m.tsf"): "forecast",
    }
    for data, recipe in expected.items():
        assert domain.default_recipe(data).name == recipe, data
    ucr_rows(2, 5, 0).to_csv(tmp_path / "plain.csv", header=False, index=False)
    for data, needle in [("aeon:NoSuchThing", "neither"), (str(tmp_path / "missing.csv"), "no such file"),
                         (str(tmp_path / "plain.csv"), "no header row"), (str(tmp_path / "x.txt"), "no such file")]:
        with pytest.raises(UserError, match=needle):
            domain.default_recipe(data)


def test_default_recipes_train_on_their_own_defaults(tmp_path):
    for name, metric in (("classification", "accuracy"), ("forecast", "mase")):
        recipe = load_recipe(TimeSeriesDomain().recipe_type_for, "timeseries", name,
                             overrides=["train.epochs=1", "train.device=cpu"])
        result = Trainer(TimeSeriesDomain(), recipe, run_dir=tmp_path / name).fit()
        assert np.isfinite(result.test_metrics[metric])
