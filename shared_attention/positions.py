"""Position encodings as values that ``Attention(position=...)`` builds into modules.

A position module acts at one (or more) of three points of an attention layer:

- ``encode_input(x, positions)``: absolute encodings added to the layer input x (B, L, dim)
  (LearnedAbsolute, Sinusoidal);
- ``encode_qk(q, k, q_positions, k_positions)``: rotations of queries and keys (B, H, L, D) (RoPE);
- ``score_mod(q, k, mask=..., scale=...)``: a ScoreMod on the logits (ALiBi, CoPE).

``positions`` are integer token positions (B, L) or (L,); axial RoPE takes coordinates (B, L, N)
or (L, N), or derives them from its ``grid``. Legend: B batch, H heads, L length, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shared_attention.score_mods import ALiBi as ALiBiScoreMod
from shared_attention.score_mods import Bias, ScoreMod


class PositionModule(nn.Module):
    """No-op hooks; encodings override the ones they use."""

    def default_positions(self, length: int, *, offset: int = 0, device=None) -> Tensor:
        """Positions of ``length`` tokens starting at ``offset`` (L,) (coordinates for axial RoPE)."""
        return torch.arange(offset, offset + length, device=device)

    def encode_input(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def encode_qk(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        return q, k

    def score_mod(self, q: Tensor, k: Tensor, *, mask=None, scale: float) -> ScoreMod | None:
        return None


@dataclass(frozen=True)
class Position:
    """A position encoding value; ``build`` makes its module for one layer."""

    def build(self, *, dim: int, num_heads: int, head_dim: int) -> PositionModule:
        raise NotImplementedError


@dataclass(frozen=True)
class NoPosition(Position):
    """No position information (permutation-equivariant attention, e.g. for sets and graphs)."""

    def build(self, *, dim, num_heads, head_dim):
        return PositionModule()


# --- absolute encodings added to the input -------------------------------------------------------


def sinusoidal_table(positions: Tensor, dim: int, *, base: float = 10000.0) -> Tensor:
    """The Transformer's sinusoids: (..., ) int positions -> (..., dim); sin on even, cos on odd."""
    inv_freq = base ** (
        -torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    )
    angles = positions.float()[..., None] * inv_freq  # (..., ceil(dim / 2))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return table[..., :dim]


@dataclass(frozen=True)
class Sinusoidal(Position):
    """Fixed sinusoidal absolute positions, added to the layer input."""

    base: float = 10000.0

    def build(self, *, dim, num_heads, head_dim):
        return SinusoidalModule(dim=dim, base=self.base)


class SinusoidalModule(PositionModule):
    def __init__(self, *, dim: int, base: float):
        super().__init__()
        self.dim, self.base = dim, base

    def encode_input(self, x, positions):
        return x + sinusoidal_table(positions, self.dim, base=self.base).to(x.dtype).expand_as(x)


@dataclass(frozen=True)
class LearnedAbsolute(Position):
    """A learned embedding per position (positions < max_len), added to the layer input."""

    max_len: int

    def build(self, *, dim, num_heads, head_dim):
        return LearnedAbsoluteModule(dim=dim, max_len=self.max_len)


