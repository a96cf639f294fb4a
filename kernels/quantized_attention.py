"""Decode attention straight from a quantised KV cache as the torch custom op
``panformer::quantized_decode_attention``.

A few new queries q (B, H, Lq, D) (Lq = 1 when decoding) attend, without a mask, the first ``n``
tokens of a cache whose keys and values are asymmetric integer codes, x = code * scale + zero
(KIVI / KVTuner style, as ``shared_attention.quantized_cache`` stores them):

- keys: codes (B, Hkv, T, Pk) uint8, 8 / 4 / 2 bits packed little end first along D
  (Pk = D * bits / 8); scale and zero per channel over groups of G tokens, (B, Hkv, ceil(T / G), D)
  (``key_axis="channel"``), or per token, (B, Hkv, T, 1) (``key_axis="token"``);
- values: codes (B, Hkv, T, Pv), scale and zero per token, (B, Hkv, T, 1).

The op returns the output (B, H, Lq, Dv) in q's dtype and the log-sum-exp (B, H, Lq) fp32 (natural
log, -inf where there are no tokens). The full-precision keys of a per-channel cache's open group
(the "residual", < G tokens after the n quantised ones, values still codes) can be passed along and are
attended in the same softmax; ``merge_attention`` merges attention over key sets kept elsewhere exactly. Grouped-query heads:
H is a multiple of Hkv.

Implementations: on CUDA the flash-decoding Triton kernels of ``triton_quantized_attention`` (the
packed tiles read once, no dequantised key or value tile built where the algebra allows); elsewhere
the reference math (dequantise, fp32 softmax attention). **Forward only**: decoding needs no gradient,
and the op has no autograd formula (calling it on tensors that require grad raises in backward).

Legend: B batch, H query heads, Hkv key/value heads, Lq queries, T cache capacity, n tokens read,
D key dim, Dv value dim, G tokens per key group.
"""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_BITS = (2, 4, 8)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------
# Reference math (every device but CUDA, and the tests' oracle for the kernels)


