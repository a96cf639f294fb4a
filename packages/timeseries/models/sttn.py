"""A spatial-temporal transformer for traffic on a sensor graph (STTN, Xu et al. 2020).

    readings (B, N, L) ─scale (train stats)─▶ value embedding (B, L, N, D)
      + node embedding (N, D) + time-of-day embedding (slots) + step position (L, D)
      ─▶ depth × [spatial attention over graph neighbours (EdgeIndex mask), temporal attention, MLP]
      ─▶ per sensor: flatten (L·D) ─linear─▶ (B, N, H) ─▶ data units

Spatial attention lets each sensor read the sensors it is connected to at the same time step (one hop
per block, so depth blocks see depth hops); temporal attention lets it read its own past.

Legend: B batch, N sensors, L context steps, D width, H horizon, E edges.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.timeseries.models.patchtst import Scaler
from shared_attention import Attention
from shared_attention.masks import EdgeIndex


class SpatialTemporalBlock(nn.Module):
    """Pre-norm: x + SpatialAttn(LN(x)) over graph neighbours, x + TemporalAttn(LN(x)), x + MLP(LN(x)).

    x (B, L, N, D) -> (B, L, N, D).
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial = Attention(dim, num_heads, dropout=dropout)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal = Attention(dim, num_heads, dropout=dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, *, graph: EdgeIndex) -> Tensor:
        B, L, N, D = x.shape
        nodes = self.spatial_norm(x).reshape(B * L, N, D)
        x = x + self.spatial(nodes, mask=graph).view(B, L, N, D)
        steps = self.temporal_norm(x).transpose(1, 2).reshape(B * N, L, D)
        x = x + self.temporal(steps).view(B, N, L, D).transpose(1, 2)
        return x + self.mlp(self.mlp_norm(x))


class STTN(nn.Module):
    """Spatial-temporal transformer forecaster over a fixed sensor graph."""

    def __init__(
        self,
        *,
        num_nodes: int,
        edge_index: Tensor,
        context: int,
        horizon: int,
        steps_per_day: int,
        dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_nodes, self.horizon = num_nodes, horizon
        self.scaler = Scaler(num_nodes)
        # The graph is part of the model: saved with the weights, moved with `.to(device)`.
        self.register_buffer("edge_index", edge_index.long().clone())
        self.value_embed = nn.Linear(1, dim)
        self.node_embed = nn.Parameter(torch.zeros(num_nodes, dim))
        self.step_pos = nn.Parameter(torch.zeros(context, dim))
        for p in (self.node_embed, self.step_pos):
            nn.init.trunc_normal_(p, std=0.02)
        self.time_of_day = nn.Embedding(steps_per_day, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SpatialTemporalBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(context * dim, horizon)

    def forward(self, readings: Tensor, slots: Tensor) -> Tensor:
        """readings (B, N, L) in data units, slots (B, L) time-of-day index -> forecasts (B, N, H)."""
        B, N, _ = readings.shape
        x = self.scaler(readings).transpose(1, 2).unsqueeze(-1)  # (B, L, N, 1)
        tokens = self.value_embed(x) + self.node_embed + self.step_pos[:, None]
        tokens = self.dropout(tokens + self.time_of_day(slots)[:, :, None])
        graph = EdgeIndex(self.edge_index, num_nodes=N)
        for block in self.blocks:
            tokens = block(tokens, graph=graph)
        per_node = self.norm(tokens).permute(0, 2, 1, 3).reshape(B, N, -1)  # (B, N, L·D)
        return self.scaler.inverse(self.head(per_node))
