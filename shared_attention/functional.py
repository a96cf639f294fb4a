"""Functional softmax attention over (B, H, L, D) tensors, dispatched to a backend.

Legend: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), Lq / Lk query / key
lengths, D head dim, Dv value head dim.
"""

from __future__ import annotations

from torch import Tensor

import shared_attention.backends  # noqa: F401  (registers the "softmax" backends)
from shared_attention.dispatch import Case, Explanation, needs_grad, select_measured
from shared_attention.dispatch import explain as explain_case
from shared_attention.masks import Mask
from shared_attention.score_mods import ScoreMod


def make_case(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | None = None,
    score_mod: ScoreMod | None = None,
    op: str = "softmax",
) -> Case:
    """Describe a call for dispatch, checking shapes on the way."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    batch, heads, q_len, head_dim = q.shape
    _, kv_heads, kv_len, _ = k.shape
    if k.shape[0] != batch or v.shape[0] != batch or k.shape[-1] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree on heads or length")
    if heads % kv_heads:
        raise ValueError(f"query heads {heads} must be a multiple of key/value heads {kv_heads}")
    return Case(
        op=op,
        device_type=q.device.type,
        dtype=q.dtype,
        training=needs_grad(q, k, v),
        batch=batch,
        heads=heads,
        kv_heads=kv_heads,
        q_len=q_len,
        kv_len=kv_len,
        head_dim=head_dim,
        v_dim=v.shape[-1],
        mask=mask,
        score_mod=score_mod,
        device=q.device,
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | None = None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention: q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv).

    ``scale`` defaults to D ** -0.5. ``backend`` is "auto" (the fastest backend that supports the
    call on this device and mode: measured once per shape on CUDA, see ``dispatch``) or a backend's name ("reference", "sdpa", "flex", "neighborhood");
    a named backend that cannot run the call raises ValueError with the reason. Rows with no allowed
    key give 0. ``return_lse=True`` also returns each query's fp32 log-sum-exp of its (scaled) scores,
    (B, H, Lq), natural log, differentiable (op "softmax_lse": every backend but SDPA).
    """
    case = make_case(q, k, v, mask=mask, score_mod=score_mod, op="softmax_lse" if return_lse else "softmax")
    kwargs = dict(mask=mask, score_mod=score_mod, scale=scale)
    return select_measured(case, backend, (q, k, v), kwargs)(q, k, v, **kwargs)


def explain(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | None = None,
    score_mod: ScoreMod | None = None,
    backend: str = "auto",
) -> Explanation:
    """Which backend ``attention`` would use for this call, and why not the others."""
    return explain_case(make_case(q, k, v, mask=mask, score_mod=score_mod), backend)


__all__ = ["attention", "explain", "make_case"]
