"""IEEE-754 storage formats: the bit patterns of float weights as codes.

A float weight in memory is a bit pattern too, and a bit error in it is an XOR like any
other; only the meaning of the bits differs. The code of a weight is its raw pattern as
a non-negative integer, index 0 = the least significant bit (as in every error model):

=========  ====  ====  ===========  ===========
format     bits  sign  exponent     mantissa
=========  ====  ====  ===========  ===========
float32    32    31    30 .. 23     22 .. 0
bfloat16   16    15    14 .. 7      6 .. 0
float16    16    15    14 .. 10     9 .. 0
=========  ====  ====  ===========  ===========

So ``protected=-1`` keeps the sign, and ``protected=`` the exponent positions
(`FloatFormat.exponent_bits`) keeps every flip out of the exponent, where one flip of
its highest bit turns a weight of 0.5 into about 1.7e38 (float32).

Codes are held as int32 (16-bit formats) or int64 (float32): the samplers flip any
bit of a wider signed integer but never its sign bit. Decoding gives float32 values
exactly (bfloat16 and float16 are subsets of float32); a flipped code may decode to
inf or NaN, which the forward computes with as the hardware would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mcel.registry import Registry


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-754 layout: ``bits`` wide, exponent at positions ``exponent[0]`` (lowest)
    to ``exponent[1]`` (highest), the sign at the top, the mantissa below."""

    name: str
    bits: int
    exponent: tuple[int, int]
    dtype: torch.dtype  # torch's type with these bits
    raw: torch.dtype  # the signed integer type of the same width, to view the bits as

    @property
    def sign_bit(self) -> int:
        return self.bits - 1

    @property
    def exponent_bits(self) -> tuple[int, ...]:
        """Bit positions of the exponent, LSB = 0 (for ``protected_bits``).

        >>> FLOAT_FORMATS.get("bfloat16").exponent_bits
        (7, 8, 9, 10, 11, 12, 13, 14)
        """
        return tuple(range(self.exponent[0], self.exponent[1] + 1))

    @property
    def mantissa_bits(self) -> tuple[int, ...]:
        return tuple(range(self.exponent[0]))


FLOAT_FORMATS: Registry[FloatFormat] = Registry("float format")
FLOAT_FORMATS.add("float32", FloatFormat("float32", 32, (23, 30), torch.float32, torch.int32))
FLOAT_FORMATS.add("bfloat16", FloatFormat("bfloat16", 16, (7, 14), torch.bfloat16, torch.int16))
FLOAT_FORMATS.add("float16", FloatFormat("float16", 16, (10, 14), torch.float16, torch.int16))


def float_code_dtype(bits: int) -> torch.dtype:
    """The code tensor's type: the samplers keep off the sign bit of their dtype, so
    16-bit patterns live in int32 and 32-bit ones in int64."""
    return torch.int32 if bits <= 16 else torch.int64


def float_codes(w: Tensor, fmt: str) -> Tensor:
    """``w`` rounded to ``fmt`` (round to nearest even, as ``w.to(dtype)``) as codes: its
    bit patterns as non-negative integers.

    >>> float_codes(torch.tensor([1.0, -2.0]), "bfloat16").tolist()  # 0x3F80, 0xC000
    [16256, 49152]
    """
    f = FLOAT_FORMATS.get(fmt)
    codes = w.detach().to(f.dtype).view(f.raw).to(float_code_dtype(f.bits))
    # widening sign-extends the pattern: mask it back to its own bits (in place)
    return codes.bitwise_and_((1 << f.bits) - 1)


def decode_float(codes: Tensor, fmt: str) -> Tensor:
    """Codes -> float32 values, exactly (inf and NaN included).

    >>> decode_float(torch.tensor([16256, 49152, 32640]), "bfloat16").tolist()
    [1.0, -2.0, inf]
    """
    f = FLOAT_FORMATS.get(fmt)
    half, full = 1 << (f.bits - 1), 1 << f.bits
    signed = torch.where(codes >= half, codes - full, codes)  # the pattern as f.raw reads it
    return signed.to(f.raw).view(f.dtype).to(torch.float32)


def list_float_formats() -> list[str]:
    return FLOAT_FORMATS.names()


__all__ = ["FLOAT_FORMATS", "FloatFormat", "float_code_dtype", "float_codes", "decode_float",
           "list_float_formats"]
