"""A quantised key/value cache for decoding: int8 / int4 / int2 keys and values, per-layer pairs.

In the spirit of KIVI (Liu et al. 2024) and KVTuner (Li et al. 2025): keys and values are stored as
asymmetric integer codes with a floating-point scale and zero point, at a precision chosen per layer
and separately for keys and values (``KVPrecision.parse("K8V4")``: 8-bit keys, 4-bit values).

- Keys are quantised **per channel** by default (``key_axis="channel"``): each channel of each head
  gets its own scale over a group of ``group_size`` consecutive tokens, because key outliers sit in a
  few fixed channels (KIVI). The tokens of the group still being filled stay in full precision (the
  "residual") and are quantised when the group is complete. ``key_axis="token"`` quantises each
  token's key on its own, as values are.
- Values are quantised **per token and head**: one scale over the head dimension, right away.
- Codes of fewer than 8 bits are packed, two (int4) or four (int2) to a byte.

``QuantizedKVCache`` has ``KVCache``'s interface (``offset``, ``update``, ``reset``, ``max_len``), so
``Attention(..., cache=QuantizedKVCache(...))`` works unchanged: ``update`` returns the dequantised
keys and values of every cached token (the memory saving is then only in what is kept between steps).
``decode_attention(q, k, v)`` appends like ``update`` and returns the attention itself, computed from
the codes by the fused op ``panformer::quantized_decode_attention`` (``panformer_kernels``; ``attend(q)``
without the append), so no dequantised copy of the cache is ever made. On CUDA, per-token quantisation
(values, ``key_axis="token"`` keys) appends through one Triton kernel with the same codes. ``nbytes`` counts every buffer kept.

Legend: B batch, Hkv key/value heads, T capacity (max_len), D head dim, G group size (tokens),
P packed bytes per token and head (D * bits / 8, rounded up).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from panformer_kernels.quantized_attention import quantized_decode_attention, softmax_attention

SUPPORTED_BITS = (2, 4, 8)


# --------------------------------------------------------------------------------------------
# Codes: quantise, dequantise, pack


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes (..., N), each < 2**bits -> packed uint8 (..., ceil(N * bits / 8)).

    Code i of a byte sits at bits [i * bits, (i + 1) * bits) (little end first); the last byte is
    padded with zero codes.
    """
    _check_bits(bits)
    per_byte = 8 // bits
    if per_byte == 1:
        return codes.to(torch.uint8)
    pad = -codes.shape[-1] % per_byte
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    grouped = codes.to(torch.int32).unflatten(-1, (-1, per_byte))
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * bits
    return (grouped << shifts).sum(-1).to(torch.uint8)  # shifted codes never overlap: sum = OR


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_codes``: packed uint8 (..., P) -> the first ``count`` codes (..., count)."""
    _check_bits(bits)
    per_byte = 8 // bits
    if per_byte == 1:
        return packed[..., :count]
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :count].to(torch.uint8)


def quantize(
    x: Tensor, bits: int, *, dim: int, scale_dtype: torch.dtype = torch.float16
) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric min/max quantisation of ``x`` with one scale and zero point per slice along ``dim``.

    Returns (codes uint8 like x, scale, zero) with scale and zero of x's shape but size 1 along
    ``dim``, stored in ``scale_dtype``. The codes are computed from the *stored* scale and zero, so
    ``dequantize`` is within scale / 2 of x (plus the rounding of the zero point to scale_dtype).
    """
    _check_bits(bits)
    levels = (1 << bits) - 1
    x = x.float()
    low, high = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    tiny = torch.finfo(scale_dtype).tiny  # a constant slice: any positive scale gives code 0
    scale = ((high - low) / levels).clamp(min=tiny).to(scale_dtype)
    zero = low.to(scale_dtype)
    codes = ((x - zero.float()) / scale.float()).round_().clamp_(0, levels).to(torch.uint8)
    return codes, scale, zero


