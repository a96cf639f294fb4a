"""`full_attention=False`: the Relational Transformer's block without its full attention (the three masked
attentions of the original model remain); the default keeps all four."""

from __future__ import annotations

import torch
from torch import nn

from panformer.relational.model import RelationalBlock, RelationalTransformer


def test_leaving_out_full_attention_removes_exactly_that_attention():
    torch.manual_seed(0)
    with_full = RelationalBlock(16, num_heads=2)
    without = RelationalBlock(16, num_heads=2, full_attention=False)
    assert list(with_full.attn) == ["column", "feature", "neighbour", "full"]
    assert list(without.attn) == list(without.norms) == ["column", "feature", "neighbour"]
    missing, unexpected = without.load_state_dict(with_full.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("attn.full.", "norms.full.")) for k in unexpected)

    x, valid = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    masks = dict.fromkeys(RelationalBlock.ATTENTIONS)  # None: every cell sees every cell
    assert not torch.allclose(with_full(x, masks=masks, valid=valid), without(x, masks=masks, valid=valid))
    # With the full attention's output silenced, the two blocks compute the same thing.
    nn.init.zeros_(with_full.attn["full"].out_proj.weight)
    nn.init.zeros_(with_full.attn["full"].out_proj.bias)
    torch.testing.assert_close(with_full(x, masks=masks, valid=valid), without(x, masks=masks, valid=valid))


def test_the_model_passes_the_option_to_every_block():
    default, masked_only = RelationalTransformer(dim=16, depth=2), RelationalTransformer(dim=16, depth=2,
                                                                                          full_attention=False)
    assert all("full" in block.attn for block in default.blocks)
    assert not any("full" in block.attn for block in masked_only.blocks)
    per_block = sum(p.numel() for p in default.blocks[0].attn["full"].parameters()) + 2 * 16  # + its LayerNorm
    assert sum(p.numel() for p in default.parameters()) - sum(p.numel() for p in masked_only.parameters()) == (
        2 * per_block)
