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
from shared_attention.masks import KeyPadding


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
    return next(
        filter(None, map(shutil.which, (os.environ.get("CXX", "g++"), "c++", "clang++"))), None
    )


def _flex_import_error() -> str | None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as error:
        return f"FlexAttention unavailable ({error})"
    return None


_flex_checked, _flex_error = False, None  # the answer, found on the first call


def flex_available() -> str | None:
    """None when FlexAttention imports, else the reason. Dispatch asks on every call, also inside torch.compile's
    traces, which read module globals cleanly (a cached function would be traced through, with a warning)."""
    global _flex_checked, _flex_error
    if not _flex_checked:
        _flex_error, _flex_checked = _flex_import_error(), True
    return _flex_error


_BLOCK = 128  # Flex's default tile size (queries and keys)


def block_mask_for(mask, q_len: int, kv_len: int, batch: int, heads: int, device: torch.device):
    """The (cached) Flex BlockMask of ``mask`` for these lengths.

    Flex skips the tiles this block mask marks empty, runs full tiles unmasked and applies
    ``mask_mod`` per pair in partial ones. The tiles are read off the dense mask by block
    reductions: vectorised, so much cheaper than ``create_block_mask``'s per-pair ``vmap`` on a
    fresh mask (tens of ms on CPU even at L=256). Batch and head axes stay at size 1 where the
    mask does not vary along them (the block mask broadcasts).
    """

    def build():
        allowed = dense_mask(mask, q_len, kv_len, device)
        return _block_mask_from_dense(allowed, mask.mask_mod(q_len, kv_len), q_len, kv_len)

    return cached_lowering("flex", mask, (q_len, kv_len), device, build)


def dense_mask(mask, q_len: int, kv_len: int, device) -> Tensor:
    """The mask's dense bool form (B or 1, H or 1, Lq, Lk), cached on the mask (shared by SDPA)."""
    return cached_lowering(
        "dense", mask, (q_len, kv_len), device, lambda: mask.dense(q_len, kv_len, device=device)
    )


