"""Checks of what a user hands over, shared by training, evaluation and the commands.

Each raises one `MCELError` line for a mistake that would otherwise give a wrong number
without a word (a broadcast label vector, an error model that flips nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.quant.stored import stored_layers
from mcel.registry import names_shown

if TYPE_CHECKING:
    from mcel.faults import BitErrorModel


def ber_range_error(ber: float) -> str:
    """The message for a BER outside [0, 1]; a percentage gets the fraction it meant.

    >>> ber_range_error(2.0)
    'BER 2.0 is outside [0, 1]; BERs are fractions: did you mean 0.02 (2%)?'
    """
    hint = (f"; BERs are fractions: did you mean {ber / 100:g} ({ber:g}%)?"
            if 1 < ber <= 100 else "")
    return f"BER {ber} is outside [0, 1]{hint}"


def check_bers(bers) -> list[float]:
    """Bit error rates as a sorted list of distinct floats in [0, 1] (one number is a
    list of one), or one MCELError line."""
    if isinstance(bers, (int, float)):
        bers = [bers]
    try:
        bers = sorted(float(b) for b in bers)
    except (TypeError, ValueError):
        raise MCELError(f"bers must be a list of bit error rates, got {bers!r}") from None
    for b in bers:
        if not (0.0 <= b <= 1.0):  # also rejects NaN
            raise MCELError(ber_range_error(b))
    if len(set(bers)) != len(bers):
        raise MCELError(f"each BER once, please: got {bers}")
    return bers


def check_data(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, y)`` as tensors, or one MCELError line: ``y`` must be a 1-D integer tensor of
    non-negative labels, one per sample of ``x`` (``pred == y`` would otherwise broadcast
    into a wrong accuracy without a word)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() == 0 or len(x) == 0:
        raise MCELError("x holds no samples")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise MCELError(f"y must be a 1-D tensor of integer class labels, got shape "
                        f"{tuple(y.shape)} and dtype {y.dtype}")
    if len(y) != len(x):
        raise MCELError(f"x holds {len(x)} samples but y {len(y)} labels")
    if int(y.min()) < 0:
        raise MCELError(f"labels must be >= 0, got {int(y.min())}")
    return x, y


def check_labels_fit(max_label: int, logits: Tensor) -> None:
    """One MCELError line when a label has no output of the model to match."""
    if max_label >= logits.shape[1]:
        raise MCELError(f"label {max_label} is out of range for a model with "
                        f"{logits.shape[1]} outputs")


def check_targets(model: nn.Module, error_model: BitErrorModel,
                  weights: str | None = None) -> None:
    """One MCELError line when ``error_model`` would flip nothing in ``model``: its
    include/exclude patterns match none of the stored layers its targets name (an
    evaluation would report 'BER 1%' with not one fault); ``weights``: as `evaluate`'s."""
    names = [s.name for s in stored_layers(model, weights)]
    if names and not any(error_model.applies_to(n, t) for n in names
                         for t in error_model.targets):
        raise MCELError(f"the error model (include={list(error_model.include)}, "
                        f"exclude={list(error_model.exclude)}) matches no quantized layer; "
                        f"the layers are: {names_shown(names)}")


__all__ = ["ber_range_error", "check_bers", "check_data", "check_labels_fit", "check_targets"]
