"""HiLo attention (LITv2) against its reference: values and gradients, heads split, GQA, extra keys,
the Attention module with RoPE, and the one-line errors where the math does not compose."""

from __future__ import annotations

import pytest
import torch

from shared_attention import ALiBi, Attention, HiLo, Neighborhood, RoPE, attention
from shared_attention.variants.hilo import hilo_attention_reference, pool_windows
from tests.attention.conftest import assert_close, qkv, values_and_grads

CASES = [
    # grid, window, heads, kv_heads, alpha, extra keys
    ((4, 6), 2, 4, 4, 0.5, 0),
    ((4, 6), (2, 3), 4, 2, 0.5, 3),  # GQA: each group is one key/value head
    ((8,), 4, 2, 2, 0.5, 0),
    ((2, 4, 4), (1, 2, 2), 4, 4, 0.75, 2),
    ((6, 6), 3, 5, 5, 0.9, 0),  # LITv2's alpha: floor(0.9 * 5) = 4 Lo-Fi heads
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize(("grid", "window", "heads", "kv_heads", "alpha", "extra"), CASES)
def test_hilo_matches_reference(grid, window, heads, kv_heads, alpha, extra, backend):
    tokens = torch.tensor(grid).prod().item()
    q, k, v = qkv(2, heads, kv_heads, tokens, tokens + extra, 8, requires_grad=True)
    q = q[:, :, :tokens].detach().requires_grad_()  # queries are the grid's tokens only
    variant = HiLo(grid, window_size=window, alpha=alpha)
    module = variant.build(num_heads=heads, head_dim=8)
    out, grads = values_and_grads(lambda q, k, v: module(q, k, v, backend=backend), q, k, v)
    ref, ref_grads = values_and_grads(
        lambda q, k, v: hilo_attention_reference(
            q, k, v, grid=grid, window_size=variant.window_size, lo_heads=module.lo_heads
        ),
        q, k, v,
    )
    assert module.lo_heads == int(heads * alpha)
    assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)


def test_all_hi_fi_is_blocked_window_attention_and_all_lo_fi_attends_window_means():
    grid = (4, 4)
    q, k, v = qkv(1, 2, 2, 16, 16, 8)
    hi = HiLo(grid, window_size=2, alpha=0.0).build(num_heads=2, head_dim=8)
    blocks = torch.arange(16).view(4, 4)
    block_id = (blocks // 4 // 2) * 2 + (blocks % 4) // 2  # the window of each token, by hand
    same = (block_id.flatten()[:, None] == block_id.flatten()[None, :])
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    expected = scores.masked_fill(~same, float("-inf")).softmax(-1) @ v
    assert_close(hi(q, k, v), expected)
    assert_close(hi(q, k, v), attention(q, k, v, mask=Neighborhood(grid, 2, stride=2)))

    lo = HiLo(grid, window_size=2, alpha=1.0).build(num_heads=2, head_dim=8)
    means_k = torch.stack([k[:, :, block_id.flatten() == b].mean(2) for b in range(4)], dim=2)
    means_v = torch.stack([v[:, :, block_id.flatten() == b].mean(2) for b in range(4)], dim=2)
    expected = ((q @ means_k.transpose(-1, -2)) * 8**-0.5).softmax(-1) @ means_v
    assert_close(lo(q, k, v), expected)
    # Window 1: nothing is pooled, Lo-Fi is full attention.
    full = HiLo(grid, window_size=1, alpha=1.0).build(num_heads=2, head_dim=8)
    assert_close(full(q, k, v), attention(q, k, v))


def test_pool_windows_averages_each_window():
    t = torch.arange(16.0).view(1, 1, 16, 1)  # a 4x4 grid, row-major
    pooled = pool_windows(t, (4, 4), (2, 2)).flatten()
    assert pooled.tolist() == [2.5, 4.5, 10.5, 12.5]


def _manual_layer(layer: Attention, x, grid, variant, extra_tokens=None):
    """The Attention layer's math written out: projections, axial RoPE, the HiLo oracle, output projection."""
    b, n, _ = x.shape
    heads, d = layer.num_heads, layer.head_dim
    q = layer.q_proj(x).view(b, n, heads, d).transpose(1, 2)
    k, v = layer.kv_proj(x).view(b, n, 2, layer.num_kv_heads, d).permute(2, 0, 3, 1, 4)
    positions = layer.position.default_positions(n, device=x.device)
    q, k = layer.position.encode_qk(q, k, positions, positions)
    if extra_tokens is not None:
        ek, ev = layer.kv_proj(extra_tokens).view(b, -1, 2, layer.num_kv_heads, d).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([k, ek], 2), torch.cat([v, ev], 2)
    out = hilo_attention_reference(q, k, v, grid=grid, window_size=variant.window_size, lo_heads=layer.variant.lo_heads)
    return layer.out_proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("with_registers", [False, True])
def test_attention_layer_with_hilo_rope_and_additional_tokens(with_registers):
    grid, dim = (4, 4), 32
    variant = HiLo(grid, window_size=2, alpha=0.5)
    layer = Attention(dim, 4, num_kv_heads=2, variant=variant, position=RoPE(axes=2, grid=grid))
    x = torch.randn(2, 16, dim, requires_grad=True)
    extra = torch.randn(2, 3, dim, requires_grad=True) if with_registers else None
    out = layer(x, additional_tokens=extra)
    ref = _manual_layer(layer, x, grid, variant, extra)
    assert_close(out, ref)
    inputs = [x, *([extra] if with_registers else []), *layer.parameters()]
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)


def test_hilo_errors_say_what_does_not_compose():
    grid = (4, 4)
    with pytest.raises(ValueError, match="divide each axis"):
        HiLo((4, 5), window_size=2)
    with pytest.raises(ValueError, match="alpha"):
        HiLo(grid, alpha=1.5)
    with pytest.raises(ValueError, match="one entry per grid axis"):
        HiLo(grid, window_size=(2, 2, 2))
    module = HiLo(grid, alpha=0.5).build(num_heads=4, head_dim=8)
    q, k, v = qkv(1, 4, 4, 16, 16, 8)
    with pytest.raises(ValueError, match="mask=None"):
        module(q, k, v, mask=Neighborhood(grid, 3))
    layer = Attention(32, 4, variant=HiLo(grid, alpha=0.5), position=ALiBi())
    with pytest.raises(ValueError, match="no score mod"):
        layer(torch.randn(1, 16, 32))
    with pytest.raises(ValueError, match="additional_tokens"):  # registers as sequence tokens are off the grid
        module(*qkv(1, 4, 4, 18, 18, 8))
    gqa = HiLo(grid, alpha=0.75).build(num_heads=4, head_dim=8)  # 1 Hi-Fi head, groups of 2
    with pytest.raises(ValueError, match="whole groups"):
        gqa(*qkv(1, 4, 2, 16, 16, 8))
