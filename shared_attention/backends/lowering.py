"""A cache of mask lowerings (dense masks for SDPA, block masks for Flex).

A model applies the same mask value in every layer; lowering it once per (lengths, batch, heads,
device) keeps that cost out of the per-call time. Masks that carry tensors compare by identity:
their lowerings are stored on the mask object itself, so they are freed with it (a new batch
brings a new mask). Tensor-free masks (Causal(), SlidingWindow(256), ...) compare by value and
share a small LRU cache. Mutating a mask's tensors in place after use is not supported.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

_MAX_MASKS = 16
_MAX_ENTRIES_PER_MASK = 8
_by_value: OrderedDict = OrderedDict()


def _store_for(mask) -> OrderedDict:
    if type(mask).__hash__ is object.__hash__:
        store = mask.__dict__.get("_lowerings")
        if store is None:
            store = OrderedDict()
            object.__setattr__(mask, "_lowerings", store)  # masks are frozen dataclasses
        return store
    store = _by_value.get(mask)
    if store is None:
        store = _by_value[mask] = OrderedDict()
        if len(_by_value) > _MAX_MASKS:
            _by_value.popitem(last=False)
    _by_value.move_to_end(mask)
    return store


def cached_lowering(
    kind: str, mask, shape: tuple[int, ...], device: torch.device, build: Callable[[], Any]
):
    """``build()``'s result for this mask, lowering kind and shape, computed once."""
    store = _store_for(mask)
    key = (kind, shape, str(device))
    if key in store:
        store.move_to_end(key)
        return store[key]
    value = store[key] = build()
    if len(store) > _MAX_ENTRIES_PER_MASK:
        store.popitem(last=False)
    return value


def clear() -> None:
    """Drop the shared cache (per-mask caches go with their masks)."""
    _by_value.clear()
