"""The ``Attention`` module: projections, positions, masks, score mods, variant and KV cache.

Legend: B batch, L query length, Lk key length, H query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from shared_attention.cache import L2NormEvictionCache
from shared_attention.forget_pruning import check_prunable, forget_gate_pruning
from shared_attention.functional import attention
from shared_attention.masks import Causal, KeyPadding, Mask
from shared_attention.positions import CoPEModule, NoPosition, Position, PositionModule
from shared_attention.quantized_cache import QuantizedKVCache
from shared_attention.score_mods import Compose, ForgetGateBias, ForgetGateModule, ScoreMod
from shared_attention.sigma_reparam import SigmaReparamLinear
from shared_attention.variants.base import Variant
from shared_attention.variants.differential import SharedDifferential, SharedDifferentialAttention


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
        sigma_reparam: σReparam projections (``SigmaReparamLinear``: spectrally normalised weights with a
            learned scale, against attention entropy collapse).
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
        sigma_reparam: bool = False,
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

        linear = SigmaReparamLinear if sigma_reparam else nn.Linear
        self.q_proj = linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.kv_proj = linear(kv_dim or dim, 2 * num_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = linear(num_heads * head_dim, dim)
        # Set by shared_attention.entropy.AttentionEntropy while it measures this layer's attention.
        self.probe = None
        self.dropout = nn.Dropout(dropout)

        self.position = (position or NoPosition()).build(
            dim=dim, num_heads=num_heads, head_dim=head_dim
        )
        if isinstance(variant, SharedDifferential):  # its low-rank parts read the layer's inputs
            if isinstance(self.position, CoPEModule):
                raise ValueError("SharedDifferential does not compose with CoPE (its gates read one q/k per head)")
            self.variant = variant.build(num_heads=num_heads, head_dim=head_dim, dim=dim, kv_dim=kv_dim or dim,
                                         num_kv_heads=num_kv_heads)
        else:
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
        if isinstance(cache, L2NormEvictionCache) and not self._position_free(mask, score_mod, key_padding_mask):
            raise ValueError(
                "L2NormEvictionCache drops keys, so masks and score mods that read key indices would misplace the "
                "survivors: use mask=Causal() or none, RoPE or absolute positions, no score mod or key padding"
            )
        if cache is not None and isinstance(self.score_mod_module, ForgetGateModule):
            history = cache.token_state.get("forget_gate")
            if cache.length != (0 if history is None else history.shape[-1]):
                raise ValueError(
                    f"the KV cache holds {cache.length} tokens but forget gates for "
                    f"{0 if history is None else history.shape[-1]}: fill it through this ForgetGate layer "
                    "from the first token (or reset it)"
                )
        batch, length, _ = x.shape
        offset = cache.offset if cache is not None else 0
        if positions is None:
            positions = self.position.default_positions(length, offset=offset, device=x.device)

        x = self.position.encode_input(x, positions)
        source = x if context is None else context
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_proj(source).view(batch, source.shape[1], 2, self.num_kv_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, Hkv, Lk, D)
        shared_maps = isinstance(self.variant, SharedDifferentialAttention)
        if shared_maps:  # Shared DIFF: base + each map's low-rank part, each map position-encoded, concatenated
            maps = zip(self.variant.query_maps(q, x), self.variant.key_maps(k, source), strict=True)
            if context is None:
                maps = [self.position.encode_qk(qm, km, positions, positions) for qm, km in maps]
            q, k = (torch.cat(parts, dim=-1) for parts in zip(*maps, strict=True))
        elif context is None:
            q, k = self.position.encode_qk(q, k, positions, positions)
        if additional_tokens is not None:
            extra = self.kv_proj(additional_tokens).view(batch, -1, 2, self.num_kv_heads, self.head_dim)
            extra_k, extra_v = extra.permute(2, 0, 3, 1, 4)
            if shared_maps:
                extra_k = torch.cat(self.variant.key_maps(extra_k, additional_tokens), dim=-1)
            k, v = torch.cat([k, extra_k], dim=2), torch.cat([v, extra_v], dim=2)
        if cache is not None and self._fused_decode(cache, q, mask, score_mod, context, key_padding_mask, backend):
            # Straight from the quantised cache's codes: nothing dequantised to (B, Hkv, T, D).
            out = cache.decode_attention(q, k, v, scale=self.scale)
            return self.out_proj(self.dropout(out.transpose(1, 2).reshape(batch, length, -1)))
        if cache is not None:
            k, v = cache.update(k, v)

        if key_padding_mask is not None:
            mask = _with_padding(mask, key_padding_mask)
        learned = self._learned_score_mod(x, cache)
        position_mod = self.position.score_mod(q, k, mask=mask, scale=self.scale)
        if isinstance(learned, ForgetGateBias) and self.score_mod_module.prune_epsilon is not None:
            mask = self._prune_forget_gate(q, k, learned, mask, (position_mod, self.fixed_score_mod, score_mod))
        score_mod = _compose(position_mod, self.fixed_score_mod, learned, score_mod)
        if self.probe is not None:
            query_valid = key_padding_mask if context is None else None
            self.probe(self, q, k, mask=mask, score_mod=score_mod, query_valid=query_valid)

        if self.variant is None:
            out = attention(
                q, k, v, mask=mask, score_mod=score_mod, scale=self.scale, backend=backend
            )
        else:
            # Each variant picks its own default scale (differential attention scales by its half width).
            out = self.variant(q, k, v, mask=mask, score_mod=score_mod, scale=None, backend=backend)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(self.dropout(out))

    def _learned_score_mod(self, x: Tensor, cache) -> ScoreMod | None:
        """This call's learned score mod; a ForgetGate continues the decay its cache keeps for earlier tokens."""
        module = self.score_mod_module
        if not isinstance(module, ForgetGateModule) or cache is None:
            return module(x) if module is not None else None
        bias = module(x, history=cache.token_state.get("forget_gate"))  # checked against the cache in forward
        cache.token_state["forget_gate"] = bias.cumulative_log_forget
        return bias

    def _prune_forget_gate(self, q: Tensor, k: Tensor, bias: ForgetGateBias, mask: Mask | None, others) -> Mask:
        """``mask`` and ACP's pruning of negligible key blocks (``shared_attention.forget_pruning``)."""
        if self.variant is not None or any(m is not None for m in others):
            raise ValueError(
                "ForgetGate pruning bounds plain softmax logits plus the decay: use it without a variant or "
                "another score mod (ALiBi, soft-cap, ...)"
            )
        check_prunable(mask)
        module = self.score_mod_module
        pruning, module.last_skipped_fraction = forget_gate_pruning(
            q, k, bias.cumulative_log_forget, epsilon=module.prune_epsilon, block_size=module.block_size,
            scale=self.scale,
        )
        return mask & pruning

    def _position_free(self, mask: Mask | None, score_mod: ScoreMod | None, key_padding_mask: Tensor | None) -> bool:
        """Whether this call reads no key index beyond causal order (what an evicting cache keeps)."""
        return (
            (mask is None or type(mask) is Causal)
            and score_mod is None
            and key_padding_mask is None
            and self.score_mod_module is None
            and self.fixed_score_mod is None
            and type(self.position).score_mod is PositionModule.score_mod
        )

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
