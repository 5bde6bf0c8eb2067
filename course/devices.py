"""Where a run computes, and in which number type.

`--device auto` picks CUDA, then MPS (Apple silicon), then the CPU. `--dtype auto`
picks bfloat16 on CUDA GPUs that support it, float16 (with a GradScaler) on older
ones, float32 elsewhere. The table of peak FLOP/s turns tokens per second into model
FLOPs utilisation (MFU): the share of the GPU's peak the training actually uses.
"""

from __future__ import annotations

import torch

from course.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps (Apple silicon), then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA GPUs that support it, float16 on older ones, else float32."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise UsageError("float16 training needs a GPU; use --dtype bfloat16 or float32 on CPU")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU does not support bfloat16; use --dtype float16")
    return DTYPES[name]


# Dense bf16 peak FLOP/s of common training GPUs, for model FLOPs utilisation (MFU).
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "4090": 165e12,
    "A10": 125e12,
    "V100": 125e12,
}


def gpu_peak_flops(device: torch.device) -> float | None:
    """The GPU's peak FLOP/s from the table above, or None (CPU, MPS, an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)
