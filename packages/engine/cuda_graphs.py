"""A whole training step captured as a CUDA graph (``train.cuda_graphs``).

Small models on a GPU spend most of a step launching kernels: hundreds of launches of a few microseconds of
work each, the GPU idle between them. ``GraphedTrainStep`` records one step (forward under autocast, loss,
backward, gradient clipping, optimizer step) once per batch shape as a CUDA graph and then replays it: one
launch per step. It follows PyTorch's whole-network capture recipe: the first steps of each shape run eagerly
(warming up lazy initialisation, the optimizer's state and attention dispatch's measured choices), the batch is
copied into fixed input tensors, gradients live in the graph's memory and each replay overwrites them, and the
optimizer is ``capturable`` with its learning rates as device tensors, which the scheduler fills in place.

A step that cannot be captured (a host sync in the model or loss, shapes that depend on the data, more batch
shapes than ``max_graphs``) runs eagerly, with one line saying why, and training goes on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from panformer.engine.tensors import map_tensors


def batch_signature(batch: Any) -> tuple | None:
    """What a graph is specific to: every tensor's shape, dtype and device, and the other values. None when
    a part cannot be a dictionary key (such a batch always runs eagerly)."""
    if torch.is_tensor(batch):
        return ("tensor", tuple(batch.shape), batch.dtype, batch.device)
    if isinstance(batch, dict):
        items = [(key, batch_signature(value)) for key, value in sorted(batch.items(), key=lambda kv: str(kv[0]))]
        return None if any(sig is None for _, sig in items) else ("dict", tuple(items))
    if isinstance(batch, (list, tuple)):
        parts = [batch_signature(value) for value in batch]
        return None if any(sig is None for sig in parts) else (type(batch).__name__, tuple(parts))
    try:
        hash(batch)
    except TypeError:
        return None
    return ("value", batch)


def copy_into(static: Any, batch: Any) -> None:
    """Copy a batch's tensors into the graph's input tensors of the same structure."""
    if torch.is_tensor(static):
        static.copy_(batch, non_blocking=True)
    elif isinstance(static, dict):
        for key, value in static.items():
            copy_into(value, batch[key])
    elif isinstance(static, (list, tuple)):
        for mine, theirs in zip(static, batch, strict=True):
            copy_into(mine, theirs)


class GraphedTrainStep:
    """``step(batch) -> loss`` (a device scalar, overwritten by the next step): forward, backward, clipping and
    the optimizer's update, replayed from a CUDA graph per batch signature after ``warmup`` eager steps.

    Args:
        model: the module being trained (on CUDA).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``.
        optimizer: a ``capturable`` optimizer (``torch.optim.AdamW(..., capturable=True)``); float learning
            rates are turned into device tensors here, so that a scheduler's updates reach the graph.
        autocast: a context manager factory for the forward (the engine's bf16 autocast), or None.
        grad_clip: the max gradient norm, or None.
        warmup: eager steps of each batch signature before it is captured.
        max_graphs: batch signatures captured at most; others run eagerly.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor], optimizer: torch.optim.Optimizer,
                 *, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 grad_clip: float | None = None, warmup: int = 3, max_graphs: int = 4) -> None:
        if not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ValueError("GraphedTrainStep needs a capturable optimizer (e.g. AdamW(..., capturable=True))")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.autocast, self.grad_clip, self.warmup, self.max_graphs = autocast, grad_clip, warmup, max_graphs
        self.seen: dict[tuple, int] = {}  # eager steps taken per signature
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Any, Tensor]] = {}  # graph, inputs, loss
        self.eager_only: dict[tuple | None, str] = {}  # signature -> why it is not captured
        self.captured_steps = 0  # replays so far (for logs and tests)

    def __call__(self, batch: Any) -> Tensor:
        key = batch_signature(batch)
        if key in self.graphs:
            graph, inputs, loss = self.graphs[key]
            copy_into(inputs, batch)
            graph.replay()
            self.captured_steps += 1
            return loss
        if key is None or key in self.eager_only:
            return self._eager(batch)
        if len(self.graphs) >= self.max_graphs:
            self._refuse(key, f"more than {self.max_graphs} batch shapes")
            return self._eager(batch)
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.warmup:
            return self._eager(batch)
        try:
            self.graphs[key] = self._capture(batch)
        except Exception as error:  # the model or loss cannot be captured: this signature runs eagerly
            torch.cuda.synchronize()
            self.optimizer.zero_grad(set_to_none=True)
            self._refuse(key, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200])
            return self._eager(batch)
        return self(batch)  # the capture recorded the step without running it: run it now

    # -- internals ------------------------------------------------------------------------------------

    def _forward_backward(self, batch: Any) -> Tensor:
        with self.autocast() if self.autocast is not None else contextlib.nullcontext():
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _eager(self, batch: Any) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self._forward_backward(batch)

    def _capture(self, batch: Any) -> tuple[torch.cuda.CUDAGraph, Any, Tensor]:
        device = next(self.model.parameters()).device
        for group in self.optimizer.param_groups:  # a graph reads the rate from memory, the scheduler fills it
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
        inputs = map_tensors(torch.Tensor.clone, batch)
        self.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates the gradients it overwrites
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._forward_backward(inputs)
        return graph, inputs, loss

    def _refuse(self, key: tuple | None, why: str) -> None:
        self.eager_only[key] = why
        warnings.warn(f"train.cuda_graphs: a batch of this shape runs eagerly ({why})", stacklevel=3)


__all__ = ["GraphedTrainStep", "batch_signature"]
