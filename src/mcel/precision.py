"""Compute precision of the forward pass: fp32 (the default) or bf16 autocast.

bf16 changes only how the forward's matrix products and convolutions are computed
(``torch.autocast``): the latent weights, the quantizers' scales and codes, the loss,
the optimizer state and the checkpoints stay fp32. The stored codes a memory holds are
the same in both precisions; only activations and dequantized weights are rounded to
8 mantissa bits inside the forward.

bf16 pays only where the hardware has bf16 units: on x86 CPUs ``avx512_bf16`` or AMX
(oneDNN then runs the convolutions several times faster than fp32), on NVIDIA GPUs
Ampere and newer. Elsewhere it still runs, emulated, and is *slower* than fp32
(`bf16_native` tells which; the CLI warns).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mcel.errors import MCELError
from mcel.registry import did_you_mean

# name -> the autocast dtype (None: no autocast, plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
DEFAULT_PRECISION = "fp32"


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` inside the block and put back after (None:
    left as it is). Float sums on a CPU depend on the count, so a seed reproduces its
    numbers only at the same count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_precision(precision: str) -> str:
    """``precision`` if it is a known name, else one MCELError line."""
    if precision not in PRECISIONS:
        hint = did_you_mean(precision, PRECISIONS)
        raise MCELError(f"unknown precision '{precision}'{hint}; valid: "
                        f"{', '.join(PRECISIONS)}")
    return precision


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 in hardware (else autocast emulates it, slowly)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(
            including_emulation=False)
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_runs_on(precision: str, device: torch.device | str) -> None:
    """One MCELError line when ``device`` cannot run ``precision`` at all (a CUDA GPU
    without bf16, before Ampere); a CPU without bf16 units runs it emulated (see
    `slow_warning`)."""
    check_precision(precision)
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not bf16_native(device):
        raise MCELError("this GPU has no bfloat16 support (Ampere or newer has); use "
                        "--precision fp32")


def slow_warning(precision: str, device: torch.device | str) -> str | None:
    """A one-line warning when ``precision`` will run emulated, slower than fp32."""
    device = torch.device(device)
    if precision == "bf16" and device.type == "cpu" and not bf16_native(device):
        return ("this CPU has no bfloat16 units (avx512_bf16 / AMX): bf16 runs emulated "
                "and is several times slower than fp32 here; --precision fp32 is faster")
    return None


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """The forward pass at ``precision`` on ``device``; fp32 is a no-op."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def memory_format(precision: str, model: nn.Module) -> torch.memory_format:
    """channels_last for conv models in bf16 (oneDNN's bf16 kernels want NHWC: measured
    in benchmarks/bench_precision.py); fp32 keeps today's contiguous layout, bit for bit."""
    if precision != "fp32" and has_conv(model):
        return torch.channels_last
    return torch.contiguous_format


__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "check_precision", "bf16_native",
           "check_runs_on", "slow_warning", "autocast", "memory_format"]
