"""HiLo attention (Pan, Cai & Zhuang 2022, "Fast Vision Transformers with HiLo Attention", LITv2,
arXiv:2205.13213).

The heads of a layer over tokens on a grid (row-major, ``grid`` = (height, width) in the paper; 1-D
and 3-D grids work the same way) are split in two groups, with window size s:

- Hi-Fi (high frequency), the first H - floor(alpha * H) heads: attention within non-overlapping
  s x s windows. This is the core's ``Neighborhood(grid, s, stride=s)`` mask (blocked windows), so it
  runs on every backend that takes neighbourhoods (our Triton kernel on CUDA);
- Lo-Fi (low frequency), the last floor(alpha * H) heads: every query attends keys and values
  average-pooled over each s x s window (L / s^2 keys), a global but coarse view.

Their outputs are concatenated along the heads and go through the layer's output projection.
LITv2 pools the layer input and then projects it to keys and values; averaging commutes with the
(affine) projection, so pooling the projected keys and values here is the same math. LITv2 gives each
group its own output projection (a block-diagonal one); ``Attention`` has one full projection.

Legend: B batch, H query heads (Hkv key/value heads), L = prod(grid) tokens, N additional keys,
D head dim. q (B, H, L, D), k / v (B, Hkv, L + N, D) -> (B, H, L, D). Additional keys (registers,
text tokens: ``Attention(...)(x, additional_tokens=...)``) are attended by both groups, unpooled.
Positions: RoPE and absolute encodings compose (Lo-Fi pools the rotated keys); score mods (ALiBi,
CoPE, biases) and masks index single keys, which Lo-Fi pools away: they raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from shared_attention.entropy import softmax_entropy
from shared_attention.functional import attention
from shared_attention.masks import Neighborhood
from shared_attention.variants.base import Variant, VariantModule


def _per_axis(value: int | tuple[int, ...], grid: tuple[int, ...], name: str) -> tuple[int, ...]:
    value = (value,) * len(grid) if isinstance(value, int) else tuple(value)
    if len(value) != len(grid):
        raise ValueError(f"HiLo {name}={value} must have one entry per grid axis {grid}")
    return value


def pool_windows(t: Tensor, grid: tuple[int, ...], window: tuple[int, ...]) -> Tensor:
    """Average of each window: t (B, H, L, D) over a row-major ``grid`` -> (B, H, L / prod(window), D)."""
    batch, heads, _, dim = t.shape
    split = [size for n, s in zip(grid, window, strict=True) for size in (n // s, s)]
    t = t.reshape(batch, heads, *split, dim)
    window_axes = tuple(range(3, 3 + 2 * len(grid), 2))
    windows = math.prod(n // s for n, s in zip(grid, window, strict=True))
    return t.mean(dim=window_axes).reshape(batch, heads, windows, dim)


class HiLoAttention(VariantModule):
    """Hi-Fi windows on the first heads, pooled global keys on the last ``lo_heads`` heads."""

    def __init__(self, *, grid: tuple[int, ...], window_size: tuple[int, ...], num_heads: int, lo_heads: int) -> None:
        super().__init__()
        self.grid, self.window_size = grid, window_size
        self.num_heads, self.lo_heads = num_heads, lo_heads

    @property
    def hi_heads(self) -> int:
        return self.num_heads - self.lo_heads

    def _split(self, q: Tensor, k: Tensor, v: Tensor, mask, score_mod):
        """The Hi-Fi and Lo-Fi heads' (q, k, v), checked; Lo-Fi keys pooled."""
        if mask is not None:
            raise ValueError(
                "HiLo attention makes its own masks (Hi-Fi windows, Lo-Fi pooled keys): pass mask=None "
                "(extra keys go in as additional_tokens)"
            )
        if score_mod is not None:
            raise ValueError(
                "HiLo attention takes no score mod: Lo-Fi pools the keys a score mod indexes (use RoPE or an "
                "absolute position instead of ALiBi/CoPE/biases)"
            )
        heads, kv_heads, length, kv_len = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
        tokens = math.prod(self.grid)
        if heads != self.num_heads:
            raise ValueError(f"HiLo was built for {self.num_heads} heads, got q with {heads}")
        if length != tokens or kv_len < tokens:
            raise ValueError(
                f"HiLo over grid {self.grid} wants {tokens} queries and at least {tokens} keys, got {length} "
                f"queries and {kv_len} keys (register tokens go in as additional_tokens, not into the sequence)"
            )
        group = heads // kv_heads
        if self.hi_heads % group:
            raise ValueError(
                f"HiLo's {self.hi_heads} Hi-Fi heads must be whole groups of {group} query heads per key/value "
                f"head (num_heads={heads}, num_kv_heads={kv_heads}); change alpha or num_kv_heads"
            )
        hi_kv = self.hi_heads // group
        hi = (q[:, : self.hi_heads], k[:, :hi_kv], v[:, :hi_kv])
        k_lo, v_lo = k[:, hi_kv:], v[:, hi_kv:]
        pooled_k = torch.cat([pool_windows(k_lo[:, :, :tokens], self.grid, self.window_size), k_lo[:, :, tokens:]], 2)
        pooled_v = torch.cat([pool_windows(v_lo[:, :, :tokens], self.grid, self.window_size), v_lo[:, :, tokens:]], 2)
        lo = (q[:, self.hi_heads :], pooled_k, pooled_v)
        hi_mask = Neighborhood(self.grid, self.window_size, stride=self.window_size, additional_keys=kv_len - tokens)
        return hi, lo, hi_mask

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        hi, lo, hi_mask = self._split(q, k, v, mask, score_mod)
        outs = []
        if self.hi_heads:
            outs.append(attention(*hi, mask=hi_mask, scale=scale, backend=backend))
        if self.lo_heads:
            outs.append(attention(*lo, scale=scale, backend=backend))
        return torch.cat(outs, dim=1)

    def attention_entropy(self, q, k, *, mask=None, score_mod=None, scale=None) -> Tensor:
        """Entropy of each head's attention distribution per query (B, H, L), in nats (for the probe)."""
        hi, lo, hi_mask = self._split(q, k, k, mask, score_mod)  # keys in the values' place: unused here
        parts = []
        if self.hi_heads:
            parts.append(softmax_entropy(hi[0], hi[1], mask=hi_mask, scale=scale))
        if self.lo_heads:
            parts.append(softmax_entropy(lo[0], lo[1], scale=scale))
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, window_size={self.window_size}, hi_heads={self.hi_heads}, lo_heads={self.lo_heads}"


