"""One training process, or several started by torchrun: DDP, or FSDP when the model
outgrows one device.

    torchrun --standalone --nproc_per_node=4 train_solution.py               # 4 GPUs, NCCL
    torchrun --standalone --nproc_per_node=2 train_solution.py --device cpu  # 2 CPU processes, gloo
    torchrun --standalone --nproc_per_node=2 train_solution.py --device cpu --parallel fsdp

Every process trains on its own share of every batch (see `course.batches.BatchStream`).

- DDP (`--parallel ddp`, the default): each process holds a full copy of the model, its
  gradients and the optimizer's state; during backward DDP averages the gradients of
  all processes, so every copy takes the same step. Memory per process: all of it.
- FSDP (`--parallel fsdp`, PyTorch's FSDP2 `fully_shard`, ZeRO stage 3): each process
  keeps 1/N of every parameter, gradient and optimizer moment. Before a Block computes,
  its parameters are gathered from all processes (all-gather) and freed again after;
  its gradients are summed and split back into shards (reduce-scatter). Memory per
  process: about 1/N of the model's state, plus one Block's full parameters at a time.
  Every process takes part in every forward pass, so under FSDP all of them evaluate
  and sample (with the same results), with the weights gathered once for all of it
  (`whole_weights`); rank 0 alone logs and writes the single files.
  The model never exists whole on one device (`build_sharded`): it is built on the meta
  device (shapes without memory), sharded, and each process fills in its shards.

Timeouts: how long a process waits in a collective before it gives up (NCCL's watchdog
then ends it). The training's collectives (gradients, FSDP's gathers) take
`STEP_TIMEOUT`, NCCL's own 10 minutes, so a hung run stops in minutes. Slow work of rank
0 alone (the first process of each machine preparing the corpus, rank 0 writing model.pt,
best.pt, resume.pt and the shards' checksums) may take longer: the others wait for it in
`ProcessGroup.barrier`, on a gloo group of its own with `MAIN_WORK_TIMEOUT` (2 hours),
and so reach the next training collective together with rank 0. A corpus that takes
longer to tokenize: prepare it first with one process (one step of any model with the
same --data_path, --tokenizer and --data_dir); the torchrun job then reuses it.
"""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from course.errors import UsageError
from course.guards import stop_with_the_launcher

PARALLEL_MODES = ("ddp", "fsdp")
STEP_TIMEOUT = timedelta(minutes=10)  # the training's collectives (see the module's docstring)
MAIN_WORK_TIMEOUT = timedelta(hours=2)  # waiting for rank 0's preparation and writing


@dataclass
class ProcessGroup:
    """This process's place among the training processes (one, unless torchrun started several)."""

    rank: int = 0
    world_size: int = 1
    cpu_group: object = None  # gloo: waits for rank 0, and small answers that must not wait for the GPUs
    local_rank: int = 0  # the process's number on its own machine (node)
    local_world_size: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # rank 0 logs, evaluates, samples and saves

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0  # one process per machine: prepares the corpus on that machine

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size

    def barrier(self) -> None:
        """Wait until every process is here: on the gloo group, whose timeout is long
        enough for rank 0's slow work (see the module's docstring)."""
        if self.world_size > 1:
            dist.barrier(group=self.cpu_group)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of `value` over all processes (an all-reduce)."""
        return mean_over_processes(value)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over all processes (an all-reduce)."""
        return sum_over_processes(value)

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is True on any: how the processes agree to stop
        after the same step when a signal reached some of them. A CPU all-reduce (gloo),
        so asking every step never makes the CPU wait for the GPU."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(int(flag))
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(value.item())

    def agree(self, value: float) -> bool:
        """True on every process if every process holds rank 0's `value` (CPU collectives)."""
        if self.world_size == 1:
            return True
        main_value = torch.tensor(value, dtype=torch.float64)  # a Python float is a float64: exact
        dist.broadcast(main_value, src=0, group=self.cpu_group)
        return not self.any(value != main_value.item())

    def main_says(self, message: str | None) -> str | None:
        """Rank 0's `message` on every process (the others pass None): a check that only
        rank 0 can make, such as claiming the run's folder, ends every process alike."""
        if self.world_size == 1:
            return message
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all training processes: an all-reduce that every process
    must call at the same point. Without torchrun, `value` itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The average of `value` over all training processes (an all-reduce, as above)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    return sum_over_processes(value) / dist.get_world_size()


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
    stop_with_the_launcher()  # torchrun starts each worker in a session of its own
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=STEP_TIMEOUT)
    cpu_group = dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)
    local = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), cpu_group, *local), device


