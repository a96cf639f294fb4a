"""The Flex backend: compiled FlexAttention, for masks and score mods SDPA has no kernel for.

Masks become a ``BlockMask`` (so fully masked key blocks are skipped: the win on sliding windows,
chunks, documents, neighborhoods and graphs at long lengths) and score mods a Flex ``score_mod``.
On CPU, compiled Flex has no backward: the backend only takes inference calls there.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache

import torch
from torch import Tensor

from shared_attention.dispatch import Case

_BLOCK_MASK_CACHE_SIZE = 32
_block_masks: OrderedDict = OrderedDict()


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
def flex_available() -> str | None:
    """None when FlexAttention imports, else the reason."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as error:
        return f"FlexAttention unavailable ({error})"
    return None


def _cache_key(mask, q_len: int, kv_len: int, batch: int, device: torch.device):
    # Tensor-carrying masks are not hashable by value: key them by identity (the cache holds a
    # reference, so the id cannot be reused while the entry lives).
    try:
        hash(mask)
        ident = mask
    except TypeError:
        ident = ("id", id(mask))
    return ident, q_len, kv_len, batch, str(device)


def block_mask_for(mask, q_len: int, kv_len: int, batch: int, device: torch.device):
    """The (cached) Flex BlockMask of ``mask`` for these lengths."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = _cache_key(mask, q_len, kv_len, batch, device)
    hit = _block_masks.get(key)
    if hit is not None:
        _block_masks.move_to_end(key)
        return hit[1]
    block_mask = create_block_mask(
        mask.mask_mod(q_len, kv_len),
        batch if mask.batch_dependent else None,
        None,
        q_len,
        kv_len,
        device=device,
    )
    _block_masks[key] = (mask, block_mask)
    if len(_block_masks) > _BLOCK_MASK_CACHE_SIZE:
        _block_masks.popitem(last=False)
    return block_mask


def flex_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask=None, score_mod=None, scale: float | None = None
) -> Tensor:
    """q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    block_mask = None if mask is None else block_mask_for(mask, q_len, kv_len, q.shape[0], q.device)
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
        if case.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"dtype {case.dtype} not supported"
        if case.head_dim < 16 or case.v_dim < 16:
            return f"head dim {case.head_dim}/{case.v_dim} below Flex's minimum of 16"
        return None

    def rank(self, case: Case) -> float:
        mask = case.mask
        if mask is not None and mask.block_sparse() and case.kv_len >= 1024:
            return 12.0  # skips masked blocks: beats SDPA's dense mask (rank 15) at long lengths (bench)
        return 50.0  # runs what SDPA cannot (e.g. soft-capping) faster than the reference

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return flex_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)
