"""Error maps: faults that depend on where a bit is stored, read from a file.

A real memory does not fail uniformly: undervolted SRAM has weak cells that fail every
time (Stutz et al. evaluated on bit error maps profiled from chips), RRAM and FeFET fail
asymmetrically per stored state, and faults cluster along word lines (rows) and bit
lines (columns). An `ErrorMap` is such a memory: per-cell flip probabilities and stuck
values over ``(banks, rows, columns)`` cells, read from a ``.npz`` file, applied to a
model's stored bits through a `MemoryLayout` (`mcel.faults.layout`).

The file (``numpy.savez``; `make_map` writes synthetic ones) holds, each optional but
at least one of ``p`` and ``stuck``:

- ``p``: float array ``(rows, cols)`` or ``(banks, rows, cols)``, each cell's flip
  probability in [0, 1]; ``cols`` counts bits and is a multiple of the word width.
- ``stuck``: integer array of the same shape: -1 a working cell, 0 or 1 a cell that
  reads that value whatever was written (it overrides a flip).
- ``scale01``, ``scale10``: scalars in [0, 1] (default 1): a cell holding 0 flips with
  ``p * scale01``, one holding 1 with ``p * scale10`` (RRAM/FeFET asymmetry).
- ``row_rate``, ``col_rate``: scalars in [0, 1] (default 0): each row (word line) and
  each column (bit line) of each bank fails whole with this probability; all cells of a
  failed line read one value, a fair coin per line.

How a draw is made (`ErrorMap.fault_positions`): with ``persistent`` (the default) the
failing cells - a Bernoulli(p) per cell, failed lines, their values - are drawn once per
fault seed and are the same in every trial (the same weak cells fail every time); without
it they are drawn afresh in every trial with the same per-cell probabilities. With
``shift`` the model is placed at a random word offset in the memory in every trial (a
weight lands on other cells; addresses wrap round). Both are nested in ``scale``: at a
larger scale the failing cells are a superset, as for `BitErrorModel`.

A BER sweep sets the map's *mean rate* - the mean of ``p * (scale01 + scale10) / 2``
over its cells, the rate of a uniform model with the same number of flips on average -
by scaling every ``p`` (`ErrorMap.at_rate`); stuck cells and failed lines are
properties of the chip and stay as they are (a map with no ``p`` is the same at every
BER above 0); BER 0 is fault-free.

>>> import os, tempfile, torch
>>> from mcel.faults import parse_error_model, sample_mask
>>> path = os.path.join(tempfile.mkdtemp(), "chip.npz")
>>> write_map(path, make_map(rows=64, cols=256, cell_ber=1e-2, seed=0))
>>> em = parse_error_model(f"map={path},word_bits=8")
>>> codes = torch.zeros(2048, dtype=torch.uint8)
>>> mask = sample_mask(codes, 8, em, seed=0, trial=0)
>>> again = sample_mask(codes, 8, em, seed=0, trial=1)  # persistent: the same cells
>>> torch.equal(mask.index, again.index) and mask.nbits_flipped > 0
True
"""

from __future__ import annotations

import functools
import io
import numbers
import os
import zipfile
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch

from mcel.errors import MCELError
from mcel.faults import native
from mcel.faults.error_model import BitErrorModel, check_ecc, spec_items
from mcel.faults.ladder import sample_ladder, unique_sorted
from mcel.faults.layout import MemoryLayout, slot_addresses
from mcel.faults.sampler import FaultKey
from mcel.io import atomic_write_bytes

ARRAYS = ("p", "stuck")
SCALARS = ("scale01", "scale10", "row_rate", "col_rate")
_FIX = "write one with 'mcel make-map' (README: Error maps and memory layout)"


