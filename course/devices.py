"""Where a run computes (`--device auto`: CUDA, then MPS, then the CPU), and in which number type
(`--dtype auto`: bfloat16 where the device computes it natively). A CPU's units are read from its
feature flags, never timed (the machine's load must not decide), capped as oneDNN is by
ONEDNN_MAX_CPU_ISA, so one machine can stand in for the other classes (docs/reference-runs.md)."""

import contextlib
import os
import platform
from pathlib import Path

import torch

from course.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps (Apple silicon), then cpu; any other must be usable here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
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
    """ "AMD", "Intel" or "": from /proc/cpuinfo on Linux, else the platform's description."""
    cpuinfo = Path("/proc/cpuinfo")
    return vendor_named_in(cpuinfo.read_text(errors="replace") if cpuinfo.is_file() else platform.processor())


def vendor_named_in(text: str) -> str:
    """The maker a CPU description names: its CPUID vendor string first, then its brand."""
    names = (("AuthenticAMD", "AMD"), ("GenuineIntel", "Intel"), ("AMD ", "AMD"), ("Intel", "Intel"))
    return next((vendor for name, vendor in names if name in text), "")


def cpu_bfloat16_units() -> str | None:
    """The CPU's bfloat16 matmul instructions that beat float32 and that oneDNN may use:
    "AMX", "AVX512_BF16" (AMD only: Intel's run at float32's rate), or None."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "ALL").upper()
    # torch.cpu's feature queries are not public API yet: absent means no.
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if amx and (cap in ("ALL", "DEFAULT") or "AMX" in cap):
        return "AMX"
    if avx512_bf16 and cap not in ONEDNN_BELOW_BF16 and cpu_vendor() == "AMD":
        return "AVX512_BF16"
    return None


def fast_bfloat16(device: torch.device) -> bool:
    """Whether this device multiplies bfloat16 matrices natively (CUDA from Ampere on, some CPUs;
    not MPS, where bfloat16 was reported slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bfloat16_units() is not None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 where the device computes it natively, float16 on older CUDA GPUs, else float32."""
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
    """The number type for the setup line, and why: what `auto` found ("bfloat16: AMX"), or --dtype."""
    chosen = str(dtype).removeprefix("torch.")
    if name != "auto":
        return f"{chosen}, from --dtype"
    if device.type == "cpu":
        return f"{chosen}: {cpu_bfloat16_units() or 'no fast bfloat16 units'}"
    if device.type == "cuda":
        native = "native" if dtype == torch.bfloat16 else "no native bfloat16"
        return f"{chosen}: {native} on this GPU"
    return f"{chosen}: the default on {device.type}"


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """A block whose draws leave the CPU's and the device's generators as they were: torch.manual_seed
    seeds every device's, so a sample's seed would otherwise restart the device's dropout masks."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls on CUDA in TF32 (tensor cores, Ampere on): several times faster, precise enough."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


# Dense 16-bit peak FLOP/s per number type, for model FLOPs utilisation (MFU). The first key in the
# device's name wins: the PCIe and NVL cards (lower clocks) before the SXM ones their names contain.
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
    """The GPU's peak FLOP/s in `dtype`, or None (not a GPU, or not listed)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peaks = next((peaks for key, peaks in GPU_PEAK_FLOPS.items() if key in name), {})
    return peaks.get(str(dtype).removeprefix("torch."))


def memory_of(device: torch.device) -> int | None:
    """Bytes of memory a run on this device has at most: the GPU's own, else the machine's RAM
    (which Apple silicon's GPU shares); None where the system does not say (Windows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def usable_cpus() -> int:
    """The CPU cores this process may run on (a container or `taskset` may allow fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
