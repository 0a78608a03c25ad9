"""Faults in stored codes: error models, exact nested samplers, sparse XOR masks.

>>> import torch
>>> from mcel.faults import FaultKey, inject, parse_error_model
>>> codes = torch.arange(256, dtype=torch.uint8)
>>> faulty = inject(codes, 8, parse_error_model("ber=0.1"), FaultKey(seed=1, trial=0))
>>> bool((faulty != codes).any())
True
"""

from mcel.faults.error_map import ErrorMap
from mcel.faults.error_model import (
    ERROR_MODELS,
    MODES,
    TARGETS,
    BitErrorModel,
    ErrorModel,
    error_model_from_dict,
    parse_error_model,
)
from mcel.faults.layout import MemoryLayout
from mcel.faults.sampler import (
    FaultKey,
    FlipMask,
    apply_mask_,
    inject,
    inject_,
    sample_mask,
)

# error-model kinds besides BitErrorModel ("bits"), by the spec key that starts their spec
ERROR_MODELS.add("map", ErrorMap)

__all__ = [
    "MODES",
    "TARGETS",
    "BitErrorModel",
    "ERROR_MODELS",
    "ErrorMap",
    "ErrorModel",
    "MemoryLayout",
    "error_model_from_dict",
    "FaultKey",
    "FlipMask",
    "apply_mask_",
    "inject",
    "inject_",
    "parse_error_model",
    "sample_mask",
]
