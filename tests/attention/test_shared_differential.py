"""Shared DIFF attention (shared base projection + low-rank per-map parts) against a materialised
reference written from the paper's equations: values and gradients, with masks, positions, GQA,
cross attention, extra tokens and KV-cache decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared_attention import Attention, KVCache
from shared_attention.masks import Causal, KeyPadding, SlidingWindow
from shared_attention.positions import ALiBi, CoPE, NoPosition, RoPE, rotate
from shared_attention.score_mods import alibi_slopes
from shared_attention.variants import SharedDifferential

from .conftest import assert_close

TOL = dict(atol=5e-5, rtol=2e-4)


def _randomise(layer: Attention) -> None:
    """Non-trivial low-rank parts (they start at zero) and RMSNorm weights."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in layer.variant.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        layer.variant.norm_weight.uniform_(0.5, 1.5, generator=g)


def _effective(base: torch.nn.Linear, part: torch.nn.Sequential) -> torch.Tensor:
    """W + A B as one (out, in) matrix: the paper's per-map projection."""
    down, up = part
    return base.weight + up.weight @ down.weight


def shared_diff_reference(layer: Attention, x, *, mask=None, context=None, position="none", extra=None):
    """Shared DIFF from its equations: per-map projections W + A_m B_m, per-map RoPE, one dense
    (A_1 - lambda A_2) matrix, RMSNorm, (1 - lambda_init), output projection."""
    var = layer.variant
    batch, length, _ = x.shape
    heads, kv_heads, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    source = x if context is None else context
    w_k, w_v = layer.kv_proj.weight.view(2, kv_heads * d, -1)
    values = (source @ w_v.T).view(batch, -1, kv_heads, d).transpose(1, 2)
    probs = []
    for m in range(2):
        down, up = var.key_parts[m]
        q = (x @ _effective(layer.q_proj, var.query_parts[m]).T).view(batch, length, heads, d).transpose(1, 2)
        k = (source @ (w_k + up.weight @ down.weight).T).view(batch, -1, kv_heads, d).transpose(1, 2)
        if position == "rope" and context is None:
            pos = torch.arange(length)
            q, k = rotate(q, pos), rotate(k, pos)
        if extra is not None:
            k_extra = (extra @ (w_k + up.weight @ down.weight).T).view(batch, -1, kv_heads, d).transpose(1, 2)
            k = torch.cat((k, k_extra), dim=2)
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) * d**-0.5
        if position == "alibi":
            slopes = torch.tensor(alibi_slopes(heads)).view(1, -1, 1, 1)
            distance = torch.arange(k.shape[2]).view(1, -1) - torch.arange(length).view(-1, 1)
            scores = scores + slopes * distance
        if mask is not None:
            scores = scores.masked_fill(~mask.dense(length, k.shape[2]), float("-inf"))
        probs.append(scores.softmax(-1))
    if extra is not None:
        v_extra = (extra @ w_v.T).view(batch, -1, kv_heads, d).transpose(1, 2)
        values = torch.cat((values, v_extra), dim=2)
    values = values.repeat_interleave(heads // kv_heads, dim=1)
    lam = (
        torch.exp((var.lambda_q1 * var.lambda_k1).sum()) - torch.exp((var.lambda_q2 * var.lambda_k2).sum())
        + var.lambda_init
    )
    out = (probs[0] - lam * probs[1]) @ values
    out = out * out.pow(2).mean(-1, keepdim=True).add(var.eps).rsqrt() * var.norm_weight * (1 - var.lambda_init)
    return layer.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


def _compare(layer, x, expected_fn, call, *, inputs):
    out = call()
    expected = expected_fn()
    assert_close(out, expected, **TOL)
    params = [*inputs, *layer.parameters()]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((out * weight).sum(), params, allow_unused=True)
    ref = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    for g, r in zip(got, ref, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            assert_close(g, r, **TOL)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize(
    ("mask_name", "position"),
    [("causal", "rope"), ("causal", "alibi"), ("sliding", "none"), ("padding", "rope"), ("none", "none")],
)
def test_shared_differential_matches_reference(backend, mask_name, position):
    torch.manual_seed(0)
    encodings = {"none": NoPosition(), "rope": RoPE(), "alibi": ALiBi()}
    layer = Attention(24, 4, num_kv_heads=2, head_dim=8, position=encodings[position],
                      variant=SharedDifferential(rank=3, layer_index=2))
    _randomise(layer)
    x = torch.randn(2, 7, 24, requires_grad=True)
    valid = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    masks = {"causal": Causal(), "sliding": SlidingWindow(3), "none": None, "padding": Causal() & KeyPadding(valid=valid)}
    mask = masks[mask_name]
    _compare(layer, x, lambda: shared_diff_reference(layer, x, mask=mask, position=position),
             lambda: layer(x, mask=mask, backend=backend), inputs=[x])


def test_shared_differential_cross_attention_and_extra_tokens():
    torch.manual_seed(1)
    layer = Attention(16, 2, kv_dim=12, head_dim=6, position=RoPE(), variant=SharedDifferential(rank=2))
    _randomise(layer)
    x, context = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 9, 12, requires_grad=True)
    _compare(layer, x, lambda: shared_diff_reference(layer, x, context=context),
             lambda: layer(x, context=context), inputs=[x, context])

    self_layer = Attention(16, 2, head_dim=6, position=RoPE(), variant=SharedDifferential(rank=2))
    _randomise(self_layer)
    extra = torch.randn(2, 3, 16, requires_grad=True)
    _compare(self_layer, x, lambda: shared_diff_reference(self_layer, x, position="rope", extra=extra),
             lambda: self_layer(x, additional_tokens=extra), inputs=[x, extra])


def test_shared_differential_decoding_with_cache_equals_full_pass():
    torch.manual_seed(2)
    layer = Attention(32, 4, num_kv_heads=2, position=RoPE(), variant=SharedDifferential(rank=4)).eval()
    _randomise(layer)
    x = torch.randn(2, 9, 32)
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 9, 2 * layer.head_dim, v_dim=layer.head_dim)  # keys hold both maps
    steps = [layer(x[:, :4], mask=Causal(), cache=cache)]
    steps += [layer(x[:, t : t + 1], mask=Causal(), cache=cache) for t in range(4, 9)]
    assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_shared_differential_starts_from_equal_maps():
    torch.manual_seed(3)
    # Fresh low-rank parts are zero: both maps equal the shared base, so the output is
    # RMSNorm((1 - lambda) softmax(q k^T) v) -- the plain softmax direction of each head.
    layer = Attention(32, 4, variant=SharedDifferential(rank=4)).eval()
    x = torch.randn(1, 6, 32)
    plain = Attention(32, 4).eval()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("variant.")})
    with torch.no_grad():
        heads = plain.q_proj(x).view(1, 6, 4, 8).transpose(1, 2)
        kv = plain.kv_proj(x).view(1, 6, 2, 4, 8).permute(2, 0, 3, 1, 4)
        softmax = (heads @ kv[0].transpose(-1, -2) / 8**0.5).masked_fill(~Causal().dense(6, 6), float("-inf"))
        attended = softmax.softmax(-1) @ kv[1]
        normed = F.rms_norm(attended, (8,), eps=layer.variant.eps) * (1 - layer.variant.lambda_init)
        expected = layer.out_proj(normed.transpose(1, 2).reshape(1, 6, 32))
        assert layer.variant.lambda_full() < 1
        assert_close(layer(x, mask=Causal()), expected, **TOL)
    # Beyond DIFF's lambdas (4 x D) and norm (D): r (dim + H D) per map and side, nothing else.
    rank, dim, width = 4, 32, 32
    assert sum(p.numel() for p in layer.variant.parameters()) == 4 * 8 + 8 + 2 * 2 * rank * (dim + width)


def test_shared_differential_refusals():
    with pytest.raises(ValueError, match="CoPE"):
        Attention(16, 2, position=CoPE(), variant=SharedDifferential())
    with pytest.raises(ValueError, match="Attention\\(variant=SharedDifferential"):
        SharedDifferential().build(num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="rank"):
        Attention(16, 2, variant=SharedDifferential(rank=0))
    layer = Attention(16, 2, variant=SharedDifferential(rank=2))
    with pytest.raises(ValueError, match="cannot take"):  # a cache sized for one map's keys
        layer(torch.randn(1, 2, 16), mask=Causal(), cache=KVCache(1, 2, 4, 8))