def unpack(codes: Tensor, bits: int, count: int) -> Tensor:
    """packed uint8 (..., P) -> the first ``count`` codes (..., count) as fp32 (little end first)."""
    per_byte = 8 // bits
    if per_byte == 1:
        return codes[..., :count].float()
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * bits
    unpacked = (codes.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return unpacked.flatten(-2)[..., :count].float()


def dequantize_keys(
    codes: Tensor, scale: Tensor, zero: Tensor, *, n: int, bits: int, key_axis: str, group_size: int, dim: int
) -> Tensor:
    """The first n keys (B, Hkv, n, D) fp32 from codes and per-channel or per-token statistics."""
    c = unpack(codes[:, :, :n], bits, dim)
    if key_axis == "token":
        return c * scale[:, :, :n].float() + zero[:, :, :n].float()
    group = torch.arange(n, device=codes.device) // group_size  # each token's group row
    return c * scale[:, :, group].float() + zero[:, :, group].float()


def dequantize_values(codes: Tensor, scale: Tensor, zero: Tensor, *, n: int, bits: int, dim: int) -> Tensor:
    """The first n values (B, Hkv, n, Dv) fp32 (per-token statistics)."""
    return unpack(codes[:, :, :n], bits, dim) * scale[:, :, :n].float() + zero[:, :, :n].float()


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float) -> tuple[Tensor, Tensor]:
    """Unmasked attention in fp32: q (B, H, Lq, D), k (B, Hkv, n, D), v (B, Hkv, n, Dv) ->
    out (B, H, Lq, Dv) fp32, lse (B, H, Lq) fp32; n == 0 gives zeros and -inf."""
    batch, heads, q_len, _ = q.shape
    kv_heads = k.shape[1]
    # Grouped-query heads: the H / Hkv heads of one kv head share its keys, as extra query rows.
    qg = q.float().reshape(batch, kv_heads, heads // kv_heads * q_len, q.shape[-1])
    if k.shape[2] == 0:
        out = q.new_zeros(batch, heads, q_len, v.shape[-1], dtype=torch.float32)
        return out, q.new_full((batch, heads, q_len), float("-inf"), dtype=torch.float32)
    scores = (qg @ k.float().transpose(-2, -1)) * scale
    lse = scores.logsumexp(-1)
    out = (scores - lse[..., None]).exp() @ v.float()
    return out.view(batch, heads, q_len, -1), lse.view(batch, heads, q_len)


def _reference_forward(
    q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_residual, n_residual, n, key_bits, key_axis,
    group_size, value_bits, v_dim, scale,
) -> tuple[Tensor, Tensor]:
    keys = dequantize_keys(k_codes, k_scale, k_zero, n=n, bits=key_bits, key_axis=key_axis, group_size=group_size,
                           dim=q.shape[-1])
    if k_residual is not None and n_residual:
        keys = torch.cat((keys, k_residual[:, :, :n_residual].float()), dim=2)
    else:
        n_residual = 0
    values = dequantize_values(v_codes, v_scale, v_zero, n=n + n_residual, bits=value_bits, dim=v_dim)
    out, lse = softmax_attention(q, keys, values, scale=scale)
    return out.to(q.dtype), lse


# --------------------------------------------------------------------------------------------
# The custom op (forward only)


@torch.library.custom_op("panformer::quantized_decode_attention", mutates_args=())
def _quantized_decode_attention(
    q: Tensor, k_codes: Tensor, k_scale: Tensor, k_zero: Tensor, v_codes: Tensor, v_scale: Tensor, v_zero: Tensor,
    k_residual: Tensor | None, n_residual: int, n: int, key_bits: int, key_axis: str, group_size: int,
    value_bits: int, v_dim: int, scale: float,
) -> tuple[Tensor, Tensor]:
    return _reference_forward(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_residual, n_residual, n,
                              key_bits, key_axis, group_size, value_bits, v_dim, scale)


@_quantized_decode_attention.register_kernel("cuda")
def _quantized_decode_attention_cuda(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_residual, n_residual,
                                     n, key_bits, key_axis, group_size, value_bits, v_dim, scale):
    args = (q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_residual, n_residual, n, key_bits, key_axis,
            group_size, value_bits, v_dim, scale)
    tokens = n + (n_residual if k_residual is not None else 0)
    if tokens == 0 or not _kernel_takes(q, k_codes.shape[1], key_bits, value_bits, v_dim):
        return _reference_forward(*args)
    from panformer_kernels.triton_quantized_attention import quantized_decode_forward

    return quantized_decode_forward(
        q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, n=n, key_bits=key_bits, key_axis=key_axis,
        group_size=group_size, value_bits=value_bits, v_dim=v_dim, scale=scale, k_residual=k_residual,
        n_residual=n_residual,
    )


@_quantized_decode_attention.register_fake
def _quantized_decode_attention_fake(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_residual, n_residual,
                                     n, key_bits, key_axis, group_size, value_bits, v_dim, scale):
    return q.new_empty((*q.shape[:-1], v_dim)), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _kernel_takes(q: Tensor, kv_heads: int, key_bits: int, value_bits: int, v_dim: int) -> bool:
    """Shapes and dtypes the Triton kernels take (q on CUDA assumed)."""
    _, heads, q_len, dim = q.shape
    return (
        q.dtype in KERNEL_DTYPES
        and key_bits in SUPPORTED_BITS
        and value_bits in SUPPORTED_BITS
        and dim % 8 == 0
        and v_dim % 8 == 0
        and 16 <= dim <= 256
        and 16 <= v_dim <= 256
        and heads % kv_heads == 0
        and heads // kv_heads * q_len <= 64  # one program's query tile
    )


def fused_decode_supports(
    q: Tensor, *, key_bits: int | None, value_bits: int | None, num_kv_heads: int, v_dim: int | None = None
) -> bool:
    """Whether ``quantized_decode_attention`` runs q (B, H, Lq, D) on the Triton kernels: CUDA, fp16 /
    bf16 / fp32, both keys and values quantised (2 / 4 / 8 bits; a full-precision side is not
    supported), D and Dv multiples of 8 in [16, 256], (H / Hkv) * Lq <= 64. Elsewhere the op still runs,
    on the reference math (dequantise every token, as ``QuantizedKVCache.update`` does)."""
    if key_bits is None or value_bits is None or q.dim() != 4:
        return False
    return q.is_cuda and _kernel_takes(q, num_kv_heads, key_bits, value_bits, v_dim or q.shape[-1])


def quantized_decode_attention(
    q: Tensor,
    k_codes: Tensor,
    k_scale: Tensor,
    k_zero: Tensor,
    v_codes: Tensor,
    v_scale: Tensor,
    v_zero: Tensor,
    *,
    n: int,
    key_bits: int,
    value_bits: int,
    key_axis: str = "channel",
    group_size: int = 32,
    v_dim: int | None = None,
    scale: float | None = None,
    k_residual: Tensor | None = None,
    n_residual: int = 0,
) -> tuple[Tensor, Tensor]:
    """Attention of q (B, H, Lq, D) over the first ``n`` quantised tokens (and ``n_residual`` more), every
    query seeing every token.

    k_codes (B, Hkv, T, Pk) uint8 and k_scale / k_zero ((B, Hkv, ceil(T / G), D) per channel,
    (B, Hkv, T, 1) per token); v_codes (B, Hkv, T, Pv) uint8 and v_scale / v_zero (B, Hkv, T, 1);
    ``v_dim`` defaults to D; ``scale`` to D ** -0.5. ``k_residual`` (B, Hkv, >= r, D): full-precision
    keys of r = ``n_residual`` tokens after the n quantised ones (a per-channel cache's open group),
    whose values are the codes of tokens n..n+r. Returns out (B, H, Lq, Dv) in q's dtype and the
    log-sum-exp (B, H, Lq) fp32 (for ``merge_attention``). Forward only (no gradient).
    """
    if key_bits not in SUPPORTED_BITS or value_bits not in SUPPORTED_BITS:
        raise ValueError(f"key_bits and value_bits must be in {SUPPORTED_BITS}; got {key_bits}, {value_bits}")
    if key_axis not in ("channel", "token"):
        raise ValueError(f"key_axis must be 'channel' or 'token', got {key_axis!r}")
    if q.dim() != 4 or k_codes.dim() != 4 or v_codes.dim() != 4 or q.shape[1] % k_codes.shape[1]:
        raise ValueError(f"q (B, H, Lq, D) with H a multiple of Hkv and codes (B, Hkv, T, P) are needed; got "
                         f"q {tuple(q.shape)}, key codes {tuple(k_codes.shape)}, value codes {tuple(v_codes.shape)}")
    n_residual = int(n_residual) if k_residual is not None else 0
    if not (0 <= n <= k_codes.shape[2] and n_residual >= 0 and n + n_residual <= v_codes.shape[2]):
        raise ValueError(f"n = {n} (+ {n_residual} residual) tokens are not within the cache's {v_codes.shape[2]}")
    if n_residual and (k_residual.shape[2] < n_residual or k_residual.shape[-1] != q.shape[-1]):
        raise ValueError(f"k_residual {tuple(k_residual.shape)} does not hold {n_residual} keys of D={q.shape[-1]}")
    v_dim = v_dim or q.shape[-1]
    if k_codes.shape[-1] != -(-q.shape[-1] * key_bits // 8) or v_codes.shape[-1] != -(-v_dim * value_bits // 8):
        raise ValueError(f"codes of {k_codes.shape[-1]} / {v_codes.shape[-1]} bytes do not hold D={q.shape[-1]} "
                         f"at {key_bits} bits / Dv={v_dim} at {value_bits} bits")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    tensors = [t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_codes, k_scale, k_zero, v_codes, v_scale,
                                                                     v_zero)]
    if k_residual is not None and k_residual.stride(-1) != 1:
        k_residual = k_residual.contiguous()
    return torch.ops.panformer.quantized_decode_attention(
        *tensors, k_residual if n_residual else None, n_residual, int(n), int(key_bits), key_axis, int(group_size),
        int(value_bits), int(v_dim), scale,
    )


def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over the union of two disjoint key sets from each one's output (B, H, Lq, Dv) and
    log-sum-exp (B, H, Lq): out = w_a out_a + w_b out_b with w = exp(lse - logaddexp(lse_a, lse_b)).
    A side with lse -inf (no keys) gets weight 0. Returns (out in out_a's dtype, lse fp32)."""
    lse_a, lse_b = lse_a.float(), lse_b.float()
    lse = torch.logaddexp(lse_a, lse_b)
    finite = torch.isfinite(lse)
    safe = torch.where(finite, lse, torch.zeros_like(lse))
    w_a = torch.where(finite, (lse_a - safe).exp(), torch.zeros_like(lse))[..., None]
    w_b = torch.where(finite, (lse_b - safe).exp(), torch.zeros_like(lse))[..., None]
    out = out_a.float() * w_a + out_b.float() * w_b
    return out.to(out_a.dtype), lse


__all__ = [
    "dequantize_keys",
    "dequantize_values",
    "fused_decode_supports",
    "merge_attention",
    "quantized_decode_attention",
    "softmax_attention",
]
