"""One training process, or several started by torchrun (DistributedDataParallel).

    torchrun --standalone --nproc_per_node=4 train_solution.py               # 4 GPUs, NCCL
    torchrun --standalone --nproc_per_node=2 train_solution.py --device cpu  # 2 CPU processes, gloo

Each process holds a full copy of the model and trains on its own share of every
batch (see `course.batches.BatchStream`); during backward, DDP averages the
gradients of all processes, so every copy takes the same step. Rank 0 alone logs,
evaluates, samples and saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from course.errors import UsageError


@dataclass
class ProcessGroup:
    """This process's place among the training processes (one, unless torchrun started several)."""

    rank: int = 0
    world_size: int = 1
    cpu_group: object = None  # gloo, for small answers that must not wait for the GPUs (see `any`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # rank 0 logs, evaluates, samples and saves

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of `value` over all processes (an all-reduce)."""
        return mean_over_processes(value)

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is True on any: how the processes agree to stop
        after the same step when a signal reached some of them. A CPU all-reduce (gloo),
        so asking every step never makes the CPU wait for the GPU."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(int(flag))
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(value.item())

    def main_says(self, message: str | None) -> str | None:
        """Rank 0's `message` on every process (the others pass None): a check that only
        rank 0 can make, such as claiming the run's folder, ends every process alike."""
        if self.world_size == 1:
            return message
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The average of `value` over all training processes: an all-reduce that every
    process must call at the same point. Without torchrun, `value` itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def init_distributed(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group when torchrun started this process (it sets RANK,
    LOCAL_RANK and WORLD_SIZE); otherwise this is the only process. NCCL connects
    GPUs; gloo connects CPU processes, so DDP also runs (and is tested) on a laptop."""
    if "RANK" not in os.environ:
        return ProcessGroup(), device
    if device.type == "mps":
        raise UsageError(
            "multi-process training needs CUDA or the CPU; use --device cpu with torchrun on a Mac"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else None  # None: the gloo default
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), cpu_group), device


def shut_down() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_training(
    model: torch.nn.Module, group: ProcessGroup, device: torch.device, compile: bool, use_moe: bool
) -> torch.nn.Module:
    """The model the training step calls: compiled and/or wrapped in DDP.

    torch.compile fuses the model's ops into faster kernels; DistributedDataParallel
    averages the gradients of all processes during backward. Both wrap `model`, which
    the caller keeps for evaluation and state_dicts, so checkpoint keys stay plain.
    """
    train_model = torch.compile(model) if compile else model
    if group.world_size > 1:
        train_model = DistributedDataParallel(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=use_moe,  # an expert may get no token in a batch
        )
    return train_model