def dequantize(codes: Tensor, scale: Tensor, zero: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """codes * scale + zero, in ``dtype`` (scale and zero broadcast against codes)."""
    return (codes.float() * scale.float() + zero.float()).to(dtype)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantisation supports {SUPPORTED_BITS} bits, got {bits}")


# --------------------------------------------------------------------------------------------
# Precision pairs


_PAIR = re.compile(r"^k(fp|\d+)v(fp|\d+)$")


@dataclass(frozen=True)
class KVPrecision:
    """Bits of the cached keys and values; None keeps that side in full precision (the cache dtype)."""

    key_bits: int | None = None
    value_bits: int | None = None

    def __post_init__(self) -> None:
        for bits in (self.key_bits, self.value_bits):
            if bits is not None:
                _check_bits(bits)

    @classmethod
    def parse(cls, text: str | KVPrecision) -> KVPrecision:
        """"K8V4" (8-bit keys, 4-bit values), "K4V4", "KfpV4", "fp" (no quantisation)."""
        if isinstance(text, KVPrecision):
            return text
        name = text.strip().lower()
        if name in ("fp", "kfpvfp"):
            return cls()
        match = _PAIR.match(name)
        if match is None:
            raise ValueError(f"KV precision {text!r} is not like 'K8V4', 'K4V2', 'KfpV4' or 'fp'")
        key, value = (None if part == "fp" else int(part) for part in match.groups())
        for bits in (key, value):
            if bits is not None and bits not in SUPPORTED_BITS:
                raise ValueError(f"KV precision {text!r}: bits must be one of {SUPPORTED_BITS} or fp")
        return cls(key, value)

    def __str__(self) -> str:
        if self.key_bits is None and self.value_bits is None:
            return "fp"
        return f"K{self.key_bits or 'fp'}V{self.value_bits or 'fp'}"


def layer_precisions(spec: str | Sequence[str | KVPrecision], num_layers: int) -> list[KVPrecision]:
    """One KVPrecision per layer from "K8V4" (every layer) or "K8V8,K4V4,..." / a list (one per layer)."""
    items = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if len(items) == 1:
        items = items * num_layers
    if len(items) != num_layers:
        raise ValueError(f"KV precision {spec!r} names {len(items)} layers; the model has {num_layers}")
    return [KVPrecision.parse(item) for item in items]


# --------------------------------------------------------------------------------------------
# Storage of one side (keys or values)


class _Store:
    """Tokens (B, Hkv, t, D) of keys or values, kept in full precision or as packed codes.

    ``axis="token"``: one scale/zero per token and head (over D), quantised on arrival.
    ``axis="channel"``: one scale/zero per channel over each group of G tokens; the group being
    filled is kept in full precision until it is complete.
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        *,
        bits: int | None,
        axis: str,
        group_size: int,
        dtype: torch.dtype,
        scale_dtype: torch.dtype,
        device: torch.device | str | None,
    ) -> None:
        batch, heads, capacity, dim = shape
        self.bits, self.axis, self.dim, self.dtype = bits, axis, dim, dtype
        self.group_size = group_size if axis == "channel" else 1
        self.length = 0
        if bits is None:
            self.full = torch.zeros(shape, dtype=dtype, device=device)
            return
        packed = -(-dim * bits // 8)
        self.codes = torch.zeros(batch, heads, capacity, packed, dtype=torch.uint8, device=device)
        if axis == "channel":
            groups = -(-capacity // group_size)
            stats = (batch, heads, groups, dim)
            self.residual = torch.zeros(batch, heads, group_size, dim, dtype=dtype, device=device)
        else:
            stats = (batch, heads, capacity, 1)
        self.scale = torch.zeros(stats, dtype=scale_dtype, device=device)
        self.zero = torch.zeros(stats, dtype=scale_dtype, device=device)

    @property
    def quantized_length(self) -> int:
        """Tokens held as codes (the rest, channel mode only, sit in the residual)."""
        if self.bits is None:
            return 0
        return self.length - self.length % self.group_size

    def buffers(self) -> list[Tensor]:
        if self.bits is None:
            return [self.full]
        extra = [self.residual] if self.axis == "channel" else []
        return [self.codes, self.scale, self.zero, *extra]

    def append(self, x: Tensor) -> None:
        """x (B, Hkv, L, D): the next L tokens."""
        start, new = self.length, x.shape[2]
        end = start + new
        if self.bits is None:
            self.full[:, :, start:end] = x.to(self.dtype)
        elif self.axis == "token" and x.is_cuda and self.dim * self.bits % 8 == 0:
            # One Triton launch for quantise + pack + store (same codes as below): decoding appends a
            # token per step, and the ~20 small ops of the torch form would dominate the step. (Imported
            # here: Triton is needed on CUDA only.)
            from panformer_kernels.triton_quantized_attention import quantize_tokens_into

            quantize_tokens_into(x, self.codes, self.scale, self.zero, bits=self.bits, start=start)
        elif self.axis == "token":
            codes, scale, zero = quantize(x, self.bits, dim=-1, scale_dtype=self.scale.dtype)
            self.codes[:, :, start:end] = pack_codes(codes, self.bits)
            self.scale[:, :, start:end], self.zero[:, :, start:end] = scale, zero
        else:
            self._append_channel(x, start, end)
        self.length = end

    def _append_channel(self, x: Tensor, start: int, end: int) -> None:
        g = self.group_size
        done = start - start % g  # tokens already quantised
        if end - done < g:  # the open group stays open: just keep the new tokens in full precision
            self.residual[:, :, start - done : end - done] = x.to(self.dtype)
            return
        # The open group's tokens so far, then the new ones: complete groups are quantised.
        pending = torch.cat((self.residual[:, :, : start - done], x.to(self.dtype)), dim=2)
        complete = (end - done) // g * g
        if complete:
            groups = pending[:, :, :complete].unflatten(2, (-1, g))  # (B, Hkv, n, G, D)
            codes, scale, zero = quantize(groups, self.bits, dim=3, scale_dtype=self.scale.dtype)
            self.codes[:, :, done : done + complete] = pack_codes(codes.flatten(2, 3), self.bits)
            first = done // g
            self.scale[:, :, first : first + complete // g] = scale.squeeze(3)
            self.zero[:, :, first : first + complete // g] = zero.squeeze(3)
        rest = pending[:, :, complete:]
        self.residual[:, :, : rest.shape[2]] = rest

    def read(self) -> Tensor:
        """Every stored token, (B, Hkv, length, D), dequantised to the cache dtype."""
        if self.bits is None:
            return self.full[:, :, : self.length]
        n = self.quantized_length
        codes = unpack_codes(self.codes[:, :, :n], self.bits, self.dim)
        if self.axis == "token":
            out = dequantize(codes, self.scale[:, :, :n], self.zero[:, :, :n], dtype=self.dtype)
        else:
            groups = codes.unflatten(2, (-1, self.group_size))  # (B, Hkv, n / G, G, D)
            stats = slice(0, n // self.group_size)
            out = dequantize(
                groups, self.scale[:, :, stats, None], self.zero[:, :, stats, None], dtype=self.dtype
            ).flatten(2, 3)
            if self.length > n:
                out = torch.cat((out, self.residual[:, :, : self.length - n]), dim=2)
        return out

    def reset(self) -> None:
        self.length = 0


# --------------------------------------------------------------------------------------------
# The cache


class QuantizedKVCache:
    """Keys (B, Hkv, T, D) and values (B, Hkv, T, Dv) of one attention layer as integer codes.

    Args:
        batch_size, num_kv_heads, max_len, head_dim, v_dim, dtype, device: as ``KVCache``; ``dtype``
            is what ``update`` returns (and what full-precision sides and the key residual keep).
        precision: a ``KVPrecision`` or its name ("K8V4", "K4V4", "fp", ...).
        key_axis: "channel" (per-channel key scales over groups of ``group_size`` tokens, KIVI) or
            "token" (per-token key scales, like the values).
        group_size: tokens per key quantisation group (channel axis).
        scale_dtype: dtype of the stored scales and zero points.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        v_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        precision: KVPrecision | str = "K8V8",
        key_axis: str = "channel",
        group_size: int = 32,
        scale_dtype: torch.dtype = torch.float16,
    ) -> None:
        if key_axis not in ("channel", "token"):
            raise ValueError(f"key_axis must be 'channel' or 'token', got {key_axis!r}")
        if group_size < 1:
            raise ValueError(f"group_size must be positive, got {group_size}")
        self.precision = KVPrecision.parse(precision)
        self.key_axis = key_axis
        self._max_len = max_len
        common = dict(dtype=dtype, scale_dtype=scale_dtype, device=device, group_size=group_size)
        self.key_store = _Store(
            (batch_size, num_kv_heads, max_len, head_dim),
            bits=self.precision.key_bits, axis=key_axis, **common,
        )
        self.value_store = _Store(
            (batch_size, num_kv_heads, max_len, v_dim or head_dim),
            bits=self.precision.value_bits, axis="token", **common,
        )
        self._shape = (batch_size, num_kv_heads)
        self.token_state: dict[str, Tensor] = {}  # as KVCache.token_state

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def length(self) -> int:
        return self.key_store.length

    @property
    def offset(self) -> int:
        """Position of the next token: the number of tokens cached so far."""
        return self.key_store.length

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer the cache keeps (codes, scales, zero points, residual)."""
        return sum(t.numel() * t.element_size() for s in (self.key_store, self.value_store) for t in s.buffers())

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, Hkv, L, D) and v (B, Hkv, L, Dv); return every cached key and value so far,
        dequantised."""
        self.append(k, v)
        return self.key_store.read(), self.value_store.read()

    def append(self, k: Tensor, v: Tensor) -> None:
        """Append k (B, Hkv, L, D) and v (B, Hkv, L, Dv) (quantising them) without reading anything back."""
        new = k.shape[2]
        if self.length + new > self.max_len:
            raise ValueError(
                f"QuantizedKVCache holds {self.max_len} tokens: {self.length} cached + {new} new overflows it"
            )
        if tuple(k.shape[:2]) != self._shape or k.shape[3] != self.key_store.dim or v.shape[3] != self.value_store.dim:
            raise ValueError(
                f"QuantizedKVCache of {self._shape} heads, key dim {self.key_store.dim}, value dim "
                f"{self.value_store.dim} cannot take k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        self.key_store.append(k)
        self.value_store.append(v)

    def supports_fused_decode(self, q: Tensor) -> bool:
        """Whether ``decode_attention`` computes q (B, H, Lq, D) from the codes with the fused op: keys and
        values both quantised, H a multiple of Hkv. (The op runs its Triton kernels on CUDA when
        ``panformer_kernels.quantized_attention.fused_decode_supports`` says so, reference math elsewhere.)
        Otherwise ``decode_attention`` still works, through ``update``."""
        return (
            self.precision.key_bits is not None
            and self.precision.value_bits is not None
            and q.dim() == 4
            and q.shape[1] % self._shape[1] == 0
            and q.shape[-1] == self.key_store.dim
        )

    def decode_attention(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        """Append k (B, Hkv, L, D) and v (B, Hkv, L, Dv) like ``update``, then return unmasked attention of
        q (B, H, Lq, D) over every cached token, (B, H, Lq, Dv) in q's dtype (H a multiple of Hkv).

        Every query sees every cached token (no mask: right for one decoded token under a causal mask).
        With both sides quantised, the fused op ``panformer::quantized_decode_attention`` reads the
        quantised tokens straight from their codes, and the full-precision residual group of per-channel
        keys (< G tokens) in the same softmax: nothing is dequantised to a (B, Hkv, T, D) tensor.
        Otherwise: attention over ``update``'s output. ``scale`` defaults to D ** -0.5. Forward only
        (decoding needs no gradient)."""
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        if not self.supports_fused_decode(q):
            keys, values = self.update(k, v)
            out, _ = softmax_attention(q, keys, values, scale=scale)
            return out.to(q.dtype)
        self.append(k, v)
        return self.attend(q, scale=scale)

    def attend(self, q: Tensor, *, scale: float | None = None) -> Tensor:
        """Unmasked attention of q (B, H, Lq, D) over the tokens cached so far, computed from the codes by
        ``panformer::quantized_decode_attention`` (both sides quantised: ``supports_fused_decode``), appending
        nothing: ``decode_attention`` without its append. (B, H, Lq, Dv) in q's dtype."""
        if not self.supports_fused_decode(q):
            raise ValueError(f"attend needs keys and values both quantised and q (B, H, Lq, D) of the cache's "
                             f"heads and D; {self!r} got q {tuple(q.shape)}")
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        keys, values = self.key_store, self.value_store
        n, length = keys.quantized_length, self.length
        out, _ = quantized_decode_attention(
            q, keys.codes, keys.scale, keys.zero, values.codes, values.scale, values.zero, n=n,
            key_bits=keys.bits, value_bits=values.bits, key_axis=self.key_axis, group_size=keys.group_size,
            v_dim=values.dim, scale=scale,
            # The open key group (per-channel keys): full-precision keys, values still read from their codes.
            k_residual=keys.residual if length > n else None, n_residual=length - n,
        )
        return out

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are reused)."""
        self.key_store.reset()
        self.value_store.reset()
        self.token_state.clear()

    def __repr__(self) -> str:
        return (
            f"QuantizedKVCache({self.precision}, key_axis={self.key_axis!r}, length={self.length}, "
            f"max_len={self.max_len}, nbytes={self.nbytes})"
        )


def quantized_caches(
    precisions: str | Sequence[str | KVPrecision],
    *,
    num_layers: int,
    batch_size: int,
    num_kv_heads: int,
    max_len: int,
    head_dim: int,
    **options,
) -> list[QuantizedKVCache]:
    """One QuantizedKVCache per layer, at the per-layer precisions of ``layer_precisions``."""
    return [
        QuantizedKVCache(batch_size, num_kv_heads, max_len, head_dim, precision=p, **options)
        for p in layer_precisions(precisions, num_layers)
    ]


__all__ = [
    "KVPrecision",
    "QuantizedKVCache",
    "dequantize",
    "layer_precisions",
    "pack_codes",
    "quantize",
    "quantized_caches",
    "unpack_codes",
]
