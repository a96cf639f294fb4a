"""NATTEN's functional interface on the core: ``na1d``, ``na2d``, ``na3d``.

A NATTEN user switches with one line, ``from shared_attention import na1d, na2d, na3d``: the same
arguments, the same heads-last layout, the same results. The call builds a ``masks.Neighborhood``
(stride, dilation, causal axes, additional keys) and runs it through the core's dispatch: the Triton
kernel on CUDA, Flex, or the reference math on CPU and MPS. Differentiable, and traceable by
torch.compile.

``TileLayout`` and ``tiled_neighborhood_attention`` keep a model's tokens in tile order (NATTEN's
token permutation): ``layout.to_tiles`` once at the input, the tiled kernel in every attention layer
with no permutation, ``layout.from_tiles`` once at the output.

Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), D head dim, Dv value head dim,
N additional tokens, ``*grid`` the token layout (1-3 axes: (X,), (X, Y) or (X, Y, Z)), L = prod(grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from panformer_kernels.neighborhood_attention import tiled_neighborhood_attention as _tiled_op
from panformer_kernels.tile_layout import TileLayout, default_tile
from shared_attention.functional import attention
from shared_attention.masks import Neighborhood


def _per_axis(fn: str, name: str, value, axes: int, kind: type) -> tuple:
    values = (value,) * axes if isinstance(value, kind) else tuple(value)
    if len(values) != axes or not all(isinstance(x, kind) for x in values):
        raise ValueError(f"{fn}: {name}={value!r} must be one {kind.__name__} or {axes} of them (one per grid axis)")
    return values


def _check(
    fn: str, axes: int, query: Tensor, key: Tensor, value: Tensor, additional_keys: Tensor | None,
    additional_values: Tensor | None, kernel_size, stride, dilation, is_causal,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """The per-axis options, after one-line ValueErrors for what NATTEN rejects."""
    layout = f"[B, {', '.join('XYZ'[:axes])}, H, D]"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != axes + 3:
            raise ValueError(f"{fn}: {name} must be {axes + 3}-D {layout}, got shape {tuple(t.shape)}")
    grid = tuple(query.shape[1 : axes + 1])
    if key.shape[: axes + 1] != query.shape[: axes + 1] or value.shape[:-1] != key.shape[:-1]:
        raise ValueError(
            f"{fn}: key {tuple(key.shape)} and value {tuple(value.shape)} must share query's batch and grid "
            f"{tuple(query.shape[: axes + 1])} and each other's heads"
        )
    heads, kv_heads = query.shape[-2], key.shape[-2]
    if heads % kv_heads or key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"{fn}: key/value heads {kv_heads} must divide query heads {heads} and key head dim {key.shape[-1]} "
            f"match query's {query.shape[-1]} (query {tuple(query.shape)}, key {tuple(key.shape)})"
        )
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{fn}: pass additional_keys and additional_values together, or neither")
    if additional_keys is not None:
        want_k = (query.shape[0], additional_keys.shape[1], kv_heads, key.shape[-1])
        want_v = (query.shape[0], additional_keys.shape[1], kv_heads, value.shape[-1])
        if additional_keys.dim() != 4 or tuple(additional_keys.shape) != want_k or tuple(additional_values.shape) != want_v:
            raise ValueError(
                f"{fn}: additional_keys/values must be [B, N, Hkv, D] = {want_k} / {want_v}, got "
                f"{tuple(additional_keys.shape)} / {tuple(additional_values.shape)}"
            )
    kernel = _per_axis(fn, "kernel_size", kernel_size, axes, int)
    strides = _per_axis(fn, "stride", stride, axes, int)
    dilations = _per_axis(fn, "dilation", dilation, axes, int)
    causal = _per_axis(fn, "is_causal", is_causal, axes, bool)
    if min(kernel) < 1 or min(dilations) < 1:
        raise ValueError(f"{fn}: kernel_size={kernel} and dilation={dilations} must be >= 1")
    if any(k * d > n for k, d, n in zip(kernel, dilations, grid, strict=True)):
        raise ValueError(
            f"{fn}: window kernel_size x dilation = {kernel} x {dilations} is larger than the grid {grid}"
        )
    if any(not 1 <= s <= k for s, k in zip(strides, kernel, strict=True)):
        raise ValueError(f"{fn}: stride={strides} must be between 1 and kernel_size={kernel} per axis")
    return kernel, strides, dilations, causal


def neighborhood_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Neighbourhood attention over a 1-3 axis grid, heads last (NATTEN's layout and semantics).

    Args:
        query: [B, *grid, H, D]; key: [B, *grid, Hkv, D]; value: [B, *grid, Hkv, Dv].
        kernel_size, stride, dilation, is_causal: one value for every axis or one per axis.
            kernel_size x dilation must fit the grid; 1 <= stride <= kernel_size.
        scale: score scale; default D ** -0.5 (as NATTEN, 0 also means the default).
        additional_keys, additional_values: [B, N, Hkv, D] / [B, N, Hkv, Dv], tokens every query attends
            besides its window (registers, text), in the same softmax; never causally masked.
        return_lse: also return each query's log-sum-exp of its scaled scores, [B, *grid, H] (fp32).
        backend: "auto" (the core's dispatch) or a backend name ("reference", "flex", "neighborhood").

    Returns:
        output [B, *grid, H, Dv], and the log-sum-exp when ``return_lse``.
    """
    axes = query.dim() - 3
    if axes not in (1, 2, 3):
        raise ValueError(f"query must be [B, *grid, H, D] with a 1-3 axis grid, got shape {tuple(query.shape)}")
    return _na(
        f"na{axes}d", axes, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
        additional_values, return_lse, backend,
    )


