from __future__ import annotations

import datetime
from typing import Literal

import pytest

from panformer.engine.config import (
    Recipe,
    StrictModel,
    apply_overrides,
    load_recipe,
    parse_override,
)
from panformer.engine.errors import UserError

from .toy_domain import ToyRecipe


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_overrides_are_typed_and_nested():
    raw = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=3e-4", "model.hidden=8", "train.compile=true"])
    assert raw == {"train": {"lr": 3e-4, "compile": True}, "model": {"hidden": 8}}


def test_recipe_loads_with_overrides(tmp_path):
    r = load_recipe(ToyRecipe, "toy", write(tmp_path, "data: {n: 10}\n"), overrides=["train.epochs=3"])
    assert r.data.n == 10 and r.train.epochs == 3


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("data: {n: 10}\n", ["train.lr=-1"], "train.lr"),
        ("data: {n: 10}\n", ["train.lrr=0.1"], "train.lrr.*remove it"),
        ("data: [1, 2\n", [], "not valid YAML"),
        ("domain: speech\n", [], "is for the 'speech' domain"),
        ("data: {n: 10}\n", ["novalue"], "KEY=VALUE"),
    ],
)
def test_bad_recipes_are_user_errors(tmp_path, text, overrides, message):
    with pytest.raises(UserError, match=message):
        load_recipe(ToyRecipe, "toy", write(tmp_path, text), overrides=overrides)


def test_unknown_recipe_name_lists_known_ones():
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        load_recipe(ToyRecipe, "toy", "nope")


class DatedData(StrictModel):
    cutoff: str = "2024-01-01"  # a date kept as text (e.g. an SQL cut-off)
    day: datetime.date = datetime.date(2024, 1, 1)
    moment: datetime.datetime | None = None


class DatedRecipe(Recipe):
    domain: Literal["toy"] = "toy"
    data: DatedData = DatedData()
    model: StrictModel = StrictModel()


def test_set_accepts_dates_for_string_and_date_fields(tmp_path):
    r = load_recipe(DatedRecipe, "toy", write(tmp_path, "data: {}\n"),
                    overrides=["data.cutoff=2010-01-01", "data.day=2010-01-02", "data.moment=2010-01-03 04:05:06"])
    assert r.data.cutoff == "2010-01-01"
    assert r.data.day == datetime.date(2010, 1, 2)
    assert r.data.moment == datetime.datetime(2010, 1, 3, 4, 5, 6)


def test_recipe_files_may_write_dates_unquoted(tmp_path):
    text = "data:\n  cutoff: 2010-01-01\n  day: 2010-01-02\n  moment: 2010-01-03T04:05:06\n"
    r = load_recipe(DatedRecipe, "toy", write(tmp_path, text))
    assert (r.data.cutoff, r.data.day) == ("2010-01-01", datetime.date(2010, 1, 2))
    assert r.data.moment == datetime.datetime(2010, 1, 3, 4, 5, 6)


def test_set_still_types_numbers_and_booleans():
    assert parse_override("data.cutoff=2010") == (["data", "cutoff"], 2010)
    assert parse_override("train.compile=false") == (["train", "compile"], False)
