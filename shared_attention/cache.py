"""A preallocated key/value cache for autoregressive decoding.

``Attention.forward(x, cache=cache)`` rotates the new tokens' keys at positions
``cache.offset + 0..L-1``, appends them with ``cache.update(k, v)`` and attends over everything
cached. Masks align queries to the end of the keys (see ``masks.py``), so ``Causal()`` is right for
the prompt (L == Lk) and for each decoded token (L < Lk).

``QuantizedKVCache`` (``quantized_cache.py``) has the same interface and keeps keys and values as
int8 / int4 / int2 codes, at a precision chosen per layer. ``L2NormEvictionCache`` keeps at most a
budget of tokens per head, dropping the keys of largest L2 norm.

``token_state`` holds per-token running state that a layer keeps beside its keys (ForgetGate: the
cumulative log forget gates of the cached tokens, (B, H, length)); ``reset`` clears it.

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
        self.token_state: dict[str, Tensor] = {}

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
        self.token_state.clear()

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, keys={tuple(self.keys.shape)}, dtype={self.keys.dtype})"


class L2NormEvictionCache(KVCache):
    """A KVCache that keeps at most ``budget`` tokens per batch element and key/value head, evicting the
    keys of largest L2 norm (Devoto, Zhao, Scardapane, Minervini 2024, "A Simple and Effective L2 Norm-Based
    Strategy for KV Cache Compression", EMNLP, arXiv:2406.11430: low-norm keys draw high attention).

    ``update`` returns every kept token plus the new ones, so the current step (a prefill or a decoded token)
    attends over all of them; then only the ``budget`` lowest-norm keys of those stay, in position order
    (RoPE rotations keep norms, so the choice does not depend on positions). The survivors are all older
    than the next step's tokens, so ``Causal()`` stays exact; masks and score mods that read key indices
    (windows, ALiBi, ForgetGate, key padding) would not, and ``Attention`` refuses them. ``offset`` counts
    every token seen (positions), ``length`` the tokens kept; ``evicted`` the tokens dropped per head.
    Skipping layers (the paper leaves the first two uncompressed) is the caller's choice of cache per layer.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        budget: int,
        head_dim: int,
        *,
        v_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if budget < 1:
            raise ValueError(f"L2NormEvictionCache(budget={budget}) must keep at least one token")
        super().__init__(batch_size, num_kv_heads, budget, head_dim, v_dim=v_dim, dtype=dtype, device=device)
        self.seen = 0

    @property
    def offset(self) -> int:
        return self.seen

    @property
    def evicted(self) -> int:
        return self.seen - self.length

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, Hkv, L, D) and v (B, Hkv, L, Dv); return the kept and the new tokens (B, Hkv, n + L, .),
        then keep the ``budget`` of lowest key norm."""
        if k.shape[:2] != self.keys.shape[:2] or k.shape[3] != self.keys.shape[3] or v.shape[3] != self.values.shape[3]:
            raise ValueError(
                f"L2NormEvictionCache of keys {tuple(self.keys.shape)} / values {tuple(self.values.shape)} "
                f"cannot take k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        keys = torch.cat((self.keys[:, :, : self.length], k.to(self.keys.dtype)), dim=2)
        values = torch.cat((self.values[:, :, : self.length], v.to(self.values.dtype)), dim=2)
        self.seen += k.shape[2]
        budget = self.max_len
        if keys.shape[2] <= budget:
            kept_keys, kept_values = keys, values
        else:
            norms = keys.float().norm(dim=-1)  # (B, Hkv, n + L)
            keep = norms.topk(budget, dim=-1, largest=False).indices.sort(dim=-1).values
            kept_keys = keys.gather(2, keep[..., None].expand(-1, -1, -1, keys.shape[3]))
            kept_values = values.gather(2, keep[..., None].expand(-1, -1, -1, values.shape[3]))
        self.length = kept_keys.shape[2]
        self.keys[:, :, : self.length] = kept_keys
        self.values[:, :, : self.length] = kept_values
        return keys, values

    def reset(self) -> None:
        super().reset()
        self.seen = 0

    def __repr__(self) -> str:
        return f"L2NormEvictionCache(budget={self.max_len}, length={self.length}, seen={self.seen})"
