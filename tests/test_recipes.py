"""Every committed recipe validates against its domain's recipe types, and every domain has a demo."""

from __future__ import annotations

import pytest

from panformer.engine.config import list_recipes, load_recipe
from panformer.engine.domain import registered_domains

RECIPES = [(name, recipe) for name in registered_domains() for recipe in list_recipes(name)]


@pytest.mark.parametrize(("domain", "recipe"), RECIPES)
def test_recipe_validates(domain, recipe):
    loaded = load_recipe(registered_domains()[domain]().recipe_type_for, domain, recipe)
    assert loaded.description, f"{domain}/{recipe} has no description line"


@pytest.mark.parametrize("domain", list(registered_domains()))
def test_every_domain_has_a_demo_recipe(domain):
    assert "demo" in list_recipes(domain)
