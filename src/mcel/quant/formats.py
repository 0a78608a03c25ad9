"""Number formats: how a signed integer level is laid out in a ``bits``-wide code.

A memory stores unsigned bit patterns (codes in ``[0, 2**bits)``); the format decides
which value each pattern means, and therefore what a flipped bit does to the value:

* ``twos_complement``: the MSB weighs ``-2**(bits-1)``; flipping it moves the value by
  half the range.
* ``sign_magnitude``: MSB is the sign, the rest the magnitude; flipping the sign bit
  only negates the value (and ``100..0`` reads as zero).
* ``offset_binary``: code = value + ``2**(bits-1)``; flipping the MSB moves the value by
  half the range, like two's complement, but the low bits count upward.

Symmetric quantizers use levels ``[-(2**(bits-1)-1), 2**(bits-1)-1]`` only, which all
three formats can hold, so encoding never saturates differently per format. Any code,
including ones only a bit flip can produce, decodes to a defined value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mcel.registry import Registry


@dataclass(frozen=True)
class NumberFormat:
    name: str
    encode: Callable[[Tensor, int], Tensor]  # int64 levels -> int64 codes in [0, 2**bits)
    decode: Callable[[Tensor, int], Tensor]  # int64 codes -> int64 levels


def _tc_encode(v: Tensor, bits: int) -> Tensor:
    return v & ((1 << bits) - 1)


def _tc_decode(c: Tensor, bits: int) -> Tensor:
    return torch.where(c >= (1 << (bits - 1)), c - (1 << bits), c)


def _sm_encode(v: Tensor, bits: int) -> Tensor:
    return torch.where(v < 0, (1 << (bits - 1)) | (-v), v)


def _sm_decode(c: Tensor, bits: int) -> Tensor:
    mag = c & ((1 << (bits - 1)) - 1)
    return torch.where(c >= (1 << (bits - 1)), -mag, mag)


def _ob_encode(v: Tensor, bits: int) -> Tensor:
    return v + (1 << (bits - 1))


def _ob_decode(c: Tensor, bits: int) -> Tensor:
    return c - (1 << (bits - 1))


FORMATS: Registry[NumberFormat] = Registry("number format")
FORMATS.add("twos_complement", NumberFormat("twos_complement", _tc_encode, _tc_decode))
FORMATS.add("sign_magnitude", NumberFormat("sign_magnitude", _sm_encode, _sm_decode))
FORMATS.add("offset_binary", NumberFormat("offset_binary", _ob_encode, _ob_decode))


def get_format(name: str) -> NumberFormat:
    return FORMATS.get(name)


def list_formats() -> list[str]:
    return FORMATS.names()


def encode(levels: Tensor, bits: int, fmt: str) -> Tensor:
    """Signed integer levels -> unsigned codes.

    >>> encode(torch.tensor([-1, 0, 1]), 4, "twos_complement").tolist()
    [15, 0, 1]
    >>> encode(torch.tensor([-1, 0, 1]), 4, "sign_magnitude").tolist()
    [9, 0, 1]
    >>> encode(torch.tensor([-1, 0, 1]), 4, "offset_binary").tolist()
    [7, 8, 9]
    """
    return get_format(fmt).encode(levels.long(), bits)


def decode(codes: Tensor, bits: int, fmt: str) -> Tensor:
    """Unsigned codes -> signed integer levels (int64).

    >>> decode(torch.tensor([8]), 4, "twos_complement").tolist()  # a flipped sign bit of 0
    [-8]
    >>> decode(torch.tensor([8]), 4, "sign_magnitude").tolist()   # "negative zero"
    [0]
    """
    return get_format(fmt).decode(codes.long(), bits)


def level_table(bits: int, fmt: str) -> Tensor:
    """The value of every possible code, as a float lookup table of length 2**bits."""
    return decode(torch.arange(1 << bits), bits, fmt).to(torch.float32)
