"""Data parallelism for runs under torchrun: DDP (replicated model) or FSDP2 (fully sharded), chosen by
`train.distributed`, and checkpoint state that does not depend on either or on the world size.

Checkpoints hold *full* (unsharded) model and optimizer state keyed by parameter name, gathered through
`torch.distributed.checkpoint.state_dict`; any strategy and any number of processes can resume from them.
In a plain single-process run every function here is the obvious local operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from panformer.engine.distributed import DistInfo

Strategy = Literal["ddp", "fsdp"]

# Gathered to rank 0 on the CPU: only rank 0 writes checkpoints.
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def shard_blocks(model: nn.Module) -> None:
    """FSDP2 in place: each item of every ModuleList (the model's repeated blocks) is one unit, then the
    root takes what is left (embeddings, heads). Parameters become DTensors sharded over the ranks."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
    fully_shard(model)


def wrap_for_training(model: nn.Module, *, strategy: Strategy, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """The module the training loop calls: `model` itself, a DDP wrapper of it, or `model` sharded in place
    (FSDP2; build the optimizer afterwards, over the sharded parameters)."""
    if not dist_info.enabled:
        return model
    if strategy == "fsdp":
        shard_blocks(model)
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, *, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on micro-batches that do not step the optimizer."""
    if enabled:
        yield
    elif isinstance(train_model, DistributedDataParallel):
        with train_model.no_sync():
            yield
    elif hasattr(train_model, "set_requires_gradient_sync"):  # an FSDP2 module
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)
    else:
        yield


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights by name, on the CPU (on rank 0; other ranks get {}). Call on every rank."""
    state = get_model_state_dict(model, options=_SAVE)
    # safetensors refuses shared storage: contiguous private copies.
    return {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, unsharded (on rank 0). Call on every rank."""
    return get_optimizer_state_dict(model, optimizer, options=_SAVE)


def load_full_model_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights into a plain, DDP-wrapped or sharded model (every rank passes them)."""
    set_model_state_dict(model, weights, options=_LOAD)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=_LOAD)
