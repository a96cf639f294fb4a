"""A convolution-stem transformer classifier: InceptionTime-style modules feed relative-position attention.

After InceptionTime (multi-scale 1-D convolutions with a bottleneck, batch norm and a residual path)
and ConvTran (a convolutional stem under a transformer whose attention carries a learned relative
position bias per head, "eRPE"):

    values (B, C, T) ─normalise─▶ (series longer than stem_length: a convolution at full resolution, ReLU,
      averaged over windows to at most stem_length steps of D channels) ─▶ stem: stem_depth × InceptionModule
      (dilated branches) + residual ─▶ features (B, D, T')
      ─average pool, stride s─▶ tokens (B, N, D), N = ceil(T' / s) <= max_tokens
      ─▶ depth × EncoderBlock (learned relative bias, key padding) ─▶ masked mean ─▶ logits (B, K)

The convolutions see local shapes at every step and several scales at once (the part that makes small
UCR sets learnable); attention relates those shapes across the whole series. Pooling keeps the number
of tokens bounded, so long series cost the attention no more than short ones, and `stem_length` bounds
the stem's cost: a long series is embedded by one cheap convolution at full resolution whose rectified
features are averaged over windows of `input_stride` steps (so fast oscillations are kept, in any phase).
Dilated branches (kernels[i] taps spaced dilations[i] apart) reach far at a short kernel's cost.

Legend: B batch, C channels, T steps, D width, N tokens, K classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock
from panformer.timeseries.models.common import SeriesNormaliser, masked_mean
from shared_attention.score_mods import RelativeBias

EMBED_KERNEL = 9  # steps the full-resolution embedding of long series sees (MiniRocket's kernel length)


def window_mean(x: Tensor, valid: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Mean over consecutive windows of `stride` steps, counting real steps only (a last partial window too).

    x (B, D, T), zero past each series' end; valid (B, 1, T) -> means (B, D, ceil(T / stride)) and the
    real steps in each window (B, 1, ceil(T / stride)).
    """
    (B, D, T), n = x.shape, -(-x.shape[-1] // stride)
    sums = nn.functional.pad(x, (0, n * stride - T)).view(B, D, n, stride).sum(-1)
    counts = nn.functional.pad(valid.to(x.dtype), (0, n * stride - T)).view(B, 1, n, stride).sum(-1)
    return sums / counts.clamp(min=1), counts


def span(kernel: int, dilation: int) -> int:
    """Steps one dilated convolution sees: (kernel - 1) * dilation + 1."""
    return (kernel - 1) * dilation + 1


def fitted(kernel: int, dilation: int, longest: int) -> tuple[int, int]:
    """(kernel, dilation) whose span fits in `longest` (odd) steps: the dilation shrinks first, then the kernel.

    A span longer than every series only sees padding; capped pairs may repeat (the branch count, and so
    dim's split, stays the same).
    """
    dilation = max(1, min(dilation, (longest - 1) // max(kernel - 1, 1)))
    return (min(kernel, longest), dilation) if span(kernel, dilation) > longest else (kernel, dilation)


class InceptionModule(nn.Module):
    """Bottleneck 1x1 conv, then parallel (dilated) convolutions of several spans and a max-pool branch, concatenated.

    x (B, C_in, T) -> (B, D, T); each of the len(kernels) + 1 branches gives D / (len(kernels) + 1) channels.
    Branch i convolves with kernels[i] taps spaced dilations[i] apart (MiniRocket's cheap long receptive fields).
    """

    def __init__(
        self, in_channels: int, dim: int, *, kernels: tuple[int, ...], dilations: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        dilations = dilations or (1,) * len(kernels)
        if len(dilations) != len(kernels):
            raise ValueError(f"{len(kernels)} kernels but {len(dilations)} dilations: give one dilation per kernel")
        branches = len(kernels) + 1
        if dim % branches:
            raise ValueError(f"dim {dim} must be a multiple of {branches} (one share per branch)")
        width = dim // branches
        self.bottleneck = nn.Conv1d(in_channels, width, 1, bias=False) if in_channels > 1 else nn.Identity()
        inner = width if in_channels > 1 else in_channels
        self.convs = nn.ModuleList(
            nn.Conv1d(inner, width, k, dilation=d, padding=span(k, d) // 2, bias=False)
            for k, d in zip(kernels, dilations, strict=True)
        )
        self.pool_conv = nn.Conv1d(in_channels, width, 1, bias=False)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, T), zero past each series' end -> (B, D, T)."""
        inner = self.bottleneck(x)
        # Max-pool over zero padding (not -inf): a series reads the same alone as padded in a batch.
        padded = nn.functional.pad(x, (1, 1))
        # Channels-last memory takes the vectorised CPU max-pool kernel (fwd+bwd 2x faster); same values.
        pooled = nn.functional.max_pool1d(padded.transpose(1, 2).contiguous().transpose(1, 2), 3, stride=1)
        out = torch.cat([conv(inner) for conv in self.convs] + [self.pool_conv(pooled)], dim=1)
        return nn.functional.relu(self.norm(out))


class InceptionTransformer(nn.Module):
    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        max_length: int,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        stem_depth: int = 3,
        kernels: tuple[int, ...] = (9, 19, 39),
        dilations: tuple[int, ...] = (1, 1, 1),
        max_tokens: int = 64,
        stem_length: int = 512,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.normalise = SeriesNormaliser(channels)
        self.input_stride = max(1, math.ceil(max_length / stem_length))
        max_length = math.ceil(max_length / self.input_stride)
        # Long series: a full-resolution convolution whose ReLU features are averaged over windows of
        # input_stride steps. The averages keep how often each local shape occurs (as MiniRocket's PPV
        # features do) whatever its phase in the window; averaging the raw values, or embedding fixed
        # patches, loses oscillations faster than the window (ACSF1 repeats a 4-step cycle).
        self.patch_embed = nn.Sequential(
            nn.Conv1d(channels, dim, EMBED_KERNEL, padding=EMBED_KERNEL // 2, bias=False), nn.BatchNorm1d(dim),
            nn.ReLU(),
        ) if self.input_stride > 1 else None
        stem_channels = dim if self.input_stride > 1 else channels
        # Spans longer than the longest series only see padding: fit them into its (odd) length.
        longest_odd = max(max_length if max_length % 2 else max_length - 1, 1)
        kernels, dilations = zip(*(fitted(k, d, longest_odd) for k, d in zip(kernels, dilations, strict=True)),
                                 strict=True)
        self.stem = nn.ModuleList(
            InceptionModule(stem_channels if i == 0 else dim, dim, kernels=kernels, dilations=dilations)
            for i in range(stem_depth)
        )
        self.shortcut = nn.Sequential(nn.Conv1d(stem_channels, dim, 1, bias=False), nn.BatchNorm1d(dim))
        self.pool_stride = max(1, math.ceil(max_length / max_tokens))
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                         attention_score_mod=RelativeBias(max_distance=max_tokens))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised x (B, C, T), valid (B, 1, T) -> the stem's input (B, C or D, T') and its valid steps (B, 1, T')."""
        if self.patch_embed is None:
            return x, valid
        x, counts = window_mean(self.patch_embed(x) * valid, valid, self.input_stride)
        return x, counts > 0  # a window is real if it starts inside the series

    def features(self, values: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """values (B, C, T), lengths (B,) -> pooled tokens (B, N, D) and keep (B, N), True = real token."""
        valid = (torch.arange(values.shape[-1], device=values.device)[None, :] < lengths[:, None])[:, None, :]
        x, valid = self.embed(self.normalise(values, lengths), valid)
        h = x
        for module in self.stem:
            # Zero past the end after every module, so padding never leaks into real steps.
            h = module(h) * valid
        h = nn.functional.relu(h + self.shortcut(x)) * valid
        tokens, counts = window_mean(h, valid, self.pool_stride)
        return tokens.transpose(1, 2), counts[:, 0] > 0

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (B, K)."""
        tokens, keep = self.features(values, lengths)
        for block in self.blocks:
            tokens = block(tokens, key_padding_mask=keep)
        return self.head(masked_mean(self.norm(tokens), keep))
