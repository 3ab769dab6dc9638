"""Distributed data-parallel training with torch.distributed (launched by torchrun): ranks and collectives.

One process per device. Under `torchrun` every rank runs the same `digitlab train`; this module tells each
rank who it is and wraps the few collectives the training loop needs. Without torchrun it is a no-op
(world size 1), so the single-process path pays nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `Dist()` is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory and prints progress."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: keeps ranks in step when one of them gets a signal."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (validation runs on rank 0 only)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def same_weights(self, model: torch.nn.Module) -> bool:
        """Whether every rank holds exactly the same parameters (element-wise max == min across ranks)."""
        if not self.enabled:
            return True
        vec = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
        hi, lo = vec.clone(), vec.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return bool(torch.equal(hi, lo))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(use_cuda: bool) -> Dist:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a no-op outside torchrun."""
    if not launched_by_torchrun():
        return Dist()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def current_rank() -> int:
    """The rank from torchrun's environment (before the process group exists): for printing on rank 0 only."""
    return int(os.environ.get("RANK", "0"))