# -- the file --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MapArrays:
    """A validated map file: ``p`` (float64) and ``stuck`` (int8) over
    ``(banks, rows, cols)`` (missing ones as all-zero / all -1), and its scalars."""

    p: np.ndarray
    stuck: np.ndarray
    scale01: float = 1.0
    scale10: float = 1.0
    row_rate: float = 0.0
    col_rate: float = 0.0

    @property
    def mean_rate(self) -> float:
        """Mean flip probability per stored bit, for bits that are 0 or 1 equally often."""
        return float(self.p.mean()) * (self.scale01 + self.scale10) / 2


def _shape3(name: str, a: np.ndarray, path: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise MCELError(f"error map {path}: '{name}' has shape {a.shape}; allowed: "
                        f"(rows, cols) or (banks, rows, cols), none of them 0")
    return a


def _check_values(path: str, p: np.ndarray | None, stuck: np.ndarray | None) -> None:
    if p is not None:
        bad = ~((p >= 0) & (p <= 1))  # NaN fails both
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise MCELError(f"error map {path}: 'p' must hold probabilities in [0, 1], "
                            f"found {p[where].item()!r} at cell {where}; clip it to [0, 1]")
    if stuck is not None:
        bad = ~np.isin(stuck, (-1, 0, 1))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise MCELError(f"error map {path}: 'stuck' holds {stuck[where].item()!r} at cell "
                            f"{where}; allowed: -1 (working), 0 or 1 (stuck at that value)")


def _scalar(path: str, name: str, a: np.ndarray) -> float:
    ok = a.ndim == 0 and a.dtype.kind in "fiu" and 0.0 <= float(a) <= 1.0
    if not ok:
        raise MCELError(f"error map {path}: '{name}' must be one number in [0, 1], got "
                        f"{a.tolist()!r}")
    return float(a)


def check_map(data: dict[str, np.ndarray], path: str = "<map>") -> MapArrays:
    """Validate the arrays of a map file (see the module docstring) into `MapArrays`."""
    unknown = sorted(set(data) - set(ARRAYS) - set(SCALARS))
    if unknown:
        raise MCELError(f"error map {path} has unknown entries {unknown}; valid: "
                        f"{', '.join(ARRAYS + SCALARS)}")
    if not any(k in data for k in ARRAYS):
        raise MCELError(f"error map {path} has neither 'p' (flip probabilities) nor 'stuck' "
                        f"(stuck values); {_FIX}")
    p = stuck = None
    if "p" in data:
        if data["p"].dtype.kind not in "fiu":
            raise MCELError(f"error map {path}: 'p' has dtype {data['p'].dtype}; allowed: float")
        p = _shape3("p", np.asarray(data["p"], dtype=np.float64), path)
    if "stuck" in data:
        if data["stuck"].dtype.kind not in "iu":
            raise MCELError(f"error map {path}: 'stuck' has dtype {data['stuck'].dtype}; "
                            f"allowed: integers -1, 0, 1")
        stuck = _shape3("stuck", np.asarray(data["stuck"]), path)
    if p is not None and stuck is not None and p.shape != stuck.shape:
        raise MCELError(f"error map {path}: 'p' has shape {p.shape} but 'stuck' {stuck.shape}; "
                        f"give both the same shape")
    _check_values(path, p, stuck)
    shape = p.shape if p is not None else stuck.shape  # type: ignore[union-attr]
    scalars = {k: _scalar(path, k, np.asarray(data[k])) for k in SCALARS if k in data}
    return MapArrays(p=p if p is not None else np.zeros(shape),
                     stuck=(stuck if stuck is not None else np.full(shape, -1)).astype(np.int8),
                     **scalars)


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, int]) -> MapArrays:
    not_npz = MCELError(f"error map {path} is not a .npz file of arrays (numpy.savez); {_FIX}")
    try:
        loaded = np.load(path, allow_pickle=False)  # never runs pickled code
    except OSError as e:
        raise MCELError(f"error map {path} cannot be read ({e.strerror or e}); {_FIX}") from None
    except (ValueError, zipfile.BadZipFile):
        raise not_npz from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
        raise not_npz
    try:
        with loaded as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        raise not_npz from None
    return check_map(data, path)


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise MCELError(f"error map {path} cannot be read ({e.strerror}); {_FIX}") from None
    return st.st_mtime_ns, st.st_size


