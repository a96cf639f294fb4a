"""A preallocated key/value cache for autoregressive decoding.

``Attention.forward(x, cache=cache)`` rotates the new tokens' keys at positions
``cache.offset + 0..L-1``, appends them with ``cache.update(k, v)`` and attends over everything
cached. Masks align queries to the end of the keys (see ``masks.py``), so ``Causal()`` is right for
the prompt (L == Lk) and for each decoded token (L < Lk).

``QuantizedKVCache`` (``quantized_cache.py``) has the same interface and keeps keys and values as
int8 / int4 / int2 codes, at a precision chosen per layer.

Legend: B batch, Hkv key/value heads, T capacity (max_len), D head dim, Dv value head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys (B, Hkv, T, D) and values (B, Hkv, T, Dv) of one attention layer, filled left to right."""

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
    ) -> None:
        self.keys = torch.zeros(batch_size, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros(batch_size, num_kv_heads, max_len, v_dim or head_dim, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]

    @property
    def offset(self) -> int:
        """Position of the next token: the number of tokens cached so far."""
        return self.length

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers (the whole capacity, as allocated)."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, Hkv, L, D) and v (B, Hkv, L, Dv); return every cached key and value so far."""
        new = k.shape[2]
        if self.length + new > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} tokens: {self.length} cached + {new} new overflows it")
        if k.shape[:2] != self.keys.shape[:2] or k.shape[3] != self.keys.shape[3] or v.shape[3] != self.values.shape[3]:
            raise ValueError(
                f"KVCache of keys {tuple(self.keys.shape)} / values {tuple(self.values.shape)} "
                f"cannot take k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        end = self.length + new
        self.keys[:, :, self.length : end] = k.to(self.keys.dtype)
        self.values[:, :, self.length : end] = v.to(self.values.dtype)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are reused)."""
        self.length = 0

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, keys={tuple(self.keys.shape)}, dtype={self.keys.dtype})"
