"""One training process, or several started by torchrun: DDP, or FSDP when the model outgrows
one device (docs/scale.md explains both); under FSDP all processes evaluate and sample.

Timeouts: the training's collectives take `STEP_TIMEOUT`, NCCL's own 10 minutes, so a hung run
stops soon. Rank 0's slow work (preparing the corpus, writing checkpoints) may take longer: the
others wait for it in `ProcessGroup.barrier`, on a gloo group with `MAIN_WORK_TIMEOUT`, and so
reach the next training collective together with rank 0."""

import copy
import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from course.errors import UsageError
from course.guards import stop_with_the_launcher

PARALLEL_MODES = ("ddp", "fsdp")
STEP_TIMEOUT = timedelta(minutes=10)  # the training's collectives
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
        """Wait until every process is here, long enough for rank 0's slow work (MAIN_WORK_TIMEOUT)."""
        if self.world_size > 1:
            dist.barrier(group=self.cpu_group)

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is on any (on gloo: asking every step never waits for the GPU)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(int(flag))
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(value.item())

    def main_says(self, message: object) -> object:
        """Rank 0's `message` on every process: a check only rank 0 can make ends every process alike."""
        if self.world_size == 1:
            return message
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all training processes: an all-reduce, which every process must
    call at the same point (without torchrun, `value` itself)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The average of `value` over all training processes (an all-reduce, as above)."""
    processes = dist.get_world_size() if dist.is_initialized() else 1
    return value if processes == 1 else sum_over_processes(value) / processes


def init_distributed(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group when torchrun started this process (it sets RANK); NCCL or gloo (CPUs)."""
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
    """Leave the process group, after the model's DeviceMesh (reference cycles): a group that a mesh
    still refers to lives on to the interpreter's exit, where gloo often aborts (SIGABRT)."""
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
    from torch.distributed.device_mesh import init_device_mesh  # here: see is_sharded
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (group.world_size,))
    param_dtype = torch.bfloat16 if dtype == torch.bfloat16 else None  # None: the parameters' own float32
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def build_sharded(
    build: Callable[[], torch.nn.Module], group: ProcessGroup, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The model of `build()` sharded, never whole on a device: built on the meta device, sharded,
    then each process replays one process's random draws (same torch.manual_seed) a whole
    parameter at a time on the CPU and keeps its shard: the same weights as one process."""
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
    """Copy `value`, a whole CPU tensor that every process holds, into `param` (its shard under FSDP)."""
    if is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Whole tensors (model.pt's, --from_weight) into the model; under FSDP, its shard of each."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            fill(param, weights[name])


@contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes inside keep their gradients on this process: DDP skips its all-reduce
    (its own no_sync), FSDP its reduce-scatter; the next backward outside syncs the sum of
    them all once. One process has nothing to skip."""
    model = getattr(model, "_orig_mod", model)  # under torch.compile: the model it compiled
    if not is_sharded(model):
        with model.no_sync() if hasattr(model, "no_sync") else nullcontext():
            yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# FSDP's modules (torch.distributed.fsdp, .tensor, .checkpoint) cost most of a second to
# import, at every start of every run: only a run that shards imports them, and until then
# no model is sharded and no tensor is a DTensor (a class exists once its module is loaded).
def is_sharded(model: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def is_dtensor(t: object) -> bool:
    """Whether `t` is a DTensor: FSDP's shard of a parameter, a gradient or a moment."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


@contextmanager
def whole_weights(model: torch.nn.Module) -> Iterator[None]:
    """Under FSDP the weights gathered once for all inside (an evaluation, a sample of 300
    forwards), not once per forward: every process holds the whole model meanwhile, as under
    DDP, and must enter (a collective). At the end the Blocks reshard after each forward again."""
    if not is_sharded(model):
        yield
        return
    model.set_reshard_after_forward(False)  # every FSDP module in the model
    try:
        yield
    finally:
        for block in model.transformer.h:
            block.set_reshard_after_forward(True)
        for module in filter(is_sharded, model.modules()):
            module.reshard()


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as plain CPU tensors, so model.pt and best.pt load anywhere: under FSDP
    gathered from every shard (all processes call it; rank 0 gets the dict, the others {})."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def wrap_for_training(
    model: torch.nn.Module, group: ProcessGroup, device: torch.device, compile: bool
) -> torch.nn.Module:
    """The model the training step calls, in DDP (unless FSDP sharded it) and/or compiled; the
    caller keeps `model` for evaluation and plain checkpoint keys. compile(DDP(model)): Dynamo
    splits the graph at DDP's buckets, so their all-reduce overlaps the backward."""
    if group.world_size > 1 and not is_sharded(model):
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model
