"""ForgetGate (FoX) decoding with a KV cache: token by token equals the full causal pass."""

from __future__ import annotations

import pytest
import torch

from shared_attention import Attention, KVCache, QuantizedKVCache
from shared_attention.masks import Causal
from shared_attention.positions import RoPE
from shared_attention.score_mods import ForgetGate

from .conftest import assert_close


def _layer(prune_epsilon=None):
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=RoPE(),
                      score_mod=ForgetGate(prune_epsilon=prune_epsilon, block_size=4)).eval()
    with torch.no_grad():
        layer.score_mod_module.gate.weight.normal_(0, 0.3)
        layer.score_mod_module.gate.bias.fill_(0.5)
    return layer


def _decode(layer, x, cache, prefill):
    steps = [layer(x[:, :prefill], mask=Causal(), cache=cache)] if prefill else []
    steps += [layer(x[:, t : t + 1], mask=Causal(), cache=cache) for t in range(prefill, x.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("prefill", [0, 1, 5])
@pytest.mark.parametrize("cache_kind", ["fp", "quantized-fp"])
def test_forget_gate_decoding_equals_full_pass(prefill, cache_kind):
    layer = _layer()
    x = torch.randn(2, 11, 32)
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 11, 8) if cache_kind == "fp" else QuantizedKVCache(2, 2, 11, 8, precision="fp")
    assert_close(_decode(layer, x, cache, prefill), full)
    assert cache.token_state["forget_gate"].shape == (2, 4, 11)
    # reset forgets the decay with the keys: a second sequence decodes from scratch.
    cache.reset()
    assert_close(_decode(layer, x[:, :6], cache, 2), full[:, :6])


def test_forget_gate_decoding_with_pruning_stays_within_the_bound():
    layer, plain = _layer(1e-3), _layer()
    with torch.no_grad():
        for m in (layer, plain):
            m.score_mod_module.gate.bias.fill_(-1.0)
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        full = plain(x, mask=Causal())
        decoded = _decode(layer, x, KVCache(2, 2, 30, 8), 3)
    assert float(layer.score_mod_module.last_skipped_fraction) > 0  # the last step pruned old blocks
    v_max = plain.kv_proj(x)[..., 16:].abs().max()
    bound = (2 * 1e-3 * v_max * plain.out_proj.weight.abs().sum(-1).max()).detach()
    assert float((decoded - full).abs().max()) <= float(bound)


def test_forget_gate_refuses_a_cache_filled_without_its_state():
    layer = _layer()
    cache = KVCache(1, 2, 8, 8)
    Attention(32, 4, num_kv_heads=2)(torch.randn(1, 3, 32), mask=Causal(), cache=cache)
    with pytest.raises(ValueError, match="forget gates for 0"):
        layer(torch.randn(1, 1, 32), mask=Causal(), cache=cache)
    assert cache.offset == 3  # refused before touching the cache
