"""Optional native kernel of the ladder sampler: the same masks, without numpy's overhead.

`_ladder.c` (next to this file) is compiled on first use with the system C compiler and
linked against numpy's own random library (``numpy/random/lib/libnpyrandom.a``) for the
Poisson counts; it starts from the PCG64 states of the very generators the numpy path
would use and draws cells and times with an inlined PCG64 and numpy's bounded-integer
method, so every mask is bit-identical to the numpy path (tests compare them key by key;
`load` checks the inlined PCG64 against numpy's first and turns the kernel off if they
differ). The library is cached per (source, numpy, Python, platform) under
``$MCEL_CACHE`` (default ``~/.cache/mcel``); a compile takes about a second.

``MCEL_NATIVE=0`` turns it off; without a C compiler it is off and everything runs in
numpy (`status` says why). It covers flips (uniform, per-position and asymmetric rates
up to 1/16) and the draws of error maps (each group of cells: its ladder at any rate,
thinned to each cell's own rate, or a fresh draw's groups all in one call; grouping
positions per code); stuck-at models of
`BitErrorModel` and its rates above 1/16 take the numpy path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcel.faults.ladder import BLOCKS, DENSE_FROM, T_DENSE, rate_time

_SRC = Path(__file__).with_name("_ladder.c")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "lib": CDLL | None, "why": str

_P = ctypes.c_void_p
_I64, _I32, _U64 = ctypes.c_int64, ctypes.c_int32, ctypes.c_uint64


def _cache_dir() -> Path:
    root = os.environ.get("MCEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "mcel")
    return Path(root) / "native"


def _library_path() -> Path:
    tag = hashlib.sha256(b"|".join([
        _SRC.read_bytes(), np.__version__.encode(), sys.version.encode(),
        platform.machine().encode(), platform.system().encode(),
    ])).hexdigest()[:16]
    return _cache_dir() / f"ladder-{tag}.so"


def _compile(out: Path) -> None:
    cc_env = shlex.split(os.environ.get("CC", ""))  # CC may carry flags or a wrapper
    cc = cc_env or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        raise OSError("no C compiler (set CC, or install gcc)")
    npdir = Path(np.__file__).parent
    lib = npdir / "random" / "lib" / "libnpyrandom.a"
    if not lib.exists():
        raise OSError(f"numpy has no {lib}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: concurrent workers never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        # -ffp-contract=off: no fused multiply-add, so times round exactly as numpy's do
        cmd = [*cc, "-O3", "-shared", "-fPIC", "-ffp-contract=off", "-std=gnu11",
               "-I", np.get_include(), str(_SRC), str(lib), "-lm", "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise OSError(f"{Path(cc[0]).name} failed: {res.stderr.strip()[:300]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.mcel_pcg_check.restype = None
    lib.mcel_pcg_check.argtypes = [_P, _I32, ctypes.c_uint32, _U64, _P]
    lib.mcel_flips.restype = _I64
    lib.mcel_flips.argtypes = [_P, _P, _U64, _P, _P, _P, _I32, _I32, _I32, _U64, _P, _I32, _U64,
                               _P, _I32, _P, _I64]
    lib.mcel_group.restype = _I64
    lib.mcel_group.argtypes = [_P, _I32, _I64, _I32, _P, _I32, _I32, _P, _P, _P]
    lib.mcel_dense.restype = _I64
    lib.mcel_dense.argtypes = [_P, _U64, _U64, ctypes.c_double, _P]
    lib.mcel_thin.restype = _I64
    lib.mcel_thin.argtypes = [_P, _I32, _I64, _P, _P, _I64, _U64, _P]
    lib.mcel_map_draw.restype = _I64
    lib.mcel_map_draw.argtypes = [_I32, _P, _P, _P, _P, _P, _P, _I64, _P, _P, _I64, _P]
    lib.mcel_xor.restype = _I32
    lib.mcel_xor.argtypes = [_P, _I32, _I64, _P, _P, _I64]
    return lib


def _pcg_words(rng: np.random.Generator) -> np.ndarray | None:
    """The generator's PCG64 state as the kernel takes it; None for other bit generators."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":
        return None
    mask = (1 << 64) - 1
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & mask, inc >> 64, inc & mask, st["has_uint32"],
                     st["uinteger"]], dtype=np.uint64)