def shut_down() -> None:
    """Leave the process group, if this process joined one. The run's model, its
    DeviceMesh and FSDP's state (held in reference cycles) are collected first: a group
    destroyed while a mesh still refers to it lives on to the interpreter's exit, where
    gloo often aborts the process (SIGABRT, "terminate called without an active exception")."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def shard_model(
    model: torch.nn.Module, group: ProcessGroup, device: torch.device, dtype: torch.dtype
) -> None:
    """FSDP2: shard every Block, then the rest (embeddings, final norm, lm_head), over
    the processes. `fully_shard` changes `model` in place: its parameters become
    DTensors that hold this process's shard, and the Blocks gather theirs just in time.
    Call it before the optimizer is built, so that the optimizer's state is sharded too.

    Sharding each Block on its own is what keeps the memory low: only the Block that is
    computing is gathered at a time, and the gathering of the next one overlaps the
    compute of this one. Mixed precision: the gathered parameters are cast to bfloat16
    where the run computes in it; the gradients are summed across processes in float32.
    The CPU needs an explicit CPU mesh (the default one would look for a GPU).
    """
    mesh = init_device_mesh(device.type, (group.world_size,))
    param_dtype = torch.bfloat16 if dtype == torch.bfloat16 else None  # None: the parameters' own float32
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.no_sync = lambda: gradient_sync_off(model)  # DDP's name, so the training step serves both


def build_sharded(
    build: Callable[[], torch.nn.Module], group: ProcessGroup, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The model of `build()` (model.py's GPT) sharded over the processes, never whole on
    any device: built on the meta device (shapes, no memory), sharded, given memory for
    this process's shards only, then initialised as `build()` would have on the CPU
    (call it under the same torch.manual_seed).

    One process's initialisation is a sequence of random draws from one generator:
    each layer's PyTorch default as it is built, then the model's own init steps
    (GPT.initialisation). Each process replays that sequence one parameter at a time,
    drawing the whole parameter on the CPU, so that the generator moves exactly as in
    one process, and keeps its shard of it: the same weights as one process, with at
    most one whole parameter (the largest, often the embedding) in memory at a time."""
    with torch.device("meta"):
        model = build()  # a meta tensor draws nothing: the generator has not moved
    # Each layer beside a meta copy of itself, to replay the default init it drew as it was built.
    layers = [
        (layer, copy.deepcopy(layer)) for layer in model.modules() if hasattr(layer, "reset_parameters")
    ]
    shard_model(model, group, device, dtype)
    model.to_empty(device=device)  # memory for the shards, not yet initialised
    with torch.no_grad():
        while layers:  # the draws of building each layer, in the order it was built
            layer, twin = layers.pop(0)  # (each twin's memory goes before the next one's)
            twin.to_empty(device="cpu").reset_parameters()
            for name, value in twin.named_parameters(recurse=False):
                fill(getattr(layer, name), value)
        for param, init in model.initialisation():
            value = torch.empty(param.shape)  # the whole parameter, as one process draws it
            init(value)
            fill(param, value)
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()  # computed buffers (the rotary tables)
    return model


def fill(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy `value`, a whole tensor on the CPU, into `param`: under FSDP only this
    process's shard of it (every process holds `value`, so nothing is sent; on a GPU,
    distribute_tensor moves the whole tensor there before it takes the shard)."""
    if isinstance(param, DTensor):
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Whole tensors (model.pt's, --from_weight) into the model; under FSDP each process
    copies only its shard of each, one parameter at a time."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            fill(param, weights[name])


@contextmanager
def gradient_sync_off(model: FSDPModule) -> Iterator[None]:
    """FSDP's equivalent of DDP's no_sync(): the micro-batches before the last keep
    their gradients unsharded on each process and skip the reduce-scatter; the last
    backward reduces the sum of them all once."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def whole_weights(model: torch.nn.Module) -> Iterator[None]:
    """Under FSDP: the weights gathered once for everything inside, such as a whole
    evaluation and its text sample, instead of once per forward pass (a sample of 300
    tokens is 300 forwards, each gathering every Block). The price is memory: every
    process holds the whole model, in the gathered dtype, for the duration, as DDP
    always does; the shards come back at the end. Every process must enter it (the
    gathering is a collective). For one process or DDP it changes nothing.

    Inside, no module reshards after its forward (`set_reshard_after_forward(False)`),
    so the first forward gathers each once and the later ones find them whole; at the
    end each is resharded, and the Blocks reshard after each forward again, as
    shard_model set them up (the root module, the rest of the model, never does: it is
    only resharded after backward, where training needs it again at once)."""
    if not is_sharded(model):
        yield
        return
    model.set_reshard_after_forward(False)  # every FSDP module in the model
    try:
        yield
    finally:
        for block in model.transformer.h:
            block.set_reshard_after_forward(True)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as plain tensors on the CPU: under FSDP gathered from
    every shard (every process must call it; rank 0 gets the whole dict, the others an
    empty one), so model.pt and best.pt stay single files that load anywhere."""
    if is_sharded(model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def wrap_for_training(
    model: torch.nn.Module, group: ProcessGroup, device: torch.device, compile: bool
) -> torch.nn.Module:
    """The model the training step calls: wrapped in DDP and/or compiled.

    DistributedDataParallel averages the gradients of all processes during backward;
    torch.compile fuses the model's ops into faster kernels. Both wrap `model`, which
    the caller keeps for evaluation and state_dicts, so checkpoint keys stay plain.
    An FSDP model (shard_model) is already distributed: it is only compiled.

    The order: compile(DDP(model)), not DDP(compile(model)). Around a compiled model DDP
    sees one backward that ends all at once, so no bucket of gradients is ready to be
    all-reduced before the whole backward is done, and the communication never overlaps
    compute. Compiling DDP instead lets Dynamo split the graph at DDP's bucket boundaries,
    so each bucket's all-reduce starts while the rest of the backward still computes
    (tools/compile_ddp_order.py measures both: the same weights to the bit, and on CPU
    processes the same speed, since gloo there has no spare core to overlap with).
    """
    if group.world_size > 1 and not is_sharded(model):
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model
