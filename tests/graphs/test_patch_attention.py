"""SAG-ViT's `model.attention` option: HiLo and neighbourhood attention reach the core, bad values are one line."""

from __future__ import annotations

import pytest
import torch

from panformer.engine.config import load_recipe
from panformer.graphs.cli import app
from panformer.graphs.domain import GraphsDomain
from panformer.graphs.images import (
    EncoderBlock,
    HiLoConfig,
    NeighborhoodConfig,
    SAGViT,
    patch_attention,
)
from shared_attention import Neighborhood
from shared_attention.variants import HiLoAttention
from tests.cli import assert_user_error, invoke

GRID = (8, 8)


def sagvit_of(*overrides: str) -> SAGViT:
    domain = GraphsDomain()
    recipe = load_recipe(domain.recipe_type_for, "graphs", "digits-sagvit", overrides=overrides)
    info = {"classes": [str(c) for c in range(10)], "image_size": recipe.data.image_size}
    return domain.task(recipe).build_model(recipe, info).net


def test_recipe_override_selects_hilo_or_neighborhood_in_every_block():
    dense = sagvit_of()
    assert all(b.attention.variant is None and b.mask is None for b in dense.blocks)
    hilo = sagvit_of("model.attention.name=hilo", "model.attention.alpha=0.5")
    for block in hilo.blocks:
        assert isinstance(block.attention.variant, HiLoAttention)
        assert (block.attention.variant.lo_heads, block.attention.variant.window_size) == (2, (2, 2))
    neighborhood = sagvit_of("model.attention.name=neighborhood", "model.attention.kernel_size=5")
    assert all(b.mask == Neighborhood(GRID, 5) for b in neighborhood.blocks)
    assert hilo(torch.rand(2, 3, 32, 32)).shape == neighborhood.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("cfg", [None, HiLoConfig(window_size=2, alpha=0.0), NeighborhoodConfig(kernel_size=3)],
                         ids=["dense", "hilo-all-hifi", "neighborhood"])
def test_local_attention_keeps_a_far_patch_out(cfg):
    """A change at patch (0, 0) reaches patch (7, 7) through dense attention only: the windows are local."""
    torch.manual_seed(0)
    variant, mask = patch_attention(cfg, GRID) if cfg is not None else (None, None)
    block = EncoderBlock(16, num_heads=2, grid=GRID, dropout=0.0, variant=variant, mask=mask).eval()
    x = torch.randn(1, 64, 16)
    changed = x.clone()
    changed[0, 0] = torch.randn(16)
    far_moves = (block(x)[0, -1] - block(changed)[0, -1]).abs().max() > 1e-4
    assert far_moves == (cfg is None)


def test_bad_attention_options_are_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    for override, needle in (("model.attention.name=swin", "'dense', 'hilo', 'neighborhood'"),
                             ("model.attention={name: hilo, alpha: 2}", "attention.hilo.alpha"),
                             ("model.attention={name: hilo, window_size: 3}", "model.attention.window_size 3"),
                             ("model.attention={name: neighborhood, kernel_size: 9}", "model.attention.kernel_size 9")):
        result = invoke(app, "train", "--recipe", "digits-sagvit", "--out", str(out), "--set", override,
                        "--set", "data.max_images=40")
        assert_user_error(result, needle)
        assert not out.exists()
