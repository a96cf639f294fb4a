"""The MossFormer2 separator (Zhao et al. 2024) and MossFormer (Zhao & Ma 2023) as its FSMN-free setting.

Legend: B batch, T samples, N encoder filters, D model width, L frames, S speakers, C FSMN width.

    mixture (B, T)
      -> Encoder: Conv1d(1 -> N, kernel K, stride K/2) + ReLU             (B, N, L)
      -> MaskNet: GroupNorm, 1x1 conv N -> D, + scaled sinusoidal positions
                  num_layers x [gated local/global attention layer (the shared core's
                                GatedLocalGlobalAttention: token shift, FFConvM projections,
                                rotary q/k, quadratic-in-chunk + linear-global attention)
                                -> gated dilated FSMN block (MossFormer2 only)]
                  LayerNorm, GroupNorm, + skip, PReLU, 1x1 conv D -> S*D,
                  per speaker tanh(W x) * sigmoid(V x), 1x1 conv D -> N, ReLU   masks (B, S, N, L)
      -> masks * encoded -> Decoder: ConvTranspose1d(N -> 1, kernel K, stride K/2)  (B, S, T)

The FSMN block is recurrence-free memory: a gated feed-forward sequential memory network whose memory
is a small dense net of depthwise dilated convolutions over time (MossFormer2's "gated dilated FSMN").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_attention.positions import sinusoidal_table
from shared_attention.variants.gated import FFConvM, GatedLocalGlobalAttention


class Encoder(nn.Module):
    """(B, T) -> (B, N, L): a learned filterbank, half-overlapping frames."""

    def __init__(self, *, filters: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, filters, kernel_size, stride=kernel_size // 2, bias=False)

    def forward(self, wave: Tensor) -> Tensor:
        return F.relu(self.conv(wave[:, None]))


class DilatedDenseMemory(nn.Module):
    """Depthwise dilated convolutions over time with dense connections; (B, C, L) -> (B, C, L).

    Layer i (dilation 2^i, kernel 2 * order - 1, "same" padding) sees, for each channel, that channel's
    input and the outputs of all earlier layers; its output goes through InstanceNorm and PReLU.
    """

    def __init__(self, channels: int, *, order: int, depth: int) -> None:
        super().__init__()
        kernel = 2 * order - 1
        self.convs = nn.ModuleList(
            nn.Conv1d(channels * (i + 1), channels, kernel, dilation=2**i, padding=2**i * (order - 1),
                      groups=channels, bias=False)
            for i in range(depth)
        )
        self.norms = nn.ModuleList(nn.InstanceNorm1d(channels, affine=True) for _ in range(depth))
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=True):
            # Interleave so that group c of the grouped conv holds channel c of every dense feature.
            dense = torch.stack(features, dim=2).flatten(1, 2)  # (B, C * (i + 1), L)
            features.append(act(norm(conv(dense))))
        return features[-1]


class FSMNMemory(nn.Module):
    """x + memory(project(relu(linear(x)))); x (B, L, C)."""

    def __init__(self, channels: int, *, order: int, depth: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.project = nn.Linear(channels, channels, bias=False)
        self.memory = DilatedDenseMemory(channels, order=order, depth=depth)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.project(F.relu(self.linear(x)))
        return x + self.memory(hidden.transpose(1, 2)).transpose(1, 2)


class GatedFSMNBlock(nn.Module):
    """MossFormer2's gated dilated FSMN block on (B, L, D), with a residual connection.

    D -> C (PReLU, LayerNorm) -> gate: FFConvM_v(h) * FSMN(FFConvM_u(h)) + h -> LayerNorm -> C -> D.
    """

    def __init__(self, dim: int, *, channels: int = 256, order: int = 20, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(dim, channels), nn.PReLU())
        self.norm_in = nn.LayerNorm(channels)
        ffconv = dict(norm="layernorm", dropout=dropout, causal=False)
        self.to_u = FFConvM(channels, channels, **ffconv)
        self.to_v = FFConvM(channels, channels, **ffconv)
        self.fsmn = FSMNMemory(channels, order=order, depth=depth)
        self.norm_out = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_in(self.reduce(x))
        h = self.to_v(h) * self.fsmn(self.to_u(h)) + h
        return x + self.expand(self.norm_out(h))


class MossFormerLayer(nn.Module):
    """One gated local/global attention layer, followed by the gated FSMN block when `fsmn_channels`."""

    def __init__(
        self,
        dim: int,
        *,
        chunk_size: int,
        query_key_dim: int,
        expansion_factor: float,
        dropout: float,
        fsmn_channels: int | None,
        fsmn_order: int,
        fsmn_depth: int,
    ) -> None:
        super().__init__()
        self.attention = GatedLocalGlobalAttention(
            dim, chunk_size=chunk_size, query_key_dim=query_key_dim, expansion_factor=expansion_factor,
            dropout=dropout, rotary_dim=min(32, query_key_dim), norm="scalenorm", shift_tokens=True,
        )
        self.fsmn = (
            GatedFSMNBlock(dim, channels=fsmn_channels, order=fsmn_order, depth=fsmn_depth, dropout=dropout)
            if fsmn_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fsmn(self.attention(x))


class MaskNet(nn.Module):
    """Encoded mixture (B, N, L) -> non-negative masks (B, S, N, L)."""

    def __init__(self, *, filters: int, dim: int, num_layers: int, num_speakers: int, **layer: object) -> None:
        super().__init__()
        self.num_speakers = num_speakers
        self.norm_in = nn.GroupNorm(1, filters, eps=1e-8)
        self.to_model = nn.Conv1d(filters, dim, 1, bias=False)
        self.position_scale = nn.Parameter(torch.ones(1))
        self.layers = nn.ModuleList(MossFormerLayer(dim, **layer) for _ in range(num_layers))
        self.norm_layers = nn.LayerNorm(dim, eps=1e-6)
        self.norm_out = nn.GroupNorm(1, dim, eps=1e-8)
        self.act = nn.PReLU()
        self.to_speakers = nn.Conv1d(dim, dim * num_speakers, 1)
        self.gate_value = nn.Conv1d(dim, dim, 1)
        self.gate = nn.Conv1d(dim, dim, 1)
        self.to_filters = nn.Conv1d(dim, filters, 1, bias=False)

    def forward(self, encoded: Tensor) -> Tensor:
        x = self.to_model(self.norm_in(encoded))  # (B, D, L)
        positions = torch.arange(x.shape[-1], device=x.device)
        x = x + self.position_scale * sinusoidal_table(positions, x.shape[1]).T.to(x.dtype)
        h = x.transpose(1, 2)  # (B, L, D)
        for layer in self.layers:
            h = layer(h)
        h = self.norm_out(self.norm_layers(h).transpose(1, 2)) + x  # (B, D, L)
        h = self.to_speakers(self.act(h))  # (B, S * D, L)
        batch, _, frames = h.shape
        h = h.reshape(batch * self.num_speakers, -1, frames)
        h = torch.tanh(self.gate_value(h)) * torch.sigmoid(self.gate(h))
        masks = F.relu(self.to_filters(h))  # (B * S, N, L)
        return masks.reshape(batch, self.num_speakers, -1, frames)


class MossFormerSeparator(nn.Module):
    """Mixture (B, T) -> separated sources (B, S, T).

    Args:
        num_speakers: S.
        filters: N, encoder filters (paper: 512).
        kernel_size: K, encoder/decoder kernel in samples, stride K/2 (paper: 16 at 8 kHz).
        dim: D, width of the MossFormer layers (paper: 512).
        num_layers: MossFormer layers (paper: 24).
        chunk_size: local attention chunk in frames (paper: 256).
        query_key_dim: width of the attention's queries and keys (paper: 128).
        expansion_factor: hidden width of the gated attention unit, dim * expansion (paper: 4).
        fsmn_channels: width C of the gated dilated FSMN block (paper: 256); None = MossFormer (v1).
        fsmn_order, fsmn_depth: FSMN kernel 2 * order - 1 and its dilated dense layers (paper: 20, 2).
        dropout: in the attention and FSMN projections (paper: 0.1).
    """

    def __init__(
        self,
        *,
        num_speakers: int = 2,
        filters: int = 512,
        kernel_size: int = 16,
        dim: int = 512,
        num_layers: int = 24,
        chunk_size: int = 256,
        query_key_dim: int = 128,
        expansion_factor: float = 4.0,
        fsmn_channels: int | None = 256,
        fsmn_order: int = 20,
        fsmn_depth: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if kernel_size % 2:
            raise ValueError(f"kernel_size {kernel_size} must be even (stride is kernel_size / 2)")
        self.num_speakers, self.kernel_size, self.stride = num_speakers, kernel_size, kernel_size // 2
        self.encoder = Encoder(filters=filters, kernel_size=kernel_size)
        self.masker = MaskNet(
            filters=filters, dim=dim, num_layers=num_layers, num_speakers=num_speakers, chunk_size=chunk_size,
            query_key_dim=query_key_dim, expansion_factor=expansion_factor, dropout=dropout,
            fsmn_channels=fsmn_channels, fsmn_order=fsmn_order, fsmn_depth=fsmn_depth,
        )
        self.decoder = nn.ConvTranspose1d(filters, 1, kernel_size, stride=self.stride, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture (B, T) -> estimates (B, S, T)."""
        length = mixture.shape[-1]
        # Pad so that the frames tile the whole input and the decoder gives back >= T samples
        # (and to two frames at least: instance norm needs more than one).
        frames = max(2, -(-(length - self.kernel_size) // self.stride) + 1)
        padded = F.pad(mixture, (0, (frames - 1) * self.stride + self.kernel_size - length))
        encoded = self.encoder(padded)  # (B, N, L)
        masks = self.masker(encoded)  # (B, S, N, L)
        batch, speakers, filters, frames = masks.shape
        separated = (masks * encoded[:, None]).reshape(batch * speakers, filters, frames)
        return self.decoder(separated).reshape(batch, speakers, -1)[..., :length]
