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
    [("NVIDIA A100-SXM4-80GB", "native", torch.bfloat16), ("NVIDIA H100 80GB HBM3", "native", torch.bfloat16),
     ("Tesla T4", "emulated", torch.float16), ("Tesla V100-SXM2-16GB", "emulated", torch.float16)],
)  # fmt: skip
def test_auto_dtype_is_bfloat16_only_where_the_gpu_computes_in_it(gpu, name, bf16, expected):
    gpu(name, bf16)
    assert devices.resolve_dtype("auto", torch.device("cuda")) == expected, (
        f"{name}: bfloat16 only where it is native; an emulating GPU trains in float16 with a GradScaler"
    )


@pytest.fixture
def cpu(monkeypatch):
    """A CPU of this vendor that reports these bfloat16 instructions, with oneDNN capped
    at `cap` (or not)."""

    def fake(amx: bool, avx512_bf16: bool, cap: str | None = None, vendor: str = "Intel") -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(devices, "cpu_vendor", lambda: vendor)
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)

    return fake


BF16, FP32 = torch.bfloat16, torch.float32
SLOW = "float32: no fast bfloat16 units"


@pytest.mark.parametrize(
    "machine, vendor, amx, avx512_bf16, cap, expected, reason",
    [
        ("Xeon with AMX", "Intel", True, True, None, BF16, "bfloat16: AMX"),
        ("AMD EPYC or Ryzen, Zen 4/5", "AMD", False, True, None, BF16, "bfloat16: AVX512_BF16"),
        ("Xeon Cooper Lake (BF16, no AMX)", "Intel", False, True, None, FP32, SLOW),
        ("AVX2-only Intel", "Intel", False, False, None, FP32, SLOW),
        ("AVX2-only AMD (Zen 2/3)", "AMD", False, False, None, FP32, SLOW),
        ("Xeon, oneDNN capped below AMX", "Intel", True, True, "AVX512_CORE_BF16", FP32, SLOW),
        ("Xeon, oneDNN capped below BF16", "Intel", True, True, "avx512_core", FP32, SLOW),
        ("EPYC, oneDNN capped at AVX512_CORE", "AMD", False, True, "AVX512_CORE", FP32, SLOW),
        ("EPYC, oneDNN capped at AVX2", "AMD", False, True, "AVX2", FP32, SLOW),
        ("EPYC, oneDNN cap at the default", "AMD", False, True, "DEFAULT", BF16, "bfloat16: AVX512_BF16"),
        ("Xeon, oneDNN cap at the default", "Intel", True, True, "DEFAULT", BF16, "bfloat16: AMX"),
        ("unknown vendor, BF16 only", "", False, True, None, FP32, SLOW),
    ],
)
def test_auto_dtype_on_a_cpu_is_bfloat16_where_its_bfloat16_instructions_are_fast(
    cpu, machine, vendor, amx, avx512_bf16, cap, expected, reason
):
    cpu(amx, avx512_bf16, cap, vendor)
    device = torch.device("cpu")
    dtype = devices.resolve_dtype("auto", device)
    assert dtype == expected, (
        f"{machine}: bfloat16 where the CPU (as oneDNN may use it) has AMX, or AVX512_BF16 on AMD; "
        f"float32 where bfloat16 would be emulated or no faster; got {dtype}"
    )
    assert devices.describe_dtype("auto", device, dtype) == reason, "the setup line says why"


@pytest.mark.parametrize(
    "description, vendor",
    [
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel name\t: AMD EPYC 9B45", "AMD"),
        ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C", "Intel"),
        ("Intel64 Family 6 Model 143 Stepping 8, GenuineIntel", "Intel"),  # Windows, an Intel CPU
        ("AMD64 Family 25 Model 97 Stepping 2, AuthenticAMD", "AMD"),  # Windows, an AMD CPU
        ("arm", ""),  # macOS on Apple silicon
    ],
)
def test_the_cpu_vendor_is_read_from_its_description(description, vendor):
    assert devices.vendor_named_in(description) == vendor


def test_an_explicit_dtype_is_kept_and_named_as_asked(cpu):
    cpu(amx=False, avx512_bf16=False)
    device = torch.device("cpu")
    assert devices.resolve_dtype("bfloat16", device) == torch.bfloat16, (
        "--dtype bfloat16 is the learner's call"
    )
    assert devices.describe_dtype("bfloat16", device, torch.bfloat16) == "bfloat16, from --dtype"


def test_auto_dtype_on_apple_mps_is_float32():
    mps = torch.device("mps")
    assert devices.resolve_dtype("auto", mps) == torch.float32, (
        "MPS keeps float32 until bfloat16 is measured there"
    )
    assert devices.describe_dtype("auto", mps, torch.float32) == "float32: the default on mps"


def test_the_setup_line_names_why_a_gpu_got_its_type(gpu):
    cuda = torch.device("cuda")
    gpu("NVIDIA H100 80GB HBM3", "native")
    assert devices.describe_dtype("auto", cuda, torch.bfloat16) == "bfloat16: native on this GPU"
    gpu("Tesla T4", "emulated")
    assert devices.describe_dtype("auto", cuda, torch.float16) == "float16: no native bfloat16 on this GPU"


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


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA H100 NVL", 835e12),
     ("NVIDIA H100 PCIe", 756e12)],
)  # fmt: skip
def test_the_nvl_and_pcie_cards_have_their_own_peak(name, peak, gpu):
    """Their names contain the SXM card's: the more specific entry must win."""
    gpu(name, "native")
    assert devices.gpu_peak_flops(torch.device("cuda"), torch.bfloat16) == peak


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


# --- the MPS generator, stood in for where there is no Apple GPU -------------------------


@pytest.fixture
def fake_mps(monkeypatch):
    """An MPS generator whose state is one number: torch.manual_seed seeds it, and the
    functions PyTorch uses to read and write it read and write that number."""

    class Generator:
        state = 12345

    generator = Generator()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: setattr(generator, "state", seed))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": torch.tensor([generator.state]))
    monkeypatch.setattr(
        torch.mps, "set_rng_state", lambda state, device="mps": setattr(generator, "state", int(state[0]))
    )
    return generator


def test_a_forked_block_leaves_the_mps_generator_as_it_was(fake_mps):
    """Sampling at each evaluation seeds itself; on MPS that seed must not restart the
    dropout masks of the training that follows."""
    with devices.forked_rng(torch.device("mps")):
        torch.manual_seed(0)
        assert fake_mps.state == 0, "the stand-in is not seeded by torch.manual_seed"
    assert fake_mps.state == 12345, "the MPS generator was not forked: the block's seed outlived it"


def test_a_checkpoint_keeps_the_mps_generator(fake_mps):
    from course.checkpoints import capture_rng_state, restore_rng_state

    saved = capture_rng_state()
    fake_mps.state = 999  # the run goes on, then stops; a resume restores the saved state
    restore_rng_state(saved)
    assert fake_mps.state == 12345, "the MPS generator's state is not in the checkpoint"
