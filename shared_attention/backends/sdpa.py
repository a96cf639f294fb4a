"""The SDPA backend: ``torch.nn.functional.scaled_dot_product_attention``.

No mask, or causal with Lq == Lk, runs SDPA's fused kernels (``is_causal``). Any other mask is
lowered to its dense bool form and additive score mods (ALiBi, relative bias, forget gate, Bias) to
a float ``attn_mask``; a float temperature folds into ``scale``. Other score mods are not supported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from shared_attention.backends.lowering import cached_lowering
from shared_attention.dispatch import Case
from shared_attention.score_mods import Temperature


def folded_temperature(score_mod) -> float | None:
    """The tau of a float Temperature (SDPA folds it into ``scale``), else None."""
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
    tau = folded_temperature(score_mod)
    if tau is not None:
        scale, score_mod = scale / tau, None

    if score_mod is None and (mask is None or mask.sdpa_causal(q_len, kv_len)):
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=mask is not None, scale=scale, enable_gqa=gqa
        )

    attn_mask, empty_rows = None, None
    if mask is not None:
        attn_mask, empty_rows = cached_lowering(
            "sdpa",
            mask,
            (q_len, kv_len),
            q.device,
            lambda: _dense_mask(mask, q_len, kv_len, q.device),
        )
    if score_mod is not None:
        bias = score_mod.additive_bias(
            q.shape[0], q.shape[1], q_len, kv_len, device=q.device, dtype=q.dtype
        )
        attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out


def _dense_mask(mask, q_len: int, kv_len: int, device) -> tuple[Tensor, Tensor]:
    """SDPA's bool attn_mask, and the rows with no allowed key.

    SDPA gives NaN for a row with no key; such rows see every key instead, and are zeroed after. The
    zeroing always runs: asking whether any row is empty would sync with the device (stalling the host's
    launches) and break a torch.compile graph, for a saving of one elementwise pass.
    """
    allowed = cached_lowering(  # shared with Flex's block mask
        "dense", mask, (q_len, kv_len), device, lambda: mask.dense(q_len, kv_len, device=device)
    )
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty, empty


class SdpaBackend:
    name = "sdpa"

    def supports(self, case: Case) -> str | None:
        mod = case.score_mod
        if mod is not None and not mod.additive and folded_temperature(mod) is None:
            return f"score mod {type(mod).__name__} is not an additive bias or a float temperature"
        return None

    def rank(self, case: Case) -> float:
        mask, mod = case.mask, case.score_mod
        bias = mod is not None and folded_temperature(mod) is None
        if not bias and (mask is None or mask.sdpa_causal(case.q_len, case.kv_len)):
            return 10.0  # fused kernels, no mask tensor
        return 15.0  # a dense mask or bias: every pair is computed, masked or not

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return sdpa_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale)
