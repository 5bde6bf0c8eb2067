"""Where a run computes, and in which number type.

`--device auto` picks CUDA, then MPS (Apple silicon), then the CPU. `--dtype auto`
picks bfloat16 where the device computes it natively: CUDA GPUs from Ampere on, and
CPUs with AMX matrix units (Intel Xeon from Sapphire Rapids on), where bfloat16 matmuls
run several times faster than float32 ones. Older CUDA GPUs such as the T4 and V100 of
free notebooks only emulate bfloat16, slowly: they get float16 (with a GradScaler).
float32 elsewhere. On CUDA, float32 matmuls use TF32 where the
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


def fast_bfloat16(device: torch.device) -> bool:
    """Whether this device multiplies bfloat16 matrices natively: CUDA GPUs from Ampere
    on, and CPUs with Intel AMX matrix units (Xeon Sapphire Rapids and newer), where a
    (2048×128)·(128×512) matmul ran 5.5× faster than in float32 on the course's 2-core machine.
    Elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # not public API yet
        return bool(is_amx and is_amx())
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 where the device computes it natively (CUDA GPUs from Ampere on,
    CPUs with AMX matrix units), float16 on older CUDA GPUs, else float32."""
    if name == "auto":
        if fast_bfloat16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise UsageError("float16 training needs a GPU; use --dtype bfloat16 or float32 on CPU")
    if name == "bfloat16" and device.type == "cuda" and not fast_bfloat16(device):
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
