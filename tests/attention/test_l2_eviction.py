"""L2-norm key eviction (keep the low-norm keys): decoding through ``L2NormEvictionCache`` equals dense
attention over the tokens an independent simulation of the policy keeps (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from shared_attention import Attention, L2NormEvictionCache
from shared_attention.masks import Causal, Dense, SlidingWindow
from shared_attention.positions import ALiBi, RoPE
from shared_attention.score_mods import ForgetGate, SoftCap
from shared_attention.variants import Differential

from .conftest import assert_close


def kept_sets(key_norms: torch.Tensor, budget: int, prefill: int) -> list[list[set[int]]]:
    """Per step t (a prefill of ``prefill`` tokens, then one token at a time), per (batch, kv head):
    the earlier tokens still cached when token t is decoded. key_norms (B, Hkv, L)."""
    batch, heads, length = key_norms.shape
    steps, kept = [], [[set() for _ in range(heads)] for _ in range(batch)]
    chunks = [list(range(prefill))] if prefill else []
    chunks += [[t] for t in range(prefill, length)]
    for chunk in chunks:
        steps += [[[set(kept[b][h]) for h in range(heads)] for b in range(batch)] for _ in chunk]
        for b in range(batch):
            for h in range(heads):
                pool = sorted(kept[b][h] | set(chunk), key=lambda j, b=b, h=h: float(key_norms[b, h, j]))
                kept[b][h] = set(pool[:budget])
    return steps


def reference_mask(key_norms, budget, prefill, heads) -> Dense:
    """(B, H, L, L): token t sees the kept earlier tokens, and the tokens of its own step up to itself."""
    batch, kv_heads, length = key_norms.shape
    allowed = torch.zeros(batch, kv_heads, length, length, dtype=torch.bool)
    for t, per_batch in enumerate(kept_sets(key_norms, budget, prefill)):
        own = range(0, t + 1) if t < prefill else [t]
        for b in range(batch):
            for h in range(kv_heads):
                allowed[b, h, t, list(per_batch[b][h] | set(own))] = True
    return Dense(allowed.repeat_interleave(heads // kv_heads, dim=1))


def _keys(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, length, _ = x.shape
    k = layer.kv_proj(x).view(batch, length, 2, layer.num_kv_heads, layer.head_dim)[:, :, 0].transpose(1, 2)
    return k.norm(dim=-1)  # RoPE rotates keys without changing their norms


@pytest.mark.parametrize("variant", [None, Differential()], ids=["softmax", "differential"])
@pytest.mark.parametrize(("budget", "prefill"), [(3, 0), (4, 6), (20, 2)])
def test_eviction_decoding_equals_dense_attention_over_the_kept_tokens(variant, budget, prefill):
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=RoPE(), variant=variant).eval()
    x = torch.randn(2, 12, 32)
    cache = L2NormEvictionCache(2, 2, budget, 8)
    steps = [layer(x[:, :prefill], mask=Causal(), cache=cache)] if prefill else []
    steps += [layer(x[:, t : t + 1], mask=Causal(), cache=cache) for t in range(prefill, 12)]
    decoded = torch.cat(steps, dim=1)
    with torch.no_grad():
        expected = layer(x, mask=reference_mask(_keys(layer, x), budget, prefill, 4), backend="reference")
    assert_close(decoded, expected)
    assert cache.offset == 12 and cache.length == min(budget, 12) and cache.evicted == 12 - cache.length
    if budget >= 12:  # nothing evicted: the plain cache's result
        assert_close(decoded, layer(x, mask=Causal()))


def test_eviction_step_gradients_match_the_reference():
    torch.manual_seed(1)
    layer = Attention(32, 4, position=RoPE())
    x = torch.randn(1, 9, 32)
    cache = L2NormEvictionCache(1, 4, 4, 8)
    with torch.no_grad():
        layer(x[:, :8], mask=Causal(), cache=cache)
    last = x[:, 8:].clone().requires_grad_()
    out = layer(last, mask=Causal(), cache=cache)

    full = torch.cat((x[:, :8], last), dim=1)
    mask = reference_mask(_keys(layer, full).detach(), 4, 8, 4)
    expected = layer(full, mask=mask, backend="reference")[:, 8:]
    assert_close(out, expected)
    params = [last, *layer.parameters()]
    # Cached keys are constants of the step (as in decoding): the gradient flows through the new token.
    got = torch.autograd.grad(out.sum(), params, allow_unused=True)
    ref_inputs = torch.cat((x[:, :8], last), dim=1)
    cached_k = layer.kv_proj(x[:, :8]).detach()

    def reference():
        kv = torch.cat((cached_k, layer.kv_proj(last)), dim=1).view(1, 9, 2, 4, 8).permute(2, 0, 3, 1, 4)
        q = layer.q_proj(ref_inputs).view(1, 9, 4, 8).transpose(1, 2)
        q, k = layer.position.encode_qk(q, kv[0], torch.arange(9), torch.arange(9))
        scores = (q[:, :, 8:] @ k.transpose(-1, -2)) / 8**0.5
        scores = scores.masked_fill(~mask.mask[:, :, 8:], float("-inf"))
        return layer.out_proj((scores.softmax(-1) @ kv[1]).transpose(1, 2).reshape(1, 1, 32))

    ref = torch.autograd.grad(reference().sum(), params, allow_unused=True)
    for g, r in zip(got, ref, strict=True):
        if r is None:
            assert g is None or not g.any()
        else:
            assert_close(g, r)


@pytest.mark.parametrize(
    ("layer_kwargs", "call_kwargs"),
    [
        ({"position": ALiBi()}, {"mask": Causal()}),
        ({}, {"mask": SlidingWindow(4)}),
        ({"score_mod": ForgetGate()}, {"mask": Causal()}),
        ({}, {"mask": Causal(), "score_mod": SoftCap(5.0)}),
        ({}, {"mask": Causal(), "key_padding_mask": torch.ones(1, 2, dtype=torch.bool)}),
    ],
    ids=["alibi", "window", "forget-gate", "score-mod", "key-padding"],
)
def test_eviction_refuses_what_reads_key_indices(layer_kwargs, call_kwargs):
    layer = Attention(16, 2, **layer_kwargs)
    cache = L2NormEvictionCache(1, 2, 4, 8)
    with pytest.raises(ValueError, match="L2NormEvictionCache"):
        layer(torch.randn(1, 2, 16), cache=cache, **call_kwargs)
    assert cache.offset == 0


def test_eviction_cache_bookkeeping():
    cache = L2NormEvictionCache(1, 1, 2, 2)
    k = torch.tensor([[[[3.0, 0.0], [0.1, 0.0], [2.0, 0.0]]]])  # norms 3, 0.1, 2
    keys, values = cache.update(k, k * 10)
    assert keys.shape[2] == values.shape[2] == 3  # this step still sees all three
    assert cache.length == 2 and cache.offset == 3 and cache.evicted == 1
    assert torch.equal(cache.keys[0, 0, :2, 0], torch.tensor([0.1, 2.0]))  # position order, high norm gone
    assert torch.equal(cache.values[0, 0, :2, 0], torch.tensor([1.0, 20.0]))
    assert cache.nbytes == 2 * 2 * 2 * 4  # the budget, not the sequence
    cache.reset()
    assert cache.offset == 0 and cache.length == 0
    with pytest.raises(ValueError, match="budget"):
        L2NormEvictionCache(1, 1, 0, 2)
    with pytest.raises(ValueError, match="cannot take"):
        cache.update(torch.randn(1, 1, 1, 3), torch.randn(1, 1, 1, 2))
