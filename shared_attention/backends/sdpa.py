"""The SDPA backend: ``torch.nn.functional.scaled_dot_product_attention``.

No mask, or causal with Lq == Lk, runs SDPA's fused kernels (``is_causal``). Any other mask is
lowered to its dense bool form and additive score mods (ALiBi, relative bias, forget gate, Bias) to
a float ``attn_mask``; a float temperature folds into ``scale``. Other score mods are not supported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from shared_attention.dispatch import Case
from shared_attention.score_mods import Temperature


def _folded_temperature(score_mod) -> float | None:
    if isinstance(score_mod, Temperature) and not isinstance(score_mod.tau, Tensor):
        return float(score_mod.tau)
    return None


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask=None, score_mod=None, scale: float | None = None
) -> Tensor:
    """q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    gqa = q.shape[1] != k.shape[1]
    q_len, kv_len = q.shape[2], k.shape[2]
    tau = _folded_temperature(score_mod)
    if tau is not None:
        scale, score_mod = scale / tau, None

    if score_mod is None and (mask is None or mask.sdpa_causal(q_len, kv_len)):
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=mask is not None, scale=scale, enable_gqa=gqa
        )

    attn_mask, has_keys = None, None
    if mask is not None:
        allowed = mask.dense(q_len, kv_len, device=q.device)
        has_keys = allowed.any(dim=-1, keepdim=True)
        # SDPA gives NaN for rows with no key; let such rows see every key, then zero them.
        attn_mask = allowed | ~has_keys
    if score_mod is not None:
        bias = score_mod.additive_bias(
            q.shape[0], q.shape[1], q_len, kv_len, device=q.device, dtype=q.dtype
        )
        attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)
    if has_keys is not None and not bool(has_keys.all()):
        out = out * has_keys.to(out.dtype)
    return out


class SdpaBackend:
    name = "sdpa"

    def supports(self, case: Case) -> str | None:
        mod = case.score_mod
        if mod is not None and not mod.additive and _folded_temperature(mod) is None:
            return f"score mod {type(mod).__name__} is not an additive bias or a float temperature"
        return None

    def rank(self, case: Case) -> float:
        mask = case.mask
        if mask is None or mask.sdpa_causal(case.q_len, case.kv_len):
            return 10.0  # fused kernels, no mask tensor
        return 15.0  # a dense mask: every pair is computed, masked or not

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return sdpa_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)
