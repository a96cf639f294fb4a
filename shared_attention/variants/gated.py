"""MossFormer's gated single-head attention unit with joint local and global attention
(Zhao & Ma 2023, "MossFormer"; Zhao et al. 2024, "MossFormer2"), built on FLASH's mixed chunk
attention (Hua et al. 2022, "Transformer Quality in Linear Time").

Legend: B batch, L length, Z query/key width, E value width, g chunk size. One layer on x (B, L, dim):

    x' = token-shift(x)                               half the channels see the previous step
    v, u = split(FFConvM(x'))                         two (B, L, E) branches, E = dim * expansion / 2
    z = FFConvM(x')                                   a small shared (B, L, Z) representation
    quad_q, lin_q, quad_k, lin_k = z * gamma_i + beta_i     per-dimension scale and offset
    (rotary on the first ``rotary_dim`` features of all four)
    att = local(quad_q, quad_k) + global(lin_q, lin_k)      applied to v and to u (shared scores)
    out = x + FFConvM((att_u * v) * sigmoid(att_v * u))

``local`` is quadratic attention relu(q k^T / g)^2 within non-overlapping chunks of g tokens;
``global`` is linear attention across the sequence: over all tokens, divided by L (non-causal), or
over the previous chunks, divided by g (causal). FFConvM is norm -> linear -> SiLU -> depthwise
conv (kernel 17, residual) -> dropout.

On CUDA without dropout on the weights, the whole joint attention runs as the fused
``panformer::local_global_attention`` op (1.5-2x torch.compile'd torch forward on an H200,
apps/bench/results/gated-h200.md). Otherwise, the causal global part runs on the
``panformer::causal_linear_attention`` op: the op sums over
j <= i, so the chunk's own (j in chunk, j <= i) linear terms are subtracted in the local part,
which already forms those scores. With ``causal=True`` the depthwise convolutions are made causal
(left padding) so no future token leaks in; MossFormer itself is non-causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panformer_kernels import causal_linear_attention, local_global_attention
from shared_attention.positions import rotate


def _pad_to_chunks(t: Tensor, chunk: int) -> Tensor:
    return F.pad(t, (0, 0, 0, -t.shape[-2] % chunk))


def _in_product_dtype(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to one dtype for an op that autocast does not cover: the autocast dtype when it is on (the
    precision of the torch path's products), else the last tensor's (the value's)."""
    device = tensors[-1].device.type
    on = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if on else tensors[-1].dtype
    return tuple(t.to(dtype) for t in tensors)


def gated_local_global_attention(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    value: Tensor,
    *,
    chunk_size: int,
    causal: bool,
    key_valid: Tensor | None = None,
    dropout: nn.Module | None = None,
) -> Tensor:
    """MossFormer's joint attention: quadratic within chunks plus linear across them.

    quad_q, quad_k, lin_q, lin_k: (B, L, Z); value: (B, L, E) (MossFormer passes [v, u] together,
    since both branches share the scores); key_valid: bool (B, L), True = real token.
    Returns (B, L, E).
    """
    no_dropout = dropout is None or not dropout.training or getattr(dropout, "p", 1.0) == 0.0
    if value.is_cuda and no_dropout:
        # The fused op (Triton): the (g, g) weights never reach memory; key_valid handled inside. Under
        # autocast the scaled q/k arrive in fp32 and value in bf16: run all in the precision the
        # torch path's products would use.
        quad_q, quad_k, lin_q, lin_k, value = _in_product_dtype(quad_q, quad_k, lin_q, lin_k, value)
        return local_global_attention(
            quad_q, quad_k, lin_q, lin_k, value, chunk_size=chunk_size, causal=causal, key_valid=key_valid
        )
    length = value.shape[1]
    g = chunk_size
    if key_valid is not None:
        lin_k = lin_k * key_valid[..., None].to(lin_k.dtype)

    # Local: relu(q k^T / g)^2 within each chunk of g tokens.
    qq, qk, lq, lk, vv = (_pad_to_chunks(t, g).unflatten(1, (-1, g)) for t in (quad_q, quad_k, lin_q, lin_k, value))
    local = F.relu(qq @ qk.transpose(-1, -2) / g) ** 2  # (B, N, g, g)
    if dropout is not None:
        local = dropout(local)
    if key_valid is not None:
        keep = _pad_to_chunks(key_valid[..., None], g).unflatten(1, (-1, g))  # (B, N, g, 1)
        local = local * keep.transpose(-1, -2).to(local.dtype)
    # Keys padded past L carry zero values, so they add nothing without a mask.
    if causal:
        tril = torch.ones(g, g, dtype=torch.bool, device=value.device).tril()
        local = local.masked_fill(~tril, 0.0)
        # The op below also sums this chunk's (j <= i) linear terms: take them out here.
        local = local - (lq @ lk.transpose(-1, -2) / g).masked_fill(~tril, 0.0)
        out = (local @ vv).flatten(1, 2)[:, :length]
        return out + causal_linear_attention(*_in_product_dtype(lin_q / g, lin_k, value))
    out = (local @ vv).flatten(1, 2)[:, :length]
    # Global, non-causal: lin_q (sum_j lin_k_j v_j^T) / L over the whole sequence.
    return out + lin_q @ (lin_k.transpose(-1, -2) @ value) / length


