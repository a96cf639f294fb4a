"""An MPTSNet-style classifier: multiscale periodic segments, local convolution, global attention.

After MPTSNet (multiscale periodic time-series network). The dominant periods of the training data are
found with the FFT; for each period p the series is cut into consecutive segments of p steps:

    values (B, C, T) ─normalise─▶ local conv features (B, D, T)
      for each period p:  segments (B, D, T/p, p) ─conv over the segment─▶ tokens (B, T/p, D)
                          + sinusoidal positions ─▶ EncoderBlocks (global attention across segments)
                          ─▶ masked mean (B, D)
      ─▶ softmax-weighted sum over periods (weights start at the periods' FFT amplitudes) ─▶ logits (B, K)

Convolution sees the pattern inside one period (local); attention relates periods to each other (global).

Legend: B batch, C channels, T steps, D width, K classes, S number of periods.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock
from panformer.timeseries.models.common import SeriesNormaliser, masked_mean, patchify, valid_tokens
from shared_attention.positions import sinusoidal_table


def dominant_periods(series: list[np.ndarray], *, k: int, max_length: int) -> tuple[list[int], list[float]]:
    """The k periods with the largest mean FFT amplitude over `series` (each (C, T_i)), and amplitudes.

    Series are zero-padded to `max_length`; the DC term is skipped; periods are unique and >= 2.
    """
    spectrum = np.zeros(max_length // 2 + 1)
    for s in series:
        x = np.nan_to_num(s - np.nanmean(s, axis=1, keepdims=True))
        spectrum += np.abs(np.fft.rfft(x, n=max_length, axis=1)).mean(0)
    spectrum /= max(len(series), 1)
    periods: dict[int, float] = {}
    for freq in np.argsort(spectrum[1:])[::-1] + 1:
        period = int(np.rint(max_length / freq))
        if period >= 2 and period not in periods:
            periods[period] = float(spectrum[freq])
        if len(periods) == k:
            break
    if not periods:  # a series too short for any period: one segment of two steps
        periods[2] = 1.0
    return list(periods), list(periods.values())


class PeriodBranch(nn.Module):
    """Segments of one period -> tokens -> global attention -> pooled (B, D)."""

    def __init__(self, period: int, *, dim: int, depth: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.period = period
        self.segment_embed = nn.Conv1d(dim, dim, kernel_size=period, stride=period)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """features (B, D, T), lengths (B,) -> (B, D)."""
        segments = patchify(features, patch=self.period, stride=self.period)  # (B, N, D, p)
        b, n, d, p = segments.shape
        tokens = self.segment_embed(segments.reshape(b * n, d, p)).view(b, n, d)
        positions = torch.arange(n, device=features.device)
        tokens = tokens + sinusoidal_table(positions, d).to(tokens.dtype)
        keep = valid_tokens(lengths, n, patch=self.period, stride=self.period)
        for block in self.blocks:
            tokens = block(tokens, key_padding_mask=keep)
        return masked_mean(self.norm(tokens), keep)


class MPTSNet(nn.Module):
    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        periods: list[int],
        amplitudes: list[float],
        dim: int = 64,
        depth: int = 1,
        num_heads: int = 4,
        kernel: int = 3,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.normalise = SeriesNormaliser(channels)
        self.local = nn.ModuleList([
            nn.Conv1d(channels, dim, kernel, padding=kernel // 2),
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2),
        ])
        self.branches = nn.ModuleList(
            PeriodBranch(p, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for p in periods
        )
        amp = torch.tensor(amplitudes, dtype=torch.float32)
        self.scale_logits = nn.Parameter(torch.log(amp / amp.sum() + 1e-6))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (B, K)."""
        valid = (torch.arange(values.shape[-1], device=values.device)[None, :] < lengths[:, None])[:, None, :]
        features = self.normalise(values, lengths)
        for conv in self.local:
            # Zero past the end after every layer, so padding never leaks into real steps.
            features = nn.functional.gelu(conv(features)) * valid  # (B, D, T)
        pooled = torch.stack([branch(features, lengths) for branch in self.branches], dim=1)  # (B, S, D)
        weights = torch.softmax(self.scale_logits, dim=0)
        return self.head((pooled * weights[None, :, None]).sum(1))