def hilo_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    grid: tuple[int, ...],
    window_size: tuple[int, ...],
    lo_heads: int,
    scale: float | None = None,
) -> Tensor:
    """The oracle, in fp32 with materialised scores: Hi-Fi heads mask every pair whose window ids differ,
    Lo-Fi heads attend the window means (a pooling matrix times the keys), extra keys unmasked.
    q (B, H, L, D), k / v (B, Hkv, L + N, D) -> (B, H, L, D)."""
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    heads = q.shape[1]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    tokens = math.prod(grid)
    # Window id of every token: its coordinates divided by the window size, in row-major order.
    coords = torch.stack(torch.unravel_index(torch.arange(tokens), grid), dim=-1)
    windows = tuple(n // s for n, s in zip(grid, window_size, strict=True))
    window_id = ((coords // torch.tensor(window_size)) * torch.tensor(_strides(windows))).sum(-1)

    def softmax_attend(q_: Tensor, k_: Tensor, v_: Tensor, allowed: Tensor | None) -> Tensor:
        scores = (q_ @ k_.transpose(-2, -1)) * scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores.softmax(dim=-1) @ v_

    hi_heads = heads - lo_heads
    outs = []
    if hi_heads:
        extra = k.shape[2] - tokens
        same = window_id[:, None] == window_id[None, :]
        allowed = torch.cat([same, torch.ones(tokens, extra, dtype=torch.bool)], dim=1)
        outs.append(softmax_attend(q[:, :hi_heads], k[:, :hi_heads], v[:, :hi_heads], allowed))
    if lo_heads:
        pooling = torch.zeros(math.prod(windows), tokens)
        pooling[window_id, torch.arange(tokens)] = 1.0 / math.prod(window_size)
        k_lo, v_lo = k[:, hi_heads:], v[:, hi_heads:]
        k_lo = torch.cat([pooling @ k_lo[:, :, :tokens], k_lo[:, :, tokens:]], dim=2)
        v_lo = torch.cat([pooling @ v_lo[:, :, :tokens], v_lo[:, :, tokens:]], dim=2)
        outs.append(softmax_attend(q[:, hi_heads:], k_lo, v_lo, None))
    return torch.cat(outs, dim=1).to(out_dtype)


def _strides(shape: tuple[int, ...]) -> list[int]:
    return [math.prod(shape[i + 1 :]) for i in range(len(shape))]


@dataclass(frozen=True)
class HiLo(Variant):
    """HiLo attention over tokens on ``grid``: windows of ``window_size`` (s, or one per axis) on the
    Hi-Fi heads, window-pooled keys on the Lo-Fi heads, ``alpha`` the fraction of Lo-Fi heads (floor of
    alpha * H, as LITv2; 0.9 is its default). Each grid axis must be a multiple of its window size."""

    grid: tuple[int, ...]
    window_size: int | tuple[int, ...] = 2
    alpha: float = 0.9

    def __post_init__(self):
        grid = tuple(self.grid)
        if not 1 <= len(grid) <= 3:
            raise ValueError(f"HiLo grid must have 1-3 axes, got {grid}")
        window = _per_axis(self.window_size, grid, "window_size")
        if any(s < 1 or n % s for n, s in zip(grid, window, strict=True)):
            raise ValueError(f"HiLo window_size={window} must be >= 1 and divide each axis of grid {grid} (pad the grid)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"HiLo alpha={self.alpha} (the fraction of Lo-Fi heads) must be in [0, 1]")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "window_size", window)

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return HiLoAttention(
            grid=self.grid, window_size=self.window_size, num_heads=num_heads, lo_heads=int(num_heads * self.alpha)
        )
