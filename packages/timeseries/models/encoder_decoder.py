"""The encoder–decoder forecasting transformer of Wu et al. 2020 (influenza prevalence, "ILI").

    history (B, C, L) ─scale, RevIN─▶ (B, L, C) ─linear + positions─▶ encoder: depth × EncoderBlock ─▶ memory
    decoder input (B, H, C): the last known value, then the values before each target step
      ─linear + positions─▶ decoder_depth × [causal self-attention, cross-attention to memory, MLP]
      ─linear─▶ (B, H, C·Q) ─▶ forecasts (B, C, H, Q)

As in the paper, training uses teacher forcing (the decoder sees the true values before each step,
causally masked), and forecasting is autoregressive: each step's point forecast is fed back as the
next decoder input. Every variable is one feature of each time step (the paper's multivariate form).

Legend: B batch, C variables, L context steps, H horizon, D width, Q outputs per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock
from panformer.timeseries.models.patchtst import InstanceNorm, Scaler
from shared_attention import Attention, Causal


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the encoder memory, MLP.

    x (B, H, D), memory (B, L, D) -> (B, H, D).
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_norm(x), mask=Causal())
        x = x + self.cross_attn(self.cross_norm(x), context=memory)
        return x + self.mlp(self.mlp_norm(x))


class EncoderDecoderForecaster(nn.Module):
    """Encoder over the history, causal decoder over the horizon (teacher-forced in training)."""

    def __init__(
        self,
        *,
        channels: int,
        context: int,
        horizon: int,
        num_outputs: int = 1,
        point_index: int = 0,
        dim: int = 64,
        depth: int = 2,
        decoder_depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        instance_norm: bool = True,
    ) -> None:
        super().__init__()
        self.channels, self.horizon, self.num_outputs = channels, horizon, num_outputs
        self.point_index = point_index  # which output is fed back when decoding (the median)
        self.scaler = Scaler(channels)
        self.instance_norm = InstanceNorm(channels, enabled=instance_norm)
        self.encoder_embed = nn.Linear(channels, dim)
        self.decoder_embed = nn.Linear(channels, dim)
        self.encoder_pos = nn.Parameter(torch.zeros(1, context, dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, horizon, dim))
        nn.init.trunc_normal_(self.encoder_pos, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.encoder_norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList(
            DecoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, channels * num_outputs)

    def _decode(self, inputs: Tensor, memory: Tensor) -> Tensor:
        """inputs (B, h, C) normalised -> outputs (B, h, C, Q) normalised, step i seeing inputs[:i + 1]."""
        h = inputs.shape[1]
        x = self.dropout(self.decoder_embed(inputs) + self.decoder_pos[:, :h])
        for block in self.decoder:
            x = block(x, memory)
        return self.head(self.decoder_norm(x)).view(*inputs.shape[:2], self.channels, self.num_outputs)

    def forward(self, context: Tensor, target: Tensor | None = None) -> Tensor:
        """context (B, C, L) [, target (B, C, H) for teacher forcing] -> forecasts (B, C, H, Q)."""
        x, stats = self.instance_norm(self.scaler(context))
        x = x.transpose(1, 2)  # (B, L, C)
        memory = self.dropout(self.encoder_embed(x) + self.encoder_pos)
        for block in self.encoder:
            memory = block(memory)
        memory = self.encoder_norm(memory)

        last = x[:, -1:]  # (B, 1, C): the decoder starts from the last known value
        if target is not None:
            known, _ = self.instance_norm(self.scaler(target), stats=stats)
            out = self._decode(torch.cat([last, known.transpose(1, 2)[:, :-1]], dim=1), memory)
        else:
            inputs = last
            for _ in range(self.horizon):
                out = self._decode(inputs, memory)
                inputs = torch.cat([inputs, out[:, -1:, :, self.point_index]], dim=1)
        out = out.permute(0, 2, 1, 3)  # (B, C, H, Q)
        return self.scaler.inverse(self.instance_norm.inverse(out, stats))
