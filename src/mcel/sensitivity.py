"""Which layers, and which bits, need protection: accuracy under bit errors confined to
one layer, or one group of layers, at a time, the rest of the model fault-free; or to
one bit position of every code at a time (`by_bit`).

A whole-model BER sweep says how much a model loses, not where: on a small ResNet the
few weights of the first convolution can cost as much as the millions of a wide
classifier. `by_layer` runs `mcel.evaluate.evaluate` once per group with the error
model's ``include`` set to that group, so every group sees the same kind of faults, the
same BERs, trials and fault seed (a memory map keeps every layer where it is).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from torch import Tensor

from mcel.errors import MCELError
from mcel.evaluate import EvalResult, evaluate
from mcel.quant.stored import no_stored_layers_error, stored_layers
from mcel.registry import names_shown


def layer_groups(model: nn.Module, groups: Sequence[str] | None = None, *,
                 weights: str | None = None) -> dict[str, list[str]]:
    """The stored layers of each group: ``groups`` are fnmatch patterns over layer names
    (``"layer1.*"``); None gives each stored layer a group of its own.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> layer_groups(net, weights="float32")
    {'0': ['0'], '2': ['2']}
    """
    names = [s.name for s in stored_layers(model, weights)]
    if not names:
        raise no_stored_layers_error()
    if groups is None:
        return {n: [n] for n in names}
    out = {}
    for g in groups:
        members = [n for n in names if fnmatch.fnmatchcase(n, g)]
        if not members:
            raise MCELError(f"layer group '{g}' matches no stored layer; the layers are: "
                            f"{names_shown(names)}")
        out[g] = members
    return out


def by_layer(model: nn.Module, x, y: Tensor | None, bers: Sequence[float], *,
             error_model=None, groups: Sequence[str] | None = None,
             **kwargs: Any) -> dict[str, EvalResult]:
    """`evaluate` with the faults confined to each group of ``layer_groups`` in turn;
    ``kwargs`` go to `evaluate` unchanged (``trials``, ``seed``, ``weights``, ...). The
    error model's ``exclude`` still applies; its ``include`` must be empty (the groups
    take its place).

    Returns {group: EvalResult}, in group order. The clean accuracy is the same in every
    result: only the faulty passes differ."""
    from mcel.faults import BitErrorModel

    em = error_model if error_model is not None else BitErrorModel(ber=0.0)
    if em.include:
        raise MCELError("by_layer confines the faults to each layer group itself: leave "
                        "include= out of the error model (exclude= still applies)")
    found = layer_groups(model, groups, weights=kwargs.get("weights"))
    return {g: evaluate(model, x, y, bers, dataclasses.replace(em, include=(g,)), **kwargs)
            for g in found}


def code_width(model: nn.Module, error_model=None, *, weights: str | None = None) -> int:
    """The bit width of the codes ``error_model`` reaches (one width: `by_bit` needs it)."""
    from mcel.engine import MemoryImage

    em = error_model if error_model is not None else _no_faults()
    image = MemoryImage(model, em, weights=weights)  # codes only: never entered
    widths = {qt.bits: name for name, qt in image.codes()
              if em.applies_to(name.rsplit(".", 1)[0],
                               "biases" if name.endswith(".bias") else "weights")}
    if not widths:
        raise MCELError("the error model reaches no stored tensor (check include/exclude)")
    if len(widths) > 1:
        shown = ", ".join(f"{b} bits ({n})" for b, n in sorted(widths.items()))
        raise MCELError(f"faults by bit position need one code width; the stored codes "
                        f"have {shown}: confine the faults with include=/exclude=")
    return next(iter(widths))


def by_bit(model: nn.Module, x, y: Tensor | None, bers: Sequence[float], *,
           error_model=None, **kwargs: Any) -> dict[str, EvalResult]:
    """`evaluate` with the faults confined to one bit position of every code at a time
    (the others protected), LSB first: which bits need protection (ECC on the high bits,
    say). The BER stays the rate of each exposed bit. The error model must not protect
    bits or give per-position rates itself; ``kwargs`` go to `evaluate`.

    Returns {"bit 0 (LSB)": EvalResult, ..., "bit k-1 (MSB)": ...}."""
    em = error_model if error_model is not None else _no_faults()
    if getattr(em, "protected_bits", ()) or getattr(em, "bit_rates", None) is not None:
        raise MCELError("by_bit exposes one bit position at a time itself: leave protected= "
                        "and bit_rates out of the error model")
    if not dataclasses.is_dataclass(em) or not hasattr(em, "protected_bits"):
        raise MCELError("by_bit needs a rate error model (ber, p01/p10, stuck_at), not a map")
    bits = code_width(model, em, weights=kwargs.get("weights"))
    out = {}
    for b in range(bits):
        label = f"bit {b}" + (" (MSB)" if b == bits - 1 and bits > 1 else
                              " (LSB)" if b == 0 and bits > 1 else "")
        shielded = tuple(p for p in range(bits) if p != b)
        out[label] = evaluate(model, x, y, bers,
                              dataclasses.replace(em, protected_bits=shielded), **kwargs)
    return out


def _no_faults():
    from mcel.faults import BitErrorModel

    return BitErrorModel(ber=0.0)


__all__ = ["by_layer", "by_bit", "code_width", "layer_groups"]
