"""Compiled attention kernels registered as torch custom ops.

``panformer::causal_linear_attention``: chunked causal linear attention (fast weight programmer),
with an optional per-step decay; Triton on CUDA, the chunked torch form (compiled on large inputs)
elsewhere; forward and backward.

``panformer::differential_attention``: fused differential attention (two softmax maps, one pass over
the keys); Triton on CUDA, reference math elsewhere; forward and backward.

``panformer::local_global_attention``: MossFormer's joint local (relu² within chunks) + global linear
attention, non-causal and causal, optional key-padding mask; Triton on CUDA, chunked torch elsewhere;
forward and backward.

``panformer::quantized_decode_attention``: decode attention straight from int8/int4/int2 KV-cache codes
(and the full-precision open key group); flash-decoding Triton on CUDA, dequantise + softmax elsewhere;
forward only (decoding needs no gradient); also returns the log-sum-exp.

``panformer::neighborhood_attention``: 1-D, 2-D and 3-D neighbourhood attention with kernel size,
dilation and causal axes; Triton over tiles of the grid read from raster order on CUDA, reference
math elsewhere; forward and backward.
"""

from panformer_kernels.differential_attention import differential_attention, fused_kernel_supports
from panformer_kernels.gated_attention import local_global_attention
from panformer_kernels.linear_attention import (
    causal_linear_attention,
    chunked_causal_linear_attention,
    naive_causal_linear_attention,
)
from panformer_kernels.neighborhood_attention import neighborhood_attention
from panformer_kernels.quantized_attention import (
    fused_decode_supports,
    merge_attention,
    quantized_decode_attention,
)

__all__ = [
    "causal_linear_attention",
    "chunked_causal_linear_attention",
    "differential_attention",
    "fused_decode_supports",
    "fused_kernel_supports",
    "local_global_attention",
    "merge_attention",
    "naive_causal_linear_attention",
    "neighborhood_attention",
    "quantized_decode_attention",
]
