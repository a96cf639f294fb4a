"""A transformer classifier for multivariate time series, built on `shared_attention`.

    values (B, C, T) ──normalise──▶ patch embedding (conv, stride S) ──▶ tokens (B, N, D)
      + learned positions ──▶ depth × [pre-norm attention, pre-norm MLP] ──▶ masked mean pool ──▶ logits (B, K)

Legend: B batch, C channels, T time steps, N patch tokens, D model width, K classes.
Padding (variable-length series) is handled by a key-padding mask over the patch tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock


class SeriesTransformer(nn.Module):
    """Patch-token transformer classifier (the plain baseline of the time-series package)."""

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        max_length: int,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        patch: int = 8,
        stride: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.patch, self.stride = patch, stride
        # Normalisation statistics are fitted on the training split and saved with the weights.
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.embed = nn.Conv1d(channels, dim, kernel_size=patch, stride=stride)
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens(max_length), dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def num_tokens(self, length: int | Tensor) -> int | Tensor:
        """Patch tokens for a series of `length` steps (short series still give one token)."""
        if isinstance(length, Tensor):
            return ((length - self.patch).clamp(min=0) + self.stride - 1) // self.stride + 1
        return (max(length - self.patch, 0) + self.stride - 1) // self.stride + 1

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-6))

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (B, K)."""
        T = values.shape[-1]
        steps = torch.arange(T, device=values.device)
        valid_steps = steps[None, :] < lengths[:, None]  # (B, T)
        x = (values - self.mean[:, None]) / self.std[:, None]
        x = torch.nan_to_num(x, nan=0.0) * valid_steps[:, None, :]  # missing and padded steps -> 0 (the mean)
        if self.patch > T:  # shorter than one patch: pad on the right
            x = nn.functional.pad(x, (0, self.patch - T))
        # Pad so that the last partial patch still yields a token.
        n_tokens = int(self.num_tokens(T))
        needed = (n_tokens - 1) * self.stride + self.patch
        x = nn.functional.pad(x, (0, max(0, needed - x.shape[-1])))
        tokens = self.embed(x).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.pos[:, : tokens.shape[1]]
        keep = torch.arange(tokens.shape[1], device=values.device)[None, :] < self.num_tokens(lengths)[:, None]
        for block in self.blocks:
            tokens = block(tokens, key_padding_mask=keep)
        tokens = self.norm(tokens)
        pooled = (tokens * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)
