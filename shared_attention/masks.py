"""Attention masks as composable values.

A mask says which (query, key) pairs may attend. Each mask is defined once, as an element-wise
predicate ``allowed(b, h, q_idx, kv_idx)`` over integer index tensors; that one definition lowers to

- ``dense(q_len, kv_len, device=...)``: a bool tensor broadcastable to (B, H, Lq, Lk), True = may
  attend (the reference oracle's form and SDPA's ``attn_mask``),
- ``mask_mod(q_len, kv_len)``: a FlexAttention ``mask_mod`` (the same predicate, evaluated per pair),
- ``sdpa_causal(q_len, kv_len)``: whether SDPA's own ``is_causal`` path expresses it exactly.

Legend: B batch, H heads, Lq query length, Lk key length.

Position-based masks align queries to the END of the keys (query ``i`` sits at key position
``i + Lk - Lq``), so the same ``Causal()`` is right for prefill (Lq == Lk) and for decoding with a
KV cache (Lq < Lk).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class Mask:
    """Base class: subclasses implement ``allowed``; ``&`` and ``|`` combine masks."""

    # Whether the mask varies along the batch axis (its tensors carry one entry per element).
    batch_dependent: bool = False
    # Cost of evaluating the predicate, relative to a simple comparison (Flex dispatch uses it).
    partial_tile_weight: float = 1.0

    def allowed(
        self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, q_len: int, kv_len: int
    ) -> Tensor:
        """Element-wise predicate over broadcastable integer index tensors."""
        raise NotImplementedError

    def batch_size(self) -> int | None:
        """The batch size the mask's tensors carry, or None when it has none."""
        return None

    def dense(self, q_len: int, kv_len: int, *, device: torch.device | str | None = None) -> Tensor:
        """Bool mask of shape (B or 1, 1, Lq, Lk); True = may attend."""
        device = torch.device(device) if device is not None else self.device()
        b = torch.arange(self.batch_size() or 1, device=device).view(-1, 1, 1, 1)
        h = torch.zeros(1, dtype=torch.long, device=device).view(1, 1, 1, 1)
        q_idx = torch.arange(q_len, device=device).view(1, 1, -1, 1)
        kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
        out = self.allowed(b, h, q_idx, kv_idx, q_len, kv_len)
        return out.expand(b.shape[0], 1, q_len, kv_len)

    def mask_mod(self, q_len: int, kv_len: int) -> MaskMod:
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``."""

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.allowed(b, h, q_idx, kv_idx, q_len, kv_len)

        return mask_mod

    def sdpa_causal(self, q_len: int, kv_len: int) -> bool:
        """True when SDPA's ``is_causal=True`` (top-left aligned) is exactly this mask."""
        return False

    def device(self) -> torch.device:
        return torch.device("cpu")

    def __and__(self, other: Mask) -> Mask:
        return And((self, other))

    def __or__(self, other: Mask) -> Mask:
        return Or((self, other))


def _query_positions(q_idx: Tensor, q_len: int, kv_len: int) -> Tensor:
    # Queries are the last q_len positions of the key sequence (decoding with a cache).
    return q_idx + (kv_len - q_len)


@dataclass(frozen=True)
class Causal(Mask):
    """Query at position i attends keys at positions <= i."""

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        return _query_positions(q_idx, q_len, kv_len) >= kv_idx

    def sdpa_causal(self, q_len, kv_len):
        return q_len == kv_len


@dataclass(frozen=True)
class SlidingWindow(Mask):
    """Keys near the query: causal=True keeps positions (i - window, i] (``window`` keys);
    causal=False keeps |i - j| <= window // 2 (``window // 2`` keys on each side)."""

    window: int
    causal: bool = True

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        q_pos = _query_positions(q_idx, q_len, kv_len)
        if self.causal:
            return (q_pos >= kv_idx) & (q_pos - kv_idx < self.window)
        return (q_pos - kv_idx).abs() <= self.window // 2


