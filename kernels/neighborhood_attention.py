"""2-D neighbourhood attention as the torch custom op ``panformer::neighborhood_attention_2d``.

Tokens of an (n_h, n_w) grid arrive in raster order (q (B, H, L, D), L = n_h * n_w, as the core's
``masks.Neighborhood`` numbers them). Query (r, c) attends, along each axis, the ``kernel`` keys of
its dilation group nearest to it, the window shifted inward at the borders (NAT / NATTEN).

Implementations: on CUDA the Triton kernels of ``triton_neighborhood_attention`` (forward and
backward) run over a *tiled* token order: the tokens are gathered tile by tile (tiles of
``tile`` = (8, 8) cells), so a query tile's neighbourhoods lie in a few key tiles; outputs are
scattered back to raster order. Elsewhere the reference math (the dense neighbourhood mask and a
materialised softmax) runs, forward and backward. The op returns the output and the log-sum-exp of
each query's scores, which the backward op uses.

Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), L tokens, Lt tokens in tiled
order (the grid padded to whole tiles), D head dim.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

DEFAULT_TILE = (8, 8)


def default_tile(grid) -> tuple[int, int]:
    """Cells per tile: 8 x 8 on a 2-D grid, a run of 64 on a 1-D one (a grid of one row)."""
    return (1, 64) if grid[0] == 1 else DEFAULT_TILE


def neighborhood_mask_2d(
    grid: tuple[int, int], kernel_size: tuple[int, int], dilation: tuple[int, int], *, device=None
) -> Tensor:
    """bool (L, L), raster order: query i (row) sees key j (column)."""
    allowed = None
    for axis in range(2):
        n, k, d = grid[axis], kernel_size[axis], dilation[axis]
        i = torch.arange(n, device=device)
        group, group_size = i % d, (n - i % d + d - 1) // d
        start = (i // d - k // 2).clamp(min=0)
        start = torch.minimum(start, (group_size - k).clamp(min=0))
        ok = (group[None, :] == group[:, None]) & (i[None, :] // d >= start[:, None]) & (i[None, :] // d < start[:, None] + k)
        # Expand this axis' (n, n) relation to the raster (L, L) layout.
        ok = ok[:, None, :, None] if axis == 0 else ok[None, :, None, :]
        allowed = ok if allowed is None else allowed & ok
    n_h, n_w = grid
    return allowed.reshape(n_h * n_w, n_h * n_w)


def _reference_forward(q, k, v, grid, kernel_size, dilation, scale) -> tuple[Tensor, Tensor]:
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    scores = (q.float() @ k.transpose(-2, -1)) * scale
    allowed = neighborhood_mask_2d(grid, kernel_size, dilation, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = scores.logsumexp(-1)
    out = (scores - lse[..., None]).exp() @ v
    return out.to(q.dtype), lse


def _reference_backward(grad_out, q, k, v, out, lse, grid, kernel_size, dilation, scale):
    batch, heads, length, _ = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    kf, vf = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    do, qf = grad_out.float(), q.float()
    allowed = neighborhood_mask_2d(grid, kernel_size, dilation, device=q.device)
    scores = ((qf @ kf.transpose(-2, -1)) * scale).masked_fill(~allowed, float("-inf"))
    p = (scores - lse[..., None]).exp()  # (B, H, L, L)
    delta = (do * out.float()).sum(-1, keepdim=True)
    ds = p * (do @ vf.transpose(-2, -1) - delta)
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-2, -1) @ qf) * scale
    dv = p.transpose(-2, -1) @ do
    # Grouped-query heads: each key/value head's gradient sums over the heads that read it.
    dk = dk.view(batch, kv_heads, group, length, -1).sum(2)
    dv = dv.view(batch, kv_heads, group, length, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------
# Tiled token order


@functools.cache
def _tiled_indices(grid: tuple[int, int], tile: tuple[int, int], device: str) -> tuple[Tensor, Tensor]:
    """(gather (Lt,), scatter (L,)): raster index of each tiled slot (L for a padded cell), and the
    tiled slot of each raster index."""
    (n_h, n_w), (t_h, t_w) = grid, tile
    tiles_h, tiles_w = -(-n_h // t_h), -(-n_w // t_w)
    slot = torch.arange(tiles_h * tiles_w * t_h * t_w)
    tile_index, within = slot // (t_h * t_w), slot % (t_h * t_w)
    row = tile_index // tiles_w * t_h + within // t_w
    col = tile_index % tiles_w * t_w + within % t_w
    real = (row < n_h) & (col < n_w)
    gather = torch.where(real, row * n_w + col, n_h * n_w)
    scatter = torch.empty(n_h * n_w, dtype=torch.long)
    scatter[gather[real]] = slot[real]
    return gather.to(device), scatter.to(device)


def to_tiled(x: Tensor, grid: tuple[int, int], tile: tuple[int, int] = DEFAULT_TILE) -> Tensor:
    """x (B, H, L, D) raster -> (B * H, Lt, D) tiled, padded cells zero."""
    gather, _ = _tiled_indices(tuple(grid), tuple(tile), str(x.device))
    padded = torch.cat((x, x.new_zeros(*x.shape[:2], 1, x.shape[3])), dim=2)
    return padded[:, :, gather].flatten(0, 1).contiguous()


def from_tiled(x: Tensor, heads: int, grid: tuple[int, int], tile: tuple[int, int] = DEFAULT_TILE) -> Tensor:
    """x (B * H, Lt, D) tiled -> (B, H, L, D) raster (padded cells dropped)."""
    _, scatter = _tiled_indices(tuple(grid), tuple(tile), str(x.device))
    return x[:, scatter].unflatten(0, (-1, heads))


def triton_neighborhood_attention_2d(
    q: Tensor, k: Tensor, v: Tensor, *, grid, kernel_size, dilation, scale: float, tile=DEFAULT_TILE
) -> tuple[Tensor, Tensor]:
    """The Triton forward on raster-order tensors: (out (B, H, L, D), lse fp32 (B, H, L))."""
    from panformer_kernels.triton_neighborhood_attention import neighborhood_forward

    heads, tile = q.shape[1], tuple(tile or default_tile(grid))
    out, lse = neighborhood_forward(
        to_tiled(q, grid, tile), to_tiled(k, grid, tile), to_tiled(v, grid, tile), heads=heads,
        grid=tuple(grid), kernel_size=tuple(kernel_size), dilation=tuple(dilation), scale=scale, tile=tuple(tile),
    )
    return from_tiled(out, heads, grid, tile), from_tiled(lse[..., None], heads, grid, tile)[..., 0]


def triton_neighborhood_attention_2d_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, grid, kernel_size,
    dilation, scale: float, tile=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Triton backward on raster-order tensors: dq, dk, dv."""
    from panformer_kernels.triton_neighborhood_attention import neighborhood_backward

    heads, kv_heads, tile = q.shape[1], k.shape[1], tuple(tile or default_tile(grid))
    tiled = [to_tiled(t, grid, tile) for t in (grad_out, q, k, v, out)]
    lse_tiled = to_tiled(lse[..., None], grid, tile)[..., 0].contiguous()
    dq, dk, dv = neighborhood_backward(
        *tiled, lse_tiled, heads=heads, grid=tuple(grid), kernel_size=tuple(kernel_size),
        dilation=tuple(dilation), scale=scale, tile=tuple(tile),
    )
    return from_tiled(dq, heads, grid, tile), from_tiled(dk, kv_heads, grid, tile), from_tiled(dv, kv_heads, grid, tile)


