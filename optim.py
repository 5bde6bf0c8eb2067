"""The optimizer of the course's GPT: AdamW, or Muon for the hidden matrices beside AdamW.

model.py is the model only; what updates its weights lives here, as in nanochat.
`configure_optimizers(model, ...)` sorts the parameters into groups (which get weight
decay, which get Muon) and builds the optimizer the training script steps:

- AdamW (Loshchilov & Hutter, 2019): Adam with the weight decay applied to the weights
  directly instead of through the gradient. torch.optim.AdamW.
- MuonAdamW: one optimizer that runs two algorithms, one per parameter group. Muon
  (Keller Jordan, 2024; `orthogonalize`) for the matrices inside the Transformer
  blocks, AdamW for the embedding, lm_head and the 1-D gains.

Under FSDP each process holds some rows of every matrix, and Muon needs whole ones: the
processes share the matrices out, each orthogonalising its own few whole
(`orthogonalize_shards`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from course.distributed import is_dtensor
from model import GPT

if TYPE_CHECKING:  # imported by FSDP when it shards: a run without it never loads it
    from torch.distributed.tensor import DTensor


def configure_optimizers(
    model: GPT,
    weight_decay: float,
    learning_rate: float,
    betas: tuple[float, float],
    device_type: str,
    muon_lr_scale: float = 0.0,
    amp_dtype: torch.dtype = torch.float32,
) -> torch.optim.Optimizer:
    """The model's optimizer: AdamW with weight decay on the matrices only; with
    muon_lr_scale > 0, MuonAdamW: Muon for the blocks' weight matrices (at
    learning_rate × muon_lr_scale) and AdamW for the embedding, lm_head and the gains.
    Muon's Newton–Schulz matmuls run in bfloat16 when the run does (amp_dtype), else
    in float32.

    Decay pulls weights toward zero, a regulariser that makes sense for the 2-D
    weight matrices and embeddings; on biases and norm gains (1-D) it would
    only fight the scale the model needs, so they get none.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # a tied matrix appears once
    matrices = [p for p in params if p.dim() >= 2]
    vectors = [p for p in params if p.dim() < 2]
    if muon_lr_scale > 0:
        in_blocks = {id(p) for p in model.transformer.h.parameters()}
        hidden = [p for p in matrices if id(p) in in_blocks]
        others = [p for p in matrices if id(p) not in in_blocks]  # embeddings, lm_head
        groups = [
            dict(params=hidden, use_muon=True, lr_scale=muon_lr_scale, weight_decay=weight_decay),
            dict(params=others, use_muon=False, weight_decay=weight_decay),
            dict(params=vectors, use_muon=False, weight_decay=0.0),
        ]
        ns_dtype = torch.bfloat16 if amp_dtype == torch.bfloat16 else torch.float32
        return MuonAdamW(groups, lr=learning_rate, betas=betas, ns_dtype=ns_dtype)
    groups = [
        {"params": matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel updates all parameters in one launch instead of many.
    use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    extra = {"fused": True} if use_fused else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def orthogonalize(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U Vᵀ for G = U S Vᵀ: G with every singular value set to about 1.

    A quintic Newton–Schulz iteration: each step maps every singular value s to
    a·s + b·s³ + c·s⁵. Keller Jordan's coefficients lift them fast rather than exactly:
    after five steps they lie roughly between 0.5 and 1.5 (only the very smallest stay
    below), which trains as well as the exact U Vᵀ and is far cheaper than an SVD.
    Only matmuls, in `dtype`: bfloat16 where the run computes in it (fast on GPUs and
    CPUs with bfloat16 units), else float32 (torch.optim.Muon always uses bfloat16,
    which a CPU without bfloat16 units emulates, many times slower). G may hold a stack
    of matrices (..., rows, cols): one batched matmul for all of them is faster than one
    small matmul each.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype).reshape(-1, *G.shape[-2:])  # a batch of matrices, even of one
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide side, where X Xᵀ is the smaller matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # every singular value ≤ 1: converges
    for _ in range(steps):
        A = X @ X.mT
        # X ← a·X + (b·A + c·A²)·X; baddbmm(M, P, Q, beta, alpha) = beta·M + alpha·P@Q in one pass
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return (X.mT if tall else X).reshape(G.shape).to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024) for the hidden weight matrices, AdamW for the rest.

    Muon: keep a Nesterov momentum of the gradient, then replace it by the nearest
    orthogonal matrix (orthogonalize) before the step. The gradient of a weight matrix
    is dominated by a few directions; orthogonalising gives every direction the same
    step size, so the rare ones learn too. It only makes sense for matrices that map
    hidden vectors to hidden vectors: the embedding (a lookup), lm_head and the 1-D
    gains keep AdamW, as its authors recommend. Each parameter group says which it
    gets (use_muon); set_lr gives each group lr × its lr_scale. What Muon gains at
    equal wall time, measured, is in the ablation table of tools/results/README.md.
    """

    def __init__(self, param_groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 momentum: float = 0.95, eps: float = 1e-8,
                 ns_dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        defaults = dict(lr=lr, lr_scale=1.0, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype  # the number type of the Newton–Schulz matmuls

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay, as in AdamW
            if group["use_muon"]:
                self._muon_step(params, group)
            else:
                for p in params:
                    self._adamw_step(p, group)

    def _muon_step(self, params: list[torch.Tensor], group: dict) -> None:
        # Matrices of one shape (the same layer in every block) are orthogonalised together.
        for shape in dict.fromkeys(p.shape for p in params):  # in order: every process alike
            same = [p for p in params if p.shape == shape]
            updates = [self._nesterov_momentum(p, group) for p in same]
            if is_dtensor(same[0]):  # FSDP: each process holds some rows of each
                orthogonal = orthogonalize_shards(updates, shape[0], row_shard_group(same[0]), self.ns_dtype)
            else:
                orthogonal = orthogonalize(torch.stack(updates), dtype=self.ns_dtype)
            # An orthogonal update of a tall matrix has smaller entries: scale them back up.
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            for p, update in zip(same, orthogonal, strict=True):
                local_part(p).add_(update, alpha=-group["lr"] * scale)

    def _nesterov_momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """What Muon orthogonalises: Nesterov's look-ahead g + β·(m - g) (this process's
        rows of it under FSDP), after updating the momentum m ← β·m + (1 - β)·g."""
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        state["momentum"].lerp_(p.grad, 1 - group["momentum"])
        return local_part(p.grad.lerp(state["momentum"], group["momentum"]))

    def _adamw_step(self, p: torch.Tensor, group: dict) -> None:
        """Adam's update, as torch.optim.AdamW computes it (weight decay applied above)."""
        state = self.state[p]
        if not state:
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1 - beta1)  # mean of the gradients
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # mean of their squares
        # Both averages start at zero; dividing by 1 - beta^step removes that bias.
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** state["step"]))


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The rows of `t` this process holds (a view: writing to it writes to `t`). Under
    FSDP `t` is a DTensor; without FSDP it is whole, and this is `t` itself."""
    return t.to_local() if is_dtensor(t) else t


def row_shard_group(p: DTensor) -> dist.ProcessGroup:
    """The processes among which FSDP shares out `p`'s rows (course.distributed.shard_model
    shards dim 0 over a 1-D mesh of all processes, as FSDP2 does by default)."""
    from torch.distributed.tensor import Shard

    if p.placements != (Shard(0),):
        raise NotImplementedError(f"Muon under FSDP needs row shards on a 1-D mesh, got {p.placements}")
    return p.device_mesh.get_group()


def orthogonalize_shards(shards: list[torch.Tensor], rows: int, process_group: dist.ProcessGroup,
                         dtype: torch.dtype) -> list[torch.Tensor]:  # fmt: skip
    """Muon's orthogonalisation under FSDP, where this process holds some rows of each of
    the k matrices of one shape (`shards`): returns this process's rows of each result.

    Orthogonalising needs whole matrices. Gathering each on every process would have
    every process hold the whole group and repeat the same Newton–Schulz work. Instead,
    as in nanochat and modded-nanogpt, the matrices are shared out: each of the N
    processes orthogonalises m = ⌈k/N⌉ of them whole (process d the d-th m; zero matrices
    fill up the last share), so it holds and computes about 1/N of the group. Two
    collectives per shape: an all-to-all brings each process the other processes' rows
    of its m matrices, a second one sends the orthogonalised rows back where they came
    from. The result is one process's (tests/test_fsdp.py).
    """
    world = dist.get_world_size(process_group)
    share = -(-len(shards) // world)  # ⌈k/N⌉
    # FSDP's row shards: ⌈rows/N⌉ rows each, fewer (even none) on the last processes;
    # zero rows pad each to the full size, as all-to-all needs equal parts.
    shard_rows = -(-rows // world)
    sent = shards[0].new_zeros(world * share, shard_rows, shards[0].size(1))
    for slot, shard in zip(sent, shards, strict=False):  # the zero matrices' slots stay zero
        slot[: len(shard)] = shard
    mine = gather_my_matrices(sent, process_group)[:, :rows]  # the padding rows are not the matrix's
    orthogonal = F.pad(orthogonalize(mine, dtype=dtype), (0, 0, 0, world * shard_rows - rows))
    returned = return_my_matrices(orthogonal, process_group)
    return [slot[: len(shard)] for slot, shard in zip(returned, shards, strict=False)]


def gather_my_matrices(sent: torch.Tensor, process_group: dist.ProcessGroup) -> torch.Tensor:
    """The all-to-all that gives each process its m matrices whole. `sent` is (N·m, rows
    per shard, cols): this process's rows of every matrix of the group, in order; its d-th
    part of m slots goes to process d, which orthogonalises those m matrices."""
    world = dist.get_world_size(process_group)
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent, group=process_group)
    share, shard_rows, cols = sent.size(0) // world, sent.size(1), sent.size(2)
    # received[d·m + t] holds process d's rows of my t-th matrix: stack them in process order
    by_process = received.view(world, share, shard_rows, cols)
    return by_process.transpose(0, 1).reshape(share, world * shard_rows, cols)


def return_my_matrices(mine: torch.Tensor, process_group: dist.ProcessGroup) -> torch.Tensor:
    """The inverse of gather_my_matrices: each of this process's m whole matrices is cut
    into N row shards, the d-th of each going back to process d; returns this process's
    rows of every matrix of the group, as `sent` held them."""
    world = dist.get_world_size(process_group)
    share, rows, cols = mine.shape
    by_process = mine.reshape(share, world, rows // world, cols).transpose(0, 1)
    sent = by_process.contiguous().view(world * share, rows // world, cols)  # in one piece, for all-to-all
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent, group=process_group)
    return received
