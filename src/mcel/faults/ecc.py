"""SEC-DED error correction over the stored words of a model (error-model key ``ecc=K``).

Memories that hold weights are often protected by a single-error-correcting,
double-error-detecting code: each word of ``K`` data bits carries ``r`` check bits
(``check_bits(K)``: 8 for 64, 7 for 32), and the decoder corrects any one faulty bit of
the ``K + r``. With ``ecc=K`` the model's stored bits are cut into words of ``K``
consecutive addresses (the address order of error maps and memory images: tensors one
after another, code ``i`` bit ``b`` at ``first + i * bits + b``), the check bits of a word
fail at the error model's mean per-bit rate, and:

- a word with exactly one faulty bit, data or check, reads back clean (corrected);
- a word with two or more keeps its data flips (detected, not corrected; a real decoder
  may miscorrect three or more into one more flipped bit, which is not modelled).

The check bits of a word are drawn only where the decision needs them (words with one
data flip), each from a uniform fixed by (seed, trial, word, check bit), so a check bit
that fails at a lower BER fails at every higher one: trials stay nested across BERs.
"""

from __future__ import annotations

import numpy as np
import torch

from mcel.faults.sampler import FlipMask


def check_bits(k: int) -> int:
    """Check bits of SEC-DED over ``k`` data bits: Hamming's ``r`` (``2**r >= k + r + 1``)
    plus one parity bit for double-error detection.

    >>> [check_bits(k) for k in (8, 16, 32, 64, 128)]
    [5, 6, 7, 8, 9]
    """
    r = 1
    while 2 ** r < k + r + 1:
        r += 1
    return r + 1


def bit_matrix(values: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of each integer, LSB first, as a (n, bits) 0/1 uint8 matrix
    (through the values' little-endian bytes: one byte per bit, never an int64)."""
    flat = values.reshape(-1)
    raw = flat.astype(flat.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    return np.unpackbits(raw.reshape(len(flat), flat.dtype.itemsize), axis=1,
                         bitorder="little")[:, :bits]


def _uniforms(seed: int, trial: int, words: np.ndarray, j: int) -> np.ndarray:
    """One uniform in [0, 1) per word for check bit ``j``: splitmix64 of the key."""
    mask = (1 << 64) - 1
    base = np.uint64(((seed * 0x9E3779B97F4A7C15) ^ (trial * 0xBF58476D1CE4E5B9)
                      ^ (j * 0x94D049BB133111EB) ^ 0xECC0ECC0ECC0ECC0) & mask)
    with np.errstate(over="ignore"):
        z = words.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _flip_addresses(first: int, bits: int, mask: FlipMask) -> tuple[np.ndarray, ...]:
    """(element row in the mask, bit position, address) of every flipped bit."""
    row, pos = np.nonzero(bit_matrix(mask.xor.cpu().numpy(), bits))
    index = mask.index.cpu().numpy()
    return row, pos, first + index[row] * bits + pos


def word_of(addresses: np.ndarray, k: int, ways: int = 1) -> np.ndarray:
    """The code word of each address: words of ``k`` consecutive addresses, or, with
    ``ways`` > 1, each block of ``k * ways`` addresses dealt to ``ways`` words in turn.

    >>> word_of(np.arange(8), 4).tolist(), word_of(np.arange(8), 4, ways=2).tolist()
    ([0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1])
    """
    block, offset = np.divmod(addresses, k * ways)
    return block * ways + offset % ways


def correct(masks: list[tuple[int, int, FlipMask]], *, k: int, rate: float, seed: int,
            trial: int, ways: int = 1) -> list[FlipMask]:
    """The flips that survive SEC-DED: ``masks`` are ``(first address, bits, mask)`` of
    each stored tensor, words as `word_of` deals them; returns one mask per input
    (possibly empty), in order."""
    found = [_flip_addresses(first, bits, m) for first, bits, m in masks]
    word_ids = [word_of(addr, k, ways) for _, _, addr in found]  # once per flip
    all_ids = np.concatenate(word_ids) if word_ids else np.zeros(0, np.int64)
    words, counts = np.unique(all_ids, return_counts=True)
    single = words[counts == 1]  # one data flip: corrected unless a check bit failed too
    failed = np.zeros(len(single), bool)
    for j in range(check_bits(k)):
        failed |= _uniforms(seed, trial, single, j) < rate
    corrected = single[~failed]
    out = []
    for (_, _, m), (row, pos, _), ids in zip(masks, found, word_ids):
        keep = ~np.isin(ids, corrected)
        out.append(_rebuild(m, row[keep], pos[keep]))
    return out


def _rebuild(mask: FlipMask, row: np.ndarray, pos: np.ndarray) -> FlipMask:
    """``mask`` with only the flipped bits (row, position) given."""
    index = mask.index.cpu().numpy()
    keep_rows, inverse = np.unique(row, return_inverse=True)
    xor = np.zeros(len(keep_rows), np.int64)
    np.bitwise_or.at(xor, inverse, np.left_shift(1, pos.astype(np.int64)))
    dev = mask.index.device
    return FlipMask(torch.from_numpy(index[keep_rows]).to(dev),
                    torch.from_numpy(xor).to(mask.xor.dtype).to(dev), int(len(row)),
                    mask.nbits_total)


__all__ = ["check_bits", "correct", "bit_matrix", "word_of"]
