"""A PatchTST-like forecaster (Nie et al. 2023): channel-independent patches, instance normalisation.

    context (B, C, L) ─scale (train stats)─▶ instance-normalise (RevIN) ─▶ each variable alone (B·C, L)
      ─▶ patches (B·C, N, P) ─linear (+ signature features)─▶ tokens (B·C, N, D) + learned positions
      ─▶ depth × EncoderBlock ─▶ flatten (N·D) ─linear─▶ (B, C, H, Q) ─▶ undo RevIN and scaling

Legend: B batch, C variables, L context steps, N patches, P patch length, D width, H horizon,
Q outputs per step (quantiles, or 1 for a point forecast).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock
from panformer.timeseries.signature import SignatureEmbedding


class Scaler(nn.Module):
    """Per-variable standardisation with statistics fitted on the training split (saved as buffers)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def fit(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-8))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T) in data units -> standardised."""
        return (x - self.mean[:, None]) / self.std[:, None]

    def inverse(self, x: Tensor) -> Tensor:
        """x (B, C, H, ...) standardised -> data units."""
        shape = (-1,) + (1,) * (x.dim() - 2)
        return x * self.std.view(shape) + self.mean.view(shape)


class InstanceNorm(nn.Module):
    """RevIN (Kim et al. 2022): remove each window's own level and scale, restore them on the output.

    With `enabled=False` it is the identity (the model then relies on the global scaling alone).
    """

    def __init__(self, channels: int, *, enabled: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.enabled, self.eps = enabled, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(
        self, x: Tensor, stats: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x (B, C, T) -> normalised x and the (mean, std) (B, C, 1) needed to undo it. Given `stats`
        (a context window's), normalise with those instead (e.g. the values after that window)."""
        if not self.enabled:
            return x, None
        if stats is None:
            mean = x.mean(-1, keepdim=True).detach()
            stats = (mean, (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt().detach())
        mean, std = stats
        return (x - mean) / std * self.weight[:, None] + self.bias[:, None], stats

    def inverse(self, y: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        """y (B, C, H, Q) -> back to the window's level and scale."""
        if stats is None:
            return y
        mean, std = (s.unsqueeze(-1) for s in stats)  # (B, C, 1, 1)
        weight, bias = self.weight[:, None, None], self.bias[:, None, None]
        return (y - bias) / (weight + self.eps**2) * std + mean


class PatchTST(nn.Module):
    """Channel-independent patch transformer forecaster with a flatten head."""

    def __init__(
        self,
        *,
        channels: int,
        context: int,
        horizon: int,
        num_outputs: int = 1,
        patch: int = 16,
        stride: int = 8,
        dim: int = 64,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        instance_norm: bool = True,
        signature_depth: int | None = None,
    ) -> None:
        super().__init__()
        if patch > context:
            raise ValueError(f"patch {patch} is longer than the context {context}")
        self.horizon, self.num_outputs = horizon, num_outputs
        self.patch, self.stride = patch, stride
        # As in PatchTST, the context is padded at the end by `stride` copies of its last value.
        self.num_patches = (context + stride - patch) // stride + 1
        self.scaler = Scaler(channels)
        self.instance_norm = InstanceNorm(channels, enabled=instance_norm)
        self.embed = nn.Linear(patch, dim)
        self.signature = SignatureEmbedding(1, dim, depth=signature_depth) if signature_depth else None
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(self.num_patches * dim, horizon * num_outputs)

    def forward(self, context: Tensor) -> Tensor:
        """context (B, C, L) in data units -> forecasts (B, C, H, Q) in data units."""
        B, C, _ = context.shape
        x, stats = self.instance_norm(self.scaler(context))
        x = torch.cat([x, x[..., -1:].expand(-1, -1, self.stride)], dim=-1)
        patches = x.reshape(B * C, -1).unfold(-1, self.patch, self.stride)  # (B·C, N, P)
        tokens = self.embed(patches)
        if self.signature is not None:
            tokens = tokens + self.signature(patches.unsqueeze(-1))
        tokens = self.dropout(tokens + self.pos)
        for block in self.blocks:
            tokens = block(tokens)
        out = self.head(self.norm(tokens).flatten(1))  # (B·C, H·Q)
        out = out.view(B, C, self.horizon, self.num_outputs)
        return self.scaler.inverse(self.instance_norm.inverse(out, stats))
