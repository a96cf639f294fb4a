"""Tile order for the tokens of a 1-D, 2-D or 3-D grid: the token permutation of NATTEN's Generalized
Neighborhood Attention, which lets a neighbourhood kernel read dense, contiguous blocks of queries and
keys instead of gathering rows out of raster order.

Along an axis of n cells with dilation d, the cells of dilation group g (index mod d == g) form a
sub-grid of ceil((n - g) / d) cells; a query only ever sees keys of its own group. Tile order lays
the tokens out group by group, each group's sub-grid cut into tiles of ``tile`` cells (powers of two),
tile by tile in row-major order, and the cells of a tile row-major inside it: a tile is one
contiguous run of prod(tile) tokens. Every group's sub-grid is padded to the same whole number of
tiles (that of the largest group), so the tile-ordered sequence has ``length`` >= L tokens; the
padding tokens (``valid`` False) are zeros on the way in, must be treated as invalid keys by whatever
reads them, and are dropped on the way back.

Raster axis index i = g + d * s (s the sub-grid cell) = g + d * (tile * T + a): so padding the grid to
``padded_grid`` and viewing each axis as (tiles, T, d) makes the permutation one transpose.

Legend: ``...`` any leading dims (B, H or B alone), L grid tokens in raster order, Lp = ``length``
tokens in tile order, C channels (D per head, or a model's width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _three(values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    return (fill,) * (3 - len(values)) + tuple(values)


@dataclass(frozen=True)
class TileLayout:
    """The tile order of a ``grid`` (1-3 axes) with per-axis ``dilation``, in tiles of ``tile`` cells.

    ``to_tiles`` / ``from_tiles`` move the token axis (dim -2) of any tensor between raster and tile
    order, differentiably; a model can move its activations once at the input and keep them in tile
    order across layers (token-wise layers do not care about the order), calling the tiled
    neighbourhood attention in between, and move back once at the output.
    """

    grid: tuple[int, ...]
    tile: tuple[int, ...]
    dilation: tuple[int, ...] | int = 1

    def __post_init__(self):
        axes = len(self.grid)
        dilation = (self.dilation,) * axes if isinstance(self.dilation, int) else tuple(self.dilation)
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "tile", tuple(self.tile))
        object.__setattr__(self, "dilation", dilation)
        if axes not in (1, 2, 3) or len(self.tile) != axes or len(dilation) != axes:
            raise ValueError(f"TileLayout wants 1-3 grid axes and one tile size and dilation per axis, got "
                             f"grid={self.grid}, tile={self.tile}, dilation={self.dilation}")
        if any(t < 1 or t & (t - 1) for t in self.tile):
            raise ValueError(f"TileLayout tile={self.tile} must be powers of two (1, 2, 4, ...) per axis")
        if any(not 1 <= d <= n for d, n in zip(dilation, self.grid, strict=True)):
            raise ValueError(f"TileLayout dilation={dilation} must be between 1 and the grid {self.grid} per axis")

    # Sizes, all as 3 axes (depth, rows, columns; leading 1s for 1-D and 2-D grids), computed once per
    # layout: every kernel launch reads them (host time per call) ----------------------------------------

    @cached_property
    def grid3(self) -> tuple[int, int, int]:
        return _three(self.grid, 1)

    @cached_property
    def tile3(self) -> tuple[int, int, int]:
        return _three(self.tile, 1)

    @cached_property
    def dilation3(self) -> tuple[int, int, int]:
        return _three(self.dilation, 1)

    @cached_property
    def tiles3(self) -> tuple[int, int, int]:
        """Tiles per axis of every dilation group's sub-grid (that of the largest group)."""
        return tuple(_ceil_div(_ceil_div(n, d), t) for n, d, t in zip(self.grid3, self.dilation3, self.tile3, strict=True))

    @cached_property
    def padded_grid(self) -> tuple[int, int, int]:
        return tuple(d * m * t for d, m, t in zip(self.dilation3, self.tiles3, self.tile3, strict=True))

    @cached_property
    def num_tokens(self) -> int:
        """L: the grid's tokens."""
        return math.prod(self.grid)

    @cached_property
    def length(self) -> int:
        """Lp: tokens in tile order, padding included."""
        return math.prod(self.padded_grid)

    @cached_property
    def is_raster_order(self) -> bool:
        """Tile order is raster order: no dilation, no padding, and the permutation only moves axes of size 1
        (e.g. 1-D grids that are whole tiles), so raster tensors can go to the tiled kernels as they are."""
        if self.dilation3 != (1, 1, 1) or self.length != self.num_tokens:
            return False
        (m_t, m_h, m_w), (t_t, t_h, t_w) = self.tiles3, self.tile3
        raster = [("mt", m_t), ("tt", t_t), ("mh", m_h), ("th", t_h), ("mw", m_w), ("tw", t_w)]
        tiles = [("mt", m_t), ("mh", m_h), ("mw", m_w), ("tt", t_t), ("th", t_h), ("tw", t_w)]
        return [a for a, n in raster if n > 1] == [a for a, n in tiles if n > 1]

    # Permutations ---------------------------------------------------------------------------------

    def _split_axes(self) -> tuple[int, ...]:
        """The padded grid viewed as (tiles, T, d) per axis."""
        return tuple(x for m, t, d in zip(self.tiles3, self.tile3, self.dilation3, strict=True) for x in (m, t, d))

    def to_tiles(self, x: Tensor) -> Tensor:
        """(..., L, C) raster order -> (..., Lp, C) tile order, padding tokens zero."""
        if x.dim() < 2 or x.shape[-2] != self.num_tokens:
            raise ValueError(f"to_tiles wants (..., L={self.num_tokens}, C) for grid {self.grid}, got {tuple(x.shape)}")
        lead, channels = x.shape[:-2], x.shape[-1]
        cells = x.reshape(-1, *self.grid3, channels)
        pads = [p - n for p, n in zip(self.padded_grid, self.grid3, strict=True)]
        if any(pads):
            cells = F.pad(cells, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        # (N, tiles_t, T_t, d_t, tiles_h, T_h, d_h, tiles_w, T_w, d_w, C) -> groups, tiles, cells in a tile.
        split = cells.reshape(-1, *self._split_axes(), channels)
        return split.permute(0, 3, 6, 9, 1, 4, 7, 2, 5, 8, 10).reshape(*lead, self.length, channels)

    def from_tiles(self, x: Tensor) -> Tensor:
        """(..., Lp, C) tile order -> (..., L, C) raster order, padding tokens dropped."""
        if x.dim() < 2 or x.shape[-2] != self.length:
            raise ValueError(f"from_tiles wants (..., Lp={self.length}, C) for {self}, got {tuple(x.shape)}")
        lead, channels = x.shape[:-2], x.shape[-1]
        (m_t, m_h, m_w), (t_t, t_h, t_w), (d_t, d_h, d_w) = self.tiles3, self.tile3, self.dilation3
        split = x.reshape(-1, d_t, d_h, d_w, m_t, m_h, m_w, t_t, t_h, t_w, channels)
        cells = split.permute(0, 4, 7, 1, 5, 8, 2, 6, 9, 3, 10).reshape(-1, *self.padded_grid, channels)
        n_t, n_h, n_w = self.grid3
        return cells[:, :n_t, :n_h, :n_w].reshape(*lead, self.num_tokens, channels)

    def valid(self, device: torch.device | str | None = None) -> Tensor:
        """bool (Lp,): which tile-order positions hold a grid token (False: padding)."""
        ones = torch.ones(self.num_tokens, 1, dtype=torch.bool, device=device)
        return self.to_tiles(ones)[:, 0]

    def raster_index(self, device: torch.device | str | None = None) -> Tensor:
        """long (Lp,): the raster index of the token at each tile-order position, -1 for padding."""
        index = torch.arange(1, self.num_tokens + 1, device=device)[:, None]
        return self.to_tiles(index)[:, 0] - 1


@lru_cache(maxsize=256)
def tile_layout(grid: tuple[int, ...], tile: tuple[int, ...], dilation: tuple[int, ...] | int = 1) -> TileLayout:
    """One shared ``TileLayout`` per (grid, tile, dilation), so that its sizes are computed once rather than at
    every call (the ops rebuild the layout from their list arguments)."""
    return TileLayout(grid, tile, dilation)


def default_tile(grid: tuple[int, ...]) -> tuple[int, ...]:
    """A tile for a 1-3 axis grid: runs of 64 in 1-D, 8 x 8 cells (of one depth slice) in 2-D and 3-D.

    Square tiles waste least of a square window's box: for 15 x 15 windows on 128 x 128, 8 x 8 tiles walk
    2.4 keys per visible one, 8 x 16 tiles 4.5 (whole blocks of 16 columns)."""
    if len(grid) == 1:
        # Measured on an H100 (tiled-na-h100.md, window 1023 on 16384, D=128, bf16): tiles of 64 ran the
        # forward in 0.88 ms and the backward in 3.2 ms, tiles of 128 in 1.2 and 10.7 ms.
        return (64,)
    return (1, 8, 8) if len(grid) == 3 else (8, 8)


__all__ = ["TileLayout", "default_tile", "tile_layout"]
