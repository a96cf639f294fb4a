"""Adaptive computation pruning (ACP) for the Forgetting Transformer: the tiles it prunes against a
brute-force reading of its bound, the bound itself (dropped softmax mass <= eps, output within
2 eps max|v|), and the Attention option against a materialised reference (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from shared_attention import Attention
from shared_attention.forget_pruning import forget_gate_pruning
from shared_attention.masks import Causal, SlidingWindow
from shared_attention.positions import ALiBi, RoPE
from shared_attention.score_mods import ForgetGate
from shared_attention.variants import Differential

from .conftest import assert_close


def _decay(batch, heads, length, *, strength, seed=0):
    """Cumulative log forget gates c (B, H, L): gates well below 1 so that old keys decay."""
    g = torch.Generator().manual_seed(seed)
    log_f = torch.nn.functional.logsigmoid(torch.randn(batch, heads, length, generator=g) - strength)
    return log_f.cumsum(-1)


def brute_force_pruned(q, k, c, *, epsilon, block, scale):
    """(B, H, Lq, Lk) bool: pairs in tiles whose largest decay is below the bound's threshold,
    read pair by pair in float64 (tiles in position space, queries at the end of the keys)."""
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    k = k.repeat_interleave(heads // k.shape[1], dim=1).double()
    c = c.double()
    out = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            u = scale * q[b, h].double().norm(dim=-1).max() * k[b, h].norm(dim=-1).max()
            delta = math.log(epsilon) - 2 * u - math.log(kv_len)
            for qb in range(0, kv_len, block):
                rows = [p for p in range(qb, min(qb + block, kv_len)) if p >= kv_len - q_len]
                if not rows:
                    continue
                for kb in range(0, qb, block):
                    cols = range(kb, min(kb + block, kv_len))
                    strongest = max(float(c[b, h, i] - c[b, h, j]) for i in rows for j in cols)
                    if strongest < delta:
                        for i in rows:
                            out[b, h, i - (kv_len - q_len), list(cols)] = True
    return out


def fox_reference(q, k, v, c, *, scale, pruned=None):
    """exp-normalised (q k^T s + c_i - c_j) over causal keys (minus ``pruned`` pairs), times v; and the
    unpruned probabilities."""
    heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
    k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    q_pos = torch.arange(q_len) + kv_len - q_len
    scores = (q @ k.transpose(-1, -2)) * scale + c[..., q_pos, None] - c[..., None, :]
    causal = q_pos[:, None] >= torch.arange(kv_len)[None, :]
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    allowed = causal if pruned is None else causal & ~pruned
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v, probs


@pytest.mark.parametrize(("q_len", "kv_len", "block"), [(37, 37, 4), (1, 37, 4), (5, 40, 8), (64, 64, 16)])
@pytest.mark.parametrize("epsilon", [1e-2, 1e-4])
def test_pruned_tiles_match_brute_force_and_respect_the_bound(q_len, kv_len, block, epsilon):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, q_len, 8) * 0.5, torch.randn(2, 2, kv_len, 8) * 0.5, torch.randn(2, 2, kv_len, 8)
    c = _decay(2, 4, kv_len, strength=1.0)
    scale = 8**-0.5
    mask, skipped = forget_gate_pruning(q, k, c, epsilon=epsilon, block_size=block, scale=scale)
    pruned = ~mask.dense(q_len, kv_len)
    expected = brute_force_pruned(q, k, c, epsilon=epsilon, block=block, scale=scale)
    causal = Causal().dense(q_len, kv_len)
    assert torch.equal(pruned & causal, expected)
    assert expected.any()  # the case prunes something
    # The reported fraction: pruned causal tiles over all causal tiles of the query blocks present.
    tiles = pruned_tiles = 0
    for p0 in range(0, kv_len, block):
        if p0 + block > kv_len - q_len:
            tiles += (p0 // block + 1) * 2 * 4
            row = max(p0, kv_len - q_len) - (kv_len - q_len)
            pruned_tiles += int(expected[:, :, row, :p0].reshape(8, -1, block).all(-1).sum())
    assert float(skipped) == pytest.approx(pruned_tiles / tiles)
    # The bound: at most eps of each query's exact softmax mass is dropped; outputs within 2 eps max|v|.
    exact, probs = fox_reference(q, k, v, c, scale=scale)
    assert float((probs * expected).sum(-1).max()) <= epsilon
    pruned_out, _ = fox_reference(q, k, v, c, scale=scale, pruned=expected)
    assert float((pruned_out - exact).abs().max()) <= 2 * epsilon * float(v.abs().max())


def test_no_pruning_without_decay():
    q, k = torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8)
    mask, skipped = forget_gate_pruning(q, k, torch.zeros(1, 2, 32), epsilon=1e-3, block_size=4, scale=0.35)
    assert float(skipped) == 0 and mask.dense(32, 32).all()


def _layer(prune_epsilon, *, position=None, seed=0):
    torch.manual_seed(seed)
    layer = Attention(32, 4, num_kv_heads=2, position=position,
                      score_mod=ForgetGate(prune_epsilon=prune_epsilon, block_size=4))
    with torch.no_grad():
        layer.score_mod_module.gate.weight.normal_(0, 0.3)
        layer.score_mod_module.gate.bias.fill_(-0.5)  # strong forgetting: old blocks negligible
    return layer


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("mask", [Causal(), SlidingWindow(24)], ids=["causal", "window"])
def test_attention_option_matches_reference_values_and_gradients(backend, mask):
    layer = _layer(1e-3, position=RoPE())
    x = torch.randn(2, 33, 32, requires_grad=True)
    out = layer(x, mask=mask, backend=backend)
    skipped = layer.score_mod_module.last_skipped_fraction
    assert 0 < float(skipped) < 1

    def reference():
        batch, length = x.shape[:2]
        q = layer.q_proj(x).view(batch, length, 4, 8).transpose(1, 2)
        k, v = layer.kv_proj(x).view(batch, length, 2, 2, 8).permute(2, 0, 3, 1, 4)
        q, k = layer.position.encode_qk(q, k, torch.arange(length), torch.arange(length))
        c = layer.score_mod_module(x).cumulative_log_forget
        pruned = brute_force_pruned(q.detach(), k.detach(), c.detach(), epsilon=1e-3, block=4, scale=8**-0.5)
        pruned = pruned | ~mask.dense(length, length)
        attended, _ = fox_reference(q, k, v, c, scale=8**-0.5, pruned=pruned)
        return layer.out_proj(attended.transpose(1, 2).reshape(batch, length, 32))

    expected = reference()
    assert_close(out, expected, atol=5e-5, rtol=2e-4)
    params = [x, *layer.parameters()]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * weight).sum(), params)
    ref = torch.autograd.grad((expected * weight).sum(), params)
    for g, r in zip(got, ref, strict=True):
        assert_close(g, r, atol=5e-5, rtol=2e-4)
    # And against unpruned FoX: within the bound.
    plain = _layer(None, position=RoPE())
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        v_max = plain.kv_proj(x)[..., 16:].abs().max()
        gap = (layer(x, mask=mask) - plain(x, mask=mask)).abs().max()
    assert gap <= 2 * 1e-3 * v_max * plain.out_proj.weight.abs().sum(-1).max()


def test_pruning_refusals():
    x = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match="Causal"):
        _layer(1e-3)(x)
    with pytest.raises(ValueError, match="Causal"):
        _layer(1e-3)(x, mask=Causal(), key_padding_mask=torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="another score mod"):
        _layer(1e-3, position=ALiBi())(x, mask=Causal())
    layer = Attention(32, 4, variant=Differential(), score_mod=ForgetGate(prune_epsilon=1e-3))
    with pytest.raises(ValueError, match="variant"):
        layer(x, mask=Causal())
    with pytest.raises(ValueError, match="prune_epsilon"):
        _layer(1.5)(x, mask=Causal())
    with pytest.raises(ValueError, match="keys"):
        forget_gate_pruning(x.view(1, 4, 8, 8), x.view(1, 4, 8, 8), torch.zeros(1, 4, 5), epsilon=0.1,
                            block_size=4, scale=1.0)

