"""The music model's `model.attention` option: MoBA and routing reach the core as causal variants, decode with
the KV cache as they run on the whole sequence, and bad values are one line with exit code 2."""

from __future__ import annotations

import pytest
import torch

from panformer.engine.config import load_recipe
from panformer.music.cli import app
from panformer.music.domain import MusicDomain, build_model
from panformer.music.representation import Vocabulary
from shared_attention.variants import MoBAAttention, RoutingAttention
from tests.cli import assert_user_error, invoke

SMALL = ["model.dim=32", "model.depth=2", "model.num_heads=2", "model.dropout=0.0"]


def model_of(*overrides: str):
    recipe = load_recipe(MusicDomain().recipe_type_for, "music", "demo", overrides=[*SMALL, *overrides])
    info = {"vocab_sizes": list(Vocabulary(recipe.data.max_beat).sizes), "max_len": 64}
    torch.manual_seed(0)
    return build_model(recipe, info).eval()


@pytest.mark.parametrize(("overrides", "module"), [
    (["model.attention.name=moba", "model.attention.block_size=8", "model.attention.top_k=2"], MoBAAttention),
    (["model.attention={name: routing, num_clusters: 3}"], RoutingAttention),
], ids=["moba", "routing"])
def test_override_builds_a_causal_variant_that_decodes_with_the_cache(overrides, module):
    model = model_of(*overrides)
    variants = [block.attn.variant for block in model.blocks]
    assert all(isinstance(v, module) and v.causal for v in variants)
    codes = torch.stack([torch.randint(0, size, (1, 40)) for size in model.vocab_sizes], dim=-1)  # (1, 40, F)
    whole = model(codes)
    caches = model.new_caches(1, device=torch.device("cpu"))
    steps = [model(codes[:, t : t + 1], caches=caches) for t in range(codes.shape[1])]
    for f, logits in enumerate(whole):
        torch.testing.assert_close(torch.cat([s[f] for s in steps], dim=1), logits, atol=1e-4, rtol=1e-4)
    changed = codes.clone()
    changed[:, 30:] = 0  # the future: no earlier event's logits may move
    torch.testing.assert_close(model(changed)[0][:, :30], whole[0][:, :30])


def test_default_is_dense():
    assert all(block.attn.variant is None for block in model_of().blocks)


@pytest.mark.parametrize(("override", "needle"), [
    ("model.attention.name=sparse", "'dense', 'moba', 'routing'"),
    ("model.attention={name: moba, top_k: 0}", "attention.moba.top_k"),
    ("model.attention={name: routing, block_size: 8}", "attention.routing.block_size"),
])
def test_bad_attention_option_is_one_line_and_exit_2(tmp_path, override, needle):
    result = invoke(app, "train", "--recipe", "demo", "--out", str(tmp_path / "run"), "--set", override)
    assert_user_error(result, needle)
    assert not (tmp_path / "run").exists()