# --------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("panformer::neighborhood_attention_2d", mutates_args=())
def _neighborhood_attention_2d(
    q: Tensor, k: Tensor, v: Tensor, grid: list[int], kernel_size: list[int], dilation: list[int], scale: float
) -> tuple[Tensor, Tensor]:
    return _reference_forward(q, k, v, grid, kernel_size, dilation, scale)


@_neighborhood_attention_2d.register_kernel("cuda")
def _neighborhood_attention_2d_cuda(q, k, v, grid, kernel_size, dilation, scale):
    return triton_neighborhood_attention_2d(q, k, v, grid=grid, kernel_size=kernel_size, dilation=dilation, scale=scale)


@_neighborhood_attention_2d.register_fake
def _neighborhood_attention_2d_fake(q, k, v, grid, kernel_size, dilation, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("panformer::neighborhood_attention_2d_backward", mutates_args=())
def _neighborhood_attention_2d_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grid: list[int],
    kernel_size: list[int], dilation: list[int], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _reference_backward(grad_out, q, k, v, out, lse, grid, kernel_size, dilation, scale)


@_neighborhood_attention_2d_backward.register_kernel("cuda")
def _neighborhood_attention_2d_backward_cuda(grad_out, q, k, v, out, lse, grid, kernel_size, dilation, scale):
    return triton_neighborhood_attention_2d_backward(
        grad_out, q, k, v, out, lse, grid=grid, kernel_size=kernel_size, dilation=dilation, scale=scale
    )


@_neighborhood_attention_2d_backward.register_fake
def _neighborhood_attention_2d_backward_fake(grad_out, q, k, v, out, lse, grid, kernel_size, dilation, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, grid, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.options = (grid, kernel_size, dilation, scale)


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.panformer.neighborhood_attention_2d_backward(
        grad_out.contiguous(), q, k, v, out, lse, *ctx.options
    )
    return dq, dk, dv, None, None, None, None


_neighborhood_attention_2d.register_autograd(_backward, setup_context=_setup_context)


def neighborhood_attention_2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    grid: tuple[int, int],
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    scale: float | None = None,
) -> Tensor:
    """q (B, H, L, D), k and v (B, Hkv, L, D), raster order over ``grid`` -> (B, H, L, D).

    Differentiable in q, k, v (the log-sum-exp output is not). Triton on CUDA, reference math elsewhere.
    A 1-D neighbourhood is the grid (1, n) with kernel size (1, k) and dilation (1, d): see
    ``neighborhood_attention``.
    """
    pair = lambda x: (x, x) if isinstance(x, int) else tuple(x)  # noqa: E731
    grid, kernel_size, dilation = tuple(grid), pair(kernel_size), pair(dilation)
    if len(grid) != 2 or q.shape[2] != grid[0] * grid[1] or k.shape[2] != q.shape[2]:
        raise ValueError(f"neighborhood_attention_2d wants L = n_h * n_w tokens of grid {grid}; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] or k.shape != v.shape:
        raise ValueError(f"heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}, and k, v alike")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, _ = torch.ops.panformer.neighborhood_attention_2d(
        q.contiguous(), k.contiguous(), v.contiguous(), list(grid), list(kernel_size), list(dilation), scale
    )
    return out


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    grid: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    scale: float | None = None,
) -> Tensor:
    """1-D or 2-D neighbourhood attention (``grid`` (n,) or (n_h, n_w)); see ``neighborhood_attention_2d``."""
    if len(grid) == 1:
        first = lambda x: x if isinstance(x, int) else x[0]  # noqa: E731
        grid, kernel_size, dilation = (1, grid[0]), (1, first(kernel_size)), (1, first(dilation))
    return neighborhood_attention_2d(q, k, v, grid=grid, kernel_size=kernel_size, dilation=dilation, scale=scale)
