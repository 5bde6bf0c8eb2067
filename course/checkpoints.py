"""What a resume restores besides the tensors (every process's random generators, a GradScaler that
fits this run), and --from_weight; what goes into resume.pt is TODO 8's lesson, its files run_folder's.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from course.distributed import load_full_weights
from course.errors import UsageError
from course.run_folder import WEIGHTS_KEYS, check_same, load_checkpoint


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed every generator a run draws from, offset by the rank (as nanoGPT does): under DDP
    each process draws its own dropout masks (the batches have their own, course.batches)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def this_process_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        # Only if the run uses a GPU: reading it would start CUDA on GPU 0 in a --device cpu run.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,  # Apple silicon
    }


def capture_rng_state() -> dict:
    """Every random generator a run draws from (dropout, sampling), of every process: one
    checkpoint resumes them all. Every process calls it (it gathers); rank 0 saves."""
    states = [this_process_rng_state()]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, this_process_rng_state())
    return {"ranks": states}


def restore_rng_state(state: dict) -> None:
    """Each process takes back its own generators' states; one a resume on more processes
    added (course.cli.check_global_batch) keeps those seed_everything gave it."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank >= len(state["ranks"]):
        return
    mine = state["ranks"][rank]
    random.setstate(mine["python"])
    np.random.set_state(mine["numpy"])
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    if mine.get("mps") is not None and torch.backends.mps.is_available():  # .get: saved before MPS's was
        torch.mps.set_rng_state(mine["mps"])


def fit_scaler_state(checkpoint: dict, scaler: torch.amp.GradScaler) -> dict:
    """The checkpoint, with a scaler state this run can load: a run saved without float16 has
    none ({}), so a float16 resume starts a fresh scaler, with a note; a disabled one ignores it."""
    if scaler.is_enabled() and not checkpoint.get("scaler"):
        print("note: the saved run did not train in float16: its GradScaler starts at the initial scale")
        return {**checkpoint, "scaler": scaler.state_dict()}
    return checkpoint


# GPTConfig fields that a new run may change: the weights do not depend on them.
TRAINING_SETTINGS = ("dropout", "aux_loss_weight")


def architecture(model_config: dict) -> dict:
    return {key: value for key, value in model_config.items() if key not in TRAINING_SETTINGS}


def describe_tokenizer(meta: dict) -> str:
    if meta["tokenizer"] == "char":
        return f"a char vocabulary of {len(meta['chars'])} characters"
    return f"the {meta['tokenizer']} vocabulary"


def load_weights(model: torch.nn.Module, path: Path, tokenizer_meta: dict) -> None:
    """--from_weight: the weights of model.pt (or best.pt) of another run, for the same
    tokenizer and architecture (dropout may differ: fine-tuning often changes it)."""
    if not path.is_file():
        raise UsageError(f"--from_weight {path}: no such file")
    # Mapped: the file's pages are the system's cache, shared by the processes of a machine,
    # and under FSDP each process copies only its shards out of them (load_full_weights).
    weights = load_checkpoint(path, "--from_weight", WEIGHTS_KEYS, mmap=True)
    saved = weights["tokenizer"]
    if saved != tokenizer_meta:
        same_kind = describe_tokenizer(saved) == describe_tokenizer(tokenizer_meta)
        raise UsageError(
            f"--from_weight {path} was trained with another tokenizer ({describe_tokenizer(saved)} there, "
            f"{describe_tokenizer(tokenizer_meta)}{', other characters' if same_kind else ''} here): every "
            "embedding would stand for another token; use the --tokenizer and --data_path of that run"
        )
    check_same("model config", architecture(weights["model_config"]), architecture(model.config.to_dict()))
    load_full_weights(model, weights["model"])