def _self_check(lib: ctypes.CDLL) -> str | None:
    """None when the kernel's inlined PCG64 reproduces this numpy's; else what differs."""
    k, rng, delta = 5, 80_000_000 - 1, 123_457
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, 2, 3])))
    words = _pcg_words(ref)
    out = np.zeros(2 * k + 2, np.uint64)
    lib.mcel_pcg_check(_ptr(words), k, rng, delta, _ptr(out))
    bg = ref.bit_generator
    want = list(bg.random_raw(k))
    want += list(ref.integers(0, 2**32, size=k, dtype=np.uint32))  # plain next_uint32 draws
    want.append(ref.integers(0, rng + 1, dtype=np.uint32))
    bg.advance(delta)
    want.append(bg.random_raw())
    if [int(x) for x in out] != [int(x) for x in want]:
        return f"its PCG64 differs from numpy {np.__version__}'s"
    return None


def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None when unavailable."""
    if "lib" in _STATE:
        return _STATE["lib"]  # type: ignore[return-value]
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib, why = None, "ok"
        if os.environ.get("MCEL_NATIVE", "1") == "0":
            why = "off (MCEL_NATIVE=0)"
        else:
            try:
                path = _library_path()
                if not path.exists():
                    _compile(path)
                try:
                    lib = _declare(ctypes.CDLL(str(path)))
                except OSError:  # a damaged cache entry: build it again, once
                    _compile(path)
                    lib = _declare(ctypes.CDLL(str(path)))
                differs = _self_check(lib)
                if differs:
                    lib, why = None, f"disabled: {differs}"
                else:
                    why = f"ok ({path})"
            except (OSError, subprocess.SubprocessError) as exc:
                why = f"unavailable: {exc}"
        _STATE["lib"], _STATE["why"] = lib, why
        return lib


def status() -> str:
    """One line: whether the native kernel is in use, and why not."""
    load()
    return f"native ladder kernel: {_STATE['why']}"


@contextlib.contextmanager
def disabled():
    """Inside, everything takes the numpy path (benchmarks compare the two)."""
    load()
    saved = dict(_STATE)
    _STATE.update(lib=None, why="off (native.disabled())")
    try:
        yield
    finally:
        _STATE.clear()
        _STATE.update(saved)


def expected_draws(n: int, top: float) -> tuple[float, float] | None:
    """Mean marks and mean timed marks (each one 64-bit time draw) the kernel makes
    for ``n`` cells at one rate ``top``; None above 1/16. Every mark costs half a 64-bit
    draw (a 32-bit cell), so ``marks / 2 + timed`` PCG64 steps is the floor of sampling
    with these streams."""
    plan = _plan(n, top)
    if plan is None:
        return None
    lam, below = plan[2], plan[4]
    return float(lam.sum()), float(lam[below:].sum())


def _reset() -> None:
    """Forget the loaded kernel (tests: re-read MCEL_NATIVE)."""
    _STATE.clear()


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


_DUMMY = np.zeros(1, np.float64)  # what a kernel argument that is not read points to
_DUMMY_PTR = _ptr(_DUMMY)


@functools.lru_cache(maxsize=64)
def _plan(n: int, top: float) -> tuple | None:
    """What the kernel needs for ``n`` cells at rate ``top``, computed as the numpy path
    does (to the last bit): the blocks' time bounds and mean marks, a buffer size, the
    number of blocks entirely below the rate and the 53-bit threshold of the next one.
    None above 1/16 (the numpy path's per-cell part)."""
    t_top = float(rate_time(top))
    if t_top > T_DENSE:
        return None
    blocks = [(a, b) for a, b in BLOCKS if a < t_top]
    ta = np.array([a for a, _ in blocks], np.float64)
    tb = np.array([b for _, b in blocks], np.float64)
    lam = np.array([n * (b - a) for a, b in blocks], np.float64)  # as Python computes it
    mean = float(lam.sum())
    cap = int(mean + 12.0 * math.sqrt(mean) + 256)  # exceeded with probability < 1e-30
    below = int(np.searchsorted(tb, t_top, side="right"))  # blocks with tb <= t_top
    k_top = 0
    if below < len(blocks):
        a, b = blocks[below]
        k_top = math.ceil((t_top - a) / (b - a) * 2.0**53)
    for arr in (ta, tb, lam):
        arr.flags.writeable = False  # shared by every call with these arguments
    return ta, tb, lam, cap, below, k_top, (_ptr(ta), _ptr(tb), _ptr(lam))


def ladder_mask(
    rng_marks: np.random.Generator,
    rng_times: np.random.Generator,
    n: int,
    top: float,
    *,
    mode: int,
    table: np.ndarray | None,
    prot: int,
    codes: np.ndarray,
    bits: int,
    apply: bool,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The flips of `mcel.faults.ladder.sample_ladder` at rates up to ``top <= 1/16``,
    grouped per code: ``(idx, xor, nbits)`` for ``codes`` (flat, contiguous, CPU
    when ``mode == 2`` or ``apply``), XORed in when ``apply``. ``mode`` 0: one rate,
    bit positions in the bitmask ``prot`` dropped; 1: ``table[bit]`` = t(rate) per
    position; 2: ``table[stored * bits + bit]``. None when the kernel is unavailable
    or the marks overflow the buffer (the caller takes the numpy path with fresh
    generators)."""
    lib = load()
    if lib is None:
        return None
    plan = _plan(n, top)
    if plan is None:
        return None
    ta, tb, lam, cap, below, k_top, (p_ta, p_tb, p_lam) = plan
    nblocks = lam.size
    if nblocks == 0:
        return np.empty(0, np.int64), np.empty(0, codes.dtype), 0
    wide = n > 1 << 32
    marks, times = _pcg_words(rng_marks), _pcg_words(rng_times)
    if marks is None or times is None:
        return None
    timed_from = below if mode == 0 else 0  # mode 0: untimed blocks first
    tab = np.ascontiguousarray(table if table is not None else np.zeros(1), np.float64)
    pos = np.empty(cap, np.uint64 if wide else np.uint32)
    kept = lib.mcel_flips(_ptr(marks), _ptr(times), n, p_lam, p_ta, p_tb, nblocks,
                          mode, timed_from, k_top, _ptr(tab), bits, prot, _ptr(codes),
                          codes.itemsize, _ptr(pos), cap)
    if kept < 0:
        return None
    pos = pos[:kept]
    pos.sort()  # numpy's SIMD sort beats a plain C radix sort here
    idx = np.empty(kept, np.int64)
    xor = np.empty(kept, codes.dtype)
    nbits = np.zeros(1, np.int64)
    k = lib.mcel_group(_ptr(pos), wide, kept, bits, _ptr(codes), codes.itemsize, int(apply),
                       _ptr(idx), _ptr(xor), _ptr(nbits))
    return idx[:k], xor[:k], int(nbits[0])


@functools.lru_cache(maxsize=256)
def _above_dense(top: float) -> bool:
    return float(rate_time(top)) > T_DENSE  # as sample_ladder decides it


def thinned_cells(
    rng_marks: np.random.Generator | np.ndarray,
    rng_times: np.random.Generator | np.ndarray,
    cells: np.ndarray,
    ratio: np.ndarray,
    *,
    top: float,
    salt: int,
) -> np.ndarray | None:
    """One group of an error map (`mcel.faults.error_map`): the cells hit by the ladder
    at rate ``top`` over ``range(cells.size)`` (`mcel.faults.ladder.sample_ladder`, from
    these generators or PCG64 state words), each kept iff the SplitMix64 uniform of
    ``cells[hit] ^ salt`` is below ``ratio[hit]``; the kept cells, unsorted, a cell hit
    twice twice (int64). None when the kernel is unavailable, the marks overflow the
    buffer or, above 1/16, the group has over 2^32 cells (the caller takes the numpy
    path from generators in the same states)."""
    lib = load()
    n = cells.size
    wide = n > 1 << 32
    dense = _above_dense(top)  # every block, then a draw per cell
    plan = _plan(n, DENSE_FROM if dense else top) if lib is not None and n > 0 else None
    if plan is None or (dense and wide):
        return None
    ta, tb, lam, cap, below, k_top, (p_ta, p_tb, p_lam) = plan
    if lam.size == 0:
        return np.empty(0, np.int64)
    marks, times = (r if isinstance(r, np.ndarray) else _pcg_words(r)
                    for r in (rng_marks, rng_times))
    if marks is None or times is None:
        return None
    pos = np.empty(cap, np.uint64 if wide else np.uint32)
    timed_from = lam.size if dense else below  # dense: every mark below 1/16 hits
    w = lib.mcel_flips(_ptr(marks), _ptr(times), n, p_lam, p_ta, p_tb, lam.size, 0,
                       timed_from, k_top, _DUMMY_PTR, 1, 0, _DUMMY_PTR, 8, _ptr(pos), cap)
    if w < 0:
        return None
    if dense:  # the marks, then the cells hit above 1/16 (as ladder.py: same streams)
        above = np.empty(n, np.int64)
        thr = (top - DENSE_FROM) / (1.0 - DENSE_FROM)
        k = lib.mcel_dense(_ptr(times), w, n, thr, _ptr(above))
        pos = np.concatenate([pos[:w].astype(np.uint64), above[:k].view(np.uint64)])
        w, wide = pos.size, True
    else:
        pos = pos[:w]
    pos.sort()  # ascending reads of cells and ratio: several times faster than at random
    stride = 2 if _interleaved(cells, ratio) else 1
    if stride == 1:
        cells = np.ascontiguousarray(cells, np.int64)
        ratio = np.ascontiguousarray(ratio, np.float64)
    out = np.empty(w, np.int64)
    k = lib.mcel_thin(_ptr(pos), int(wide), w, _ptr(cells), _ptr(ratio), stride, salt,
                      _ptr(out))
    return out[:k]


def _interleaved(cells: np.ndarray, ratio: np.ndarray) -> bool:
    """Whether ``cells`` (int64) and ``ratio`` (float64) are the two columns of one
    C-ordered (n, 2) array of 8-byte words, as `mcel.faults.error_map` keeps them."""
    return (cells.dtype == np.int64 and ratio.dtype == np.float64
            and cells.strides == ratio.strides == (16,) and cells.size == ratio.size
            and _ptr(ratio) == _ptr(cells) + 8)


@dataclass(eq=False)
class MapTable:
    """What `mcel_map_draw` reads of an error map's groups at one scale (`map_table`):
    per drawn group its plan's and its (cell, ratio) pairs' addresses, sizes and dense
    threshold; ``arrays`` holds everything those addresses point into."""

    groups: np.ndarray  # indices of the groups drawn (top > 0), into the seed rows
    addr: np.ndarray
    ints: np.ndarray
    thr: np.ndarray
    cap: int  # marks of the largest group's buffer
    above: int  # cells of the largest dense group
    out: int  # candidates at most, over all groups
    nwords: int
    arrays: tuple
    lock: threading.Lock = field(default_factory=threading.Lock)
    bitmap: np.ndarray | None = None  # zero between calls; built on first use


def map_table(cells: Sequence[np.ndarray], ratios: Sequence[np.ndarray],
              tops: Sequence[float], n_cells: int) -> MapTable | None:
    """The kernel's view of a map's groups (``cells``, ``ratios``: interleaved columns,
    as `mcel.faults.error_map` keeps them; ``tops``: their rates) over ``n_cells``
    cells; None when the kernel is off or a group does not fit it (over 2^32 cells,
    columns apart), and the caller draws group by group."""
    if load() is None:
        return None
    groups, addr, ints, thr, keep = [], [], [], [], []
    cap = above = out = 0
    for g, (c, r, top) in enumerate(zip(cells, ratios, tops)):
        if top <= 0:
            continue
        n = c.size
        dense = _above_dense(top)
        plan = _plan(n, DENSE_FROM if dense else top)
        if plan is None or n > 1 << 32 or not _interleaved(c, r):
            return None
        ta, tb, lam, cap_g, below, k_top, (p_ta, p_tb, p_lam) = plan
        groups.append(g)
        addr.append([p_lam, p_ta, p_tb, _ptr(c)])
        ints.append([n, lam.size, lam.size if dense else below, k_top])
        thr.append((top - DENSE_FROM) / (1.0 - DENSE_FROM) if dense else -1.0)
        keep.append((plan, c, r))
        cap, above = max(cap, cap_g), max(above, n if dense else 0)
        out += cap_g + (n if dense else 0)
    return MapTable(np.array(groups, np.int64), np.array(addr, np.uint64).reshape(-1, 4),
                    np.array(ints, np.uint64).reshape(-1, 4), np.array(thr, np.float64),
                    cap, above, out, (n_cells + 63) // 64, tuple(keep))


def map_draw(table: MapTable, seeds: np.ndarray) -> np.ndarray | None:
    """Sorted unique cells of one fresh draw of the map ``table`` describes, every group
    in one kernel call (`error_map._flip_cells`: the same cells); ``seeds``: nine uint64
    words per group of the map. None when the marks overflow (draw group by group)."""
    lib = load()
    if lib is None:
        return None
    rows = np.ascontiguousarray(seeds[table.groups], np.uint64)
    buf = np.empty((2, max(table.cap, 1)), np.uint32)  # marks, and the sort's scratch
    above = np.empty(max(table.above, 1), np.int64)
    out = np.empty(max(table.out, 1), np.int64)
    with table.lock:  # the bitmap is the table's (zeroed again by every call)
        if table.bitmap is None:
            table.bitmap = np.zeros(table.nwords, np.uint64)
        k = lib.mcel_map_draw(table.groups.size, _ptr(rows), _ptr(table.addr),
                              _ptr(table.ints), _ptr(table.thr), _ptr(buf),
                              _ptr(buf) + 4 * buf.shape[1], buf.shape[1],
                              _ptr(above), _ptr(table.bitmap), table.nwords, _ptr(out))
    return None if k < 0 else out[:k].copy()


def group_bits(pos: np.ndarray, bits: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted unique int64 bit positions -> ``(idx, xor)``: the codes they fall in and
    the OR of their bits per code (``dtype`` words); None when the kernel is off."""
    lib = load()
    if lib is None or pos.dtype != np.int64 or not pos.flags.c_contiguous:
        return None
    idx = np.empty(pos.size, np.int64)
    xor = np.empty(pos.size, dtype)
    nbits = np.zeros(1, np.int64)
    k = lib.mcel_group(_ptr(pos), 1, pos.size, bits, _DUMMY_PTR, xor.itemsize, 0, _ptr(idx),
                       _ptr(xor), _ptr(nbits))  # apply=0: the codes are not touched
    return idx[:k], xor[:k]


def xor_(codes: np.ndarray, idx: np.ndarray, xor: np.ndarray) -> bool:
    """``codes[idx] ^= xor`` in place for unique ``idx``; False (nothing done) when the
    kernel is off or the arrays are not the plain kind it takes (the caller uses numpy,
    which also raises the errors). An index out of range changes nothing."""
    lib = load()
    plain = (idx.dtype == np.int64 and xor.dtype == codes.dtype and idx.shape == xor.shape
             and codes.flags.c_contiguous and idx.flags.c_contiguous and xor.flags.c_contiguous)
    if lib is None or not plain:
        return False
    return lib.mcel_xor(_ptr(codes), codes.itemsize, codes.size, _ptr(idx), _ptr(xor),
                        idx.size) == 0
