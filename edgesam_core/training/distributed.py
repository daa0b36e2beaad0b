"""torchrun / DDP plumbing: process-group init from the environment, a resumable distributed sampler and
rank-0-only helpers. A single process (no ``WORLD_SIZE`` in the environment) runs without a process group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; other names pass through."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from edgesam_core.errors import MissingDependencyError

        raise MissingDependencyError(f"--device {name} asked for CUDA but no GPU is available; use --device cpu.")
    return torch.device(name)


def init_distributed(device_name: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    """Synchronise all ranks (no-op for a single process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only when ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32,
                     device=info.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return int(t.item()) == 0


def cleanup_distributed() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_initialized():
        dist.destroy_process_group()


class ResumableDistributedSampler(Sampler[int]):
    """``DistributedSampler`` semantics (seeded shuffle per epoch, padding, ``rank::world`` slices) that can
    also start mid-epoch, so a resumed run sees exactly the batches the interrupted one would have seen.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-size // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (changes the shuffle) and the first per-rank position to yield."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
