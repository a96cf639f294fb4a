"""torch.distributed set-up for runs launched by `torchrun` (DDP). A plain run is world size 1."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); NCCL on CUDA, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            # Bind this process to its own GPU before NCCL builds a communicator (else every rank's
            # first collective lands on cuda:0).
            gpu = torch.device("cuda", local_rank)
            torch.cuda.set_device(gpu)
            dist.init_process_group(backend="nccl", device_id=gpu)
        else:
            dist.init_process_group(backend="gloo")
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def collective_device() -> torch.device:
    """Where a collective's tensors must live: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown(info: DistInfo, *, synchronise: bool = True) -> None:
    """Tear down the process group; after a successful run, only once every rank has finished with it."""
    if info.enabled and dist.is_initialized():
        if synchronise:
            # A rank that tears down while another still writes its results could abort (gloo, seen in CI).
            dist.barrier()
        # Sharded modules live in reference cycles and keep gloo work alive; freed only at interpreter exit,
        # that work aborted a rank once in CI ('terminate called without an active exception'). Free it now.
        gc.collect()
        dist.destroy_process_group()
