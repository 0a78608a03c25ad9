"""Sample which stored bits go wrong, as a sparse XOR mask, and apply / undo it.

Codes are integer tensors holding exactly the bit patterns a memory holds (uint8 for
up to 8 bits, int32 for 16 bits, ...). Bit position ``k = flat_code_index * bits + b``
with ``b = 0`` the least significant bit. Every fault is an XOR: a flip XORs a 1 in,
a stuck cell XORs in ``stuck_value ^ stored_bit``. So a mask applied twice restores the
codes bit-exactly, and injection never copies a model.

Randomness is drawn on the CPU (numpy PCG64) from a `SeedSequence` of
``(seed, trial, crc32(name), stream, step)`` and only the resulting indices move to
the codes' device: the same key gives the same mask on CPU and CUDA. Flips come from
the height ladder (`mcel.faults.ladder`): exact i.i.d. per-bit rates, cost proportional
to the number of flips, and nested across rates for one key. Where a C compiler exists,
`mcel.faults.native` draws the flips with the same streams in compiled code (identical
masks, about twice as fast); stuck cells and rates above 1/16 always use numpy.

>>> codes = torch.zeros(1000, dtype=torch.uint8)
>>> mask = inject_(codes, 8, BitErrorModel(ber=0.01), FaultKey(seed=0, trial=1))
>>> int(torch.sum(codes != 0)) == mask.index.numel() > 0
True
>>> _ = apply_mask_(codes, mask); int(codes.count_nonzero())
0
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from mcel.errors import MCELError
from mcel.faults import native
from mcel.faults.error_model import BitErrorModel, DrawnModel
from mcel.faults.ladder import TimeFn, rate_time, sample_ladder, unique_sorted

# Independent random streams per key: (marks, heights) of flips, then of stuck cells.
_FLIPS, _STUCK = (0, 1), (2, 3, 4)

# Widest code each integer dtype holds without touching its sign bit.
_MAX_BITS = {torch.uint8: 8, torch.int16: 15, torch.int32: 31, torch.int64: 62}
_NP_DTYPE = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}
_NP_DTYPE[torch.int64] = np.int64


@dataclass(frozen=True)
class FaultKey:
    """Names one random draw: ``(seed, trial, tensor name)``, plus ``step`` for
    transient faults (redrawn at every forward: use the forward counter)."""

    seed: int
    trial: int = 0
    name: str = ""
    step: int = 0

    def __post_init__(self) -> None:
        for f in ("seed", "trial", "step"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise MCELError(f"{f}={v!r}; allowed: a non-negative integer")
            object.__setattr__(self, f, int(v))
        if not isinstance(self.name, str):
            raise MCELError(f"name={self.name!r} must be a string")

    @classmethod
    def coerce(cls, key: FaultKey | int) -> FaultKey:
        """A `FaultKey` as is; a plain int ``s`` means ``FaultKey(seed=s, trial=0)``."""
        return key if isinstance(key, FaultKey) else cls(seed=key)

    def rng(self, stream: int) -> np.random.Generator:
        """The numpy generator of one stream of this key (CPU, platform independent)."""
        crc = zlib.crc32(self.name.encode("utf-8"))
        ss = np.random.SeedSequence([self.seed, self.trial, crc, stream, self.step])
        return np.random.Generator(np.random.PCG64(ss))

    def words(self, stream: int, n: int) -> np.ndarray:
        """``n`` uint64 words of one stream of this key: seeds for many generators at
        once, without building each one (`np.random.SeedSequence.generate_state`)."""
        crc = zlib.crc32(self.name.encode("utf-8"))
        ss = np.random.SeedSequence([self.seed, self.trial, crc, stream, self.step])
        return ss.generate_state(n, np.uint64)

    def rngs(self, streams: tuple[int, ...]) -> tuple[np.random.Generator, ...]:
        return tuple(self.rng(s) for s in streams)


@dataclass(frozen=True, eq=False)
class FlipMask:
    """Sparse XOR mask: ``codes.view(-1)[index] ^= xor``.

    ``index``: unique flat code indices (int64, on the codes' device); ``xor``: per
    code, the OR of its flipped bits (codes' dtype); ``nbits_flipped`` of
    ``nbits_total`` stored bits actually change.
    """

    index: torch.Tensor
    xor: torch.Tensor
    nbits_flipped: int
    nbits_total: int

    @property
    def empirical_rate(self) -> float:
        """Fraction of stored bits this mask changes."""
        return self.nbits_flipped / self.nbits_total if self.nbits_total else 0.0


def _check_codes(codes: torch.Tensor, bits: int) -> int:
    limit = _MAX_BITS.get(codes.dtype)
    if limit is None:
        raise MCELError(f"codes have dtype {codes.dtype}; allowed: {list(_MAX_BITS)}")
    ok = isinstance(bits, (int, np.integer)) and not isinstance(bits, bool)
    if not ok or not 1 <= bits <= limit:
        raise MCELError(f"bits={bits!r} does not fit {codes.dtype} codes; allowed: 1..{limit}")
    if not codes.is_contiguous():
        raise MCELError("codes must be contiguous (faults are applied in place on a flat view)")
    return int(bits)


def _split(pos: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Bit positions -> (flat code index, bit index); shifts when bits is a power of 2."""
    if bits & (bits - 1) == 0:
        shift = bits.bit_length() - 1
        return pos >> shift, pos & (bits - 1)
    return np.divmod(pos, bits)


def _stored_bits(flat: torch.Tensor, pos: np.ndarray, bits: int) -> np.ndarray:
    """The stored value (0/1) of each bit position ``pos``."""
    return _bits_at(flat, *_split(pos, bits))


def _bits_at(flat: torch.Tensor, idx: np.ndarray, bit: np.ndarray) -> np.ndarray:
    if flat.device.type == "cpu":
        vals = flat.numpy()[idx]
    else:  # gather on the device, bring back only the few codes needed
        index = torch.from_numpy(idx.astype(np.int64)).to(flat.device)
        vals = flat[index].cpu().numpy()
    return (vals >> bit.astype(vals.dtype)) & 1


def _time_fn(rates: _Rates, flat: torch.Tensor, bits: int) -> TimeFn | None:
    """Per-bit time thresholds ``t(rate)`` of bit positions, by table lookup (the
    tables of `_rates`); None when it is one rate outside protected bits (the ladder's
    fast path; protected positions are dropped afterwards)."""
    table = rates.table
    if rates.mode == 0:
        return None
    if rates.mode == 1:
        return lambda p: table[_split(p, bits)[1]]

    def asymmetric(p: np.ndarray) -> np.ndarray:  # the rate depends on the stored bit
        idx, bit = _split(p, bits)
        return table[_bits_at(flat, idx, bit) * bits + bit]

    return asymmetric


def _override(pos: np.ndarray, cells: np.ndarray, differs: np.ndarray) -> np.ndarray:
    """A stuck cell reads its stuck value whatever else happened to it: drop flips at
    stuck ``cells``, add the stuck cells whose value ``differs`` (all sorted, unique)."""
    if cells.size and pos.size:
        i = np.minimum(np.searchsorted(cells, pos), cells.size - 1)
        pos = np.compress(cells[i] != pos, pos)
    return np.sort(np.concatenate([pos, differs]))  # disjoint, so still unique


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit mixer whose output
    bits pass BigCrush for counter inputs; uint64 arithmetic wraps mod 2^64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mask_from_positions(pos: np.ndarray, bits: int, codes: torch.Tensor) -> FlipMask:
    """Sorted unique bit positions -> per-code XOR words."""
    nbits_total = codes.numel() * bits
    grouped = native.group_bits(pos, bits, _NP_DTYPE[codes.dtype]) if pos.size else None
    if pos.size == 0:
        idx, xor = np.empty(0, np.int64), np.empty(0, np.int64)
    elif grouped is not None:
        idx, xor = grouped
    else:
        code, bit = _split(pos, bits)
        first = np.empty(code.size, dtype=bool)
        first[0] = True
        np.not_equal(code[1:], code[:-1], out=first[1:])
        start = np.flatnonzero(first)
        idx = code[start]
        # the bits set in one code are distinct, so OR = XOR = sum of 1 << b
        xor = np.bitwise_or.reduceat(np.left_shift(1, bit), start)
    dev = codes.device
    return FlipMask(
        index=torch.from_numpy(idx).to(dev),
        xor=torch.from_numpy(xor.astype(_NP_DTYPE[codes.dtype])).to(dev),  # numpy casts faster
        nbits_flipped=int(pos.size),
        nbits_total=nbits_total,
    )


def sample_mask(
    codes: torch.Tensor,
    bits: int,
    error_model: BitErrorModel | DrawnModel,
    *,
    seed: int,
    trial: int,
    name: str = "",
    step: int = 0,
) -> FlipMask:
    """The faults of one draw for ``codes`` (which are read, not changed).

    Bit ``i`` with stored value ``s`` flips iff its ladder height ``u_i`` is below
    ``rate[s][i % bits]`` (see `BitErrorModel.rate_tables`); the ladder is sampled up
    to the largest rate and thinned per bit, so asymmetric and per-position models are
    exact and nested too. Stuck cells (own streams, nested in ``stuck_at`` the same way)
    override flips: they read their stuck value, i.e. XOR in ``stuck_value ^ stored``.
    With ``stuck_value=None`` a cell's value is a fair coin fixed by (key, cell):
    SplitMix64 of the cell index salted from the key, so it never changes with the rate.
    """
    return _sample(codes, bits, error_model, FaultKey(seed, trial, name, step), apply=False)


def _sample(
    codes: torch.Tensor, bits: int, error_model: BitErrorModel | DrawnModel, key: FaultKey,
    *, apply: bool
) -> FlipMask:
    """`sample_mask`; with ``apply`` the mask is also XORed into ``codes``."""
    bits = _check_codes(codes, bits)
    if not isinstance(error_model, BitErrorModel):  # a kind that draws its own positions
        mask = _mask_from_positions(error_model.fault_positions(codes, bits, key), bits, codes)
        if apply:
            apply_mask_(codes, mask)
        return mask
    n = codes.numel() * bits
    flat = codes.view(-1)
    rates = _rates(error_model, bits)
    prot, top = rates.prot, rates.top
    if top > 0.0 and not error_model.stuck_at and error_model.burst == 1:
        mask = _native_flips(flat, bits, key, rates, apply=apply)
        if mask is not None:
            return mask
    pos = np.empty(0, np.int64)
    if top > 0.0:
        if error_model.burst > 1:  # uniform rate only (the model checks): starts, then bits
            time_of, pos = None, _burst_positions(key, n, top, error_model.burst)
        else:
            time_of = _time_fn(rates, flat, bits)
            pos = sample_ladder(*key.rngs(_FLIPS), n, top, time_of=time_of)
        if time_of is None and prot.any():  # uniform: drop protected positions after
            pos = np.compress(~prot[pos % bits], pos)
    if error_model.stuck_at:
        cells = sample_ladder(*key.rngs(_STUCK[:2]), n, error_model.stuck_at)
        cells = np.compress(~prot[cells % bits], cells)
        value: int | np.ndarray
        if error_model.stuck_value is None:  # a fair coin per cell, fixed by (key, cell)
            salt = np.uint64(key.rng(_STUCK[2]).bit_generator.random_raw())
            value = (_splitmix64(cells.astype(np.uint64) ^ salt) >> np.uint64(63)).astype(np.int64)
        else:
            value = error_model.stuck_value
        differs = np.compress(_stored_bits(flat, cells, bits) != value, cells)
        pos = _override(pos, cells, differs)
    mask = _mask_from_positions(pos, bits, codes)
    if apply:
        apply_mask_(codes, mask)
    return mask


def _burst_positions(key: FaultKey, n: int, ber: float, length: int) -> np.ndarray:
    """Bits of ``range(n)`` hit by bursts of ``length`` adjacent bits. Starts are ladder
    hits at ``q = 1 - (1 - ber) ** (1 / length)`` over ``n + length - 1`` positions,
    shifted back by ``length - 1``: the tensor sees the bursts of an endless memory cut
    to its own bits, so each of its bits is hit with probability exactly ``ber`` (no
    edge effect), and starts, hence bursts, stay nested across BERs."""
    q = float(-np.expm1(np.log1p(-ber) / length)) if ber < 1.0 else 1.0
    starts = sample_ladder(*key.rngs(_FLIPS), n + length - 1, q) - (length - 1)
    pos = (starts[:, None] + np.arange(length)).reshape(-1)
    return unique_sorted(pos[(pos >= 0) & (pos < n)])


@dataclass(frozen=True)
class _Rates:
    """What the sampler needs of a model at one code width, worked out once: the
    protected positions, the rate tables, the top rate, and the native kernel's mode
    (0: one rate, 1: per position, 2: per stored value), time table and protected
    bitmask."""

    prot: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    top: float
    mode: int
    table: np.ndarray | None
    bitmask: int


@functools.lru_cache(maxsize=256)
def _rates(error_model: BitErrorModel, bits: int) -> _Rates:
    prot = error_model.protected_mask(bits)
    r0, r1 = error_model.rate_tables(bits)  # protected positions already at rate 0
    top = float(max(r0.max(), r1.max()))
    if np.array_equal(r0, r1):
        uniform = bool(np.all(r0[~prot] == r0.max()))
        mode, table = (0, None) if uniform else (1, rate_time(r0))
    else:  # the rate depends on the stored bit, which the kernel reads from the codes
        mode, table = 2, np.concatenate([rate_time(r0), rate_time(r1)])
    bitmask = sum(1 << int(b) for b in np.flatnonzero(prot)) if mode == 0 else 0
    for a in (prot, r0, r1) + ((table,) if table is not None else ()):
        a.flags.writeable = False  # shared by every draw of this model
    return _Rates(prot, r0, r1, top, mode, table, bitmask)


def reads_codes(error_model: BitErrorModel | DrawnModel, bits: int) -> bool:
    """Whether a draw for ``bits``-wide codes reads the stored bits (asymmetric rates,
    stuck cells): only then can a mask not be drawn again after it changed them."""
    if not isinstance(error_model, BitErrorModel):
        return error_model.reads_codes(bits)
    return bool(error_model.stuck_at) or _rates(error_model, bits).mode == 2


def _native_flips(
    flat: torch.Tensor, bits: int, key: FaultKey, rates: _Rates, *, apply: bool
) -> FlipMask | None:
    """The flips by the native kernel (`mcel.faults.native`), bit-identical to the numpy
    path; None where it does not apply (then the caller samples in numpy)."""
    on_cpu = flat.device.type == "cpu"
    if not on_cpu and rates.mode == 2:
        return None
    host = flat.numpy() if on_cpu else np.empty(0, _NP_DTYPE[flat.dtype])
    out = native.ladder_mask(*key.rngs(_FLIPS), flat.numel() * bits, rates.top, mode=rates.mode,
                             table=rates.table, prot=rates.bitmask, codes=host, bits=bits,
                             apply=apply and on_cpu)
    if out is None:
        return None
    idx, xor, nbits = out
    mask = FlipMask(index=torch.from_numpy(idx).to(flat.device),
                    xor=torch.from_numpy(xor).to(flat.device),
                    nbits_flipped=nbits, nbits_total=flat.numel() * bits)
    if apply and not on_cpu:
        apply_mask_(flat, mask)
    return mask


def apply_mask_(codes: torch.Tensor, mask: FlipMask) -> torch.Tensor:
    """XOR ``mask`` into ``codes`` in place and return them; applying it again undoes it."""
    if mask.xor.dtype != codes.dtype:
        raise MCELError(f"mask is for {mask.xor.dtype} codes, got {codes.dtype}")
    if not codes.is_contiguous():
        raise MCELError("codes must be contiguous (faults are applied in place on a flat view)")
    # indices are unique, so gather -> xor -> scatter touches each code once
    if codes.device.type == "cpu":  # single-threaded: no OpenMP start-up per call
        flat, idx, xor = codes.numpy().reshape(-1), mask.index.cpu().numpy(), mask.xor.cpu().numpy()
        if not native.xor_(flat, idx, xor):
            flat[idx] ^= xor
    else:
        codes.view(-1)[mask.index.to(codes.device)] ^= mask.xor.to(codes.device)
    return codes


def inject_(
    codes: torch.Tensor, bits: int, error_model: BitErrorModel | DrawnModel,
    generator: FaultKey | int,
) -> FlipMask:
    """Sample the faults for key ``generator`` and XOR them into ``codes`` in place."""
    return _sample(codes, bits, error_model, FaultKey.coerce(generator), apply=True)


def inject(
    codes: torch.Tensor, bits: int, error_model: BitErrorModel | DrawnModel,
    generator: FaultKey | int,
) -> torch.Tensor:
    """Out-of-place `inject_`: a faulty copy of ``codes``."""
    out = codes.clone()
    inject_(out, bits, error_model, generator)
    return out
