"""σReparam (Zhai, Likhomanenko, Littwin, Busbridge, Ramapuram, Zhang, Gu & Susskind 2023,
"Stabilizing Transformer Training by Preventing Attention Entropy Collapse", arXiv:2303.06296).

A linear layer whose weight is spectrally normalised and rescaled by a learned scalar:

    W_hat = gamma / sigma(W) * W,      y = x W_hat^T + b

sigma(W), the largest singular value, comes from power iteration with a persistent unit vector u
(in_features,) kept as a buffer: each training forward takes one step, v = W u / |W u|,
u <- W^T v / |W^T v|, then sigma = |W u|, differentiable through W (at convergence its gradient is
the exact one, v u^T). In evaluation u is left as it is (sigma = |W u|, deterministic). u starts as W's
top right singular vector (one SVD at construction, as the paper's code does) and gamma at 1, so
the layer starts at spectral norm 1. ``Attention(sigma_reparam=True)`` uses it for its projections.
Legend: B.. leading dims, I in_features, O out_features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SigmaReparamLinear(nn.Linear):
    """``nn.Linear`` with σReparam: (B.., I) -> (B.., O) through gamma / sigma(W) * W.

    Parameters: ``weight`` (O, I), ``bias`` (O,) as nn.Linear, and ``gamma`` (a scalar); buffer ``u`` (I,).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.gamma = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        self.register_buffer("u", self._top_right_singular_vector())

    @torch.no_grad()
    def _top_right_singular_vector(self) -> Tensor:
        _, _, vh = torch.linalg.svd(self.weight.float(), full_matrices=False)
        return vh[0].to(self.weight.dtype)

    @torch.no_grad()
    def reset_u(self) -> None:
        """Restart power iteration at the weight's top right singular vector (after overwriting the weight)."""
        self.u.copy_(self._top_right_singular_vector())

    def sigma(self) -> Tensor:
        """The spectral norm estimate |W u| (a scalar, differentiable through W); one power step first in training."""
        if self.training:
            with torch.no_grad():
                v = F.normalize(self.weight @ self.u, dim=0)
                self.u.copy_(F.normalize(self.weight.T @ v, dim=0))
        # A copy: a second call before backward (shared layers, checkpointing) updates u in place.
        return torch.linalg.vector_norm(self.weight @ self.u.clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * (self.gamma / self.sigma()), self.bias)


__all__ = ["SigmaReparamLinear"]
