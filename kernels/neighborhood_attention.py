"""Neighbourhood attention over 1-D, 2-D and 3-D grids as the torch custom op
``panformer::neighborhood_attention``.

Tokens of a grid arrive in raster order (q (B, H, L, D), L = prod(grid), as the core's
``masks.Neighborhood`` numbers them). Along each axis a query attends the ``kernel`` keys of its
dilation group nearest to it, the window shifted inward at the borders (NAT / NATTEN); along a
causal axis, the ``kernel`` most recent keys of its group, itself included. With a ``stride`` s, runs
of s queries share the window of their leader (the middle one; the last one along a causal axis).

Implementations: on CUDA the Triton kernels of ``triton_neighborhood_attention`` (forward and
backward), which read tiles of tokens straight from raster order, so a tile of queries walks only
the small box of keys its windows cover. Elsewhere the reference math (the dense neighbourhood mask
and a materialised softmax) runs, forward and backward. The op takes every grid as 3 axes (leading
1s for 1-D and 2-D) and returns the output and the log-sum-exp of each query's scores, which the
backward op uses.

``panformer::tiled_neighborhood_attention`` is the same attention on tokens in the tile order of a
``TileLayout`` (``tile_layout``): a tile of the grid is one contiguous run of tokens, so the Triton
kernels of ``triton_tiled_neighborhood_attention`` load dense blocks and skip the window mask on
blocks every query sees whole. ``tiled_neighborhood_attention`` takes tile-ordered tensors (a model
that keeps its tokens in tile order pays no permutation); ``neighborhood_attention(..., tiled=True)``
takes raster order and permutes in and out around the tiled op.

Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), L tokens, D head dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from panformer_kernels.tile_layout import TileLayout, default_tile, tile_layout


def neighborhood_mask(
    grid: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int], causal: Sequence[bool],
    stride: Sequence[int], *, device=None,
) -> Tensor:
    """bool (L, L), raster order: query i (row) sees key j (column)."""
    allowed = torch.ones(1, 1, dtype=torch.bool, device=device)
    for n, k, d, is_causal, s in zip(grid, kernel_size, dilation, causal, stride, strict=True):
        i = torch.arange(n, device=device)
        group, sub = i % d, i // d
        group_size = (n - group + d - 1) // d
        # The query whose window a run of s queries shares (itself when s == 1).
        leader = torch.minimum((sub // s) * s + (s - 1 if is_causal else s // 2), group_size - 1)
        if is_causal:
            start, end = (leader - k + 1).clamp(min=0), sub + 1
        else:
            start = torch.minimum((leader - k // 2).clamp(min=0), (group_size - k).clamp(min=0))
            end = start + k
        ok = (group[None, :] == group[:, None]) & (sub[None, :] >= start[:, None]) & (sub[None, :] < end[:, None])
        # Raster order: this axis varies faster than the ones before it.
        allowed = (allowed[:, None, :, None] & ok[None, :, None, :]).flatten(2, 3).flatten(0, 1)
    return allowed


def _reference_forward(q, k, v, grid, kernel_size, dilation, causal, stride, scale) -> tuple[Tensor, Tensor]:
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    scores = (q.float() @ k.transpose(-2, -1)) * scale
    allowed = neighborhood_mask(grid, kernel_size, dilation, causal, stride, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = scores.logsumexp(-1)
    out = (scores - lse[..., None]).exp() @ v
    return out.to(q.dtype), lse


def _reference_backward(grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, causal, stride, scale):
    batch, heads, length, _ = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    kf, vf = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    do, qf = grad_out.float(), q.float()
    allowed = neighborhood_mask(grid, kernel_size, dilation, causal, stride, device=q.device)
    scores = ((qf @ kf.transpose(-2, -1)) * scale).masked_fill(~allowed, float("-inf"))
    p = (scores - lse[..., None]).exp()  # (B, H, L, L)
    # d lse / d scores = p: an lse gradient enters as a shift of delta = rowsum(dO * O).
    delta = (do * out.float()).sum(-1, keepdim=True) - grad_lse.float()[..., None]
    ds = p * (do @ vf.transpose(-2, -1) - delta)
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-2, -1) @ qf) * scale
    dv = p.transpose(-2, -1) @ do
    # Grouped-query heads: each key/value head's gradient sums over the heads that read it.
    dk = dk.view(batch, kv_heads, group, length, -1).sum(2)
    dv = dv.view(batch, kv_heads, group, length, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------
# Custom ops (grid, kernel_size, dilation, causal, stride: 3 entries each)


@torch.library.custom_op("panformer::neighborhood_attention", mutates_args=())
def _neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: list[int], kernel_size: list[int], dilation: list[int],
    causal: list[bool], stride: list[int], scale: float,
) -> tuple[Tensor, Tensor]:
    return _reference_forward(q, k, v, grid, kernel_size, dilation, causal, stride, scale)


@_neighborhood_attention.register_kernel("cuda")
def _neighborhood_attention_cuda(q, k, v, grid, kernel_size, dilation, causal, stride, scale):
    from panformer_kernels.triton_neighborhood_attention import neighborhood_forward

    return neighborhood_forward(
        q, k, v, grid=tuple(grid), kernel_size=tuple(kernel_size), dilation=tuple(dilation), causal=tuple(causal),
        stride=tuple(stride), scale=scale,
    )


@_neighborhood_attention.register_fake
def _neighborhood_attention_fake(q, k, v, grid, kernel_size, dilation, causal, stride, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)  # contiguous, as the kernels


@torch.library.custom_op("panformer::neighborhood_attention_backward", mutates_args=())
def _neighborhood_attention_backward(
    grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grid: list[int],
    kernel_size: list[int], dilation: list[int], causal: list[bool], stride: list[int], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _reference_backward(
        grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, causal, stride, scale
    )


@_neighborhood_attention_backward.register_kernel("cuda")
def _neighborhood_attention_backward_cuda(
    grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, causal, stride, scale
):
    from panformer_kernels.triton_neighborhood_attention import neighborhood_backward

    return neighborhood_backward(
        grad_out, q, k, v, out, lse, grid=tuple(grid), kernel_size=tuple(kernel_size), dilation=tuple(dilation),
        causal=tuple(causal), stride=tuple(stride), scale=scale, grad_lse=grad_lse,
    )


@_neighborhood_attention_backward.register_fake
def _neighborhood_attention_backward_fake(
    grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, causal, stride, scale
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.options = options


def _backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.contiguous()
    dq, dk, dv = torch.ops.panformer.neighborhood_attention_backward(grad_out, grad_lse, q, k, v, out, lse, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None


_neighborhood_attention.register_autograd(_backward, setup_context=_setup_context)


# Tile order (grid, tile, kernel_size, dilation, causal, stride: 3 entries each). The reference path moves
# the tensors to raster order and back: padding rows come back zero (output, log-sum-exp and gradients).


def _to_tiles(layout: TileLayout, *tensors: Tensor) -> list[Tensor]:
    return [layout.to_tiles(t) if t.dim() == 4 else layout.to_tiles(t[..., None])[..., 0] for t in tensors]


def _from_tiles(layout: TileLayout, *tensors: Tensor) -> list[Tensor]:
    return [layout.from_tiles(t) if t.dim() == 4 else layout.from_tiles(t[..., None])[..., 0] for t in tensors]


@torch.library.custom_op("panformer::tiled_neighborhood_attention", mutates_args=())
def _tiled_neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: list[int], tile: list[int], kernel_size: list[int], dilation: list[int],
    causal: list[bool], stride: list[int], scale: float,
) -> tuple[Tensor, Tensor]:
    layout = tile_layout(tuple(grid), tuple(tile), tuple(dilation))
    out, lse = _reference_forward(*_from_tiles(layout, q, k, v), grid, kernel_size, dilation, causal, stride, scale)
    return tuple(_to_tiles(layout, out, lse))


@_tiled_neighborhood_attention.register_kernel("cuda")
def _tiled_neighborhood_attention_cuda(q, k, v, grid, tile, kernel_size, dilation, causal, stride, scale):
    from panformer_kernels.triton_tiled_neighborhood_attention import tiled_neighborhood_forward

    return tiled_neighborhood_forward(
        q, k, v, layout=tile_layout(tuple(grid), tuple(tile), tuple(dilation)), kernel_size=tuple(kernel_size),
        causal=tuple(causal), stride=tuple(stride), scale=scale,
    )


@_tiled_neighborhood_attention.register_fake
def _tiled_neighborhood_attention_fake(q, k, v, grid, tile, kernel_size, dilation, causal, stride, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("panformer::tiled_neighborhood_attention_backward", mutates_args=())
def _tiled_neighborhood_attention_backward(
    grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grid: list[int],
    tile: list[int], kernel_size: list[int], dilation: list[int], causal: list[bool], stride: list[int], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    layout = tile_layout(tuple(grid), tuple(tile), tuple(dilation))
    raster = _from_tiles(layout, grad_out, grad_lse, q, k, v, out, lse)
    grads = _reference_backward(*raster, grid, kernel_size, dilation, causal, stride, scale)
    return tuple(_to_tiles(layout, *grads))


@_tiled_neighborhood_attention_backward.register_kernel("cuda")
def _tiled_neighborhood_attention_backward_cuda(
    grad_out, grad_lse, q, k, v, out, lse, grid, tile, kernel_size, dilation, causal, stride, scale
):
    from panformer_kernels.triton_tiled_neighborhood_attention import tiled_neighborhood_backward

    return tiled_neighborhood_backward(
        grad_out, q, k, v, out, lse, layout=tile_layout(tuple(grid), tuple(tile), tuple(dilation)),
        kernel_size=tuple(kernel_size), causal=tuple(causal), stride=tuple(stride), scale=scale, grad_lse=grad_lse,
    )


@_tiled_neighborhood_attention_backward.register_fake
def _tiled_neighborhood_attention_backward_fake(
    grad_out, grad_lse, q, k, v, out, lse, grid, tile, kernel_size, dilation, causal, stride, scale
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _tiled_backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.contiguous()
    dq, dk, dv = torch.ops.panformer.tiled_neighborhood_attention_backward(
        grad_out, grad_lse, q, k, v, out, lse, *ctx.options
    )
    return dq, dk, dv, None, None, None, None, None, None, None


_tiled_neighborhood_attention.register_autograd(_tiled_backward, setup_context=_setup_context)


def as_three_axes(
    grid: Sequence[int], kernel_size: int | Sequence[int], dilation: int | Sequence[int],
    causal: bool | Sequence[bool], stride: int | Sequence[int] = 1,
) -> tuple[list[int], list[int], list[int], list[bool], list[int]]:
    """Per-axis options of a 1-3 axis grid, padded with leading size-1 axes to 3."""
    axes = len(grid)
    if axes not in (1, 2, 3):
        raise ValueError(f"neighbourhood attention takes grids of 1-3 axes, got {tuple(grid)}")

    def per_axis(value, name: str, default) -> list:
        values = [value] * axes if isinstance(value, (int, bool)) else list(value)
        if len(values) != axes:
            raise ValueError(f"{name}={value} must have one entry per grid axis {tuple(grid)}")
        return [default] * (3 - axes) + values

    return (
        per_axis(grid, "grid", 1), per_axis(kernel_size, "kernel_size", 1), per_axis(dilation, "dilation", 1),
        [bool(c) for c in per_axis(causal, "causal", False)], per_axis(stride, "stride", 1),
    )


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    grid: Sequence[int],
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    causal: bool | Sequence[bool] = False,
    stride: int | Sequence[int] = 1,
    scale: float | None = None,
    return_lse: bool = False,
    tiled: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """q (B, H, L, D), k and v (B, Hkv, L, D), raster order over a 1-3 axis ``grid`` -> (B, H, L, D),
    and with ``return_lse`` the fp32 log-sum-exp of each query's scores (B, H, L) (natural log).

    ``kernel_size``, ``dilation``, ``causal`` and ``stride`` are one value for every axis or one per axis.
    Differentiable in q, k, v (through the output and the log-sum-exp). Triton on CUDA, reference math
    elsewhere. ``tiled``: permute to the default ``TileLayout``, run the tiled op, permute back (the same
    values; which path is faster is measured by ``apps/bench/tiled_na.py``). Where that layout's order is
    raster order already (1-D grids of whole tiles), the tiled op runs without permuting either way: it skips
    the window mask on blocks every query sees whole (1-D window 1023 on 16384, H100: forward 0.88 ms against
    the raster kernel's 1.31, ``tiled-na-h100.md``).
    """
    grid3, kernel3, dilation3, causal3, stride3 = as_three_axes(grid, kernel_size, dilation, causal, stride)
    if q.shape[2] != math.prod(grid3) or k.shape[2] != q.shape[2]:
        raise ValueError(f"neighborhood_attention wants L = {math.prod(grid3)} tokens of grid {tuple(grid)}; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] or k.shape != v.shape:
        raise ValueError(f"heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}, and k, v alike")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    layout = tile_layout(tuple(grid), default_tile(tuple(grid)), tuple(dilation3[3 - len(grid):]))
    if layout.is_raster_order:
        out, lse = _tiled_op(q, k, v, layout=layout, kernel_size=kernel3, causal=causal3, stride=stride3, scale=scale)
    elif tiled:
        out, lse = _tiled_op(*_to_tiles(layout, q, k, v), layout=layout, kernel_size=kernel3, causal=causal3,
                             stride=stride3, scale=scale)
        out, lse = _from_tiles(layout, out, lse)
    else:
        out, lse = torch.ops.panformer.neighborhood_attention(q, k, v, grid3, kernel3, dilation3, causal3, stride3,
                                                              scale)
    return (out, lse) if return_lse else out


def _tiled_op(q: Tensor, k: Tensor, v: Tensor, *, layout: TileLayout, kernel_size: list[int], causal: list[bool],
              stride: list[int], scale: float) -> tuple[Tensor, Tensor]:
    return torch.ops.panformer.tiled_neighborhood_attention(
        q, k, v, list(layout.grid3), list(layout.tile3), kernel_size, list(layout.dilation3), causal, stride, scale
    )


def tiled_neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    layout: TileLayout,
    kernel_size: int | Sequence[int],
    causal: bool | Sequence[bool] = False,
    stride: int | Sequence[int] = 1,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """q (B, H, Lp, D), k and v (B, Hkv, Lp, D) in ``layout``'s tile order (``layout.to_tiles``) ->
    (B, H, Lp, D) in tile order, and with ``return_lse`` the fp32 log-sum-exp (B, H, Lp).

    The dilation is the layout's; ``kernel_size``, ``causal`` and ``stride`` are one value for every axis
    or one per axis. Padding positions of the layout are never attended; their outputs, log-sum-exps and
    gradients are zero. Differentiable in q, k, v. Triton on CUDA, reference math elsewhere.
    """
    _, kernel3, _, causal3, stride3 = as_three_axes(layout.grid, kernel_size, 1, causal, stride)
    if q.shape[2] != layout.length or k.shape[2] != q.shape[2]:
        raise ValueError(f"tiled_neighborhood_attention wants Lp = {layout.length} tokens of {layout} "
                         f"(layout.to_tiles); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] or k.shape != v.shape:
        raise ValueError(f"heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}, and k, v alike")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = _tiled_op(q, k, v, layout=layout, kernel_size=kernel3, causal=causal3, stride=stride3, scale=scale)
    return (out, lse) if return_lse else out
