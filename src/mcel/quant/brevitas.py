"""Brevitas layers as stored weights (``pip install 'mcel[brevitas]'``).

A Brevitas ``QuantLinear``/``QuantConv2d`` knows its stored form: ``layer.quant_weight()``
is an ``IntQuantTensor`` whose ``int()`` are the integer levels, with ``scale``,
``zero_point`` and ``bit_width``. The engine stores those levels as codes in a number
format of mcel's own (two's complement unless `mcel.quant.set_format` chose another:
Brevitas does not say how a memory lays the integers out), flips bits there, and the
layer's forward reads the faulty values in place of Brevitas' quantized weight; input
and output quantizers run as before.

Supported: signed, symmetric (zero point 0) weights of 1 bit (binary: levels -1/+1,
code 1 = +1, as mcel's binary layers) to 8 bits, scaled per tensor or per output
channel. Nothing here imports Brevitas at import time: a model can only hold a
Brevitas layer once Brevitas is imported, and only then is it looked for.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.quant.core import QuantizedTensor, levels_to_codes, quantize_values
from mcel.quant.formats import decode, encode

MAX_BITS = 8
DEFAULT_FORMAT = "twos_complement"
# the Brevitas layers whose weights mcel reads; older releases lack some convs
_KINDS = ("QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d")


def is_layer(module: nn.Module) -> bool:
    """A Brevitas QuantLinear or QuantConv1d/2d/3d (False whenever Brevitas is not
    imported)."""
    if sys.modules.get("brevitas") is None:  # not imported (or blocked)
        return False
    import brevitas.nn as qnn

    kinds = tuple(getattr(qnn, k) for k in _KINDS if hasattr(qnn, k))
    return isinstance(module, kinds)


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if is_layer(m)]


def fmt_of(layer: nn.Module) -> str:
    return getattr(layer, "fmt", DEFAULT_FORMAT)


def _int_weight(layer: nn.Module):
    """(levels as float, scale, bits) of the layer's quantized weight, or one MCELError."""
    from brevitas.quant_tensor import IntQuantTensor

    q = layer.quant_weight()
    if not isinstance(q, IntQuantTensor):  # weight_quant=None, or a minifloat quantizer
        raise MCELError("its weights are not integers (weight_quant=None or a float "
                        "quantizer); mcel injects into integer weights (e.g. "
                        "Int8WeightPerTensorFloat)")
    bits = int(q.bit_width.item())
    if not 1 <= bits <= MAX_BITS:
        raise MCELError(f"its weights are {bits}-bit; mcel injects into Brevitas weights of "
                        f"1 to {MAX_BITS} bits")
    if not q.signed or bool((q.zero_point != 0).any()):
        raise MCELError("its weights are unsigned or have a zero point; mcel stores signed, "
                        "symmetric integer weights (e.g. Int8WeightPerTensorFloat)")
    scale = q.scale.detach().float()
    channels = q.value.shape[0]
    if scale.numel() not in (1, channels) or (scale.numel() > 1 and scale.shape[0] != channels):
        raise MCELError(f"its weight scale has shape {tuple(scale.shape)}; mcel takes one "
                        "scale per tensor or per output channel")
    return q.int().detach().float(), scale, bits


def stored_weight(layer: nn.Module, weights: str | None = None) -> tuple[QuantizedTensor, Tensor]:
    """The layer's integer weights as codes in its number format, and their values
    (``level * scale``, as Brevitas computes them)."""
    with torch.no_grad():
        levels, scale, bits = _int_weight(layer)
        fmt = fmt_of(layer)
        scheme = "binary" if bits == 1 else "int"
        if scheme == "int":
            ints = levels.long()
            lost = decode(encode(ints, bits, fmt), bits, fmt) != ints
            if bool(lost.any()):  # -2**(bits-1): a non-narrow range in sign-magnitude
                raise MCELError(f"its level {int(ints[lost][0])} does not fit {bits}-bit "
                                f"{fmt}; use a narrow-range weight quantizer or another "
                                "format (mcel.quant.set_format)")
        codes = levels_to_codes(levels, scheme, bits, fmt)
        qt = QuantizedTensor(codes, scale, bits, fmt, scheme)  # scale broadcasts as Brevitas'

        return qt, qt.dequantize()


def stored_bias(layer: nn.Module, weights: str | None = None) -> tuple[QuantizedTensor, Tensor]:
    """Biases as integers of the weights' width (8 bits beside binary weights), as for
    mcel's own layers."""
    bits = int(layer.quant_weight().bit_width.item())
    return quantize_values(layer.bias, 8 if bits == 1 else bits, fmt=fmt_of(layer))


def _swap(quantized, override: Tensor | None):
    """``override`` in the form Brevitas computed: a QuantTensor keeps its scale, zero
    point and bit width (faulty weights are levels of the same grid), so a layer that
    returns QuantTensors still can."""
    if override is None or quantized is None:
        return quantized if override is None else override
    from brevitas.quant_tensor import QuantTensor

    return quantized.set(value=override) if isinstance(quantized, QuantTensor) else override


def attach(layer: nn.Module) -> None:
    layer.weight_override = None
    layer.bias_override = None
    inner = type(layer).inner_forward_impl

    def inner_forward(x, quant_weight, quant_bias):
        """Brevitas' own inner forward with the engine's values in place of the quantized
        weight (and bias) where it has set them."""
        return inner(layer, x, _swap(quant_weight, layer.weight_override),
                     _swap(quant_bias, layer.bias_override))

    # an instance attribute shadows the class's method; deleting it brings that back
    layer.inner_forward_impl = inner_forward


def detach(layer: nn.Module) -> None:
    for attr in ("inner_forward_impl", "weight_override", "bias_override"):
        layer.__dict__.pop(attr, None)


__all__ = ["is_layer", "layers", "fmt_of", "stored_weight", "stored_bias", "attach", "detach",
           "MAX_BITS"]
