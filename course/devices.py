"""Where a run computes, and in which number type.

`--device auto` picks CUDA, then MPS (Apple silicon), then the CPU. `--dtype auto`
picks bfloat16 where the device computes it natively, float32 (or float16 with a
GradScaler on older GPUs) where it would only be emulated:

- CUDA GPUs from Ampere on: bfloat16. Older ones such as the T4 and V100 of free
  notebooks emulate it, slowly: they get float16.
- CPUs with fast bfloat16 instructions, decided from what the CPU reports (never from a
  timing probe, so a run's number type does not depend on the machine's load): Intel's
  AMX matrix units (Xeon from Sapphire Rapids on), or AVX512_BF16 dot products on AMD
  (Zen 4 and newer). Intel's AVX512_BF16 without AMX (Xeon Cooper Lake, or an AMX Xeon
  capped below it) is no faster than float32 FMAs: float32 there. Without bfloat16
  instructions (AVX2-only or plain AVX-512 CPUs, ARM) a bfloat16 matmul is emulated and
  slower than float32: float32.
- MPS: float32 (bfloat16 there saves memory but was reported slower per step; not
  measured for this course).

oneDNN, which runs PyTorch's CPU matmuls, can be capped below the CPU's own instruction
set with ONEDNN_MAX_CPU_ISA (e.g. AVX512_CORE: AVX-512 without its bfloat16 part); the
choice follows the cap, so one machine can stand in for the other classes
(tools/benchmark_main_job.py --cpu_class). On CUDA, float32 matmuls use TF32 where the
GPU has it. The table of peak FLOP/s turns tokens per second into model FLOPs
utilisation (MFU): the share of the GPU's peak the training actually uses.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

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


# oneDNN's instruction sets below its bfloat16 dot products (ONEDNN_MAX_CPU_ISA values).
ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_vendor() -> str:
    """The CPU's maker, "AMD" or "Intel" ("" if unknown): from /proc/cpuinfo on Linux,
    else from the platform's description of the processor."""
    cpuinfo = Path("/proc/cpuinfo")
    return vendor_named_in(cpuinfo.read_text(errors="replace") if cpuinfo.is_file() else platform.processor())


def vendor_named_in(text: str) -> str:
    """The maker a CPU description names: its CPUID vendor string first (in /proc/cpuinfo
    and in Windows' description), then its brand."""
    names = (("AuthenticAMD", "AMD"), ("GenuineIntel", "Intel"), ("AMD ", "AMD"), ("Intel", "Intel"))
    return next((vendor for name, vendor in names if name in text), "")


def cpu_bfloat16_units() -> str | None:
    """The CPU's bfloat16 matmul instructions that are faster than float32 and that oneDNN
    may use: "AMX", "AVX512_BF16" (AMD only: Intel's run at float32's rate), or None. Read
    from the CPU's feature flags (PyTorch's cpuinfo), capped by ONEDNN_MAX_CPU_ISA."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "ALL").upper()
    has = {  # torch.cpu's feature queries are not public API yet: absent means no
        "AMX": getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)(),
        "AVX512_BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)(),
    }
    if has["AMX"] and (cap in ("ALL", "DEFAULT") or "AMX" in cap):
        return "AMX"
    if has["AVX512_BF16"] and cap not in ONEDNN_BELOW_BF16 and cpu_vendor() == "AMD":
        return "AVX512_BF16"
    return None


def fast_bfloat16(device: torch.device) -> bool:
    """Whether this device multiplies bfloat16 matrices natively: CUDA GPUs from Ampere
    on, and CPUs with AMX, or with AVX512_BF16 on AMD (cpu_bfloat16_units). Elsewhere
    bfloat16 is emulated, or no faster than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_bfloat16_units() is not None
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 where the device computes it natively (fast_bfloat16), float16
    on older CUDA GPUs, else float32."""
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


def describe_dtype(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The number type for the setup line, with why `auto` chose it ("bfloat16: AMX",
    "float32: no fast bfloat16 units", "float16: no native bfloat16 on this GPU") or that
    --dtype asked for it."""
    chosen = str(dtype).removeprefix("torch.")
    if name != "auto":
        return f"{chosen}, from --dtype"
    if device.type == "cpu":
        units = cpu_bfloat16_units()
        return f"{chosen}: {units}" if units else f"{chosen}: no fast bfloat16 units"
    if device.type == "cuda":
        native = dtype == torch.bfloat16
        return f"{chosen}: native on this GPU" if native else f"{chosen}: no native bfloat16 on this GPU"
    return f"{chosen}: the default on {device.type}"


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """A block whose random draws leave the run's generators as they were: the CPU's
    and the run's device's (CUDA or MPS). torch.manual_seed inside it seeds every
    device's generator, so forking the CPU's alone would let a seed meant for one
    sample or one initialisation restart the device's dropout masks."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = (
        device.index
        if device.index is not None
        else (torch.cuda.current_device() if device.type == "cuda" else 0)
    )
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls on CUDA in TF32 (10-bit mantissa on tensor cores, Ampere and newer):
    several times faster, and precise enough for training. A no-op on other devices."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # "high": TF32 where the GPU has it


# Dense 16-bit peak FLOP/s of common training GPUs, per number type, for model FLOPs
# utilisation (MFU). A GPU without bfloat16 has no bfloat16 entry; float32 has none. The
# first key found in the device's name wins, so the PCIe and NVL cards (lower clocks and
# power) come before the SXM ones whose names they contain.
GPU_PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12},
    "H100 NVL": {"bfloat16": 835e12, "float16": 835e12},
    "H200 NVL": {"bfloat16": 835e12, "float16": 835e12},
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


def memory_of(device: torch.device) -> int | None:
    """Bytes of memory a run on this device has at most: the GPU's own, else the machine's
    RAM (which Apple silicon's GPU shares); None where the system does not say (Windows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def usable_cpus() -> int:
    """The CPU cores this process may run on (a container or `taskset` may allow fewer than the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
