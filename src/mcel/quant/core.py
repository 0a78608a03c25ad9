"""Quantizers and the stored form of a quantized tensor.

A quantized tensor is an integer code per element plus a float scale (per tensor or
per output channel). ``QuantizedTensor.codes`` holds exactly the bit patterns a memory
would store, as unsigned integers in ``[0, 2**bits)``; the error engine flips bits in
those codes and nothing else.

Schemes (the level sets):

* ``binary``: levels {-1, +1}, 1 bit, code 1 means +1; scale = mean |w| (XNOR-Net).
  The number format does not apply to a single bit.
* ``ternary``: levels {-1, 0, +1} stored as 2-bit integers in the chosen format;
  threshold ``0.7 * mean |w|``, scale = mean |w| above it (ternary weight networks).
* ``int``: symmetric uniform k-bit levels ``[-(2**(k-1)-1), 2**(k-1)-1]``,
  scale = max |w| / (2**(k-1)-1); k in 2..8 or 16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mcel.errors import MCELError
from mcel.quant.floats import FLOAT_FORMATS, decode_float, float_codes
from mcel.quant.formats import encode, get_format, level_table
from mcel.registry import Registry, did_you_mean

INT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
GRANULARITIES = ("tensor", "channel")
_TINY = 1e-12


def code_dtype(bits: int) -> torch.dtype:
    """Smallest dtype that holds ``bits``-wide codes and supports XOR everywhere."""
    return torch.uint8 if bits <= 8 else torch.int32


def _reduce_dims(x: Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "tensor" or x.dim() < 2:
        return tuple(range(x.dim()))
    return tuple(range(1, x.dim()))  # per output channel: dim 0 of Conv/Linear weights


def _mean_abs(x: Tensor, granularity: str) -> Tensor:
    return x.abs().mean(dim=_reduce_dims(x, granularity), keepdim=True)


def _abs_max(w: Tensor, granularity: str) -> Tensor:
    """``w.abs().amax(dims, keepdim=True)`` without a weight-sized ``abs`` temporary
    (max |w| = max(-min w, max w) exactly)."""
    if granularity == "tensor" or w.dim() < 2:
        lo, hi = torch.aminmax(w)
        return torch.maximum(-lo, hi).reshape([1] * w.dim())
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    return torch.maximum(-lo, hi).reshape([-1] + [1] * (w.dim() - 1))


def _levels_int(w: Tensor, bits: int, granularity: str,
                clip: float | None = None) -> tuple[Tensor, Tensor]:
    qmax = (1 << (bits - 1)) - 1
    # a clipped layer's range is fixed to the clip (Stutz et al.): its scale does not
    # follow the largest weight, so training cannot widen the steps a bit flip takes
    amax = _abs_max(w, granularity) if clip is None else torch.full(
        [1] * w.dim(), float(clip), dtype=w.dtype, device=w.device)
    scale = amax / qmax
    # amax / qmax can underflow to 0 for subnormal weights: then they quantize as zeros
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # in place after the first division: one weight-sized temporary instead of three
    return torch.div(w, scale).round_().clamp_(-qmax, qmax), scale


def _levels_binary(w: Tensor, bits: int, granularity: str,
                   clip: float | None = None) -> tuple[Tensor, Tensor]:
    scale = _mean_abs(w, granularity).clamp_min(_TINY)
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype), scale


def _levels_ternary(w: Tensor, bits: int, granularity: str,
                    clip: float | None = None) -> tuple[Tensor, Tensor]:
    dims = _reduce_dims(w, granularity)
    delta = 0.7 * _mean_abs(w, granularity)
    keep = (w.abs() > delta).to(w.dtype)
    count = keep.sum(dim=dims, keepdim=True)
    scale = (w.abs() * keep).sum(dim=dims, keepdim=True) / count.clamp_min(1)
    scale = torch.where(count > 0, scale, torch.ones_like(scale))
    return torch.sign(w) * keep, scale


@dataclass(frozen=True)
class Scheme:
    name: str
    # (w, bits, granularity, clip) -> (levels, scale); binary and ternary scales follow
    # mean |w| and ignore the clip (the clipped weights move them already)
    levels: Callable[..., tuple[Tensor, Tensor]]
    allowed_bits: tuple[int, ...]


SCHEMES: Registry[Scheme] = Registry("quantization scheme")
SCHEMES.add("int", Scheme("int", _levels_int, INT_BITS))
SCHEMES.add("binary", Scheme("binary", _levels_binary, (1,)))
SCHEMES.add("ternary", Scheme("ternary", _levels_ternary, (2,)))


def scheme_words() -> list[str]:
    """Every scheme word `parse_scheme` takes (the names a ``--quant`` flag lists).

    >>> scheme_words()[:4]
    ['float', 'binary', 'ternary', 'int2']
    """
    return ["float", "binary", "ternary"] + [f"int{b}" for b in INT_BITS]


def parse_scheme(word: str) -> tuple[str, int | None]:
    """A command-line scheme word -> (scheme, bits); ``float`` means no quantization.

    >>> parse_scheme("int4"), parse_scheme("binary"), parse_scheme("float")
    (('int', 4), ('binary', 1), ('float', None))
    """
    word = str(word).strip().lower()
    if word == "float":
        return "float", None
    if word in ("binary", "ternary"):
        return word, SCHEMES.get(word).allowed_bits[0]
    if word.startswith("int") and word[3:].isdigit() and int(word[3:]) in INT_BITS:
        return "int", int(word[3:])
    valid = scheme_words()
    hint = did_you_mean(word, valid)
    raise MCELError(f"unknown quantization '{word}'{hint}; valid: {', '.join(valid)}")


def check_bits(scheme: str, bits: int) -> None:
    allowed = SCHEMES.get(scheme).allowed_bits
    if bits not in allowed:
        raise MCELError(
            f"{scheme} quantization takes bits in {list(allowed)}, got {bits}"
        )


_TABLES: dict[tuple[str, int, str, torch.device], Tensor] = {}


def value_table(scheme: str, bits: int, fmt: str, device: torch.device) -> Tensor:
    """Float level of every possible code (cached): dequantization is a table lookup."""
    key = (scheme, bits, fmt, torch.device(device))
    if key not in _TABLES:
        table = torch.tensor([-1.0, 1.0]) if scheme == "binary" else level_table(bits, fmt)
        _TABLES[key] = table.to(device)
    return _TABLES[key]


_CHUNK = 1 << 16  # elements per encoding step: bounds its int64 temporaries to ~0.5 MiB


def levels_to_codes(levels: Tensor, scheme: str, bits: int, fmt: str) -> Tensor:
    """Float levels -> codes. Encoding works in int64, 8 bytes per weight, so it runs
    in chunks: a large layer's codes cost no more than the codes themselves."""
    if scheme == "binary":
        return (levels > 0).to(code_dtype(bits))
    codes = torch.empty(levels.shape, dtype=code_dtype(bits), device=levels.device)
    flat, out = levels.reshape(-1), codes.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start:start + _CHUNK]
        out[start:start + _CHUNK] = encode(part.long(), bits, fmt)
    return codes


