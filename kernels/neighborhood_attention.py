"""2-D neighbourhood attention as the torch custom op ``panformer::neighborhood_attention_2d``.

Tokens of an (n_h, n_w) grid arrive in raster order (q (B, H, L, D), L = n_h * n_w, as the core's
``masks.Neighborhood`` numbers them). Query (r, c) attends, along each axis, the ``kernel`` keys of
its dilation group nearest to it, the window shifted inward at the borders (NAT / NATTEN).

Implementations: on CUDA the Triton kernels of ``triton_neighborhood_attention`` (forward and
backward), which read 2-D tiles of tokens straight from raster order, so a tile of queries walks
only the small rectangle of keys its windows cover. Elsewhere the reference math (the dense neighbourhood mask and a
materialised softmax) runs, forward and backward. The op returns the output and the log-sum-exp of
each query's scores, which the backward op uses.

Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), L tokens, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
# Triton (CUDA)


def triton_neighborhood_attention_2d(
    q: Tensor, k: Tensor, v: Tensor, *, grid, kernel_size, dilation, scale: float, config: dict | None = None
) -> tuple[Tensor, Tensor]:
    """The Triton forward: (out (B, H, L, D), lse fp32 (B, H, L))."""
    from panformer_kernels.triton_neighborhood_attention import neighborhood_forward

    return neighborhood_forward(
        q, k, v, grid=tuple(grid), kernel_size=tuple(kernel_size), dilation=tuple(dilation), scale=scale, config=config
    )


def triton_neighborhood_attention_2d_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, grid, kernel_size,
    dilation, scale: float, config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Triton backward: dq, dk, dv."""
    from panformer_kernels.triton_neighborhood_attention import neighborhood_backward

    return neighborhood_backward(
        grad_out, q, k, v, out, lse, grid=tuple(grid), kernel_size=tuple(kernel_size), dilation=tuple(dilation),
        scale=scale, config=config,
    )


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
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)  # contiguous, as the kernels


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
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


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
    out, _ = torch.ops.panformer.neighborhood_attention_2d(q, k, v, list(grid), list(kernel_size), list(dilation), scale)
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
