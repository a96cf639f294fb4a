"""Timing helpers shared by the benchmark scripts (imported as ``from timing import ...``: a script's
own folder is on ``sys.path``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _once_ms(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Milliseconds per call of ``calls`` calls back to back."""
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) * 1e3 / calls
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 10) -> float:
    """Median time of ``fn`` in milliseconds after ``warmup`` calls (CUDA events on GPU, wall clock elsewhere)."""
    return time_interleaved({"fn": fn}, device, warmup=warmup, iters=iters)["fn"]


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 3, iters: int = 10, calls: int = 1
) -> dict[str, float]:
    """Median time of each function in ms, called in turn round after round (the order rotating), so that
    clocks and caches treat every contender alike.

    ``calls`` > 1 times that many calls back to back per sample: the host then runs ahead of the GPU, so the
    time is the GPU's wherever the kernels outlast the host's work (one call after an idle GPU also counts
    the host's time before the first launch: apps/bench/dispatch_overhead.py measures both)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(iters):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            times[name].append(_once_ms(fns[name], device, calls))
    return {name: statistics.median(t) for name, t in times.items()}


def forward_and_backward(fn: Callable, *inputs: torch.Tensor) -> tuple[Callable, Callable]:
    """Closures for ``fn``'s forward pass (no grad) and forward + backward with a fixed random gradient."""
    grad = None

    def fwd():
        with torch.no_grad():
            return fn(*inputs)

    def fwd_bwd():
        nonlocal grad
        out = fn(*inputs)
        grad = torch.randn_like(out) if grad is None else grad
        out.backward(grad)

    return fwd, fwd_bwd


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "absent"
    return triton.__version__