@dataclass
class QuantizedTensor:
    """Stored form of a quantized tensor: ``value = table[codes] * scale``.

    ``codes`` are unsigned integers in ``[0, 2**bits)`` (uint8, or int32 for 16 bits),
    shaped like the original tensor; ``scale`` broadcasts against it. Scheme ``float``
    holds IEEE-754 patterns (``fmt`` a `mcel.quant.floats` format, scale 1): a code is
    decoded, not looked up.

    >>> qt = quantize(torch.tensor([1.5, -3.5, 0.5]), 4, fmt="sign_magnitude")
    >>> qt.codes.tolist(), qt.bits, qt.scale.item()
    ([3, 15, 1], 4, 0.5)
    >>> qt.dequantize()
    tensor([ 1.5000, -3.5000,  0.5000])
    """

    codes: Tensor
    scale: Tensor
    bits: int
    fmt: str = "twos_complement"
    scheme: str = "int"

    def table(self) -> Tensor:
        return value_table(self.scheme, self.bits, self.fmt, self.codes.device)

    def decode(self, codes: Tensor) -> Tensor:
        """The unscaled values of ``codes`` (some of this tensor's, or all)."""
        if self.scheme == "float":
            return decode_float(codes, self.fmt)
        return self.table()[codes.long()]

    def levels(self) -> Tensor:
        return self.decode(self.codes)

    def dequantize(self) -> Tensor:
        return self.levels() * self.scale

    def dequantize_at(self, index: Tensor) -> Tensor:
        """Values of the elements at flat positions ``index`` only (for sparse updates)."""
        vals = self.decode(self.codes.reshape(-1)[index])
        if self.scale.numel() == 1:
            return vals * self.scale.reshape(())
        per_channel = self.codes[0].numel()  # channel scales run along dim 0
        return vals * self.scale.reshape(-1)[index // per_channel]

    @property
    def numel_bits(self) -> int:
        return self.codes.numel() * self.bits

    def to(self, device: torch.device | str) -> QuantizedTensor:
        return QuantizedTensor(self.codes.to(device), self.scale.to(device), self.bits,
                               self.fmt, self.scheme)

    def clone(self) -> QuantizedTensor:
        return QuantizedTensor(self.codes.clone(), self.scale.clone(), self.bits, self.fmt,
                               self.scheme)


def quantize(
    tensor: Tensor,
    bits: int,
    *,
    scheme: str = "int",
    fmt: str = "twos_complement",
    granularity: str = "tensor",
    clip: float | None = None,
) -> QuantizedTensor:
    """Quantize a float tensor into codes + scale.

    Quantizing the dequantized tensor again gives the same codes. ``clip`` fixes the
    range of k-bit codes to ``[-clip, clip]`` (weights beyond it saturate).

    >>> w = torch.randn(8, 3)
    >>> qt = quantize(w, 8, granularity="channel")
    >>> torch.equal(quantize(qt.dequantize(), 8, granularity="channel").codes, qt.codes)
    True
    """
    return _quantize(tensor, bits, scheme=scheme, fmt=fmt, granularity=granularity,
                     clip=clip)[0]


def quantize_values(
    tensor: Tensor,
    bits: int,
    *,
    scheme: str = "int",
    fmt: str = "twos_complement",
    granularity: str = "tensor",
    clip: float | None = None,
) -> tuple[QuantizedTensor, Tensor]:
    """`quantize` plus the dequantized values, computed in the buffer that held the
    levels: the stored form of a layer costs one float copy of it, not two.

    >>> qt, values = quantize_values(torch.randn(4, 3), 4)
    >>> torch.equal(values, qt.dequantize())
    True
    """
    qt, levels = _quantize(tensor, bits, scheme=scheme, fmt=fmt, granularity=granularity,
                           clip=clip)
    # the value table holds exactly these levels; "+ 0" turns a rounded -0.0 into the
    # table's +0.0, so the values match dequantize() bit for bit
    return qt, levels.mul_(qt.scale).add_(0.0)


def _quantize(
    tensor: Tensor, bits: int, *, scheme: str, fmt: str, granularity: str,
    clip: float | None,
) -> tuple[QuantizedTensor, Tensor]:
    spec = SCHEMES.get(scheme)
    check_bits(scheme, bits)
    get_format(fmt)
    if granularity not in GRANULARITIES:
        raise MCELError(f"unknown granularity '{granularity}'; valid: {', '.join(GRANULARITIES)}")
    # contiguous: codes are addressed flat, in the parameter's logical order (a
    # channels_last weight, as bf16 training leaves it, would otherwise scramble them)
    w = tensor.detach().float().contiguous()
    levels, scale = spec.levels(w, bits, granularity, clip)
    if levels.data_ptr() == w.data_ptr():  # never hand out the caller's buffer to write
        levels = levels.clone()
    qt = QuantizedTensor(levels_to_codes(levels, scheme, bits, fmt), scale, bits, fmt, scheme)
    return qt, levels


def float_values(tensor: Tensor, fmt: str) -> tuple[QuantizedTensor, Tensor]:
    """The stored form of float weights in IEEE format ``fmt`` (codes: their bit
    patterns, scale 1) and the float32 values they hold (``tensor`` rounded to ``fmt``).

    >>> qt, values = float_values(torch.tensor([0.1, -3.0]), "float16")
    >>> qt.codes.tolist(), values.tolist()
    ([11878, 49664], [0.0999755859375, -3.0])
    """
    codes = float_codes(tensor, fmt)
    bits = FLOAT_FORMATS.get(fmt).bits
    qt = QuantizedTensor(codes, torch.ones((), device=codes.device), bits, fmt, "float")
    return qt, qt.dequantize()


def fake_quantize(w: Tensor, scheme: str, bits: int, granularity: str = "tensor", *,
                  clip: float | None = None) -> Tensor:
    """Quantize-dequantize with a straight-through estimator: the forward sees the
    quantized values, the backward passes the gradient to the latent float weights."""
    levels, scale = SCHEMES.get(scheme).levels(w.detach(), bits, granularity, clip)
    return w + (levels * scale - w).detach()
