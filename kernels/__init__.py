"""Compiled attention kernels registered as torch custom ops.

``panformer::causal_linear_attention``: chunked causal linear attention (fast weight programmer),
with an optional per-step decay; Triton on CUDA, the chunked torch form (compiled on large inputs)
elsewhere; forward and backward.
"""

from panformer_kernels.linear_attention import (
    causal_linear_attention,
    chunked_causal_linear_attention,
    naive_causal_linear_attention,
)

__all__ = [
    "causal_linear_attention",
    "chunked_causal_linear_attention",
    "naive_causal_linear_attention",
]
