"""The Relational Transformer: every cell a token, four masked attentions per block (shared_attention).

A cell's token is the sum of its value's encoding (by kind: a normalised number, a boolean, a relative
time, hashed text words), its column name's and its table name's hashed-word embeddings, and a kind
embedding; masked cells (and the label cell) replace the value by a learned mask vector. Each block
runs, in turn:

- column attention: cells of the same column (SameColumn over per-table column ids);
- feature attention: the cell's own row and the rows it points to (SameRow | ForeignKey parent);
- neighbour attention: the rows pointing to the cell's row (ForeignKey child);
- full attention over the whole context (left out with `full_attention=False`);

then an MLP. Heads read a masked number (regression on the z-score) or a masked boolean (a logit);
the label cell of a binary task uses the boolean head, so a model pretrained on masked cells can
answer a new task zero-shot.

Legend: B batch, L cells, W hashed words, P parents per row, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.relational.sampling import BOOL, HASH_BUCKETS, LABEL, NUMBER, TEXT, TIME
from shared_attention import Attention, ForeignKey, SameColumn, SameRow


class RelationalBlock(nn.Module):
    """Column, feature, neighbour and full attention (pre-norm residuals), then an MLP.

    `full_attention=False` leaves out the full attention (the three masked ones remain, as in the
    original Relational Transformer)."""

    ATTENTIONS = ("column", "feature", "neighbour", "full")

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0,
                 full_attention: bool = True) -> None:
        super().__init__()
        self.attentions = self.ATTENTIONS if full_attention else self.ATTENTIONS[:-1]
        self.attn = nn.ModuleDict({name: Attention(dim, num_heads, dropout=dropout) for name in self.attentions})
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name in self.attentions})
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, *, masks: dict[str, object], valid: Tensor) -> Tensor:
        """x (B, L, D); masks: one shared_attention Mask per attention (None = full)."""
        for name in self.attentions:
            out = self.attn[name](self.norms[name](x), mask=masks[name], key_padding_mask=valid)
            x = x + torch.nan_to_num(out)  # a cell with no neighbour rows gets nothing, not NaN
        return x + self.mlp(self.mlp_norm(x))


class RelationalTransformer(nn.Module):
    """Cells in, per-cell predictions out (numbers and booleans), plus the label cell's logit."""

    def __init__(self, *, dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0, full_attention: bool = True) -> None:
        super().__init__()
        self.words = nn.EmbeddingBag(HASH_BUCKETS, dim, mode="sum", padding_idx=0)  # text values
        self.column_names = nn.EmbeddingBag(HASH_BUCKETS, dim, mode="sum", padding_idx=0)
        self.table_names = nn.EmbeddingBag(HASH_BUCKETS, dim, mode="sum", padding_idx=0)
        self.kind = nn.Embedding(LABEL + 1, dim)
        self.number = nn.Linear(1, dim)
        self.time = nn.Linear(1, dim)
        self.boolean = nn.Embedding(2, dim)
        self.mask_value = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(
            RelationalBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                            full_attention=full_attention)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.number_head = nn.Linear(dim, 1)
        self.bool_head = nn.Linear(dim, 1)
        nn.init.normal_(self.mask_value, std=0.02)

    def embed(self, batch: dict[str, Tensor], masked: Tensor) -> Tensor:
        kind, value = batch["kind"], batch["value"].float()
        b, length = kind.shape

        def bag(table: nn.EmbeddingBag, ids: Tensor) -> Tensor:
            return table(ids.reshape(b * length, -1)).view(b, length, -1)

        v = value[..., None]
        content = torch.where((kind == NUMBER)[..., None], self.number(v), torch.zeros_like(self.number(v)))
        content = content + torch.where((kind == TIME)[..., None], self.time(v), torch.zeros_like(content))
        content = content + torch.where((kind == BOOL)[..., None], self.boolean((value > 0.5).long()),
                                        torch.zeros_like(content))
        content = content + torch.where((kind == TEXT)[..., None], bag(self.words, batch["words"]),
                                        torch.zeros_like(content))
        content = torch.where(masked[..., None], self.mask_value.expand_as(content), content)
        return (content + self.kind(kind) + bag(self.column_names, batch["column_words"])
                + bag(self.table_names, batch["table_words"]))

    def masks(self, batch: dict[str, Tensor]) -> dict[str, object]:
        rows, parents = batch["row_ids"].clamp(min=0), batch["parent_rows"]
        # Row ids are compact per sample and every row has a cell: L bounds them without a device sync
        # (which would stall the host's launches and break a torch.compile graph).
        num_rows = rows.shape[1]
        parent = ForeignKey.from_neighbours(rows, parents, num_rows=num_rows, direction="parent")
        child = ForeignKey.from_neighbours(rows, parents, num_rows=num_rows, direction="child")
        return {"column": SameColumn(batch["column_ids"]), "feature": SameRow(rows) | parent,
                "neighbour": child, "full": None}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Returns {"cells": (B, L) number predictions, "bools": (B, L) logits, "label": (B,) logit/value}."""
        masked = batch["masked"] | (batch["kind"] == LABEL)
        valid = batch["kind"] > 0
        x = self.embed(batch, masked)
        masks = self.masks(batch)
        for block in self.blocks:
            x = block(x, masks=masks, valid=valid)
        x = self.norm(x)
        numbers, bools = self.number_head(x).squeeze(-1), self.bool_head(x).squeeze(-1)
        at = batch["label_pos"]
        ar = torch.arange(len(at), device=at.device)
        return {"cells": numbers, "bools": bools, "label_bool": bools[ar, at], "label_number": numbers[ar, at]}
