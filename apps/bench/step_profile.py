"""Where one training step's time goes: torch.profiler over a few steps, summed per step.

``profile_step(step, device=..., steps=5)`` runs ``step`` (already warmed up) under the profiler and returns a
``StepProfile``: the wall time per step, the GPU time its kernels took (summed, so overlapping streams count
twice), how many kernels it launched, and the kernel time per category (attention, matrix products, optimizer,
normalisation, the rest). A step whose GPU is busy for a small share of its wall time is bound by the host
(Python, dispatch, launches), not by arithmetic: CUDA graphs or fewer, fused kernels are then the remedy.

Categories are read from kernel names (cuDNN/FlashAttention/Flex/our Triton kernels; cuBLAS/CUTLASS GEMMs;
fused or foreach optimizer kernels; norm kernels); a name that matches none counts as "other" (elementwise,
reductions, copies).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

CATEGORIES: dict[str, re.Pattern] = {
    "attention": re.compile(r"flash|fmha|attention|attn|flex|neighborhood|sdpa|softmax", re.I),
    "matmul": re.compile(r"gemm|cutlass|cublas|matmul|nvjet|sm90_xmma|sm80_xmma|wgmma|mm_", re.I),
    "optimizer": re.compile(r"adam|multi_tensor|foreach|fused_sgd", re.I),
    "norm": re.compile(r"norm", re.I),
}


@dataclass
class StepProfile:
    wall_ms: float  # per step, synchronised
    gpu_ms: float  # kernel time per step (0 on CPU)
    kernels: float  # kernel launches per step
    by_category_ms: dict[str, float] = field(default_factory=dict)  # kernel time per step, per category

    @property
    def gpu_busy(self) -> float:
        """Share of the step's wall time its kernels ran (above 1 when streams overlap)."""
        return self.gpu_ms / self.wall_ms if self.wall_ms else 0.0


def category(kernel_name: str) -> str:
    for name, pattern in CATEGORIES.items():
        if pattern.search(kernel_name):
            return name
    return "other"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(step: Callable[[], object], *, device: torch.device, steps: int = 5) -> StepProfile:
    """Run ``step`` ``steps`` times under torch.profiler (warm it up first) and sum its kernels per step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        wall = (time.perf_counter() - start) * 1000 / steps
    by_category: dict[str, float] = {name: 0.0 for name in [*CATEGORIES, "other"]}
    launches = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launches += 1
        by_category[category(event.name)] += event.time_range.elapsed_us() / 1000 / steps
    return StepProfile(wall_ms=wall, gpu_ms=sum(by_category.values()), kernels=launches / steps,
                       by_category_ms=by_category)


__all__ = ["CATEGORIES", "StepProfile", "category", "profile_step"]