class LearnedAbsoluteModule(PositionModule):
    def __init__(self, *, dim: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def default_positions(self, length, *, offset=0, device=None):
        self._check(offset + length - 1)  # known on the host: no device sync, nothing for a compiler to trace
        return super().default_positions(length, offset=offset, device=device)

    def encode_input(self, x, positions):
        if positions.device.type == "cpu" and not torch.compiler.is_compiling():
            # Given positions: checked where that costs no device sync (a CUDA index out of range asserts).
            self._check(int(positions.max()))
        return x + self.embedding(positions).to(x.dtype).expand_as(x)

    def _check(self, largest: int) -> None:
        if largest >= self.embedding.num_embeddings:
            raise ValueError(f"position {largest} beyond LearnedAbsolute max_len={self.embedding.num_embeddings}")


# --- rotary -----------------------------------------------------------------------------------------


def rotate(x: Tensor, positions: Tensor, *, base: float = 10000.0) -> Tensor:
    """1-D RoPE on the last dim of x (B, H, L, D) (D even), half-split pairs (i, i + D/2).

    positions (B, L) or (L,). Pair i turns by angle position · base^(-2i / D).
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * inv_freq  # (B, L, D/2) or (L, D/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # broadcast over heads
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


def grid_coordinates(grid: tuple[int, ...], *, device=None) -> Tensor:
    """Row-major coordinates of a flattened grid: (prod(grid), len(grid)) ints."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


@dataclass(frozen=True)
class RoPE(Position):
    """Rotary position embedding.

    axes=1: 1-D RoPE over token positions. axes=N > 1: axial RoPE, the head dim split into N equal
    even parts, part a rotated by coordinate a (images, video, time x channel grids). Axial
    coordinates come from ``positions`` (B, L, N) / (L, N), or from ``grid`` (row-major) when none
    are given.
    """

    base: float = 10000.0
    axes: int = 1
    grid: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.grid is not None and len(self.grid) != self.axes:
            raise ValueError(f"RoPE grid {self.grid} must have axes={self.axes} entries")

    def build(self, *, dim, num_heads, head_dim):
        if head_dim % (2 * self.axes):
            raise ValueError(
                f"RoPE with {self.axes} axes needs head_dim divisible by {2 * self.axes}, got {head_dim}"
            )
        return RoPEModule(base=self.base, axes=self.axes, grid=self.grid)


class RoPEModule(PositionModule):
    def __init__(self, *, base: float, axes: int, grid: tuple[int, ...] | None):
        super().__init__()
        self.base, self.axes, self.grid = base, axes, grid

    def default_positions(self, length, *, offset=0, device=None):
        flat = super().default_positions(length, offset=offset, device=device)
        if self.axes == 1:
            return flat
        if self.grid is None:
            raise ValueError(
                "axial RoPE needs coordinates: pass positions (B, L, N) or give RoPE a grid"
            )
        return grid_coordinates(self.grid, device=device)[flat]

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.axes == 1:
            return rotate(x, positions, base=self.base)
        if positions.shape[-1] != self.axes:
            raise ValueError(
                f"axial RoPE expects coordinates (..., L, {self.axes}), got {tuple(positions.shape)}"
            )
        parts = x.chunk(self.axes, dim=-1)
        return torch.cat(
            [rotate(p, positions[..., a], base=self.base) for a, p in enumerate(parts)], dim=-1
        )

    def encode_qk(self, q, k, q_positions, k_positions):
        return self._rotate(q, q_positions), self._rotate(k, k_positions)


# --- logit-level encodings --------------------------------------------------------------------------


@dataclass(frozen=True)
class ALiBi(Position):
    """ALiBi as a position encoding: the ALiBi score mod with this layer's head count."""

    causal: bool = True

    def build(self, *, dim, num_heads, head_dim):
        return ALiBiModule(ALiBiScoreMod(num_heads=num_heads, causal=self.causal))


class ALiBiModule(PositionModule):
    def __init__(self, mod: ALiBiScoreMod):
        super().__init__()
        self.mod = mod

    def score_mod(self, q, k, *, mask=None, scale):
        return self.mod


@dataclass(frozen=True)
class CoPE(Position):
    """Contextual Position Encoding (Golovneva et al., 2024).

    Positions are counted by gates: p_ij = sum_{t=j..i} sigmoid(q_i · k_t · scale) over allowed
    keys, clamped to max_positions - 1; the logit gains q_i · e[p_ij], with e learned per position
    and interpolated between floor(p) and ceil(p). Materialises (B, H, Lq, Lk); used with Causal().
    """

    max_positions: int = 64

    def build(self, *, dim, num_heads, head_dim):
        return CoPEModule(head_dim=head_dim, max_positions=self.max_positions)


class CoPEModule(PositionModule):
    def __init__(self, *, head_dim: int, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Parameter(torch.zeros(head_dim, max_positions))

    def score_mod(self, q, k, *, mask=None, scale):
        q, k = q.float(), k.float()
        if q.shape[1] != k.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        gates = torch.sigmoid((q @ k.transpose(-2, -1)) * scale)  # (B, H, Lq, Lk)
        if mask is not None:
            gates = gates * mask.dense(q.shape[2], k.shape[2], device=q.device)
        # Position of key j seen from query i: the gates summed from j to the last key.
        pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_positions - 1)
        logits = q @ self.embedding  # (B, H, Lq, max_positions)
        floor = pos.floor()
        frac = pos - floor
        low = logits.gather(-1, floor.long())
        high = logits.gather(-1, pos.ceil().long())
        return Bias(high * frac + low * (1 - frac))


__all__ = [
    "ALiBi",
    "CoPE",
    "LearnedAbsolute",
    "NoPosition",
    "Position",
    "PositionModule",
    "RoPE",
    "Sinusoidal",
    "grid_coordinates",
    "rotate",
    "sinusoidal_table",
]
