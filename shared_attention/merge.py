"""Attention over a union of key sets from the attentions over each set (NATTEN's ``merge_attentions``).

Legend: P parts, B batch, H heads, L queries, Dv value head dim.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def merge_attentions(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """One softmax over disjoint key sets, from each set's attention: outputs (B, H, L, Dv) and fp32
    log-sum-exps (B, H, L) -> (output, log-sum-exp) of attending all the keys at once.

    Each part is weighted by its share of the total mass, exp(lse_i - lse). Differentiable in every
    output and log-sum-exp; a row with no key in any part gives 0 (and lse -inf), as ``attention`` does.
    """
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(f"merge_attentions wants one log-sum-exp per output; got {len(outputs)} and {len(lses)}")
    stacked = torch.stack([lse.float() for lse in lses])  # (P, B, H, L)
    # Pairwise, not stacked.logsumexp(0): in this graph Inductor (torch 2.14, CPU) compiled that one's
    # gradient wrongly (test_na_functional's Inductor test; a bare stack + logsumexp does not show it).
    lse = functools.reduce(torch.logaddexp, stacked)
    # A part with no key (lse -inf) weighs exp(-inf) = 0; where no part has a key, subtract 0, not -inf
    # (which would give NaN), so the row stays 0.
    weights = (stacked - lse.masked_fill(torch.isneginf(lse), 0.0)).exp()
    out = sum(w[..., None] * o.float() for w, o in zip(weights, outputs, strict=True))
    return out.to(outputs[0].dtype), lse
