"""FSDP's checkpoint shards, written and read by DCP (torch.distributed.checkpoint): each
process writes and reads its own part, resharded for any number of processes. Only a run
with shards imports this module (course.run_folder): DCP costs most of a second to import.
Reading one unpickles nothing but DCP's metadata classes, and only files of its own folder."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from torch.distributed.tensor import distribute_tensor
from torch.optim import Optimizer

from course.distributed import is_dtensor
from course.errors import UsageError


def save(weights: dict, model: nn.Module, optimizer: Optimizer, folder: Path) -> None:
    """Every process's shards of the weights and the optimizer state, into `folder`. The optimizer
    state in DCP's form names its parameters (optimizer.state_dict() numbers them)."""
    dcp.save(
        {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=folder
    )


def load(folder: Path, model: nn.Module, optimizer: Optimizer) -> tuple[dict, dict]:
    """The weights and optimizer state (by number) in this run's layout: DCP reads the shards in
    place, resharded, into the model's tensors and the optimizer's (made by a step at LR 0)."""
    state = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, storage_reader=MetadataOnlyReader(folder), no_dist=not dist.is_initialized())
    return state["model"], numbered(state["optimizer"], model, optimizer)


def optimizer_params(optimizer: Optimizer) -> list[torch.Tensor]:
    return [param for group in optimizer.param_groups for param in group["params"]]  # as numbered


def numbered(named: dict, model: nn.Module, optimizer: Optimizer) -> dict:
    """An optimizer state in DCP's form (by name) in optimizer.state_dict()'s (by number)."""
    name_of = {param: name for name, param in model.named_parameters()}
    number_of = {name_of[param]: number for number, param in enumerate(optimizer_params(optimizer))}
    groups = [
        {**group, "params": [number_of[name] for name in group["params"]]} for group in named["param_groups"]
    ]
    return {
        "state": {number_of[name]: state for name, state in named["state"].items()},
        "param_groups": groups,
    }


def shard_whole_state(checkpoint: dict, model: nn.Module, optimizer: Optimizer) -> None:
    """A whole (DDP or single-process) checkpoint, which every process read, cut into this FSDP
    run's shards (the saved optimizer numbers its parameters as this one)."""
    mine, params = model.state_dict(), optimizer_params(optimizer)
    checkpoint["model"] = {
        name: shard_like(value, mine.get(name)) for name, value in checkpoint["model"].items()
    }
    saved = checkpoint["optimizer"]
    state = {
        n: {key: shard_like(value, params[n]) for key, value in s.items()} for n, s in saved["state"].items()
    }
    checkpoint["optimizer"] = {**saved, "state": state}


def shard_like(value, param: torch.Tensor | None):
    """A weight or optimizer moment cut into shards as `param` is; anything else as it is."""
    if not is_dtensor(param) or not torch.is_tensor(value) or value.shape != param.shape:
        return value
    return distribute_tensor(value.detach().to(param.device), param.device_mesh, param.placements)


class MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata into DCP's metadata classes only: pickle can call any function."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}
    ALLOWED |= {("pathlib", name) for name in ("PosixPath", "WindowsPath", "PurePosixPath")}
    ALLOWED |= {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module: str, name: str):
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in self.ALLOWED or is_dtype or module == "torch.distributed.checkpoint.metadata":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


class MetadataOnlyReader(dcp.FileSystemReader):
    """DCP's reader, with MetadataUnpickler, and shard files inside the checkpoint's folder only."""

    def read_metadata(self, *args, **kwargs) -> dcp.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
            raise UsageError(f"--from_resume 1: {path} is not a checkpoint's metadata ({err})") from None
        entries = (metadata.storage_data or {}).values() if isinstance(metadata, dcp.Metadata) else None
        if entries is None or not all(map(names_a_file_here, entries)):
            raise UsageError(f"--from_resume 1: {path} is not a checkpoint's metadata of its own folder")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def names_a_file_here(info: object) -> bool:
    """A shard's storage entry names a file of the checkpoint's own folder."""
    name = getattr(info, "relative_path", None) if isinstance(info, _StorageInfo) else None
    return isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")
