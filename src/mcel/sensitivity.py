"""Which layers need protection: accuracy under bit errors confined to one layer, or one
group of layers, at a time, the rest of the model fault-free.

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


__all__ = ["by_layer", "layer_groups"]