def _na(fn, axes, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
        additional_values, return_lse, backend):
    kernel, strides, dilations, causal = _check(
        fn, axes, query, key, value, additional_keys, additional_values, kernel_size, stride, dilation, is_causal
    )
    batch, *grid, heads, _ = query.shape
    length = math.prod(grid)
    # Heads first, as the core's attention takes them: (B, L, H, D) -> (B, H, L, D), views.
    q = query.reshape(batch, length, heads, -1).transpose(1, 2)
    k = key.reshape(batch, length, key.shape[-2], -1).transpose(1, 2)
    v = value.reshape(batch, length, value.shape[-2], -1).transpose(1, 2)
    extra = 0
    if additional_keys is not None:
        extra = additional_keys.shape[1]
        k = torch.cat([k, additional_keys.transpose(1, 2)], dim=2)  # the grid's keys first
        v = torch.cat([v, additional_values.transpose(1, 2)], dim=2)
    mask = Neighborhood(tuple(grid), kernel, dilations, causal, stride=strides, additional_keys=extra)
    result = attention(q, k, v, mask=mask, scale=scale or None, backend=backend, return_lse=return_lse)
    out, lse = result if return_lse else (result, None)
    out = out.transpose(1, 2).reshape(batch, *grid, heads, out.shape[-1])
    if not return_lse:
        return out
    return out, lse.transpose(1, 2).reshape(batch, *grid, heads)


def na1d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """1-D neighbourhood attention: query [B, X, H, D], key/value [B, X, Hkv, D] (see
    ``neighborhood_attention`` for the arguments)."""
    return _na("na1d", 1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, return_lse, backend)


def na2d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """2-D neighbourhood attention: query [B, X, Y, H, D], key/value [B, X, Y, Hkv, D] (see
    ``neighborhood_attention`` for the arguments)."""
    return _na("na2d", 2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, return_lse, backend)


def na3d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """3-D neighbourhood attention: query [B, X, Y, Z, H, D], key/value [B, X, Y, Z, Hkv, D] (see
    ``neighborhood_attention`` for the arguments)."""
    return _na("na3d", 3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, return_lse, backend)


def tiled_neighborhood_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: TileLayout,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Neighbourhood attention on tokens in ``layout``'s tile order, heads first (the dilation is the layout's).

    Args:
        query: [B, H, Lp, D]; key, value: [B, Hkv, Lp, D], Lp = ``layout.length`` (from ``layout.to_tiles``).
        kernel_size, stride, is_causal: one value for every axis or one per axis, as ``na2d``.
        scale: score scale; default D ** -0.5.
        return_lse: also return the fp32 log-sum-exp [B, H, Lp].

    Returns:
        output [B, H, Lp, D] in tile order (zero at the layout's padding positions), and the log-sum-exp
        when ``return_lse``.
    """
    fn, axes = "tiled_neighborhood_attention", len(layout.grid)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4 or t.shape[2] != layout.length:
            raise ValueError(f"{fn}: {name} must be [B, H, Lp={layout.length}, D] (layout.to_tiles), "
                             f"got shape {tuple(t.shape)}")
    kernel = _per_axis(fn, "kernel_size", kernel_size, axes, int)
    strides = _per_axis(fn, "stride", stride, axes, int)
    causal = _per_axis(fn, "is_causal", is_causal, axes, bool)
    if any(k * d > n for k, d, n in zip(kernel, layout.dilation, layout.grid, strict=True)) or min(kernel) < 1:
        raise ValueError(f"{fn}: window kernel_size x dilation = {kernel} x {layout.dilation} must fit the grid "
                         f"{layout.grid}")
    if any(not 1 <= s <= k for s, k in zip(strides, kernel, strict=True)):
        raise ValueError(f"{fn}: stride={strides} must be between 1 and kernel_size={kernel} per axis")
    return _tiled_op(query, key, value, layout=layout, kernel_size=kernel, causal=causal, stride=strides,
                     scale=scale or None, return_lse=return_lse)


__all__ = ["TileLayout", "default_tile", "na1d", "na2d", "na3d", "neighborhood_attention",
           "tiled_neighborhood_attention"]
