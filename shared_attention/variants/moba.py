"""Mixture of block attention (Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs",
arXiv:2502.13189; the block selection that VMoBA, Wu et al. 2025, arXiv:2506.23858, extends to video).

The keys are cut into blocks of ``block_size`` positions. A parameter-free gate scores every block for
every query token: the query's dot product with the block's mean key. Each query attends the keys of
its ``top_k`` best blocks, its own block (the block of its own position, queries aligned to the end of
the keys as in ``masks.py``) always among them, as in the paper. With ``query_block`` > 1 (non-causal
only) runs of queries choose together, on their mean score: query-block gating, which a Flex block
mask turns into whole skipped tiles (per-query choices of 128 queries together cover most tiles).
With ``causal=True`` blocks after the query's own are never chosen and the ``Causal`` mask applies inside the own block; ``causal=False``
with a causal mask is an error (future blocks would take part in the ranking). Queries with fewer
than ``top_k`` blocks available attend all of them. The selection is discrete: no gradient flows
through the gate (the paper's gate has no parameters either).

The selection is a mask (``BlockSelection``), ANDed with the call's mask, so every mask and score mod
applies:

- ``flex``: the selection becomes a Flex ``BlockMask`` directly, tile by tile (no dense (Lq, Lk) mask
  is built): only the key tiles of chosen blocks are computed. ``auto`` takes it on CUDA, and in CPU
  inference from 2048 keys on (measured: below, SDPA with the dense mask is as fast or faster);
- otherwise ``functional.attention`` with the dense mask (``reference``, ``sdpa``): the oracle.

Legend: B batch, H query heads, Hkv key/value heads, Lq / Lk query / key lengths, D head dim,
N = ceil(Lk / block_size) key blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from shared_attention.backends.flex import _compiled_flex, _cpp_compiler, flex_available
from shared_attention.dispatch import needs_grad
from shared_attention.functional import attention, explain
from shared_attention.masks import Mask, with_content_mask
from shared_attention.variants.base import Variant, VariantModule

_TILE = 128  # Flex's tile (queries and keys)


@dataclass(frozen=True, eq=False)
class BlockSelection(Mask):
    """Query i attends key j when j's block (j // block_size) is selected for i.

    ``selected`` bool (B, H, Lq, N). The mask differs per head.
    """

    selected: Tensor
    block_size: int
    batch_dependent: bool = field(default=True, init=False)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        return self.selected[b, h, q_idx, kv_idx // self.block_size]

    def dense(self, q_len, kv_len, *, device=None):
        if q_len != self.selected.shape[2] or math.ceil(kv_len / self.block_size) != self.selected.shape[3]:
            raise ValueError(
                f"BlockSelection was built for {self.selected.shape[2]} queries and {self.selected.shape[3]} "
                f"blocks of {self.block_size} keys, got {q_len} queries and {kv_len} keys"
            )
        out = self.selected.repeat_interleave(self.block_size, dim=-1)[..., :kv_len]
        return out if device is None else out.to(device)

    def batch_size(self):
        return self.selected.shape[0]

    def device(self):
        return self.selected.device


def select_blocks(
    q: Tensor, k: Tensor, *, block_size: int, top_k: int, causal: bool, query_block: int = 1
) -> Tensor:
    """The gate: q (B, H, Lq, D), k (B, Hkv, Lk, D) -> selected bool (B, H, Lq, N).

    ``query_block`` > 1 (not causal): runs of that many queries share one choice, made on their mean
    gate score, with the own blocks of all of them forced."""
    if causal and query_block > 1:
        raise ValueError(
            f"MoBA(causal=True) gates each query on its own: query_block={query_block} would let later queries "
            "choose the blocks of earlier ones; use query_block=1"
        )
    q_len, kv_len = q.shape[2], k.shape[2]
    num_blocks = math.ceil(kv_len / block_size)
    padded = F.pad(k, (0, 0, 0, num_blocks * block_size - kv_len))
    sizes = (torch.arange(num_blocks, device=k.device) * block_size).neg().add(kv_len).clamp(max=block_size)
    means = padded.view(*k.shape[:2], num_blocks, block_size, -1).sum(3) / sizes[:, None].to(k.dtype)
    means = means.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, N, D)
    gate = (q @ means.transpose(-1, -2)).float()  # (B, H, Lq, N)
    own = (torch.arange(q_len, device=q.device) + (kv_len - q_len)) // block_size  # (Lq,)
    is_own = own[:, None] == torch.arange(num_blocks, device=q.device)  # (Lq, N)
    if query_block > 1:
        runs = math.ceil(q_len / query_block)
        rows = torch.arange(q_len, device=q.device) // query_block  # each query's run
        gate = torch.zeros(*gate.shape[:2], runs, num_blocks, device=q.device).index_add_(2, rows, gate)
        gate = gate / torch.bincount(rows, minlength=runs)[:, None]
        is_own = torch.zeros(runs, num_blocks, device=q.device).index_add_(0, rows, is_own.float()) > 0
    gate = gate.masked_fill(is_own, float("inf"))
    if causal:
        gate = gate.masked_fill(torch.arange(num_blocks, device=q.device) > own[:, None], float("-inf"))
    top = gate.topk(min(top_k, num_blocks), dim=-1)
    selected = torch.zeros_like(gate, dtype=torch.bool)
    # A -inf among the top k (fewer than k past blocks) is not chosen.
    selected.scatter_(-1, top.indices, top.values > float("-inf"))
    return selected if query_block == 1 else selected[:, :, rows]


def selection_block_mask(
    selection: BlockSelection, mask_mod, q_len: int, kv_len: int, *, full_tiles: bool, causal: bool
):
    """The Flex BlockMask of a block selection, read off ``selected`` per (query tile, key tile).

    A key tile is computed when some query of the tile selected a block overlapping it. With
    ``full_tiles`` (``mask_mod`` is the selection alone, ANDed with ``Causal`` when ``causal``), tiles
    that every query of the tile selected whole (and, causal, that end before the tile's first query)
    are marked full: no ``mask_mod`` there. Otherwise every computed tile is partial, so ``mask_mod``
    (the selection ANDed with any other mask) decides per pair.
    """
    from torch.nn.attention.flex_attention import BlockMask

    selected = selection.selected
    batch, heads, _, num_blocks = selected.shape
    q_tiles, kv_tiles = math.ceil(q_len / _TILE), math.ceil(kv_len / _TILE)
    rows = F.pad(selected, (0, 0, 0, q_tiles * _TILE - q_len)).view(batch, heads, q_tiles, _TILE, num_blocks)
    any_row = rows.any(3).float()  # (B, H, Tq, N)
    # overlap[n, t]: block n shares keys with key tile t.
    start = torch.arange(num_blocks, device=selected.device) * selection.block_size
    tile_start = torch.arange(kv_tiles, device=selected.device) * _TILE
    overlap = (start[:, None] < tile_start + _TILE) & (tile_start < start[:, None] + selection.block_size)
    touched = (any_row @ overlap.float()) > 0  # (B, H, Tq, Tk)
    # Key positions of each query tile's first and last query.
    q_first = torch.arange(q_tiles, device=selected.device) * _TILE + (kv_len - q_len)
    q_last = (q_first + _TILE - 1).clamp(max=kv_len - 1)
    if causal:  # an own block reaching past the tile's last query: those key tiles have nothing allowed
        touched &= tile_start[None, :] <= q_last[:, None]
    full = torch.zeros_like(touched)
    if full_tiles:
        # Padded rows count as selecting nothing, so a cut-short last query tile is never full.
        every_row = rows.all(3).float()
        full = ((1 - every_row) @ overlap.float()) == 0
        full &= tile_start + _TILE <= kv_len  # a cut-short last key tile is never full
        if causal:
            full &= (tile_start + _TILE - 1)[None, :] <= q_first[:, None]  # every key at or before every query
        full &= touched
    partial = touched & ~full

    def listed(chosen: Tensor) -> tuple[Tensor, Tensor]:
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)
        return chosen.sum(-1, dtype=torch.int32), order.to(torch.int32)

    kv_num, kv_indices = listed(partial)
    full_num, full_indices = listed(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_indices, full_num, full_indices, BLOCK_SIZE=_TILE, mask_mod=mask_mod, seq_lengths=(q_len, kv_len)
    )


def _flex_reason(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """None when the block-sparse Flex path can run this call, else why not."""
    reason = flex_available()
    if reason is not None:
        return reason
    if q.device.type not in ("cpu", "cuda"):
        return f"no compiled Flex on {q.device.type}"
    if q.device.type == "cpu" and needs_grad(q, k, v):
        return "compiled Flex has no backward on CPU (inference only)"
    if q.device.type == "cpu" and not _cpp_compiler():
        return "no C++ compiler for Inductor's CPU code"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16) or q.shape[-1] < 16:
        return f"Flex needs fp32/bf16/fp16 and a head dim of at least 16, got {q.dtype} and {q.shape[-1]}"
    return None


# CPU inference (1 thread, fp32, B=1, H=4, D=64, causal top-3 of 64- or 256-key blocks): the Flex path ran
# 1.8-2.1x faster than SDPA with the dense mask (rebuilt every call: the selection is new each time) from
# 2048 keys on, and between 0.6x and 2.7x below, depending on the block size. CUDA always takes Flex.
_CPU_FLEX_MIN_KV_LEN = 2048


class MoBAAttention(VariantModule):
    """Softmax attention over the top-k key blocks of each query (no parameters)."""

    def __init__(self, *, block_size: int, top_k: int, causal: bool, query_block: int) -> None:
        super().__init__()
        if min(block_size, top_k, query_block) < 1:
            raise ValueError(
                f"MoBA(block_size={block_size}, top_k={top_k}, query_block={query_block}): each must be at least 1"
            )
        if causal and query_block > 1:
            raise ValueError(
                f"MoBA(causal=True) gates each query on its own: query_block={query_block} would let later queries "
                "choose the blocks of earlier ones; use query_block=1"
            )
        self.block_size, self.top_k, self.causal, self.query_block = block_size, top_k, causal, query_block

    def content_mask(self, q: Tensor, k: Tensor) -> BlockSelection:
        """The blocks each query of q (B, H, Lq, D) attends among those of k (B, Hkv, Lk, D): the mask this
        variant adds to the call's (and to ``Causal`` when causal)."""
        with torch.no_grad():
            selected = select_blocks(
                q, k, block_size=self.block_size, top_k=self.top_k, causal=self.causal, query_block=self.query_block
            )
        return BlockSelection(selected, self.block_size)

    def plan(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None, backend: str):
        """The call's mask (selection, ``Causal`` when causal, ``mask``) and the Flex BlockMask of the
        block-sparse path, or None when ``functional.attention`` runs the mask with ``backend``."""
        selection = self.content_mask(q, k)
        combined = with_content_mask(selection, mask, causal=self.causal, who="MoBA")
        if backend not in ("auto", "flex"):
            return combined, None
        reason = _flex_reason(q, k, v)
        if reason is not None:
            if backend == "flex":
                raise ValueError(f"MoBA cannot run on backend 'flex' here: {reason}")
            return combined, None
        q_len, kv_len = q.shape[2], k.shape[2]
        if backend == "auto" and not q.is_cuda and kv_len < _CPU_FLEX_MIN_KV_LEN:
            return combined, None
        block_mask = selection_block_mask(
            selection, combined.mask_mod(q_len, kv_len), q_len, kv_len, full_tiles=mask is None, causal=self.causal
        )
        return combined, block_mask

    def chosen_backend(self, q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = None, backend: str = "auto") -> str:
        """Which path a call takes: "flex" (block-sparse) or the backend ``functional.attention`` picks."""
        combined, block_mask = self.plan(q, k, v, mask=mask, backend=backend)
        return "flex" if block_mask is not None else explain(q, k, v, mask=combined, backend=backend).chosen

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        combined, block_mask = self.plan(q, k, v, mask=mask, backend=backend)
        if block_mask is None:
            return attention(q, k, v, mask=combined, score_mod=score_mod, scale=scale, backend=backend)
        q_len, kv_len = q.shape[2], k.shape[2]
        return _compiled_flex()(
            q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
            score_mod=None if score_mod is None else score_mod.flex(q_len, kv_len),
        )

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, top_k={self.top_k}, causal={self.causal}, query_block={self.query_block}"


@dataclass(frozen=True)
class MoBA(Variant):
    """Mixture of block attention (Lu et al. 2025, arXiv:2502.13189): each query attends its ``top_k``
    best key blocks of ``block_size`` (its own block included); ``causal=True`` for decoders.

    ``query_block`` (not causal): runs of that many queries choose together, on their mean gate score
    (query-block gating, as in the VMoBA family): with 128, Flex's tile, the key tiles a query tile
    skips are exactly the unchosen blocks, where per-query choices leave few whole tiles to skip.
    """

    block_size: int = 64
    top_k: int = 3
    causal: bool = False
    query_block: int = 1

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return MoBAAttention(
            block_size=self.block_size, top_k=self.top_k, causal=self.causal, query_block=self.query_block
        )
