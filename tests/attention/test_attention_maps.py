"""The attention-maps probe: probabilities against the reference oracle (mask, score mod, grouped heads),
what a probed model records (padding, last call, bias score mods), and what it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from shared_attention import (
    Attention,
    AttentionEntropy,
    AttentionMaps,
    Bias,
    Differential,
    SlidingWindow,
)
from shared_attention.attention_maps import softmax_probabilities
from shared_attention.backends.reference import reference_attention
from shared_attention.masks import Dense
from shared_attention.score_mods import SoftCap
from tests.attention.conftest import assert_close, qkv


def test_softmax_probabilities_match_the_reference_attention_of_the_identity():
    q, k, _ = qkv(2, 4, 2, 9, 9, 8)  # 4 query heads over 2 key/value heads
    mask = Dense(torch.rand(1, 1, 9, 9) > 0.4) | SlidingWindow(1)  # every row keeps at least itself
    score_mod = SoftCap(5.0)
    eye = torch.eye(9).expand(2, 2, 9, 9)  # attending to the identity returns the probabilities
    expected = reference_attention(q, k, eye, mask=mask, score_mod=score_mod)
    probabilities = softmax_probabilities(q, k, mask=mask, score_mod=score_mod)
    assert probabilities.shape == (2, 4, 9, 9)
    assert_close(probabilities, expected)
    empty = Dense(torch.zeros(1, 1, 9, 9, dtype=torch.bool))
    assert softmax_probabilities(q, k, mask=empty).isnan().all()  # no key: no distribution


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Attention(16, 2), Attention(16, 2)])

    def forward(self, x: Tensor, *, bias: Tensor | None = None, **kwargs) -> Tensor:
        for block in self.blocks:
            x = x + block(x, score_mod=Bias(bias) if bias is not None else None, **kwargs)
        return x


def test_the_probe_keeps_each_layers_last_call_and_leaves_padding_keys_at_zero():
    torch.manual_seed(0)
    model = TwoLayers()
    x = torch.randn(3, 10, 16)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 6:] = False  # 6 real atoms
    bias = torch.randn(3, 2, 10, 10)
    with AttentionMaps(model) as probe:
        model(torch.randn(3, 10, 16), key_padding_mask=valid)  # overwritten by the next call
        out = model(x, key_padding_mask=valid, bias=bias)
    assert probe.maps.keys() == {"blocks.0", "blocks.1"}
    first = probe.maps["blocks.0"]
    assert first.shape == (3, 2, 10, 10)
    assert_close(first.sum(-1), torch.ones(3, 2, 10))
    assert (first[1, :, :, 6:] == 0).all()
    layer = model.blocks[0]
    q = layer.q_proj(x).view(3, 10, 2, 8).transpose(1, 2)
    k = layer.kv_proj(x).view(3, 10, 2, 2, 8)[:, :, 0].transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) * layer.scale + bias
    expected = scores.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
    assert_close(first, expected.detach())
    assert all(block.probe is None for block in model.blocks)
    assert torch.equal(model(x, key_padding_mask=valid, bias=bias), out)  # probing changed nothing
    with AttentionEntropy(model) as entropy:  # the same distributions the entropy probe measures
        model(x, key_padding_mask=valid, bias=bias)
    per_query = torch.special.entr(first).sum(-1)  # (B, H, Lq)
    assert_close(entropy.head_means()["blocks.0"], torch.stack([per_query[:, h][valid].mean() for h in range(2)]))


def test_layers_without_one_softmax_distribution_are_refused_and_probes_do_not_stack():
    with pytest.raises(ValueError, match="Differential"):
        AttentionMaps(Attention(16, 2, variant=Differential()))
    model = TwoLayers()
    with AttentionMaps(model), pytest.raises(RuntimeError, match="already probed"):
        AttentionMaps(model).__enter__()
