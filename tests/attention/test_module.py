"""The Attention module against a hand-written composition of projections and the oracle."""

from __future__ import annotations

import torch

from shared_attention import Attention
from shared_attention.backends.reference import reference_attention
from shared_attention.masks import KeyPadding

from .conftest import assert_close


def manual_attention(layer: Attention, x, *, context=None, mask=None, score_mod=None):
    """The layer's math spelled out with the reference backend (no positions)."""
    batch, length, _ = x.shape
    source = x if context is None else context
    h, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(batch, length, h, d).transpose(1, 2)
    k, v = layer.kv_proj(source).view(batch, source.shape[1], 2, hkv, d).permute(2, 0, 3, 1, 4)
    out = reference_attention(q, k, v, mask=mask, score_mod=score_mod, scale=d**-0.5)
    return layer.out_proj(out.transpose(1, 2).reshape(batch, length, h * d))


def test_self_attention_with_key_padding_matches_manual():
    layer = Attention(32, 4, dropout=0.1).eval()
    x = torch.randn(2, 9, 32)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    out = layer(x, key_padding_mask=valid)
    assert out.shape == (2, 9, 32)
    assert_close(out, manual_attention(layer, x, mask=KeyPadding(valid=valid)))


def test_padding_changes_only_what_it_should():
    layer = Attention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    valid = torch.tensor([[True, True, True, True, False, False]])
    padded = layer(x, key_padding_mask=valid)
    # Changing padded tokens must not change real tokens' outputs.
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16)
    assert_close(layer(x2, key_padding_mask=valid)[:, :4], padded[:, :4])
    assert not torch.allclose(layer(x)[:, :4], padded[:, :4])


def test_backends_agree_and_train():
    layer = Attention(32, 4, num_kv_heads=2)
    x = torch.randn(2, 7, 32, requires_grad=True)
    outs = {}
    for backend in ("reference", "sdpa", "auto"):
        layer.zero_grad()
        out = layer(x, backend=backend)
        out.square().mean().backward()
        outs[backend] = (out.detach(), layer.q_proj.weight.grad.clone())
    for backend in ("sdpa", "auto"):
        assert_close(outs[backend][0], outs["reference"][0])
        assert_close(outs[backend][1], outs["reference"][1])
