"""Linear attention in the fast weight programmer form (Katharopoulos et al. 2020; Schlag, Irie &
Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers").

    o_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),   S_i = sum_{j <= i} phi(k_j) v_j^T,   z_i = sum_{j <= i} phi(k_j)

(non-causal: the sums run over every key). With ``decay=True`` (causal only) each head h forgets
at a learned rate g_h in (0, 1): S_i = g_h S_{i-1} + phi(k_i) v_i^T (and likewise z_i), the
retention form (Sun et al. 2023, "Retentive Network"). The numerator is dispatched under the op
name "linear":

- ``reference``: materialises the (Lq, Lk) scores phi(q) phi(k)^T: the oracle;
- ``chunked``: the chunked torch form (exact within chunks, fast-weight states across them);
- ``kernel``: the ``panformer::causal_linear_attention`` custom op (Triton on CUDA, the chunked
  torch form, compiled on large inputs, elsewhere).

Masks: causal (a ``Causal`` mask or ``causal=True``) and key padding; score mods do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panformer_kernels import (
    causal_linear_attention,
    chunked_causal_linear_attention,
    naive_causal_linear_attention,
)
from shared_attention.dispatch import Case, register, select
from shared_attention.functional import make_case
from shared_attention.masks import And, Causal, KeyPadding
from shared_attention.variants.base import Variant, VariantModule


def _elu_plus_one(x: Tensor) -> Tensor:
    return F.elu(x) + 1


def _dpfp(x: Tensor, nu: int = 1) -> Tensor:
    # Deterministic parameter-free projection (Schlag et al. 2021): D -> 2 * nu * D features.
    r = F.relu(torch.cat((x, -x), dim=-1))
    rolled = torch.cat([r.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return r.repeat(*([1] * (x.dim() - 1)), nu) * rolled


FEATURE_MAPS = {"elu": _elu_plus_one, "relu": F.relu, "dpfp": _dpfp}


def linear_attention_scores(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, log_decay: Tensor | None = None
) -> Tensor:
    """Reference numerator: (phi(q) phi(k)^T, causal-masked, decayed) @ v, materialised in fp32."""
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if causal:
        cum = None if log_decay is None else log_decay.to(compute).cumsum(-1)
        return naive_causal_linear_attention(q, k, v, cum_log_decay=cum)
    return (q @ k.transpose(-1, -2)) @ v


def _noncausal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return q @ (k.transpose(-1, -2) @ v)


class _LinearBackend:
    """A backend of op "linear": ``(q, k, v, *, causal) -> numerator`` over feature-mapped q, k."""

    def __init__(self, name: str, rank_by_device: dict[str, float]) -> None:
        self.name = name
        self._rank = rank_by_device

    def supports(self, case: Case) -> str | None:
        if case.extra.get("decay") and not case.extra.get("causal"):
            return "a decay needs causal linear attention"
        if case.extra.get("causal") and case.q_len != case.kv_len:
            return "causal linear attention needs as many queries as keys (decode with a recurrent state)"
        return None

    def rank(self, case: Case) -> float:
        return self._rank.get(case.device_type, 50.0)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, log_decay: Tensor | None = None) -> Tensor:
        """Numerator over feature-mapped q, k; ``log_decay`` (B, H, L) per-step log g <= 0."""
        if self.name == "reference":
            return linear_attention_scores(q, k, v, causal=causal, log_decay=log_decay)
        if not causal:
            return _noncausal(q, k, v)
        if self.name == "chunked":
            cum = None if log_decay is None else log_decay.float().cumsum(-1)
            return chunked_causal_linear_attention(q, k, v, cum_log_decay=cum)
        return causal_linear_attention(q, k, v, log_decay=log_decay)


# Ranks: the op wins on CUDA (Triton); on CPU it is the chunked form behind the op boundary,
# compiled on large inputs, so it ranks first there too.
register("linear", _LinearBackend("reference", {"cpu": 100.0, "cuda": 100.0}))
register("linear", _LinearBackend("chunked", {"cpu": 20.0, "cuda": 20.0}))
register("linear", _LinearBackend("kernel", {"cpu": 10.0, "cuda": 1.0}))


def _split_mask(mask: Any, kv_len: int, device: torch.device) -> tuple[bool, Tensor | None]:
    """(causal, key_valid (B, Lk) or None) from a mask built of Causal and KeyPadding parts."""
    parts = mask.parts if isinstance(mask, And) else (() if mask is None else (mask,))
    causal, key_valid = False, None
    for part in parts:
        if isinstance(part, Causal):
            causal = True
        elif isinstance(part, KeyPadding):
            valid = part.dense(1, kv_len, device=device)[:, 0, 0]
            key_valid = valid if key_valid is None else key_valid & valid
        else:
            raise ValueError(
                f"linear attention takes only Causal and KeyPadding masks (it never forms the "
                f"(Lq, Lk) scores); got {type(part).__name__}"
            )
    return causal, key_valid


def retention_decay_logits(num_heads: int) -> Tensor:
    """Logits of per-head decays g_h = 1 - 2^(-5 - 4h / H), from 1 - 1/32 towards 1 - 1/512: the
    multi-scale spread of RetNet's retention, kept inside fp32's range for any head count."""
    rates = 1 - 2.0 ** (-5 - torch.arange(num_heads, dtype=torch.float32) * 4 / num_heads)
    return torch.logit(rates)


class LinearAttentionModule(VariantModule):
    """Feature map, key padding, dispatch of the numerator, normaliser; optional learned decay."""

    def __init__(
        self, *, causal: bool, feature_map: str, normalize: bool, num_heads: int, decay: bool, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.causal, self.feature_map, self.normalize, self.eps = causal, feature_map, normalize, eps
        # g_h = sigmoid(logit_h): learned per-head forgetting rates of the fast weights.
        self.decay_logits = nn.Parameter(retention_decay_logits(num_heads)) if decay else None

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        if score_mod is not None:
            raise ValueError("linear attention never forms the scores, so score mods do not apply")
        mask_causal, key_valid = _split_mask(mask, k.shape[-2], k.device)
        causal = self.causal or mask_causal
        heads, kv_heads = q.shape[1], k.shape[1]
        if heads != kv_heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        phi = FEATURE_MAPS[self.feature_map]
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        # The scale cancels in the normalised form; it matters when normalize=False.
        q, k = phi(q) * scale, phi(k)
        if key_valid is not None:
            k = k * key_valid[:, None, :, None].to(k.dtype)

        log_decay = None
        if self.decay_logits is not None:
            # (H,) -> (B, H, L): one forgetting rate per head, the same at every step.
            log_decay = F.logsigmoid(self.decay_logits)[None, :, None].expand(q.shape[0], -1, q.shape[2])
        extra = {"causal": causal, "decay": log_decay is not None}
        numerator = select(replace(make_case(q, k, v, op="linear"), extra=extra), backend)
        out = numerator(q, k, v, causal=causal, log_decay=log_decay)
        if not self.normalize:
            return out
        if log_decay is not None:
            # Normaliser phi(q_i) . sum_j exp(G_i - G_j) phi(k_j): the same numerator with v = 1.
            ones = torch.ones_like(v[..., :1])
            denominator = numerator(q, k, ones, causal=True, log_decay=log_decay).float()
        else:
            # Normaliser phi(q_i) . sum_j phi(k_j): a cumulative sum, cheap next to the numerator.
            k_sum = k.float().cumsum(-2) if causal else k.float().sum(-2, keepdim=True)
            denominator = (q.float() * k_sum).sum(-1, keepdim=True)
        return (out.float() / (denominator + self.eps)).to(v.dtype)

    def extra_repr(self) -> str:
        decay = self.decay_logits is not None
        return f"causal={self.causal}, feature_map={self.feature_map!r}, normalize={self.normalize}, decay={decay}"


@dataclass(frozen=True)
class LinearAttention(Variant):
    """Linear attention; ``feature_map`` "elu" (elu + 1), "relu" or "dpfp" (Schlag et al.);
    ``normalize`` divides by phi(q) . sum phi(k) (False: the plain fast weight read-out);
    ``decay`` learns a per-head forgetting rate of the fast weights (causal only)."""

    causal: bool = True
    feature_map: str = "elu"
    normalize: bool = True
    decay: bool = False

    def __post_init__(self):
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {self.feature_map!r}")
        if self.decay and not self.causal:
            raise ValueError("LinearAttention(decay=True) forgets along time: it needs causal=True")

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return LinearAttentionModule(
            causal=self.causal,
            feature_map=self.feature_map,
            normalize=self.normalize,
            num_heads=num_heads,
            decay=self.decay,
        )
