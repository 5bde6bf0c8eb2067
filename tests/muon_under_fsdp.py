"""Muon's steps under FSDP next to the same steps in one process, for tests/test_fsdp.py:

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/muon_under_fsdp.py OUT

Every process shards matrices of four shapes with fully_shard (rows that do not divide
by N, fewer matrices of a shape than processes, at N = 3 a shard without rows), gives
them the gradients a single-process MuonAdamW gets for its whole copies, and steps both
three times. It writes OUT/rank<r>.json: the largest difference between the two, and the
collectives of each sharded step, counted by PyTorch's CommDebugMode.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from optim import MuonAdamW  # noqa: E402

SHAPES = [(12, 8), (12, 8), (12, 8), (8, 12), (8, 12), (7, 5), (2, 6)]  # tall and wide


def muon(params: list[torch.nn.Parameter]) -> MuonAdamW:
    return MuonAdamW([{"params": params, "use_muon": True, "weight_decay": 0.1}], lr=0.1)


def compare(out: Path) -> None:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)  # the same matrices and gradients in every process
    whole = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    sharded = torch.nn.ParameterList(torch.nn.Parameter(p.detach().clone()) for p in whole)
    fully_shard(sharded, mesh=mesh)
    one_process, under_fsdp = muon(whole), muon(list(sharded))
    collectives, difference = [], 0.0
    for _ in range(3):
        for p, q in zip(whole, sharded, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = distribute_tensor(p.grad, mesh, q.placements, src_data_rank=None)  # this process's rows
        one_process.step()
        with CommDebugMode() as comm:
            under_fsdp.step()
        collectives.append({str(op): count for op, count in comm.get_comm_counts().items()})
        for p, q in zip(whole, sharded, strict=True):
            difference = max(difference, (p - q.full_tensor()).abs().max().item())
    report = {"difference": difference, "collectives": collectives, "shapes": len(set(SHAPES))}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    dist.init_process_group("gloo")
    compare(Path(sys.argv[1]))
    # The mesh, the DTensors and FSDP's state (in reference cycles) go first: a group
    # destroyed while a DeviceMesh still refers to it lives on to the interpreter's exit,
    # where gloo often aborts the process ("terminate called without an active exception").
    gc.collect()
    dist.destroy_process_group()
