"""Dates in recipes: the relational cut-offs given with `--set` or written unquoted in a recipe file."""

from __future__ import annotations

import pytest

from panformer.engine.config import load_recipe
from panformer.relational.domain import RelationalDomain

DOMAIN = RelationalDomain()


@pytest.mark.parametrize("recipe", ["demo", "database", "finetune-only"])
def test_set_takes_a_date_for_the_cut_offs(recipe):
    loaded = load_recipe(DOMAIN.recipe_type_for, "relational", recipe,
                         overrides=["data.task.val_timestamp=2010-01-01", "data.task.test_timestamp=2010-06-01 12:00:00"])
    assert str(loaded.data.task.val_timestamp) == "2010-01-01"
    assert str(loaded.data.task.test_timestamp) == "2010-06-01 12:00:00"


def test_a_recipe_file_may_write_the_cut_offs_unquoted(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data:\n  task:\n    val_timestamp: 2010-01-01\n    test_timestamp: 2010-06-01T12:00:00\n")
    loaded = load_recipe(DOMAIN.recipe_type_for, "relational", str(path))
    assert str(loaded.data.task.val_timestamp) == "2010-01-01"
    assert str(loaded.data.task.test_timestamp) == "2010-06-01T12:00:00"
