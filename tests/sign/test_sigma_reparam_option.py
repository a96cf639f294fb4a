"""`model.sigma_reparam`: a recipe override gives every attention block the core's σReparam projections; a bad
value is one line with exit code 2."""

from __future__ import annotations

import pytest
from torch import nn

from panformer.engine.config import load_recipe
from panformer.sign.cli import app
from panformer.sign.domain import SignDomain, build_classifier
from panformer.sign.model import TransformerBlock
from shared_attention import SigmaReparamLinear
from tests.cli import assert_user_error, invoke


@pytest.mark.parametrize("recipe", ["tslformer", "hybrid"])
def test_override_puts_sigma_reparam_projections_in_every_attention_block(recipe):
    def projections(*overrides: str) -> list[nn.Linear]:
        cfg = load_recipe(SignDomain().recipe_type_for, "sign", recipe, overrides=overrides).model
        model = build_classifier(cfg, num_classes=5, max_frames=16)
        blocks = [b for b in model.blocks if isinstance(b, TransformerBlock)]
        assert len(blocks) == cfg.depth
        return [p for b in blocks for p in (b.attn.q_proj, b.attn.kv_proj, b.attn.out_proj)]

    assert not any(isinstance(p, SigmaReparamLinear) for p in projections())
    assert all(isinstance(p, SigmaReparamLinear) for p in projections("model.sigma_reparam=true"))


def test_bad_sigma_reparam_value_is_one_line_and_exit_2(tmp_path):
    result = invoke(app, "train", "--recipe", "tslformer", "--out", str(tmp_path / "run"),
                    "--set", "model.sigma_reparam=sometimes")
    assert_user_error(result, "sigma_reparam")
    assert not (tmp_path / "run").exists()
