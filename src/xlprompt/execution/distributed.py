"""Data-parallel training under `torchrun` (or `accelerate launch`): one run over several processes/GPUs.

Every process holds the whole model and trains on its share of each global batch (the same batches one
process would see: `--batch-size` is the global batch). Only the gradients of what trains are summed across
processes (the prompt and head; all of the model when it trains), not wrapped in DDP: a frozen backbone
sends nothing. Each process's loss is its share of the global batch's *sum* of per-target losses divided by
the global number of targets, so the summed gradient is the gradient of the global mean: the result equals
one process on the same global batch (up to float summation order). Dev scoring runs on every process
(identical results); only rank 0 writes the run folder.

Launch (one process per GPU; gloo on CPU, NCCL on CUDA):

    torchrun --nproc_per_node 4 -m xlprompt.cli.commands train --device cuda --out runs/x ...
"""
from __future__ import annotations

import os

import torch

from ..core.errors import XlpromptError


def main_process() -> bool:
    """False in the torchrun processes other than rank 0 (they train but write nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


class Replicas:
    """This process's place among the data-parallel processes (world 1: plain single-process training)."""

    def __init__(self, world: int = 1, rank: int = 0):
        self.world, self.rank = world, rank

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Replicas":
        """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else world 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_available():
            raise XlpromptError("This torch has no torch.distributed: run one process (drop torchrun).")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_world_size(), dist.get_rank())

    def shard(self, rows: list[int]) -> list[int]:
        """This process's contiguous share of a global batch's rows (sizes differ by at most one)."""
        if not self.active:
            return rows
        base, extra = divmod(len(rows), self.world)
        start = self.rank * base + min(self.rank, extra)
        return rows[start:start + base + (self.rank < extra)]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over all processes (a copy; the input is untouched)."""
        if not self.active:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def sum_gradients(self, parameters) -> None:
        """Sum the gradients of the trained parameters over all processes, as one flat buffer. A process
        whose share was empty contributes zeros."""
        if not self.active:
            return
        import torch.distributed as dist

        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
