"""Linear attention in the fast weight programmer form (Katharopoulos et al. 2020; Schlag, Irie &
Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers").

    o_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),   S_i = sum_{j <= i} phi(k_j) v_j^T,   z_i = sum_{j <= i} phi(k_j)

(non-causal: the sums run over every key). The numerator is dispatched under the op name "linear":

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
from torch import Tensor

from panformer_kernels import causal_linear_attention, chunked_causal_linear_attention
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


def linear_attention_scores(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """Reference numerator: (phi(q) phi(k)^T, causal-masked) @ v, materialised in fp32 (or fp64)."""
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = q.to(compute) @ k.to(compute).transpose(-1, -2)
    if causal:
        q_len, kv_len = scores.shape[-2:]
        scores = scores.masked_fill(~Causal().dense(q_len, kv_len, device=q.device)[0, 0], 0.0)
    return (scores @ v.to(compute)).to(v.dtype)


def _noncausal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return q @ (k.transpose(-1, -2) @ v)


class _LinearBackend:
    """A backend of op "linear": ``(q, k, v, *, causal) -> numerator`` over feature-mapped q, k."""

    def __init__(self, name: str, rank_by_device: dict[str, float]) -> None:
        self.name = name
        self._rank = rank_by_device

    def supports(self, case: Case) -> str | None:
        if case.extra.get("causal") and case.q_len != case.kv_len:
            return "causal linear attention needs as many queries as keys (decode with a recurrent state)"
        return None

    def rank(self, case: Case) -> float:
        return self._rank.get(case.device_type, 50.0)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
        if self.name == "reference":
            return linear_attention_scores(q, k, v, causal=causal)
        if not causal:
            return _noncausal(q, k, v)
        if self.name == "chunked":
            return chunked_causal_linear_attention(q, k, v)
        return causal_linear_attention(q, k, v)


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


class LinearAttentionModule(VariantModule):
    """Feature map, key padding, dispatch of the numerator, normaliser."""

    def __init__(self, *, causal: bool, feature_map: str, normalize: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.causal, self.feature_map, self.normalize, self.eps = causal, feature_map, normalize, eps

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

        case = replace(make_case(q, k, v, op="linear"), extra={"causal": causal})
        out = select(case, backend)(q, k, v, causal=causal)
        if not self.normalize:
            return out
        # Normaliser phi(q_i) . sum_j phi(k_j): a cumulative sum, cheap next to the numerator.
        k_sum = k.float().cumsum(-2) if causal else k.float().sum(-2, keepdim=True)
        denominator = (q.float() * k_sum).sum(-1, keepdim=True)
        return (out.float() / (denominator + self.eps)).to(v.dtype)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, feature_map={self.feature_map!r}, normalize={self.normalize}"


@dataclass(frozen=True)
class LinearAttention(Variant):
    """Linear attention; ``feature_map`` "elu" (elu + 1), "relu" or "dpfp" (Schlag et al.);
    ``normalize`` divides by phi(q) . sum phi(k) (False: the plain fast weight read-out)."""

    causal: bool = True
    feature_map: str = "elu"
    normalize: bool = True

    def __post_init__(self):
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {self.feature_map!r}")

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return LinearAttentionModule(causal=self.causal, feature_map=self.feature_map, normalize=self.normalize)
