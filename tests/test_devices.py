"""Device and number type choices (course/devices.py), checked on any machine by
standing in for the GPU's answers."""

from __future__ import annotations

import pytest
import torch

from course import devices
from course.errors import UsageError


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU of the given name and bfloat16 support (native, emulated or none)."""

    def fake(name: str, bf16: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True: bf16 == "native" or (bf16 == "emulated" and including_emulation),
        )

    return fake


@pytest.mark.parametrize(
    "name, bf16, expected",
    [("NVIDIA A100-SXM4-80GB", "native", torch.bfloat16), ("Tesla T4", "emulated", torch.float16),
     ("Tesla V100-SXM2-16GB", "emulated", torch.float16)],
)  # fmt: skip
def test_auto_dtype_is_bfloat16_only_where_the_gpu_computes_in_it(gpu, name, bf16, expected):
    gpu(name, bf16)
    assert devices.resolve_dtype("auto", torch.device("cuda")) == expected, (
        f"{name}: bfloat16 only where it is native; an emulating GPU trains in float16 with a GradScaler"
    )


@pytest.mark.parametrize("amx", [True, False])
def test_auto_dtype_on_a_cpu_is_bfloat16_only_with_amx_matrix_units(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    expected = torch.bfloat16 if amx else torch.float32
    assert devices.resolve_dtype("auto", torch.device("cpu")) == expected, (
        "on a CPU, bfloat16 pays only with AMX matrix units; without them it is emulated, slower than float32"
    )


def test_bfloat16_is_refused_on_a_gpu_that_only_emulates_it(gpu):
    gpu("Tesla T4", "emulated")
    with pytest.raises(UsageError, match="does not compute in bfloat16.*use --dtype float16"):
        devices.resolve_dtype("bfloat16", torch.device("cuda"))


def test_peak_flops_are_per_number_type(gpu):
    gpu("Tesla V100-SXM2-16GB", "emulated")
    cuda = torch.device("cuda")
    assert devices.gpu_peak_flops(cuda, torch.float16) == 125e12
    assert devices.gpu_peak_flops(cuda, torch.bfloat16) is None, "a V100 has no bfloat16 peak"
    assert devices.gpu_peak_flops(cuda, torch.float32) is None
    gpu("NVIDIA H100 80GB HBM3", "native")
    assert devices.gpu_peak_flops(cuda, torch.bfloat16) == 989e12
    assert devices.gpu_peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_tf32_is_enabled_for_float32_matmuls_on_cuda_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        devices.enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest", "the CPU keeps full float32 matmuls"
        devices.enable_tf32(torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high", "CUDA float32 matmuls may use TF32"
    finally:
        torch.set_float32_matmul_precision(before)
