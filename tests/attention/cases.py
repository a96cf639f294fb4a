"""Mask and score-mod cases shared by the backend tests (CPU and GPU)."""

from __future__ import annotations

import torch

from shared_attention.masks import (
    Causal,
    Chunked,
    Dense,
    Document,
    EdgeIndex,
    ForeignKey,
    KeyPadding,
    Neighborhood,
    SameColumn,
    SameRow,
    SlidingWindow,
)
from shared_attention.score_mods import (
    ALiBi,
    Bias,
    Compose,
    ForgetGateBias,
    RelativeBiasTable,
    SoftCap,
    Temperature,
)

MASKS = [
    "none",
    "causal",
    "sliding_causal",
    "sliding_symmetric",
    "chunked",
    "key_padding",
    "document_causal",
    "neighborhood_2d",
    "edge_index",
    "relational_feature",
    "same_column",
    "causal_and_padding",
    "window_or_chunk",
    "dense_per_head",
]

SCORE_MODS = [
    "none",
    "alibi",
    "relative_bias",
    "softcap",
    "temperature",
    "temperature_per_head",
    "forget_gate",
    "bias",
    "compose",
]


def make_mask(
    name: str, *, batch: int, heads: int, q_len: int, kv_len: int, device="cpu", seed: int = 0
):
    """A mask of the named kind over (Lq, Lk), with random data drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(batch, kv_len, generator=g) > 0.3
    valid[:, 0] = True
    if name == "none":
        return None
    if name == "causal":
        return Causal()
    if name == "sliding_causal":
        return SlidingWindow(max(1, kv_len // 3))
    if name == "sliding_symmetric":
        return SlidingWindow(max(2, kv_len // 3), causal=False)
    if name == "chunked":
        return Chunked(max(1, kv_len // 4))
    if name == "key_padding":
        return KeyPadding(valid=valid.to(device))
    if name == "document_causal":
        ids = torch.sort(torch.randint(0, 3, (batch, kv_len), generator=g), dim=-1).values
        return Document(ids.to(device), causal=True)
    if name == "neighborhood_2d":
        # A grid with exactly kv_len cells: 1 row of kv_len when kv_len is prime, else a factorisation.
        rows = next(r for r in range(int(kv_len**0.5), 0, -1) if kv_len % r == 0)
        return Neighborhood(
            (rows, kv_len // rows),
            kernel_size=(min(3, rows), 3),
            dilation=(1, 2 if kv_len // rows >= 6 else 1),
        )
    if name == "edge_index":
        edges = [
            torch.randint(0, kv_len, (2, 2 * kv_len), generator=g).to(device) for _ in range(batch)
        ]
        # No self loops: nodes without in-edges have no keys (their rows must come out zero).
        return EdgeIndex(edges, num_nodes=kv_len, self_loops=False)
    if name == "relational_feature":
        rows = max(1, kv_len // 3)
        row_ids = torch.randint(0, rows, (batch, kv_len), generator=g)
        parents = torch.randint(-1, rows, (batch, kv_len, 2), generator=g)
        fk = ForeignKey.from_neighbours(row_ids.to(device), parents.to(device), num_rows=rows)
        return SameRow(row_ids.to(device)) | fk
    if name == "same_column":
        return SameColumn(torch.randint(0, 3, (batch, kv_len), generator=g).to(device))
    if name == "causal_and_padding":
        return Causal() & KeyPadding(valid=valid.to(device))
    if name == "window_or_chunk":
        return SlidingWindow(3) | Chunked(max(1, kv_len // 2), causal=False)
    if name == "dense_per_head":
        # Causal on even heads, anti-causal on odd ones: key blocks kept differ per head.
        i, j = torch.arange(q_len)[:, None], torch.arange(kv_len)[None]
        odd = (torch.arange(heads) % 2 == 1)[:, None, None]
        structured = torch.where(odd, j >= i, j <= i)
        keep = torch.rand(batch, heads, q_len, kv_len, generator=g) > 0.3
        return Dense((structured & keep).to(device))
    raise KeyError(name)


def make_score_mod(
    name: str,
    *,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    device="cpu",
    seed: int = 0,
    requires_grad: bool = False,
):
    """A score mod of the named kind; learned tensors get ``requires_grad`` for gradient checks."""
    g = torch.Generator().manual_seed(seed + 100)

    def param(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(requires_grad)

    if name == "none":
        return None
    if name == "alibi":
        return ALiBi(heads)
    if name == "relative_bias":
        return RelativeBiasTable(param(heads, 9), max_distance=4)
    if name == "softcap":
        return SoftCap(1.5)
    if name == "temperature":
        return Temperature(0.7)
    if name == "temperature_per_head":
        return Temperature(
            (torch.rand(heads, generator=g) + 0.5).to(device).requires_grad_(requires_grad)
        )
    if name == "forget_gate":
        log_f = torch.nn.functional.logsigmoid(param(batch, heads, kv_len))
        return ForgetGateBias(log_f.cumsum(-1))
    if name == "bias":
        return Bias(param(batch, 1, q_len, kv_len))
    if name == "compose":
        return Compose((ALiBi(heads, causal=False), SoftCap(2.0)))
    raise KeyError(name)


def mod_tensors(mod) -> list[torch.Tensor]:
    """The learned tensors a score mod carries (to compare their gradients too)."""
    if mod is None:
        return []
    fields = ("table", "tau", "bias", "cumulative_log_forget")
    found = [getattr(mod, f) for f in fields if isinstance(getattr(mod, f, None), torch.Tensor)]
    return [t for t in found if t.requires_grad]