def gated_local_global_attention_reference(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    value: Tensor,
    *,
    chunk_size: int,
    causal: bool,
    key_valid: Tensor | None = None,
) -> Tensor:
    """The same math with the full (L, L) weight matrix materialised in fp32 (or fp64): the oracle."""
    compute = torch.promote_types(value.dtype, torch.float32)
    qq, qk, lq, lk, vv = (t.to(compute) for t in (quad_q, quad_k, lin_q, lin_k, value))
    length, g = value.shape[1], chunk_size
    pos = torch.arange(length, device=value.device)
    same_chunk = (pos[:, None] // g) == (pos[None, :] // g)
    earlier_chunk = (pos[:, None] // g) > (pos[None, :] // g)
    causal_pairs = pos[:, None] >= pos[None, :]

    local = F.relu(qq @ qk.transpose(-1, -2) / g) ** 2
    local = local * (same_chunk & causal_pairs if causal else same_chunk)
    lin = lq @ lk.transpose(-1, -2)
    lin = lin * earlier_chunk / g if causal else lin / length
    weights = local + lin
    if key_valid is not None:
        weights = weights * key_valid[:, None, :]
    return (weights @ vv).to(value.dtype)


class ScaleNorm(nn.Module):
    """x / (||x|| / sqrt(dim)) * g with one learned gain (MossFormer's default norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.norm(dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.gain


class DepthwiseConvResidual(nn.Module):
    """x + depthwise_conv1d(x) over the sequence; x (B, L, C). Causal: left padding only."""

    def __init__(self, channels: int, *, kernel_size: int = 17, causal: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)
        self.padding = (kernel_size - 1, 0) if causal else ((kernel_size - 1) // 2,) * 2

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)


class FFConvM(nn.Sequential):
    """norm -> linear -> SiLU -> depthwise conv (residual) -> dropout; (B, L, d_in) -> (B, L, d_out)."""

    def __init__(self, dim_in: int, dim_out: int, *, norm: str, dropout: float, causal: bool) -> None:
        super().__init__(
            ScaleNorm(dim_in) if norm == "scalenorm" else nn.LayerNorm(dim_in),
            nn.Linear(dim_in, dim_out),
            nn.SiLU(),
            DepthwiseConvResidual(dim_out, causal=causal),
            nn.Dropout(dropout),
        )


class GatedLocalGlobalAttention(nn.Module):
    """MossFormer / MossFormer2's gated single-head attention layer (FLASH_ShareA_FFConvM).

    Args:
        dim: width of x (B, L, dim).
        chunk_size: g, the local attention's chunk (MossFormer: 256).
        query_key_dim: Z, the width of the shared z and of the four q/k (MossFormer: 128).
        expansion_factor: hidden width dim * expansion, split into the v and u branches (4).
        causal: causal local and global attention (and causal convolutions).
        dropout: dropout in the FFConvM blocks and on the local attention weights.
        rotary_dim: features of q/k that get rotary positions (MossFormer: min(32, Z)); 0 = none.
        norm: "scalenorm" (MossFormer's default) or "layernorm".
        shift_tokens: shift half the channels one step forward in time before projecting.
    """

    def __init__(
        self,
        dim: int,
        *,
        chunk_size: int = 256,
        query_key_dim: int = 128,
        expansion_factor: float = 4.0,
        causal: bool = False,
        dropout: float = 0.1,
        rotary_dim: int = 32,
        norm: str = "scalenorm",
        shift_tokens: bool = True,
    ) -> None:
        super().__init__()
        hidden = int(dim * expansion_factor)
        if hidden % 2:
            raise ValueError(f"dim * expansion_factor = {hidden} must be even (split into v and u)")
        self.chunk_size, self.causal, self.shift_tokens = chunk_size, causal, shift_tokens
        self.rotary_dim = min(rotary_dim, query_key_dim)
        ffconv = dict(norm=norm, dropout=dropout, causal=causal)
        self.to_hidden = FFConvM(dim, hidden, **ffconv)
        self.to_qk = FFConvM(dim, query_key_dim, **ffconv)
        # Per-dimension scale and offset turning z into quad_q, lin_q, quad_k, lin_k.
        self.qk_gamma = nn.Parameter(torch.randn(4, query_key_dim) * 0.02)
        self.qk_beta = nn.Parameter(torch.zeros(4, query_key_dim))
        self.to_out = FFConvM(hidden // 2, dim, **ffconv)
        self.attn_dropout = nn.Dropout(dropout)

    def _rotary(self, t: Tensor) -> Tensor:
        if self.rotary_dim == 0:
            return t
        positions = torch.arange(t.shape[1], device=t.device)
        rotated = rotate(t[..., : self.rotary_dim], positions)
        return torch.cat((rotated, t[..., self.rotary_dim :]), dim=-1)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x (B, L, dim) -> v, u (B, L, E) and quad_q, lin_q, quad_k, lin_k (B, L, Z), rotated."""
        if self.shift_tokens:
            shifted, kept = x.chunk(2, dim=-1)
            x = torch.cat((F.pad(shifted, (0, 0, 1, -1)), kept), dim=-1)
        v, u = self.to_hidden(x).chunk(2, dim=-1)
        z = self.to_qk(x)
        quad_q, lin_q, quad_k, lin_k = (z[..., None, :] * self.qk_gamma + self.qk_beta).unbind(-2)
        quad_q, lin_q, quad_k, lin_k = map(self._rotary, (quad_q, lin_q, quad_k, lin_k))
        return v, u, quad_q, lin_q, quad_k, lin_k

    def combine(self, x: Tensor, v: Tensor, u: Tensor, attended: Tensor) -> Tensor:
        """Gate the attended [v, u] branches and project back with the residual."""
        att_v, att_u = attended.chunk(2, dim=-1)
        return x + self.to_out((att_u * v) * torch.sigmoid(att_v * u))

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        """x (B, L, dim) -> (B, L, dim); key_padding_mask bool (B, L), True = real token."""
        v, u, quad_q, lin_q, quad_k, lin_k = self.project(x)
        attended = gated_local_global_attention(
            quad_q,
            quad_k,
            lin_q,
            lin_k,
            torch.cat((v, u), dim=-1),
            chunk_size=self.chunk_size,
            causal=self.causal,
            key_valid=key_padding_mask,
            dropout=self.attn_dropout,
        )
        return self.combine(x, v, u, attended)
