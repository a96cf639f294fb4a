"""KV cache: decoding token by token gives the outputs of the full causal pass."""

from __future__ import annotations

import pytest
import torch

from shared_attention import Attention, attention
from shared_attention.backends.reference import reference_attention
from shared_attention.cache import KVCache
from shared_attention.masks import Causal, SlidingWindow
from shared_attention.positions import ALiBi, RoPE
from shared_attention.variants import Differential, Sinks

from .conftest import assert_close, qkv


def _decode(step, length: int, prefill: int) -> torch.Tensor:
    """Run ``step(start, end)`` over a prefill then one token at a time; concat along L."""
    outs = [step(0, prefill)] if prefill else []
    outs += [step(t, t + 1) for t in range(prefill, length)]
    return torch.cat(outs, dim=-2)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("mask", [Causal(), SlidingWindow(3)], ids=["causal", "sliding"])
@pytest.mark.parametrize("prefill", [0, 4])
def test_cached_decoding_equals_full_pass(backend, mask, prefill):
    q, k, v = qkv(2, 4, 2, 9, 9, 8)
    full = reference_attention(q, k, v, mask=mask)
    cache = KVCache(2, 2, 16, 8)

    def step(start, end):
        keys, values = cache.update(k[:, :, start:end], v[:, :, start:end])
        assert cache.offset == end
        return attention(q[:, :, start:end], keys, values, mask=mask, backend=backend)

    assert_close(_decode(step, 9, prefill), full)


@pytest.mark.parametrize(
    ("position", "variant"),
    [
        (RoPE(), None),
        (RoPE(), Differential(layer_index=2)),
        (RoPE(), Sinks(num_sinks=2)),
        (ALiBi(), None),
    ],
    ids=["rope", "rope-differential", "rope-sinks", "alibi"],
)
@pytest.mark.parametrize("prefill", [0, 3])
def test_attention_module_decoding_with_cache(position, variant, prefill):
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=position, variant=variant).eval()
    x = torch.randn(2, 8, 32)
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 8, 8)

    def step(start, end):
        return layer(x[:, start:end], mask=Causal(), cache=cache)

    assert_close(_decode(step, 8, prefill), full)
    assert cache.offset == 8


def test_cache_bookkeeping_and_errors():
    cache = KVCache(1, 2, 4, 3, v_dim=5, dtype=torch.float64)
    k, v = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 5)
    keys, values = cache.update(k, v)
    assert keys.shape == (1, 2, 3, 3) and values.shape == (1, 2, 3, 5) and keys.dtype == torch.float64
    assert_close(values.float(), v)
    with pytest.raises(ValueError, match="overflows"):
        cache.update(k, v)
    with pytest.raises(ValueError, match="cannot take"):
        cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 5))
    cache.reset()
    assert cache.offset == 0
    keys, _ = cache.update(k[:, :, :1], v[:, :, :1])
    assert keys.shape[2] == 1
