"""Where stored bits live in a memory: bank, row, column and bit of every stored code.

A model's stored codes are packed densely, one tensor after another in `MemoryImage`
slot order (its layers in order, weights then targeted biases): stored bit ``k`` of the
model has the *address* ``k``. A memory of ``banks`` arrays of ``rows`` x ``row_words``
words of ``word_bits`` bits holds ``capacity`` bits; address ``a`` sits in word
``a // word_bits``, bit ``a % word_bits`` of it, and the words fill one row after
another (or go round the banks: ``bank_interleave``). With ``bit_interleave`` the bits
of one word are spread along the row (bit ``b`` of word column ``c`` in cell column
``b * row_words + c``, as SRAMs do so that a burst upsets one bit in several words
rather than several bits in one). Addresses past the capacity wrap round: a model
larger than the memory fills it again from the start.

Every function here is pure over integer index arrays; `cell_of` and `address_of` are
inverse bijections on ``range(capacity)``.

>>> lay = MemoryLayout(banks=2, rows=4, row_words=2, word_bits=8)
>>> lay.capacity
128
>>> [int(x[0]) for x in lay.locate(np.array([17]))]  # word 2 = row 1, column 0, bit 1
[0, 1, 0, 1]
>>> int(lay.address_of(lay.cell_of(np.array([17])))[0])
17
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcel.errors import MCELError


@dataclass(frozen=True)
class MemoryLayout:
    """The geometry of a memory and how a model's stored bits are spread over it."""

    banks: int = 1
    rows: int = 1024
    row_words: int = 32
    word_bits: int = 32
    bank_interleave: bool = False
    bit_interleave: bool = False

    def __post_init__(self) -> None:
        for name in ("banks", "rows", "row_words", "word_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise MCELError(f"{name}={v!r}; allowed: a positive integer")
            object.__setattr__(self, name, int(v))

    @property
    def row_bits(self) -> int:
        """Cell columns per row."""
        return self.row_words * self.word_bits

    @property
    def capacity(self) -> int:
        """Cells (bits) in the whole memory."""
        return self.banks * self.rows * self.row_bits

    @property
    def identity(self) -> bool:
        """Whether address and cell index coincide (no interleaving): a sorted list of
        cells is then a sorted list of addresses, with nothing to compute."""
        return not self.bit_interleave and (not self.bank_interleave or self.banks == 1)

    def locate(self, address: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(bank, row, column, bit)`` of each address: column counts words in the row,
        bit counts bits in the word (wrapping past the capacity)."""
        a = np.asarray(address, dtype=np.int64) % self.capacity
        word, bit = np.divmod(a, self.word_bits)
        per_bank = self.rows * self.row_words
        if self.bank_interleave:  # consecutive words go round the banks
            in_bank, bank = np.divmod(word, self.banks)
        else:
            bank, in_bank = np.divmod(word, per_bank)
        row, column = np.divmod(in_bank, self.row_words)
        return bank, row, column, bit

    def cell_of(self, address: np.ndarray) -> np.ndarray:
        """Flat cell index ``(bank * rows + row) * row_bits + cell column`` of each
        address, the index into an error map of shape ``(banks, rows, row_bits)``."""
        bank, row, column, bit = self.locate(address)
        if self.bit_interleave:
            col = bit * self.row_words + column
        else:
            col = column * self.word_bits + bit
        return (bank * self.rows + row) * self.row_bits + col

    def address_of(self, cell: np.ndarray) -> np.ndarray:
        """The address in ``range(capacity)`` stored in each flat cell (`cell_of`'s
        inverse)."""
        c = np.asarray(cell, dtype=np.int64)
        line, col = np.divmod(c, self.row_bits)
        bank, row = np.divmod(line, self.rows)
        if self.bit_interleave:
            bit, column = np.divmod(col, self.row_words)
        else:
            column, bit = np.divmod(col, self.word_bits)
        in_bank = row * self.row_words + column
        word = in_bank * self.banks + bank if self.bank_interleave else (
            bank * self.rows * self.row_words + in_bank)
        return word * self.word_bits + bit


def code_addresses(first: int, n_codes: int, bits: int) -> np.ndarray:
    """Addresses of the ``n_codes * bits`` stored bits of a tensor that starts at address
    ``first`` (code ``i``, bit ``b`` at ``first + i * bits + b``: LSB first, as the
    sampler numbers bit positions)."""
    return first + np.arange(n_codes * bits, dtype=np.int64)


def slot_addresses(stored: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """First address of each stored tensor ``(name, stored bits)``, one after another in
    the order given (a `MemoryImage`'s slot order)."""
    starts = np.concatenate([[0], np.cumsum([n for _, n in stored], dtype=np.int64)])
    return {name: int(a) for (name, _), a in zip(stored, starts)}


__all__ = ["MemoryLayout", "code_addresses", "slot_addresses"]
