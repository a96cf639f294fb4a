"""Batches and states as nested dicts, lists and tuples of tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor inside its dicts, lists and tuples; other leaves kept."""
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_tensors(fn, v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


__all__ = ["map_tensors"]
