"""Where training and the torch generator run: the device and the autocast precision."""
from __future__ import annotations

import torch

from gen.core.errors import GenError


def resolve_device(name: str) -> torch.device:
    """cpu, cuda[:N], or auto (cuda when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenError(f"unknown device {name!r}; use cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU was found"
        raise GenError(f"--device {name}: CUDA is not available ({build}); use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise GenError(f"unsupported device {name!r}; use cpu, cuda or auto")
    return device


def cpu_has_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast precision: bfloat16 where the hardware runs it natively, else float32.

    Weights, optimizer state and the loss stay float32 either way (autocast).
    """
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bfloat16() else torch.float32


def uses_math_attention(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether training runs attention through torch's math kernel instead of flash attention.

    On the CPU in bfloat16, torch's flash-attention kernel is slow (its backward took
    four times as long as the rest of a training step at block size 64); the math
    kernel is plain matmuls, which autocast runs in bfloat16, and a float32 softmax.
    """
    return device.type == "cpu" and dtype == torch.bfloat16
