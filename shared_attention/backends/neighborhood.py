"""The neighborhood backend: 1-D, 2-D and 3-D ``Neighborhood`` masks (dilation, causal axes) on the
``panformer::neighborhood_attention`` op (Triton kernels over tiles of the grid on CUDA, forward
and backward; reference math elsewhere).

It takes self-attention over a whole grid (Lq == Lk == the grid's cells) with a ``Neighborhood``
mask (any stride) and no score mod; additional keys go to Flex (or the reference). On CUDA it ranks ahead of Flex (11 vs 12): on an H200 it ran
a 15 x 15 window on a 128 x 128 grid 3.0x faster than Flex forward, 2.1x forward + backward
(apps/bench/results/speed-h200.md); except 1-D masks in training (13), where Flex's backward is faster. On CPU the op runs the materialised reference math, reached
only by name.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from shared_attention.dispatch import Case
from shared_attention.masks import Neighborhood


@cache
def _triton_available() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"Triton unavailable ({error})"
    return None


class NeighborhoodBackend:
    name = "neighborhood"

    def supports(self, case: Case) -> str | None:
        mask = case.mask
        if not isinstance(mask, Neighborhood):
            return "takes only a Neighborhood mask"
        if mask.additional_keys:
            return "no additional keys (Flex and the reference take them)"
        if case.score_mod is not None:
            return "no score mods"
        if not case.q_len == case.kv_len == math.prod(mask.grid):
            return f"needs self-attention over the whole grid ({math.prod(mask.grid)} tokens)"
        if case.head_dim != case.v_dim or case.head_dim > 256:
            return f"needs equal key and value head dims up to 256, got {case.head_dim}/{case.v_dim}"
        if case.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"dtype {case.dtype} not supported"
        if case.device_type == "cuda":
            return _triton_available()
        if case.device_type != "cpu":
            return f"no neighborhood op on {case.device_type}"
        return None

    def rank(self, case: Case) -> float:
        # CUDA: the Triton kernel, ahead of Flex (12) and SDPA with a dense mask (15). CPU: by name only.
        if case.device_type != "cuda":
            return 60.0
        if case.training and len(case.mask.grid) == 1:
            # A 1-D band is what Flex's block sparsity fits best: on an H200, window 1023 on 16384 tokens,
            # forward + backward took 3.8 ms with Flex, 5.0 ms here (forward alone: 1.3 vs 1.2 ms).
            return 13.0
        return 11.0

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        from panformer_kernels.neighborhood_attention import neighborhood_attention

        return neighborhood_attention(
            q, k, v, grid=mask.grid, kernel_size=mask.kernel_size, dilation=mask.dilation, causal=mask.causal,
            stride=mask.stride, scale=scale,
        )


class NeighborhoodLseBackend(NeighborhoodBackend):
    """Op "softmax_lse": (output, log-sum-exp), both differentiable."""

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        from panformer_kernels.neighborhood_attention import neighborhood_attention

        return neighborhood_attention(
            q, k, v, grid=mask.grid, kernel_size=mask.kernel_size, dilation=mask.dilation, causal=mask.causal,
            stride=mask.stride, scale=scale, return_lse=True,
        )