@dataclass(frozen=True)
class Chunked(Mask):
    """Fixed local blocks: tokens attend within their own chunk of ``chunk_size`` positions."""

    chunk_size: int
    causal: bool = False

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        q_pos = _query_positions(q_idx, q_len, kv_len)
        same = (q_pos // self.chunk_size) == (kv_idx // self.chunk_size)
        return same & (q_pos >= kv_idx) if self.causal else same



@dataclass(frozen=True, eq=False)
class KeyPadding(Mask):
    """Variable lengths: ``valid`` bool (B, Lk), True = real token; or ``lengths`` int (B,)."""

    valid: Tensor | None = None
    lengths: Tensor | None = None
    batch_dependent: bool = field(default=True, init=False)

    def __post_init__(self):
        if (self.valid is None) == (self.lengths is None):
            raise ValueError(
                "KeyPadding takes exactly one of valid= (bool (B, Lk)) or lengths= (B,)"
            )
        if self.valid is not None and self.valid.dtype != torch.bool:
            raise TypeError(f"KeyPadding(valid=) must be a bool tensor, got {self.valid.dtype}")

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        if self.lengths is not None:
            return kv_idx < self.lengths[b]
        return self.valid[b, kv_idx]

    def batch_size(self):
        return (self.valid if self.valid is not None else self.lengths).shape[0]

    def device(self):
        return (self.valid if self.valid is not None else self.lengths).device

    def dense(self, q_len, kv_len, *, device=None):
        # Cheaper than the generic path, and (B, 1, 1, Lk) keeps SDPA's memory small.
        device = torch.device(device) if device is not None else self.device()
        if self.valid is not None:
            keep = self.valid.to(device)
        else:
            keep = torch.arange(kv_len, device=device) < self.lengths.to(device)[:, None]
        return keep[:, None, None, :].expand(-1, 1, q_len, kv_len)


@dataclass(frozen=True, eq=False)
class Document(Mask):
    """Packed sequences: tokens attend within their own segment. ``segment_ids`` int (B, Lk).

    With ``causal=True`` also causal within the segment (the usual form for packed LM training).
    """

    segment_ids: Tensor
    causal: bool = False
    batch_dependent: bool = field(default=True, init=False)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        q_pos = _query_positions(q_idx, q_len, kv_len)
        same = self.segment_ids[b, q_pos] == self.segment_ids[b, kv_idx]
        return same & (q_pos >= kv_idx) if self.causal else same

    def batch_size(self):
        return self.segment_ids.shape[0]

    def device(self):
        return self.segment_ids.device


@dataclass(frozen=True)
class Neighborhood(Mask):
    """Neighborhood attention (NAT / NATTEN) over tokens laid out on a 1-D, 2-D or 3-D grid.

    Tokens are flattened row-major from ``grid`` (e.g. (height, width)). Along each axis of size
    n, with kernel size k and dilation d, a query attends the k keys of its own dilation group
    (same index mod d) nearest to it; at the borders the window shifts inward rather than shrinking,
    so every query sees exactly prod(k) keys (when n >= k * d). Along a ``causal`` axis (one flag,
    or one per axis) it attends the k most recent keys of its group instead, itself included (fewer
    at the start), as in NATTEN's causal neighbourhoods (e.g. time in a video).

    ``stride`` s (1 <= s <= k; Generalized Neighborhood Attention): queries move their window in steps
    of s. Within a dilation group the queries fall into runs of s, and each run shares the window of
    one leader query: the middle one (the right one of the two middles when s is even), or the last
    one along a causal axis, where each query still sees no key after itself; a run cut short by the
    border takes the group's last query. ``stride == kernel_size`` is blocked (Swin-style window)
    attention.

    ``additional_keys`` N: keys past the grid's L tokens (Lk = L + N: registers, text tokens) that
    every query attends besides its window, in the same softmax. Queries are the grid's tokens
    (Lq = L) and the grid's keys come first.
    """

    grid: tuple[int, ...]
    kernel_size: tuple[int, ...] | int
    dilation: tuple[int, ...] | int = 1
    causal: tuple[bool, ...] | bool = False
    stride: tuple[int, ...] | int = 1
    additional_keys: int = 0

    def __post_init__(self):
        n = len(self.grid)
        if n not in (1, 2, 3):
            raise ValueError(f"Neighborhood grid must have 1-3 axes, got {self.grid}")
        for name in ("kernel_size", "dilation", "causal", "stride"):
            value = getattr(self, name)
            value = (value,) * n if isinstance(value, (int, bool)) else tuple(value)
            if len(value) != n:
                raise ValueError(f"{name}={value} must have one entry per grid axis {self.grid}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "causal", tuple(bool(c) for c in self.causal))
        object.__setattr__(self, "grid", tuple(self.grid))
        if min(self.kernel_size) < 1 or min(self.dilation) < 1:
            raise ValueError(
                f"Neighborhood kernel_size={self.kernel_size} and dilation={self.dilation} must be >= 1"
            )
        if any(not 1 <= s <= k for s, k in zip(self.stride, self.kernel_size, strict=True)):
            raise ValueError(
                f"Neighborhood stride={self.stride} must be between 1 and kernel_size={self.kernel_size} per axis"
            )
        if self.additional_keys < 0:
            raise ValueError(f"Neighborhood additional_keys={self.additional_keys} must be >= 0")

    @property
    def partial_tile_weight(self) -> float:
        # Index arithmetic per axis (div, mod, clamp): measured ~3.5x a window's cost in 2-D.
        return 1.0 + 1.25 * len(self.grid)

    @property
    def num_tokens(self) -> int:
        """L: the grid's tokens (the queries, and the first L keys)."""
        return math.prod(self.grid)

    def dense(self, q_len, kv_len, *, device=None):
        want_kv = self.num_tokens + self.additional_keys
        if q_len != self.num_tokens or kv_len != want_kv:
            extra = f" + {self.additional_keys} additional" if self.additional_keys else ""
            raise ValueError(
                f"Neighborhood over grid {self.grid} wants {self.num_tokens} queries and {self.num_tokens}{extra} "
                f"keys, got {q_len} queries and {kv_len} keys"
            )
        return super().dense(q_len, kv_len, device=device)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        ok = torch.ones_like(q_idx == kv_idx)
        q_rest, kv_rest = q_idx, kv_idx
        # Walk axes from the last (fastest-varying) to the first.
        for n, k, d, s, causal in zip(
            reversed(self.grid), reversed(self.kernel_size), reversed(self.dilation), reversed(self.stride),
            reversed(self.causal), strict=True,
        ):
            qi, ki = q_rest % n, kv_rest % n
            q_rest, kv_rest = q_rest // n, kv_rest // n
            group = qi % d
            q_g, k_g = qi // d, ki // d
            group_size = (n - group + d - 1) // d  # tokens in this dilation group along the axis
            leader = q_g
            if s > 1:  # the query whose window this run of s queries shares
                run_start = (q_g // s) * s
                leader = torch.minimum(run_start + (s - 1 if causal else s // 2), group_size - 1)
            if causal:
                start, end = (leader - k + 1).clamp(min=0), q_g + 1
            else:
                start = (leader - k // 2).clamp(min=0)
                start = torch.minimum(start, (group_size - k).clamp(min=0))
                end = start + k
            ok = ok & (ki % d == group) & (k_g >= start) & (k_g < end)
        if self.additional_keys:
            ok = (ok & (kv_idx < self.num_tokens)) | (kv_idx >= self.num_tokens)
        return ok


@dataclass(frozen=True, eq=False)
class EdgeIndex(Mask):
    """Sparse adjacency (graphs): ``edge_index`` int (2, E) of (source, target) node pairs.

    Node ``target`` (the query) attends node ``source`` (the key), as in message passing from
    source to target. For a batch of graphs padded to the same node count, pass a list of B edge
    indices. ``self_loops=True`` adds i -> i so no node is left without keys (rows with no key
    output zeros). The adjacency is stored densely (B, N, N); Flex skips the empty tiles.
    """

    edge_index: Tensor | Sequence[Tensor]
    num_nodes: int
    self_loops: bool = True
    adjacency: Tensor = field(init=False, repr=False)
    batch_dependent: bool = field(default=True, init=False)

    def __post_init__(self):
        edges = [self.edge_index] if isinstance(self.edge_index, Tensor) else list(self.edge_index)
        device = edges[0].device
        adjacency = torch.zeros(
            len(edges), self.num_nodes, self.num_nodes, dtype=torch.bool, device=device
        )
        for i, e in enumerate(edges):
            adjacency[i, e[1], e[0]] = True
        if self.self_loops:
            adjacency |= torch.eye(self.num_nodes, dtype=torch.bool, device=device)
        object.__setattr__(self, "adjacency", adjacency)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        # A single graph (batch of one) is shared by every batch element.
        b = b if self.adjacency.shape[0] > 1 else torch.zeros_like(b)
        return self.adjacency[b, q_idx, kv_idx]

    def batch_size(self):
        return self.adjacency.shape[0]

    def device(self):
        return self.adjacency.device


@dataclass(frozen=True, eq=False)
class SameValue(Mask):
    """Metadata mask: tokens attend tokens sharing an id (``ids`` int (B, Lk)).

    ``SameRow(row_ids)`` and ``SameColumn(column_ids)`` are this mask. The Relational Transformer's
    four attentions over cells are: column = SameColumn(column_ids) & SameValue(table_ids);
    feature = SameRow(row_ids) | ForeignKey(..., direction="parent"); neighbour =
    ForeignKey(..., direction="child"); full = no mask.
    """

    ids: Tensor
    batch_dependent: bool = field(default=True, init=False)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        return self.ids[b, _query_positions(q_idx, q_len, kv_len)] == self.ids[b, kv_idx]

    def batch_size(self):
        return self.ids.shape[0]

    def device(self):
        return self.ids.device


SameRow = SameValue
SameColumn = SameValue


@dataclass(frozen=True, eq=False)
class ForeignKey(Mask):
    """Foreign-key neighbours: a cell attends the cells of the rows its own row links to.

    ``row_ids`` int (B, Lk): the row of each token (cell), numbered 0..R-1 per batch element.
    ``links`` bool (B, R, R): links[b, r, s] = row r may attend row s. Build it with
    ``from_neighbours`` from each cell's foreign-key parent rows (the Relational Transformer's
    data form): direction "parent" lets a row attend its parents, "child" its children.
    """

    row_ids: Tensor
    links: Tensor
    batch_dependent: bool = field(default=True, init=False)

    @classmethod
    def from_neighbours(
        cls, row_ids: Tensor, parent_rows: Tensor, *, num_rows: int, direction: str = "parent"
    ) -> ForeignKey:
        """``parent_rows`` int (B, Lk, K): the parent rows of each cell's row, -1 for none."""
        if direction not in ("parent", "child"):
            raise ValueError(f"direction must be 'parent' or 'child', got {direction!r}")
        batch, _, k = parent_rows.shape
        links = torch.zeros(batch, num_rows, num_rows + 1, dtype=torch.bool, device=row_ids.device)
        child = row_ids[:, :, None].expand(-1, -1, k)
        parent = parent_rows.where(parent_rows >= 0, num_rows)  # -1 goes to a dropped extra column
        b = torch.arange(batch, device=row_ids.device)[:, None, None].expand_as(child)
        links[b, child, parent] = True
        links = links[:, :, :num_rows]
        return cls(row_ids, links if direction == "parent" else links.transpose(1, 2))

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        q_row = self.row_ids[b, _query_positions(q_idx, q_len, kv_len)]
        return self.links[b, q_row, self.row_ids[b, kv_idx]]

    def batch_size(self):
        return self.row_ids.shape[0]

    def device(self):
        return self.row_ids.device


@dataclass(frozen=True, eq=False)
class Dense(Mask):
    """An explicit bool mask broadcastable to (B, H, Lq, Lk), for what has no structure."""

    mask: Tensor
    batch_dependent: bool = field(default=True, init=False)

    def __post_init__(self):
        if self.mask.dtype != torch.bool:
            raise TypeError(f"Dense mask must be bool, got {self.mask.dtype}")
        if self.mask.dim() != 4:
            raise ValueError(
                f"Dense mask must be 4-D (B, H, Lq, Lk)-broadcastable, got {tuple(self.mask.shape)}"
            )

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        m = self.mask
        b = b if m.shape[0] > 1 else torch.zeros_like(b)
        h = h if m.shape[1] > 1 else torch.zeros_like(h)
        q_idx = q_idx if m.shape[2] > 1 else torch.zeros_like(q_idx)
        kv_idx = kv_idx if m.shape[3] > 1 else torch.zeros_like(kv_idx)
        return m[b, h, q_idx, kv_idx]

    def batch_size(self):
        return self.mask.shape[0]

    def device(self):
        return self.mask.device

    def dense(self, q_len, kv_len, *, device=None):
        device = torch.device(device) if device is not None else self.device()
        return self.mask.to(device).expand(-1, -1, q_len, kv_len)


@dataclass(frozen=True, eq=False)
class _Combined(Mask):
    parts: tuple[Mask, ...]

    def __post_init__(self):
        object.__setattr__(self, "batch_dependent", any(m.batch_dependent for m in self.parts))
        object.__setattr__(
            self, "partial_tile_weight", sum(m.partial_tile_weight for m in self.parts)
        )

    def batch_size(self):
        sizes = {m.batch_size() for m in self.parts} - {None}
        if len(sizes) > 1:
            raise ValueError(f"combined masks disagree on batch size: {sorted(sizes)}")
        return sizes.pop() if sizes else None

    def device(self):
        for m in self.parts:
            if m.batch_size() is not None:
                return m.device()
        return torch.device("cpu")

    def dense(self, q_len, kv_len, *, device=None):
        device = torch.device(device) if device is not None else self.device()
        out = self.parts[0].dense(q_len, kv_len, device=device)
        for m in self.parts[1:]:
            out = self._combine(out, m.dense(q_len, kv_len, device=device))
        return out

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        out = self.parts[0].allowed(b, h, q_idx, kv_idx, q_len, kv_len)
        for m in self.parts[1:]:
            out = self._combine(out, m.allowed(b, h, q_idx, kv_idx, q_len, kv_len))
        return out


class And(_Combined):
    """Pairs allowed by every part."""

    @staticmethod
    def _combine(a, b):
        return a & b

    def sdpa_causal(self, q_len, kv_len):
        return all(m.sdpa_causal(q_len, kv_len) for m in self.parts)

    def __and__(self, other):
        return And((*self.parts, other))


class Or(_Combined):
    """Pairs allowed by any part."""

    @staticmethod
    def _combine(a, b):
        return a | b

    def sdpa_causal(self, q_len, kv_len):
        return all(m.sdpa_causal(q_len, kv_len) for m in self.parts)

    def __or__(self, other):
        return Or((*self.parts, other))


def with_content_mask(content: Mask, mask: Mask | None, *, causal: bool, who: str) -> Mask:
    """``content`` (keys a variant chose from the scores: routing clusters, MoBA blocks), made causal when the
    variant is, and the call's own ``mask`` on top. A non-causal variant ranks keys over the whole sequence, so
    under a causal ``mask`` future keys would decide what a query sees: refused, naming ``who``."""
    if not causal and hides_future(mask):
        raise ValueError(
            f"{who}(causal=False) ranks keys over the whole sequence, so future keys would decide what a "
            f"query sees under this causal mask; use {who}(causal=True)"
        )
    combined = content & Causal() if causal else content
    return combined if mask is None else combined & mask


def hides_future(mask: Mask | None) -> bool:
    """Whether ``mask`` is known to keep every query from keys after its own position (a causal mask,
    a causal window, chunk, document or neighbourhood axis, an And with one, an Or of such masks).

    Content-based sparse variants (routing, MoBA) check it: ranking keys over the whole sequence
    under such a mask would let future keys decide which past keys a query sees."""
    if isinstance(mask, Causal):
        return True
    if isinstance(mask, (SlidingWindow, Chunked, Document)):
        return mask.causal
    if isinstance(mask, Neighborhood):
        return any(mask.causal)
    if isinstance(mask, And):
        return any(hides_future(m) for m in mask.parts)
    if isinstance(mask, Or):
        return all(hides_future(m) for m in mask.parts)
    return False


__all__ = [
    "And",
    "Causal",
    "Chunked",
    "Dense",
    "Document",
    "EdgeIndex",
    "ForeignKey",
    "KeyPadding",
    "Mask",
    "Neighborhood",
    "Or",
    "SameColumn",
    "SameRow",
    "SameValue",
    "SlidingWindow",
]
