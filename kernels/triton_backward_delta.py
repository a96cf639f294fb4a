"""The row term of an attention backward in one pass: delta = rowsum(dO * O) - d lse (fp32).

FlashAttention-style backward kernels need, per query row, the dot product of the output's gradient with
the output (the softmax backward's row term), minus the gradient reaching the log-sum-exp when one is used.
Written with torch ops it materialises dO and O in fp32 and their product, three (B, H, L, D) fp32 tensors:
on an H100 the kernels other than the three attention kernels took 0.8 of the 3.1 ms of GPU time of a 2-D
neighbourhood forward + backward at B=2, H=16, L=16384, D=128 (apps/bench/results/dispatch-overhead-h100.md).
This kernel reads dO and O once at their own precision and writes (B, H, L) fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _delta_kernel(grad_out, out, grad_lse, delta, rows, dim, HAS_LSE: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    d = tl.arange(0, BLOCK_D)
    inside = r < rows
    offsets = r.to(tl.int64)[:, None] * dim + d[None, :]  # int64: B * H * L * D may pass 2^31
    both = inside[:, None] & (d[None, :] < dim)
    do = tl.load(grad_out + offsets, mask=both, other=0.0).to(tl.float32)
    o = tl.load(out + offsets, mask=both, other=0.0).to(tl.float32)
    row = tl.sum(do * o, axis=1)
    if HAS_LSE:
        row -= tl.load(grad_lse + r, mask=inside, other=0.0).to(tl.float32)
    tl.store(delta + r, row, mask=inside)


def backward_delta(grad_out: Tensor, out: Tensor, grad_lse: Tensor | None = None) -> Tensor:
    """grad_out, out (..., L, D), grad_lse (..., L) or None -> rowsum(grad_out * out) - grad_lse, fp32 (..., L)."""
    if grad_out.shape != out.shape:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} and out {tuple(out.shape)} must match")
    grad_out, out = grad_out.contiguous(), out.contiguous()
    dim = out.shape[-1]
    delta = torch.empty(out.shape[:-1], dtype=torch.float32, device=out.device)
    rows = delta.numel()
    block_d = triton.next_power_of_2(dim)
    block_rows = max(1, min(64, 8192 // block_d))  # ~8k elements of each input per program
    lse = grad_lse.contiguous() if grad_lse is not None else delta  # unread without HAS_LSE
    _delta_kernel[(triton.cdiv(rows, block_rows),)](
        grad_out, out, lse, delta, rows, dim, HAS_LSE=grad_lse is not None, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
    )
    return delta
