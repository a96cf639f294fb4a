"""The Flex backend: compiled FlexAttention, for masks and score mods SDPA has no kernel for.

Masks become a ``BlockMask`` (so fully masked key blocks are skipped: the win on sliding windows,
chunks, documents, neighborhoods and graphs at long lengths) and score mods a Flex ``score_mod``.
On CPU, compiled Flex has no backward: the backend only takes inference calls there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from shared_attention.backends.lowering import cached_lowering
from shared_attention.backends.sdpa import folded_temperature
from shared_attention.dispatch import Case


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Every new shape or mask / score-mod structure recompiles this one frame. Past Dynamo's
    # default limit (8) it would silently fall back to the unfused eager path; a model with a few
    # mask types and lengths needs more.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(flex_attention, dynamic=False)


@cache
def _cpp_compiler() -> str | None:
    # Inductor compiles Flex's CPU kernels with the system C++ compiler.
    return next(filter(None, map(shutil.which, (os.environ.get("CXX", "g++"), "c++", "clang++"))), None)


@cache
def flex_available() -> str | None:
    """None when FlexAttention imports, else the reason."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as error:
        return f"FlexAttention unavailable ({error})"
    return None


def block_mask_for(mask, q_len: int, kv_len: int, batch: int, heads: int, device: torch.device):
    """The (cached) Flex BlockMask of ``mask`` for these lengths.

    Flex skips key blocks by this block mask and applies ``mask_mod`` inside the blocks it keeps;
    it is built per batch element / head only where the mask varies along that axis.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        return create_block_mask(
            mask.mask_mod(q_len, kv_len),
            batch if mask.batch_dependent else None,
            heads if mask.head_dependent else None,
            q_len,
            kv_len,
            device=device,
        )

    return cached_lowering("flex", mask, (q_len, kv_len, batch, heads), device, build)


# A partial tile evaluates mask_mod per pair: about twice a full tile's cost (CPU bench).
_PARTIAL_TILE_COST = 2.0


def tile_cost(mask, q_len: int, kv_len: int, batch: int, heads: int, device) -> float:
    """Flex's work for this mask relative to computing every tile, from its BlockMask:
    (full tiles + 2 x partial tiles) / all tiles."""
    block_mask = block_mask_for(mask, q_len, kv_len, batch, heads, device)
    partial = block_mask.kv_num_blocks.sum()
    full = 0 if block_mask.full_kv_num_blocks is None else block_mask.full_kv_num_blocks.sum()
    total = block_mask.kv_num_blocks.numel() * block_mask.kv_indices.shape[-1]
    return float(full + _PARTIAL_TILE_COST * partial) / total


@dataclass(frozen=True)
class _FlexRule:
    """Where Flex beats SDPA, per device (measured with apps/bench/attention.py, results in
    apps/bench/results/): with a score mod from ``min_kv_len_score_mod`` keys on; with a mask
    from ``min_kv_len_mask`` keys on, when its tile cost is at most ``max_tile_cost``."""

    min_kv_len_score_mod: int
    min_kv_len_mask: int
    max_tile_cost: float


_FLEX_WINS = {
    # CPU (attention-cpu.md): key padding (tile cost 0.97) stays with SDPA; windows, chunks,
    # documents, 2-D neighborhoods (<= 0.3) go to Flex; the random graph (2.0) stays with SDPA.
    "cpu": _FlexRule(min_kv_len_score_mod=512, min_kv_len_mask=1024, max_tile_cost=0.6),
    # H200 (attention-h200.md): SDPA with any mask tensor is ~2x slower than without, so Flex
    # wins up to a higher cost (key padding, 0.97: Flex 0.30 ms vs SDPA 0.37 ms); not the graph (2.0).
    "cuda": _FlexRule(min_kv_len_score_mod=512, min_kv_len_mask=1024, max_tile_cost=1.2),
}


def flex_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask=None, score_mod=None, scale: float | None = None
) -> Tensor:
    """q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    block_mask = (
        None
        if mask is None
        else block_mask_for(mask, q_len, kv_len, q.shape[0], q.shape[1], q.device)
    )
    flex_mod = None if score_mod is None else score_mod.flex(q_len, kv_len)
    return _compiled_flex()(
        q,
        k,
        v,
        score_mod=flex_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


class FlexBackend:
    name = "flex"

    def supports(self, case: Case) -> str | None:
        reason = flex_available()
        if reason is not None:
            return reason
        if case.device_type not in ("cpu", "cuda"):
            return f"no compiled Flex on {case.device_type}"
        if case.device_type == "cpu" and case.training:
            return "compiled Flex has no backward on CPU (inference only)"
        if case.device_type == "cpu" and not _cpp_compiler():
            return "no C++ compiler for Inductor's CPU code"
        if case.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"dtype {case.dtype} not supported"
        if case.head_dim < 16 or case.v_dim < 16:
            return f"head dim {case.head_dim}/{case.v_dim} below Flex's minimum of 16"
        return None

    def rank(self, case: Case) -> float:
        rule, mask = _FLEX_WINS[case.device_type], case.mask
        if case.score_mod is not None and folded_temperature(case.score_mod) is None:
            # SDPA would take the mod as a materialised (B, H, Lq, Lk) float mask.
            return 12.0 if case.kv_len >= rule.min_kv_len_score_mod else 50.0
        if mask is None or mask.sdpa_causal(case.q_len, case.kv_len):
            return 50.0  # SDPA's fused kernels (rank 10) win; Flex still beats the reference
        if case.kv_len < rule.min_kv_len_mask:
            return 50.0  # short: Flex's fixed cost outweighs the skipped tiles
        shape = (case.q_len, case.kv_len, case.batch, case.heads)
        cost = cached_lowering(  # once per mask: it reads the block mask back from the device
            "flex-tile-cost", mask, shape, case.device, lambda: tile_cost(mask, *shape, case.device)
        )
        return 12.0 if cost <= rule.max_tile_cost else 50.0  # vs SDPA's dense mask (rank 15)

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return flex_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)