def _block_mask_from_dense(allowed: Tensor, mask_mod, q_len: int, kv_len: int):
    from torch.nn.attention.flex_attention import BlockMask

    q_blocks, kv_blocks = -(-q_len // _BLOCK), -(-kv_len // _BLOCK)
    # Rows that are one broadcast row (key padding): classify that row's tiles once.
    rows = 1 if allowed.stride(-2) == 0 else q_len
    padded = allowed.new_zeros(*allowed.shape[:2], -(-rows // _BLOCK) * _BLOCK, kv_blocks * _BLOCK)
    padded[..., :rows, :kv_len] = allowed[..., :rows, :]
    tiles = padded.view(*allowed.shape[:2], -1, _BLOCK, kv_blocks, _BLOCK)
    # bool summed straight to int32: a bool -> uint8 dtype view fails Inductor's lowering on CUDA
    # ("torch.bool is not supported by torch.iinfo", aten.view.dtype; the relational model under torch.compile)
    counts = tiles.sum(dim=(-1, -3), dtype=torch.int32)  # allowed pairs per tile
    if rows == 1:  # each query block repeats the row; the last one may be cut short
        counts = (counts * _BLOCK).expand(*counts.shape[:2], q_blocks, kv_blocks)
    full = counts == _BLOCK * _BLOCK
    if q_len % _BLOCK:
        full[..., -1, :] = False  # the last query block is cut short: never a full tile
    partial = (counts > 0) & ~full

    def listed(selected: Tensor) -> tuple[Tensor, Tensor]:
        # Per query block: how many key blocks are selected, and their indices first.
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)
        return selected.sum(dim=-1, dtype=torch.int32), order.to(torch.int32)

    kv_num, kv_indices = listed(partial)
    full_num, full_indices = listed(full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_indices,
        full_num,
        full_indices,
        BLOCK_SIZE=_BLOCK,
        mask_mod=mask_mod,
        seq_lengths=(q_len, kv_len),
    )


def tile_fractions(
    mask, q_len: int, kv_len: int, batch: int, heads: int, device
) -> tuple[float, float]:
    """Fractions of all (query block, key block) tiles that Flex computes fully, and partially
    (evaluating ``mask_mod`` per pair), read from the mask's BlockMask."""
    block_mask = block_mask_for(mask, q_len, kv_len, batch, heads, device)
    total = block_mask.kv_num_blocks.numel() * block_mask.kv_indices.shape[-1]
    partial = float(block_mask.kv_num_blocks.sum()) / total
    full = block_mask.full_kv_num_blocks
    return (0.0 if full is None else float(full.sum()) / total), partial


@dataclass(frozen=True)
class _FlexRule:
    """Where Flex beats SDPA on a device, fitted to apps/bench/attention.py (apps/bench/results/).

    With a mask, Flex's time relative to SDPA with the dense mask is predicted as
    ``full_tile * full + partial_tile * mask.partial_tile_weight * partial`` (the tile fractions
    above); Flex is chosen when that is below 1 (below ``training_threshold`` when gradients are
    needed: Flex's backward gains less over SDPA's than its forward). Below ``min_kv_len_mask`` keys SDPA always wins
    (too few tiles to skip). With a score mod, which SDPA must materialise as a float mask, Flex
    wins from ``min_kv_len_score_mod`` keys on.
    """

    min_kv_len_score_mod: int
    min_kv_len_mask: int
    full_tile: float
    partial_tile: float
    training_threshold: float = 1.0

    def flex_over_sdpa(self, mask, full: float, partial: float) -> float:
        return self.full_tile * full + self.partial_tile * mask.partial_tile_weight * partial


_FLEX_WINS = {
    # CPU, 1 thread, fp32: chunks (full tiles only) give 1.45x SDPA's time per tile, windows and
    # documents ~1.5x per partial tile, 2-D neighborhoods ~5x (their weight 3.5 covers it).
    "cpu": _FlexRule(
        min_kv_len_score_mod=512, min_kv_len_mask=256, full_tile=1.45, partial_tile=1.5
    ),
    # H200, bf16: SDPA with any mask tensor is ~2x slower than without, so Flex wins more often
    # (key padding: 0.30 ms vs 0.37 ms); not on a random graph (all tiles partial) or below 1024.
    # Training: key padding (predicted 0.83) ran 1.18 ms on Flex vs 1.08 ms on SDPA, while a 2-D
    # neighborhood (0.64) ran 1.43 ms vs 3.91 ms: the threshold sits between them.
    "cuda": _FlexRule(
        min_kv_len_score_mod=512, min_kv_len_mask=1024, full_tile=0.9, partial_tile=1.2,
        training_threshold=0.75,
    ),
}


def predicted_flex_over_sdpa(
    mask, q_len: int, kv_len: int, batch: int, heads: int, device
) -> float:
    """Flex's time over SDPA's with the dense mask, as dispatch predicts it (cached per mask)."""
    device = torch.device(device)
    shape = (q_len, kv_len, batch, heads)
    full, partial = cached_lowering(  # once per mask: reads the block mask back from the device
        "flex-tiles", mask, shape, device, lambda: tile_fractions(mask, *shape, device)
    )
    return _FLEX_WINS[device.type].flex_over_sdpa(mask, full, partial)


def flex_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask=None, score_mod=None, scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv), and with
    ``return_lse`` the fp32 log-sum-exp of each query's scores (B, H, Lq) (natural log)."""
    from torch.nn.attention.flex_attention import AuxRequest

    q_len, kv_len = q.shape[2], k.shape[2]
    block_mask = (
        None
        if mask is None
        else block_mask_for(mask, q_len, kv_len, q.shape[0], q.shape[1], q.device)
    )
    flex_mod = None if score_mod is None else score_mod.flex(q_len, kv_len)
    if torch.compiler.is_compiling():  # the caller's compile fuses it; tracing _compiled_flex would break the graph
        from torch.nn.attention.flex_attention import flex_attention as flex
    else:
        flex = _compiled_flex()
    result = flex(
        q,
        k,
        v,
        score_mod=flex_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
        return_aux=AuxRequest(lse=True) if return_lse else None,
    )
    if not return_lse:
        return result
    out, aux = result
    return out, aux.lse


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
        # (Under torch.compile, Inductor already has a C++ compiler: no filesystem lookup to trace.)
        if case.device_type == "cpu" and not torch.compiler.is_compiling() and not _cpp_compiler():
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
        if torch.compiler.is_compiling():
            return self._rank_traced(case)
        ratio = predicted_flex_over_sdpa(
            mask, case.q_len, case.kv_len, case.batch, case.heads, case.device
        )
        threshold = rule.training_threshold if case.training else 1.0
        return 12.0 if ratio < threshold else 50.0  # vs SDPA's dense mask (rank 15)

    @staticmethod
    def _rank_traced(case: Case) -> float:
        """Inside torch.compile the tile counts cannot be read (a device read breaks the graph at every
        attention call), so the choice goes by the mask's kind. On CUDA key padding alone stays on SDPA, whose
        (B, 1, 1, Lk) mask is cheap (H200 training: 1.08 vs 1.18 ms on Flex), and any other mask this long goes
        to Flex, which skips empty tiles and never materialises the (B, H, Lq, Lk) mask. On the CPU, SDPA:
        Inductor's C++ Flex template fails on block masks built inside the traced graph (torch 2.14)."""
        if case.device_type != "cuda":
            return 50.0
        return 50.0 if isinstance(case.mask, KeyPadding) else 12.0

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return flex_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)


class FlexLseBackend(FlexBackend):
    """Op "softmax_lse": (output, log-sum-exp). Where Flex would not beat SDPA's dense mask (rank 50),
    the materialised math (the reference, 100) is also cheaper than a Flex kernel: it goes behind it."""

    def supports(self, case: Case) -> str | None:
        if case.device_type == "cpu":
            return "compiled Flex on CPU returns no log-sum-exp"
        return super().supports(case)

    def rank(self, case: Case) -> float:
        rank = super().rank(case)
        return rank if rank < 50.0 else 110.0

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return flex_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale, return_lse=True)
