"""The neighborhood backend: 1-D, 2-D and 3-D ``Neighborhood`` masks (dilation, causal axes, stride,
additional keys) on the ``panformer::neighborhood_attention`` op (Triton kernels over tiles of the grid on
CUDA, forward and backward; reference math elsewhere).

It takes self-attention over a whole grid (Lq == the grid's cells; Lk == cells + the mask's additional
keys) and no score mod. Additional keys (registers, text tokens: every query sees them) are attended
densely beside the window and the two merged by their log-sum-exps (``merge_attentions``), so the
window stays on the kernel. On CUDA it ranks ahead of Flex (11 vs 12): on an H200 it ran a 15 x 15
window on a 128 x 128 grid 3.0x faster than Flex forward, 2.1x forward + backward
(apps/bench/results/speed-h200.md); except 1-D masks in training (13), where Flex's backward is
faster. On CPU the op runs the materialised reference math, reached only by name.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from shared_attention.backends.reference import reference_attention
from shared_attention.dispatch import Case
from shared_attention.masks import Neighborhood
from shared_attention.merge import merge_attentions


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
        if case.score_mod is not None:
            return "no score mods"
        cells = math.prod(mask.grid)
        if case.q_len != cells or case.kv_len != cells + mask.additional_keys:
            extra = f" + {mask.additional_keys} additional keys" if mask.additional_keys else ""
            return f"needs self-attention over the whole grid ({cells} tokens{extra})"
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
        return windowed_attention(q, k, v, mask=mask, scale=scale, return_lse=False)


class NeighborhoodLseBackend(NeighborhoodBackend):
    """Op "softmax_lse": (output, log-sum-exp), both differentiable."""

    def __call__(self, q, k, v, *, mask=None, score_mod=None, scale=None):
        return windowed_attention(q, k, v, mask=mask, scale=scale, return_lse=True)


def windowed_attention(q, k, v, *, mask: Neighborhood, scale: float | None, return_lse: bool):
    """q (B, H, L, D) over the grid's L cells, k and v (B, Hkv, L + N, D): the window on the op, the N
    additional keys (if any) densely, merged -> (B, H, L, D) [and the fp32 log-sum-exp (B, H, L)]."""
    from panformer_kernels.neighborhood_attention import neighborhood_attention

    options = dict(grid=mask.grid, kernel_size=mask.kernel_size, dilation=mask.dilation, causal=mask.causal,
                   stride=mask.stride, scale=scale)
    if not mask.additional_keys:
        return neighborhood_attention(q, k, v, **options, return_lse=return_lse)
    cells = q.shape[2]
    window = neighborhood_attention(q, k[:, :, :cells], v[:, :, :cells], **options, return_lse=True)
    extra = reference_attention(q, k[:, :, cells:], v[:, :, cells:], scale=scale, return_lse=True)  # (L x N) scores
    out, lse = merge_attentions((window[0], extra[0]), (window[1], extra[1]))
    return (out, lse) if return_lse else out