def load_map(path: str) -> MapArrays:
    """The validated map in ``path`` (cached until the file changes)."""
    return _load(path, _stamp(path))


# -- the generator ---------------------------------------------------------------


def make_map(*, rows: int, cols: int, banks: int = 1, cell_ber: float = 0.0,
             spread: float = 1.0, stuck_rate: float = 0.0, row_rate: float = 0.0,
             col_rate: float = 0.0, scale01: float = 1.0, scale10: float = 1.0,
             seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic chip-like map: weak cells whose flip probabilities are log-normal
    with mean ``cell_ber`` (``spread`` = sigma of the log; 0: every cell at
    ``cell_ber``), a fraction ``stuck_rate`` of cells stuck at a fair-coin value, and
    row/column failure rates. The arrays `write_map` saves."""
    shape = (banks, rows, cols)
    if min(shape) < 1 or not spread >= 0:
        raise MCELError(f"banks, rows, cols must be >= 1 and spread >= 0; got {shape}, "
                        f"spread={spread}")
    if not 0 <= cell_ber <= 1 or not 0 <= stuck_rate <= 1:
        raise MCELError(f"cell_ber={cell_ber} and stuck_rate={stuck_rate} must be in [0, 1]")
    rng = np.random.default_rng(seed)
    # exp(s z - s^2 / 2) has mean 1, so the cells' mean probability is cell_ber
    p = cell_ber * np.exp(spread * rng.standard_normal(shape) - spread**2 / 2)
    stuck = np.where(rng.random(shape) < stuck_rate, rng.integers(0, 2, shape), -1)
    out: dict[str, np.ndarray] = {
        "p": np.clip(p, 0.0, 1.0).astype(np.float32), "stuck": stuck.astype(np.int8),
        **{k: np.asarray(v, dtype=np.float64) for k, v in (
            ("scale01", scale01), ("scale10", scale10), ("row_rate", row_rate),
            ("col_rate", col_rate))}}
    check_map(out, "<make_map>")  # rates in [0, 1]
    return out


def write_map(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Save a map (validated first) as ``.npz``, crash-safe (`mcel.io`)."""
    check_map(arrays, path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# -- drawing ---------------------------------------------------------------------


# Cells are drawn in groups whose p lie within a factor `group` of each other: a group's
# candidates come from the ladder at its top rate (its fast path: no time per mark) and
# each is kept with probability q / top, so a group draws at most `group` times its hits.
# A persistent map is drawn once per seed and keeps the coarse grouping its published
# draws were made with; fresh draws, made in every trial, use groups of a factor 2 (at
# most twice the hits as candidates, about 1.4 times for log-normal cells).
GROUP, FRESH_GROUP = 16, 2
_MAX_GROUPS = 40  # cells below 2^-40 (or 16^-40) relative to 1 share the last group

# Streams of a draw's FaultKey: failed rows 2, 3 (value coins 12), columns 4, 5 (coins
# 14); group g's ladder _GROUPS + 2g, + 1 and its thinning _THIN + g (32 groups at most);
# the keep draws of asymmetric rates _KEEP. All distinct, so no two uses share a stream.
# A fresh draw seeds the ladders and thinning of all its groups from one stream, _FRESH
# (nine words a group: two PCG64 seeds and a salt), which costs a fraction of building
# three generators a group, every trial.
_GROUPS, _THIN, _KEEP, _FRESH = 16, 100, 200, 300
_PCG_MULT = (2549297995355413924 << 64) | 4865540595714422341
_M64, _M128 = (1 << 64) - 1, (1 << 128) - 1


@dataclass(frozen=True, eq=False)
class _Strata:
    """Cells with p > 0 grouped by powers of ``group`` of p; per group at one scale its
    top rate and each cell's keep ratio ``q / top``."""

    cells: tuple[np.ndarray, ...]
    ratios: tuple[np.ndarray, ...]
    tops: tuple[float, ...]


@functools.lru_cache(maxsize=4)
def _groups(arrays: MapArrays, group: int) -> tuple[np.ndarray, ...]:
    """The cells with p > 0, grouped by powers of ``group`` of p (ascending in each)."""
    p = arrays.p.reshape(-1)
    live = np.flatnonzero(p > 0)
    last = 31 if group == GROUP else _MAX_GROUPS - 1  # GROUP's draws: as first published
    g = np.minimum(np.floor(-np.log(p[live]) / np.log(group)), last).astype(np.int64)
    return tuple(live[g == k] for k in range(last + 1))


@functools.lru_cache(maxsize=8)
def _strata(arrays: MapArrays, scale: float, group: int = GROUP) -> _Strata:
    p = arrays.p.reshape(-1)
    cells, ratios, tops = [], [], []
    for c in _groups(arrays, group):
        q = np.minimum(p[c] * scale, 1.0)
        top = float(q.max()) if c.size else 0.0
        # a cell and its ratio side by side: the kernel reads both with one cache miss
        pair = np.empty((c.size, 2), np.int64)
        pair[:, 0] = c
        pair[:, 1] = (q / top if top > 0 else q).view(np.int64)
        cells.append(pair[:, 0])
        ratios.append(pair[:, 1].view(np.float64))
        tops.append(top)
    return _Strata(tuple(cells), tuple(ratios), tuple(tops))


def _flip_cells(arrays: MapArrays, scale: float, key: FaultKey,
                group: int = GROUP) -> np.ndarray:
    """Sorted cells that fail in the draw ``key``: each with probability ``p * scale``
    (a candidate at rate ``top`` kept with probability ``q / top``: exact). Nested in
    ``scale``: the candidates are (the ladder), and a cell's keep draw and ratio
    ``p / max p`` of its group do not change with it (nor when q is clipped at 1, where
    the ratio only grows)."""
    st = _strata(arrays, scale, group)
    fresh = group != GROUP
    seeds = key.words(_FRESH, 9 * len(st.cells)).reshape(-1, 9) if fresh else None
    table = _kernel_table(st, arrays.p.size) if fresh else None
    if table is not None and (cells := native.map_draw(table, seeds)) is not None:
        return cells  # every group in one kernel call: the cells of the loop below
    out = [np.empty(0, np.int64)]
    for g, (cells, ratio, top) in enumerate(zip(st.cells, st.ratios, st.tops)):
        if top <= 0:
            continue
        if seeds is not None:
            marks, times = _seeded(seeds[g, :4]), _seeded(seeds[g, 4:8])
            salt = int(seeds[g, 8])
        else:
            marks, times = key.rng(_GROUPS + 2 * g), key.rng(_GROUPS + 1 + 2 * g)
            salt = _salt(key, _THIN + g)
        kept = native.thinned_cells(marks, times, cells, ratio, top=top, salt=salt)
        if kept is None:  # numpy: the same cells, from generators in the same states
            if seeds is not None:
                rngs = _generator(marks), _generator(times)
            else:
                rngs = key.rng(_GROUPS + 2 * g), key.rng(_GROUPS + 1 + 2 * g)
            hit = sample_ladder(*rngs, cells.size, top).astype(np.int64)
            c = cells[hit]
            kept = c[_uniform(c, salt) < ratio[hit]]
        out.append(kept)
    return unique_sorted(np.concatenate(out))  # the kernel keeps a twice-marked cell twice


@functools.lru_cache(maxsize=8)
def _kernel_table(st: _Strata, n_cells: int) -> native.MapTable | None:
    return native.map_table(st.cells, st.ratios, st.tops, n_cells)


def _seeded(seed: np.ndarray) -> np.ndarray:
    """The state of `np.random.PCG64` seeded with these four words (as it seeds itself
    from a SeedSequence's four), in the kernel's word layout (`native`)."""
    init = (int(seed[0]) << 64) | int(seed[1])
    inc = ((((int(seed[2]) << 64) | int(seed[3])) << 1) | 1) & _M128
    state = ((inc + init) * _PCG_MULT + inc) & _M128  # two LCG steps from 0, init between
    return np.array([state >> 64, state & _M64, inc >> 64, inc & _M64, 0, 0], np.uint64)


def _generator(words: np.ndarray) -> np.random.Generator:
    """A numpy generator in the state ``words`` (`_seeded`'s layout)."""
    bg = np.random.PCG64(0)
    bg.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                "state": {"state": (int(words[0]) << 64) | int(words[1]),
                          "inc": (int(words[2]) << 64) | int(words[3])}}
    return np.random.Generator(bg)


def _line_cells(arrays: MapArrays, key: FaultKey) -> tuple[np.ndarray, np.ndarray]:
    """Cells of failed rows and columns, and the value each reads (a coin per line)."""
    banks, rows, cols = arrays.p.shape
    parts, values = [np.empty(0, np.int64)], [np.empty(0, np.int8)]
    for rate, n_lines, stream in ((arrays.row_rate, banks * rows, 2),
                                  (arrays.col_rate, banks * cols, 4)):
        if rate <= 0:
            continue
        lines = sample_ladder(key.rng(stream), key.rng(stream + 1), n_lines, rate)
        lines = lines.astype(np.int64)
        coin = key.rng(stream + 10).integers(0, 2, lines.size).astype(np.int8)
        if stream == 2:  # row l = bank * rows + row holds cells l * cols + 0..cols-1
            cells = lines[:, None] * cols + np.arange(cols)
        else:  # column l = bank * cols + c holds cells (bank * rows + r) * cols + c
            bank, c = np.divmod(lines, cols)
            cells = (bank[:, None] * rows + np.arange(rows)) * cols + c[:, None]
        parts.append(cells.reshape(-1))
        values.append(np.repeat(coin, cells.shape[1]))
    return np.concatenate(parts), np.concatenate(values)


@functools.lru_cache(maxsize=4)
def _own_stuck(arrays: MapArrays) -> tuple[np.ndarray, np.ndarray]:
    flat = arrays.stuck.reshape(-1)
    own = np.flatnonzero(flat >= 0)
    return own, flat[own]


def _stuck_cells(arrays: MapArrays, key: FaultKey) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique stuck cells (the map's and failed lines') and their values; a
    failed line's value wins over the map's."""
    own, own_value = _own_stuck(arrays)
    if arrays.row_rate == 0 and arrays.col_rate == 0:
        return own, own_value
    line, line_value = _line_cells(arrays, key)
    cells, first = np.unique(np.concatenate([line, own]), return_index=True)
    return cells, np.concatenate([line_value, own_value])[first]


@dataclass(frozen=True, eq=False)
class _Draw:
    """The faults of one trial in model addresses (``range(capacity)``), sorted: flip
    candidates with their keep draws (for asymmetric rates), stuck cells and values."""

    flips: np.ndarray
    keep: np.ndarray
    stuck: np.ndarray
    value: np.ndarray
    capacity: int


def _salt(key: FaultKey, stream: int) -> int:
    return int(key.rng(stream).bit_generator.random_raw())


def _uniform_of(cells: np.ndarray, key: FaultKey, stream: int) -> np.ndarray:
    """A uniform in [0, 1) per cell fixed by (key, stream, cell) (`_uniform`)."""
    return _uniform(cells, _salt(key, stream))


def _uniform(cells: np.ndarray, salt: int) -> np.ndarray:
    """A uniform in [0, 1) per cell fixed by (salt, cell): SplitMix64 of the salted
    index, so a cell keeps its draw whatever else fails (nesting). The native kernel
    (`native.thinned_cells`) computes the same numbers."""
    x = cells.astype(np.uint64) ^ np.uint64(salt)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# -- the model -------------------------------------------------------------------


def _bool(key: str, s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise MCELError(f"{key}={s!r}; allowed: 1 or 0 (true or false)")


@dataclass(frozen=True)
class ErrorMap:
    """An error model read from a map file (see the module docstring).

    ``path``: the ``.npz`` file; ``persistent``: the same failing cells in every trial
    (drawn once per fault seed) or drawn afresh per trial; ``shift``: place the model at
    a random word offset per trial; ``word_bits``, ``bank_interleave``,
    ``bit_interleave``: the memory layout (rows, columns and banks come from the map's
    shape); ``scale``: multiplies every ``p`` (a BER sweep sets it, `at_rate`).
    ``targets``/``include``/``exclude`` as for `BitErrorModel`; persistent memory faults
    in stored weights and biases only.
    """

    path: str
    _: KW_ONLY
    persistent: bool = True
    shift: bool = False
    word_bits: int = 32
    bank_interleave: bool = False
    bit_interleave: bool = False
    scale: float = 1.0
    targets: tuple[str, ...] = ("weights",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: str = "persistent"
    ecc: int | None = None
    ecc_interleave: int = 1
    placement: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)

    kind: ClassVar[str] = "map"
    ber_sets: ClassVar[str] = "mean rate"

    def __post_init__(self) -> None:
        # the field checks of BitErrorModel (targets, patterns), on a stand-in
        shape = BitErrorModel(ber=0.0, targets=self.targets, include=self.include,
                              exclude=self.exclude)
        for name in ("targets", "include", "exclude"):
            object.__setattr__(self, name, getattr(shape, name))
        if self.mode != "persistent" or "activations" in self.targets:
            raise MCELError("an error map holds persistent faults of stored weights and "
                            "biases; drop --transient and the 'activations' target")
        if not isinstance(self.scale, numbers.Real) or not self.scale >= 0:
            raise MCELError(f"scale={self.scale!r}; allowed: a number >= 0")
        check_ecc(self)
        if self.ecc is not None and self.shift:  # words would straddle the memory's own
            raise MCELError("ecc with shift=1 is not modelled (the code words are the "
                            "model's, not the moved memory's); drop one of them")
        _ = self.layout  # the file reads and word_bits fits its columns: fail early

    @property
    def arrays(self) -> MapArrays:
        return load_map(self.path)

    @property
    def layout(self) -> MemoryLayout:
        banks, rows, cols = self.arrays.p.shape
        if isinstance(self.word_bits, bool) or not isinstance(self.word_bits, int) \
                or self.word_bits < 1 or cols % self.word_bits:
            raise MCELError(f"error map {self.path} has {cols} columns (bits per row), not a "
                            f"multiple of word_bits={self.word_bits!r}; give a word_bits "
                            f"that divides {cols}")
        return MemoryLayout(banks=banks, rows=rows, row_words=cols // self.word_bits,
                            word_bits=self.word_bits, bank_interleave=self.bank_interleave,
                            bit_interleave=self.bit_interleave)

    # -- the ErrorModel protocol ---------------------------------------------------

    def applies_to(self, name: str, target: str = "weights") -> bool:
        return BitErrorModel(ber=0.0, targets=self.targets, include=self.include,
                             exclude=self.exclude).applies_to(name, target)

    def at_rate(self, ber: float) -> ErrorMap | BitErrorModel:
        """The map at mean rate ``ber`` (every ``p`` scaled); BER 0: fault-free."""
        if ber == 0:
            return BitErrorModel(ber=0.0, targets=self.targets, include=self.include,
                                 exclude=self.exclude)
        mean = self.arrays.mean_rate
        return replace(self, scale=ber / mean) if mean > 0 else self

    def check_bits(self, bits: int) -> None:
        _ = self.layout  # any code width packs into the map's words

    def mean_rate(self) -> float:
        """The map's mean flip rate at this scale (what ``ecc`` check bits fail at; stuck
        cells read wrong half the time)."""
        a = self.arrays
        stuck = float((a.stuck >= 0).mean())
        return min(1.0, a.mean_rate * self.scale + stuck / 2)

    def place(self, stored: tuple[tuple[str, int], ...]) -> ErrorMap:
        """This map knowing where each stored tensor starts (`MemoryImage.stored`)."""
        return replace(self, placement=tuple(slot_addresses(stored).items()))

    def reads_codes(self, bits: int) -> bool:
        return True  # stuck cells and asymmetric rates read the stored bits

    def fault_positions(self, codes: torch.Tensor, bits: int, key: FaultKey) -> np.ndarray:
        """Bit positions of ``codes`` that change in ``key``'s trial. A tensor the map
        was not placed with (one tensor on its own) starts at address 0."""
        first = dict(self.placement).get(key.name, 0)
        arrays = self.arrays
        trial = key.trial if self.shift or not self.persistent else 0  # else all alike
        d = _draw(self, _stamp(self.path), seed=key.seed, trial=trial, step=key.step)
        n = codes.numel() * bits
        flips, keep = _in_range(d.flips, d.keep, capacity=d.capacity, first=first, n=n)
        stuck, value = _in_range(d.stuck, d.value, capacity=d.capacity, first=first, n=n)
        if arrays.scale01 < 1 or arrays.scale10 < 1:  # thin by the stored value's scale
            scale = np.where(_stored(codes, flips, bits) == 1, arrays.scale10, arrays.scale01)
            flips = flips[keep < scale]
        if stuck.size == 0:
            return flips
        flips = flips[~_member(flips, stuck)]  # a stuck cell reads its value
        differs = stuck[_stored(codes, stuck, bits) != value]
        return np.sort(np.concatenate([flips, differs]))

    # -- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name != "placement":
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorMap:
        names = {f.name for f in fields(cls)} - {"placement"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MCELError(f"unknown error-map fields {unknown}; valid: "
                            f"{', '.join(sorted(names))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def describe(self) -> str:
        parts = [f"map={self.path}"]
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("path", "placement") or v == f.default:
                continue
            vals = v if isinstance(v, tuple) else (v,)
            parts.append(f"{f.name}=" + ",".join(str(int(x)) if isinstance(x, bool)
                                                  else x if isinstance(x, str) else repr(x)
                                                  for x in vals))
        return ",".join(parts)

    @classmethod
    def parse(cls, spec: str) -> ErrorMap:
        conv = {"persistent": _bool, "shift": _bool, "bank_interleave": _bool,
                "bit_interleave": _bool, "word_bits": _int, "scale": _float,
                "mode": lambda k, s: s, "ecc": _int, "ecc_interleave": _int}
        kw: dict[str, Any] = {}
        for key, vals in spec_items(spec).items():
            name = "path" if key == "map" else key
            if name in ("targets", "include", "exclude"):
                kw[name] = tuple(vals)
            elif name == "path" or name in conv:
                if len(vals) != 1:
                    raise MCELError(f"{key} takes one value, got {','.join(vals)!r}")
                kw[name] = vals[0] if name == "path" else conv[name](key, vals[0])
            else:
                valid = ["map", *conv, "targets", "include", "exclude"]
                raise MCELError(f"unknown error-map key '{key}'; valid: {', '.join(valid)}")
        return cls(**kw)


def _int(key: str, s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise MCELError(f"{key}={s!r} is not an integer") from None


def _float(key: str, s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise MCELError(f"{key}={s!r} is not a number") from None


def _stored(codes: torch.Tensor, pos: np.ndarray, bits: int) -> np.ndarray:
    """The stored bit (0/1) at each flat bit position; on a GPU only the codes needed
    come to the host."""
    idx, bit = np.divmod(pos, bits)
    flat = codes.view(-1)
    if flat.device.type == "cpu":
        vals = flat.numpy()[idx]
    else:
        vals = flat[torch.from_numpy(idx).to(flat.device)].cpu().numpy()
    return (vals >> bit.astype(vals.dtype)) & 1


def _member(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """``np.isin(a, sorted_b)`` by binary search (isin may build a table over the range)."""
    if sorted_b.size == 0:
        return np.zeros(a.shape, bool)
    i = np.minimum(np.searchsorted(sorted_b, a), sorted_b.size - 1)
    return sorted_b[i] == a


def _in_range(addr: np.ndarray, extra: np.ndarray, *, capacity: int, first: int,
              n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``a - first`` of the sorted addresses (repeated every ``capacity``: the
    memory wraps round) that fall in ``[first, first + n)``, with their ``extra``."""
    pos, ext = [np.empty(0, np.int64)], [extra[:0]]
    for k in range(first // capacity, (first + n - 1) // capacity + 1 if n else 0):
        lo, hi = first - k * capacity, first + n - k * capacity
        i, j = np.searchsorted(addr, [max(lo, 0), min(hi, capacity)])
        pos.append(addr[i:j] - lo)
        ext.append(extra[i:j])
    return np.concatenate(pos), np.concatenate(ext)


@functools.lru_cache(maxsize=8)
def _cells(arrays: MapArrays, scale: float, key: FaultKey,
           group: int) -> tuple[np.ndarray, ...]:
    """The failing cells of one draw: flips with their keep draws, stuck cells with their
    values (cached: a persistent map draws them once per seed)."""
    flips = _flip_cells(arrays, scale, key, group)
    symmetric = arrays.scale01 == 1 and arrays.scale10 == 1  # then no keep draw is read
    keep = np.zeros(flips.size) if symmetric else _uniform_of(flips, key, _KEEP)
    return (flips, keep, *_stuck_cells(arrays, key))


@functools.lru_cache(maxsize=8)
def _unshifted(em: ErrorMap, stamp: tuple[int, int], *, seed: int, trial: int,
               step: int) -> _Draw:
    """The failing cells of a draw as sorted model addresses at shift 0 (cached: a
    persistent map computes them once per seed)."""
    layout = em.layout
    key = FaultKey(seed=seed, trial=trial, name="error-map", step=step)
    group = GROUP if em.persistent else FRESH_GROUP
    cells, keep, stuck, value = _cells(em.arrays, em.scale, key, group)

    def addresses(c: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if layout.identity:  # sorted cells are sorted addresses
            return c, extra
        a = layout.address_of(c)
        order = np.argsort(a, kind="stable")
        return a[order], extra[order]

    return _Draw(*addresses(cells, keep), *addresses(stuck, value), layout.capacity)


def _rotate(addr: np.ndarray, extra: np.ndarray, shift: int,
            capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(addr - shift) mod capacity`` of sorted ``addr``: a rotation, no sort."""
    i = int(np.searchsorted(addr, shift))
    return (np.concatenate([addr[i:] - shift, addr[:i] + (capacity - shift)]),
            np.concatenate([extra[i:], extra[:i]]))


@functools.lru_cache(maxsize=8)
def _draw(em: ErrorMap, stamp: tuple[int, int], *, seed: int, trial: int, step: int) -> _Draw:
    """The faults of one trial (cached: every tensor of the trial reads them): the
    failing cells of the trial's draw (trial 0's when persistent), the model placed at
    the trial's word offset when ``em.shift``."""
    d = _unshifted(em, stamp, seed=seed, trial=0 if em.persistent else trial, step=step)
    if not em.shift:
        return d
    words = d.capacity // em.word_bits  # a word-aligned offset, from a stream of its own
    shift_key = FaultKey(seed=seed, trial=trial, name="error-map-shift", step=step)
    shift = int(shift_key.rng(0).integers(0, words)) * em.word_bits
    return _Draw(*_rotate(d.flips, d.keep, shift, d.capacity),
                 *_rotate(d.stuck, d.value, shift, d.capacity), d.capacity)


__all__ = ["ErrorMap", "MapArrays", "check_map", "load_map", "make_map", "write_map",
           "ARRAYS", "SCALARS"]
