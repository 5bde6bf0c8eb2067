"""Where a run computes, and in which number type.

`--device auto` picks CUDA, then MPS (Apple silicon), then the CPU. `--dtype auto`
picks bfloat16 on CUDA GPUs that compute in it natively (Ampere and newer), float16
(with a GradScaler) on older ones such as the T4 and V100 of free notebooks, which only
emulate bfloat16, slowly; float32 elsewhere. On CUDA, float32 matmuls use TF32 where the
GPU has it. The table of peak FLOP/s turns tokens per second into model FLOPs
utilisation (MFU): the share of the GPU's peak the training actually uses.
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


def native_bf16() -> bool:
    """Whether this CUDA GPU computes in bfloat16 itself (is_bf16_supported() alone
    also counts the slow emulation of a T4 or V100)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA GPUs with native bfloat16, float16 on older ones, else float32."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bf16() else torch.float16
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise UsageError("float16 training needs a GPU; use --dtype bfloat16 or float32 on CPU")
    if name == "bfloat16" and device.type == "cuda" and not native_bf16():
        raise UsageError(
            "this GPU does not compute in bfloat16 (it would only emulate it); use --dtype float16"
        )
    return DTYPES[name]


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls on CUDA in TF32 (10-bit mantissa on tensor cores, Ampere and newer):
    several times faster, and precise enough for training. A no-op on other devices."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # "high": TF32 where the GPU has it


# Dense 16-bit peak FLOP/s of common training GPUs, per number type, for model FLOPs
# utilisation (MFU). A GPU without bfloat16 has no bfloat16 entry; float32 has none.
GPU_PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12},
    "L40S": {"bfloat16": 362e12, "float16": 362e12},
    "4090": {"bfloat16": 165e12, "float16": 165e12},
    "A10": {"bfloat16": 125e12, "float16": 125e12},
    "V100": {"float16": 125e12},
    "T4": {"float16": 65e12},
}


def gpu_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The GPU's peak FLOP/s in `dtype` from the table above, or None (CPU, MPS, an
    unlisted GPU, a number type the table has no peak for)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peaks = next((peaks for key, peaks in GPU_PEAK_FLOPS.items() if key in name), {})
    return peaks.get(str(dtype).removeprefix("torch."))
