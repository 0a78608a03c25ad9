"""Quantization: number formats, quantizers, stored codes, quantized layers."""

from mcel.quant.attention import UnpackedMultiheadAttention, unpack_attention
from mcel.quant.core import (
    INT_BITS,
    QuantizedTensor,
    code_dtype,
    fake_quantize,
    parse_scheme,
    quantize,
    quantize_values,
    scheme_words,
    value_table,
)
from mcel.quant.formats import decode, encode, list_formats
from mcel.quant.layers import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    QuantSpec,
    auto_clip,
    clip_weights,
    layer_clip,
    quant_layers,
    quantize_model,
    set_format,
)

__all__ = [
    "INT_BITS", "QuantizedTensor", "code_dtype", "fake_quantize", "parse_scheme", "quantize",
    "quantize_values", "scheme_words",
    "value_table", "decode", "encode", "list_formats", "QuantConv1d", "QuantConv2d",
    "QuantConv3d", "QuantLinear",
    "QuantSpec", "quant_layers", "quantize_model", "set_format", "clip_weights",
    "layer_clip", "auto_clip", "UnpackedMultiheadAttention", "unpack_attention",
]
