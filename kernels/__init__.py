"""Compiled attention kernels registered as torch custom ops.

``panformer::causal_linear_attention``: chunked causal linear attention (fast weight programmer),
with an optional per-step decay; Triton on CUDA, the chunked torch form (compiled on large inputs)
elsewhere; forward and backward.

``panformer::neighborhood_attention_2d``: 2-D (and, as one-row grids, 1-D) neighbourhood attention
with kernel size and dilation; Triton over a tiled token order on CUDA, reference math elsewhere;
forward and backward.
"""

from panformer_kernels.linear_attention import (
    causal_linear_attention,
    chunked_causal_linear_attention,
    naive_causal_linear_attention,
)
from panformer_kernels.neighborhood_attention import (
    neighborhood_attention,
    neighborhood_attention_2d,
)

__all__ = [
    "causal_linear_attention",
    "chunked_causal_linear_attention",
    "naive_causal_linear_attention",
    "neighborhood_attention",
    "neighborhood_attention_2d",
]
