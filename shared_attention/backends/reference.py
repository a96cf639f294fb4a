"""The reference backend: plain fp32 math that materialises the scores. The oracle.

Slow and obviously right; every other backend is tested against it. Rows whose keys are all
masked output zeros (as FlexAttention does), with zero gradients.
"""

from __future__ import annotations

from torch import Tensor

from shared_attention.dispatch import Case


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask=None, score_mod=None, scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention. q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv),
    and with ``return_lse`` the fp32 log-sum-exp of each query's scores (B, H, Lq) (-inf where no key)."""
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        # Grouped-query heads: query head h reads key/value head h // (H / Hkv).
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    if score_mod is not None:
        scores = score_mod.apply(scores)
    if mask is None:
        out = (scores.softmax(dim=-1) @ v).to(out_dtype)
        return (out, scores.logsumexp(dim=-1)) if return_lse else out
    allowed = mask.dense(q.shape[2], k.shape[2], device=q.device)
    has_keys = allowed.any(dim=-1, keepdim=True)
    # Fully masked rows: softmax over zeros (finite), then zeroed, so no NaN reaches the gradients.
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~has_keys, 0.0)
    probs = scores.softmax(dim=-1) * has_keys
    out = (probs @ v).to(out_dtype)
    if not return_lse:
        return out
    return out, scores.logsumexp(dim=-1).masked_fill(~has_keys[..., 0], float("-inf"))


class ReferenceBackend:
    name = "reference"

    def supports(self, case: Case) -> str | None:
        return None

    def rank(self, case: Case) -> float:
        # Last resort: materialises (B, H, Lq, Lk) in fp32.
        return 100.0

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return reference_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)


class ReferenceLseBackend(ReferenceBackend):
    """The oracle for op "softmax_lse": (output, log-sum-exp)."""

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return reference_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale, return_lse=True)
