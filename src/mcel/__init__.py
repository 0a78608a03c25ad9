"""mcel: margin cross-entropy loss and bit-error tolerance for quantized networks.

The losses load with the package; the rest of the public API is reachable from here
too, imported on first use (``mcel.quantize_model``, ``mcel.BitErrorModel``, the
submodules such as ``mcel.evaluate``), so that ``import mcel`` stays light. ``evaluate``
and ``train`` are modules here, as their functions share their names:
``mcel.evaluate.evaluate``, ``mcel.train.train``.
"""

from __future__ import annotations

import importlib
from typing import Any

from mcel.errors import MCELError
from mcel.losses import MCELoss, MHLoss, create_loss, mcel_loss, mhl_loss

__version__ = "0.1.0"

# name -> module it lives in, imported when first asked for
_LAZY = {
    "QuantSpec": "mcel.quant", "quantize_model": "mcel.quant", "quant_layers": "mcel.quant",
    "set_format": "mcel.quant",
    "BitErrorModel": "mcel.faults", "parse_error_model": "mcel.faults",
    "MemoryImage": "mcel.engine", "faults_during": "mcel.engine",
    "EvalResult": "mcel.evaluate",
    "create_model": "mcel.models", "load_dataset": "mcel.data",
    "TrainConfig": "mcel.config", "load_run": "mcel.runs",
    "output_margins": "mcel.analysis", "flip_certificate": "mcel.analysis",
    "tune_margin": "mcel.tuning",
}
_SUBMODULES = ("analysis", "data", "engine", "evaluate", "experiments", "faults", "losses",
               "models", "quant", "report", "train", "tuning")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"mcel.{name}")
    else:
        raise AttributeError(f"module 'mcel' has no attribute '{name}'")
    globals()[name] = value  # once is enough
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["MCELError", "MCELoss", "MHLoss", "create_loss", "mcel_loss", "mhl_loss",
           "__version__", *_LAZY]
