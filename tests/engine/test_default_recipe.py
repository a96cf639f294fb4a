"""`train` without --recipe: the domain's `default_recipe` picks one from --data and says so; --recipe wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panformer.engine.cli import train_run
from panformer.engine.config import RECIPES_ENV
from panformer.engine.domain import RecipeChoice
from panformer.engine.errors import UserError

from .toy_domain import ToyDomain


class ChoosingToyDomain(ToyDomain):
    """The toy domain with a default: `small` for .csv data, `large` without data."""

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None:
            return RecipeChoice("large", "no --data")
        if data.endswith(".csv") and Path(data).is_file():
            return RecipeChoice("small", "a CSV file")
        raise self.unrecognised_data(data, "not a CSV file")


@pytest.fixture
def toy_recipes(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "recipes" / "toy"
    folder.mkdir(parents=True)
    train = {"epochs": 1, "batch_size": 16, "device": "cpu"}
    for name, n in (("small", 40), ("large", 80)):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"data": {"n": n}, "train": train}))
    monkeypatch.setenv(RECIPES_ENV, str(tmp_path / "recipes"))
    return folder


def train(domain, tmp_path, *, recipe: str | None, data: str | None, out: str = "run"):
    return train_run(domain, recipe=recipe, data=data, out=tmp_path / out, overrides=[], resume=None, device=None)


def saved_n(run_dir: Path) -> int:
    return yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["n"]


def test_data_picks_the_recipe_and_says_why(tmp_path, toy_recipes, capsys):
    data = tmp_path / "table.csv"
    data.write_text("x\n1\n")
    result = train(ChoosingToyDomain(), tmp_path, recipe=None, data=str(data))
    assert saved_n(result.run_dir) == 40  # the `small` recipe ran
    assert "no --recipe: using 'small' (a CSV file)" in capsys.readouterr().err


def test_no_data_and_no_recipe_uses_the_domain_default(tmp_path, toy_recipes, capsys):
    result = train(ChoosingToyDomain(), tmp_path, recipe=None, data=None)
    assert saved_n(result.run_dir) == 80
    assert "using 'large' (no --data)" in capsys.readouterr().err


def test_recipe_option_wins_over_the_default(tmp_path, toy_recipes, capsys):
    data = tmp_path / "table.csv"
    data.write_text("x\n1\n")
    result = train(ChoosingToyDomain(), tmp_path, recipe="large", data=str(data))
    assert saved_n(result.run_dir) == 80
    assert "no --recipe" not in capsys.readouterr().err


def test_unrecognised_data_names_the_option_and_lists_recipes(tmp_path, toy_recipes):
    with pytest.raises(UserError) as err:
        train(ChoosingToyDomain(), tmp_path, recipe=None, data=str(tmp_path / "nope.bin"))
    message = str(err.value)
    assert message.startswith(f"--data {tmp_path / 'nope.bin'}: not a CSV file") and "\n" not in message
    assert "large, small" in message
    assert not (tmp_path / "run").exists()


def test_a_domain_without_a_default_still_needs_recipe(tmp_path, toy_recipes):
    with pytest.raises(UserError, match="train needs --recipe"):
        train(ToyDomain(), tmp_path, recipe=None, data=None)
