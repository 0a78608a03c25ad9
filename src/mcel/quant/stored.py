"""What a model stores: the layers whose weights the fault engine can flip.

Three kinds of layer hold weights that a memory would store, each a `WeightSource`:

* mcel's own quantized layers (`mcel.quant.layers`): codes in their scheme and number
  format;
* Brevitas layers (`mcel.quant.brevitas`, looked for only once ``brevitas`` has been
  imported: no model can hold one before): their integer weights, in the number format
  set with `set_format` (two's complement unless set);
* plain ``nn.Linear``/``nn.Conv2d`` layers, when the caller names an IEEE format
  (``weights="float32" | "bfloat16" | "float16"``): the bit patterns of the weights.

A source gives the stored form of a layer's weight and bias (codes + the float32 values
they mean) and makes the layer's forward read the values the engine hands it through
``layer.weight_override`` / ``layer.bias_override``: plain attributes that the state
dict never sees, so the engine never writes a parameter or buffer of any of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.quant import brevitas
from mcel.quant.core import QuantizedTensor, float_values, quantize_values
from mcel.quant.floats import FLOAT_FORMATS
from mcel.quant.layers import QUANT_LAYERS, refuse_bypassed
from mcel.registry import Registry

Stored = tuple[QuantizedTensor, Tensor]  # codes + the float32 values they hold


def _nothing(layer: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class WeightSource:
    """One kind of layer whose stored weights the engine flips. ``weight``/``bias`` take
    the layer and the float format asked for (None unless the caller named one)."""

    name: str
    accepts: Callable[[nn.Module], bool]
    weight: Callable[[nn.Module, str | None], Stored]
    bias: Callable[[nn.Module, str | None], Stored]
    attach: Callable[[nn.Module], None] = _nothing  # route the forward through the overrides
    detach: Callable[[nn.Module], None] = _nothing  # and back
    needs_weights: bool = False  # only stored when a float format is named


@dataclass(frozen=True)
class StoredLayer:
    name: str
    layer: nn.Module
    source: WeightSource
    weights: str | None = None  # the float format asked for, passed on to the source

    def weight(self) -> Stored:
        return self._read(self.source.weight)

    def bias(self) -> Stored:
        return self._read(self.source.bias)

    def _read(self, read: Callable[[nn.Module, str | None], Stored]) -> Stored:
        try:
            return read(self.layer, self.weights)
        except MCELError as e:  # a source says what is wrong; the name says where
            raise MCELError(f"{self.source.name} layer '{self.name}': {e}") from None


def bias_bits(layer) -> int:
    """Biases are stored as integers of the weights' width (8 bits for binary/ternary)."""
    return layer.bits if layer.scheme == "int" else 8


def _mcel_weight(layer, weights: str | None) -> Stored:
    # codes + values from one float buffer: no weight-sized temporaries
    return quantize_values(layer.weight, layer.bits, scheme=layer.scheme, fmt=layer.fmt,
                           granularity=layer.granularity, clip=layer.clip)


def _mcel_bias(layer, weights: str | None) -> Stored:
    return quantize_values(layer.bias, bias_bits(layer), fmt=layer.fmt)


# -- plain float layers ---------------------------------------------------------------

# Exact types: a subclass may not call its own forward (MultiheadAttention's out_proj
# is read by F.multi_head_attention_forward), and an override it never reads would
# count flips that change nothing.
_FLOAT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _override_forward(layer: nn.Module, x: Tensor) -> Tensor:
    w = layer.weight if layer.weight_override is None else layer.weight_override
    b = layer.bias if layer.bias_override is None else layer.bias_override
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    return layer._conv_forward(x, w, b)


def _float_attach(layer: nn.Module) -> None:
    layer.weight_override = None
    layer.bias_override = None
    # an instance attribute shadows the class's forward; deleting it brings that back
    layer.forward = functools.partial(_override_forward, layer)


def _float_detach(layer: nn.Module) -> None:
    for attr in ("forward", "weight_override", "bias_override"):
        layer.__dict__.pop(attr, None)


def _float_weight(layer, weights: str | None) -> Stored:
    return float_values(layer.weight, weights)


def _float_bias(layer, weights: str | None) -> Stored:
    return float_values(layer.bias, weights)


SOURCES: Registry[WeightSource] = Registry("weight source")
SOURCES.add("mcel", WeightSource("mcel", lambda m: isinstance(m, QUANT_LAYERS), _mcel_weight,
                                 _mcel_bias))
SOURCES.add("brevitas", WeightSource("brevitas", brevitas.is_layer, brevitas.stored_weight,
                                     brevitas.stored_bias, brevitas.attach, brevitas.detach))
SOURCES.add("float", WeightSource("float", lambda m: type(m) in _FLOAT_TYPES, _float_weight,
                                  _float_bias, _float_attach, _float_detach,
                                  needs_weights=True))


def check_float_format(weights: str | None) -> None:
    if weights is not None:
        FLOAT_FORMATS.get(weights)  # unknown -> one line with the valid names


def stored_layers(model: nn.Module, weights: str | None = None) -> list[StoredLayer]:
    """Every layer of ``model`` whose weights a memory holds, in module order, each with
    the source that takes it (mcel's layers, Brevitas' and, when ``weights`` names a float
    format, plain float layers: their types do not overlap).

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> stored_layers(net), [s.name for s in stored_layers(net, "bfloat16")]
    ([], ['0', '2'])
    """
    check_float_format(weights)
    sources = [s for s in map(SOURCES.get, SOURCES) if weights is not None or not s.needs_weights]
    found = []
    for name, module in model.named_modules():
        source = next((s for s in sources if s.accepts(module)), None)
        if source is not None:
            found.append(StoredLayer(name, module, source, weights))
    refuse_bypassed(model, [s.name for s in found if s.source.name == "float"],
                    float_storage=True)
    return found


def no_stored_layers_error() -> MCELError:
    return MCELError("the model has no quantized layers; quantize it first "
                     "(mcel.quantize_model, or mcel train --quant int4), or store its float "
                     "weights as they are: weights='float32' (or 'bfloat16', 'float16'; "
                     "mcel evaluate --weights)")


__all__ = ["WeightSource", "StoredLayer", "SOURCES", "stored_layers", "bias_bits",
           "check_float_format", "no_stored_layers_error"]
