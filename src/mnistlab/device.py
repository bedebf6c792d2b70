"""Where and in what arithmetic a model runs: device choice and precision, for training and inference alike.

Kept apart from training so that serving or evaluating a model never imports the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from mnistlab.errors import MnistlabError

Precision = Literal["fp32", "bf16"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise MnistlabError(f"`device` cuda: no CUDA GPU is available (torch {torch.__version__} is {build}); "
                            "use `device` cpu, or install a CUDA build of torch (README: GPU install)")
    if name not in ("cpu", "cuda"):
        raise MnistlabError(f"`device` {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16() -> bool:
    """True on GPUs whose tensor cores multiply bf16 (Ampere and newer).

    ``torch.cuda.is_bf16_supported()`` also says True where bf16 is only emulated (a T4, compute
    capability 7.5), and emulated bf16 is slower than fp32 there, so emulation does not count.
    """
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword
        return torch.cuda.get_device_capability()[0] >= 8


def resolve_precision(requested: str, device: torch.device) -> tuple[Precision, str | None]:
    """Map ``auto|fp32|bf16`` to what will run here, plus a note when a request cannot be honoured.

    bf16 autocast keeps fp32 master weights and runs matrix products and convolutions in bf16. It only
    pays where the hardware has bf16 units; elsewhere it is emulated and slower than fp32, so ``auto`` picks
    fp32 there and an explicit ``bf16`` falls back to fp32 with a note.
    """
    if requested == "fp32":
        return "fp32", None
    native = cuda_has_native_bf16() if device.type == "cuda" else cpu_has_native_bf16()
    if native:
        return "bf16", None
    if requested == "bf16":
        where = "this GPU" if device.type == "cuda" else "this CPU (no AVX512-BF16/AMX)"
        return "fp32", f"`precision` bf16: {where} has no native bf16, training in fp32 instead"
    return "fp32", None


def tune_cpu_allocator() -> None:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc hands blocks above 128 KiB back with munmap, so every step's multi-megabyte activations are
    page-faulted in again (measured: a fresh 8 MB tensor costs ~3x a reused one). Raising the mmap and trim
    thresholds makes them reusable. A no-op where glibc's ``mallopt`` is not available.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)   # glibc's maximum
    libc.mallopt(m_trim_threshold, 512 * 1024 * 1024)
