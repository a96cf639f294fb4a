from __future__ import annotations

import pytest

from panformer.engine.config import apply_overrides, load_recipe
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
