"""Mixed precision: which compute type a fit uses, and the autocast context that applies it.

``auto`` trains in bfloat16 autocast where the hardware multiplies bfloat16 natively (CUDA
devices that support it; CPUs with AVX512-BF16 or AMX) and in float32 elsewhere. The weights,
the optimizer state and the loss stay in float32; only the matrix products run in bfloat16,
so no loss scaling is needed. fp16 needs a loss scaler and is left to Accelerate on CUDA.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from tunesmith.errors import ConfigError

Precision = Literal["auto", "no", "fp16", "bf16"]
# CPU flags of native bfloat16 dot products (Linux /proc/cpuinfo names).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (AVX512-BF16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype the loop autocasts to for ``precision`` on ``device``; None means float32.

    fp16 on CUDA returns None: Accelerate applies it (with its gradient scaler) instead.
    """
    kind = torch.device(device).type
    if precision == "no":
        return None
    if precision == "fp16":
        if kind != "cuda":
            raise ConfigError(
                f"mixed_precision='fp16' needs a CUDA device; this fit runs on {kind}",
                key="mixed_precision",
                hint="Use bf16 (or auto) on CPUs, or no",
            )
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if kind == "cuda":
            # Emulated bfloat16 (older GPUs) is slower than float32: only native units count.
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
        return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None
    raise ConfigError(
        f"unknown mixed_precision {precision!r}", key="mixed_precision", hint="Use auto, no, fp16 or bf16"
    )


def accelerate_precision(precision: str) -> str:
    """What to hand Accelerate: fp16 only (bf16 is applied by the loop's own autocast).

    Accelerate fixes its precision once per process; keeping it at "no" for bf16 lets later
    fits in the same process choose another precision.
    """
    return "fp16" if precision == "fp16" else "no"


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def attention_kernel(setting: str, device: torch.device | str, dtype: torch.dtype | None) -> str:
    """The text encoders' attention kernel for ``setting`` on ``device`` with autocast ``dtype``.

    On CPUs in bfloat16 the plain (eager) attention trains MiniLM faster than PyTorch's fused
    ``scaled_dot_product_attention``, whose backward pass took a quarter of a step at 27 tokens
    (1.60x against 1.27x over float32 with the fused kernel; see bench/README.md). In float32
    the fused kernel is the faster (eager 0.95x), so ``auto`` keeps it there and on GPUs.
    """
    if setting != "auto":
        return setting
    return "eager" if torch.device(device).type == "cpu" and dtype == torch.bfloat16 else "sdpa"
