"""The ``Attention`` module: projections, positions, masks, score mods, variant and KV cache.

Legend: B batch, L query length, Lk key length, H query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from shared_attention.functional import attention
from shared_attention.masks import Causal, KeyPadding, Mask
from shared_attention.positions import NoPosition, Position, PositionModule
from shared_attention.quantized_cache import QuantizedKVCache
from shared_attention.score_mods import Compose, ForgetGateModule, ScoreMod
from shared_attention.variants.base import Variant


def _compose(*mods: ScoreMod | None) -> ScoreMod | None:
    mods = tuple(m for m in mods if m is not None)
    if not mods:
        return None
    return mods[0] if len(mods) == 1 else Compose(mods)


# The last few (mask, key padding) combinations, so every layer of a forward pass gets the same
# mask object and its lowerings (dense mask, block mask) are built once, not once per layer.
_PADDED_MASKS: OrderedDict = OrderedDict()


def _with_padding(mask: Mask | None, valid: Tensor) -> Mask:
    if torch.compiler.is_compiling() or valid.is_inference():
        # No cache: the compiler traces it once anyway (reading _version would break the graph), and an
        # inference tensor has no version counter to tell an in-place change.
        padding = KeyPadding(valid=valid)
        return padding if mask is None else mask & padding
    key = (id(mask), id(valid), valid._version)
    hit = _PADDED_MASKS.get(key)
    # The entry holds both objects, so their ids cannot be reused while it lives.
    if hit is not None and hit[0] is mask and hit[1] is valid:
        return hit[2]
    padding = KeyPadding(valid=valid)
    combined = padding if mask is None else mask & padding
    _PADDED_MASKS[key] = (mask, valid, combined)
    if len(_PADDED_MASKS) > 4:
        _PADDED_MASKS.popitem(last=False)
    return combined


class Attention(nn.Module):
    """Multi-head attention, self or cross, with grouped-query heads.

    Args:
        dim: width of the input x (B, L, dim) and of the output.
        num_heads: query heads H.
        num_kv_heads: key/value heads Hkv (H % Hkv == 0); default H. 1 is multi-query attention.
        head_dim: D; default dim // num_heads.
        kv_dim: width of ``context`` in cross attention; default dim.
        position: a position encoding value (RoPE(), ALiBi(), Sinusoidal(), ...); default none.
        variant: an attention variant value (see shared_attention.variants); default softmax.
        score_mod: a learned or fixed score mod built into the layer (RelativeBias(), ForgetGate(),
            SoftCap(50.0), ...); composed with the per-call ``score_mod``.
        qkv_bias: bias in the q/k/v projections.
        dropout: dropout on the attention output (before the output projection), in training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        position: Position | None = None,
        variant: Variant | None = None,
        score_mod: ScoreMod | None = None,
        qkv_bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}"
            )
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim")
        head_dim = head_dim or dim // num_heads
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(kv_dim or dim, 2 * num_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(num_heads * head_dim, dim)
        self.dropout = nn.Dropout(dropout)

        self.position = (position or NoPosition()).build(
            dim=dim, num_heads=num_heads, head_dim=head_dim
        )
        self.variant = (
            variant.build(num_heads=num_heads, head_dim=head_dim) if variant is not None else None
        )
        # A learned score mod gets its module; a fixed one is used as given.
        self.score_mod_module = (
            score_mod.build(dim=dim, num_heads=num_heads) if score_mod is not None else None
        )
        self.fixed_score_mod = score_mod if self.score_mod_module is None else None

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Mask | None = None,
        score_mod: ScoreMod | None = None,
        key_padding_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache=None,
        backend: str = "auto",
        additional_tokens: Tensor | None = None,
    ) -> Tensor:
        """x (B, L, dim) -> (B, L, dim).

        context: (B, Lk, kv_dim) for cross attention: keys and values come from it. Absolute
            encodings then apply to x only and RoPE is skipped (no shared position frame).
        mask: a Mask over (L, Lk); key_padding_mask: bool (B, Lk), True = real token (combined
            with ``mask``). With a cache, Lk counts every cached key.
        positions: token positions (B, L) / (L,) (coordinates (..., L, N) for axial RoPE);
            default 0..L-1, shifted by the cache's length when decoding.
        cache: a KVCache; new keys/values are appended and attention runs over all of them.
        backend: "auto" or a backend name, passed to the softmax attention.
        additional_tokens: (B, N, kv_dim) tokens every query may attend besides the keys of x (or
            ``context``): registers, text tokens. Their keys and values (no position encoding) come after
            the others, Lk + N in all, so the mask must cover them, e.g. ``Neighborhood(grid, 7,
            additional_keys=N)`` (NATTEN's additional keys/values). Not with a cache.
        """
        if cache is not None and additional_tokens is not None:
            raise NotImplementedError("additional_tokens cannot be combined with a KV cache yet")
        if cache is not None and isinstance(self.score_mod_module, ForgetGateModule):
            # Its bias needs the gates of every cached token, which the cache does not keep.
            raise NotImplementedError("ForgetGate does not support decoding with a KV cache yet")
        batch, length, _ = x.shape
        offset = cache.offset if cache is not None else 0
        if positions is None:
            positions = self.position.default_positions(length, offset=offset, device=x.device)

        x = self.position.encode_input(x, positions)
        source = x if context is None else context
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_proj(source).view(batch, source.shape[1], 2, self.num_kv_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, Hkv, Lk, D)
        if context is None:
            q, k = self.position.encode_qk(q, k, positions, positions)
        if additional_tokens is not None:
            extra = self.kv_proj(additional_tokens).view(batch, -1, 2, self.num_kv_heads, self.head_dim)
            extra_k, extra_v = extra.permute(2, 0, 3, 1, 4)
            k, v = torch.cat([k, extra_k], dim=2), torch.cat([v, extra_v], dim=2)
        if cache is not None and self._fused_decode(cache, q, mask, score_mod, context, key_padding_mask, backend):
            # Straight from the quantised cache's codes: nothing dequantised to (B, Hkv, T, D).
            out = cache.decode_attention(q, k, v, scale=self.scale)
            return self.out_proj(self.dropout(out.transpose(1, 2).reshape(batch, length, -1)))
        if cache is not None:
            k, v = cache.update(k, v)

        if key_padding_mask is not None:
            mask = _with_padding(mask, key_padding_mask)
        learned = self.score_mod_module(x) if self.score_mod_module is not None else None
        position_mod = self.position.score_mod(q, k, mask=mask, scale=self.scale)
        score_mod = _compose(position_mod, self.fixed_score_mod, learned, score_mod)

        if self.variant is None:
            out = attention(
                q, k, v, mask=mask, score_mod=score_mod, scale=self.scale, backend=backend
            )
        else:
            # Each variant picks its own default scale (differential attention scales by its half width).
            out = self.variant(q, k, v, mask=mask, score_mod=score_mod, scale=None, backend=backend)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(self.dropout(out))

    def _fused_decode(self, cache, q: Tensor, mask, score_mod, context, key_padding_mask, backend: str) -> bool:
        """Whether this step can run as ``QuantizedKVCache.decode_attention`` (fused op over the codes):
        on CUDA, every query sees every cached key (no mask, or Causal for one new token), and nothing
        adds to the scores (no score mod, variant, key padding, or position that scores keys)."""
        return (
            isinstance(cache, QuantizedKVCache)
            and q.is_cuda
            and cache.supports_fused_decode(q)
            and backend == "auto"
            and context is None
            and key_padding_mask is None
            and self.variant is None
            and self.score_mod_module is None
            and self.fixed_score_mod is None
            and score_mod is None
            and type(self.position).score_mod is PositionModule.score_mod  # RoPE/absolute: in q and k already
            and (mask is None or (type(mask) is Causal and q.shape[2] == 1))
        )


__all__ = ["Attention"]
