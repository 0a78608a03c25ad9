"""The ladder: exact, nested Bernoulli sampling at a cost proportional to the hits.

Every one of ``n`` cells gets an implicit *time* ``T_i ~ Exp(1)``, i.i.d., and is hit
at rate ``p`` iff ``T_i < t(p) = -log(1 - p)``: hits are i.i.d. Bernoulli(p) (since
``P(T < t(p)) = 1 - e^{-t(p)} = p``) and, for one random stream, the hits at a lower
rate are a subset of those at a higher one (nested). This is the "height ladder"
``u_i = 1 - e^{-T_i} ~ U(0, 1)``, hit iff ``u_i < p``, written in exponential time.

``T_i`` is the first arrival of a unit-rate Poisson process at cell ``i``; together the
``n`` processes are one Poisson process of *marks* (cell, time) with intensity ``n`` on
the time axis. Only marks below the largest rate's time are generated, in blocks
``[t(a), t(b))`` with dyadic rate bounds ``[0, 2^-41), [2^-41, 2^-40), ..., [1/32, 1/16)``:

- a block holds ``Poisson(n (t(b) - t(a)))`` marks at uniform cells (with repetition)
  with times uniform in the block. A cell is hit at rate ``r`` iff *some* mark on it has
  time ``< t(r)``, so each mark is tested on its own and survivors are deduplicated by
  one sort. No per-level bookkeeping, and every operation is exact in law.
- blocks are generated bottom-up and stop at the first block with ``t(a) >= t(top)``.
  Times come from a second stream; a block entirely below ``t(top)`` needs none and
  skips its share of that stream with PCG64's ``advance``. What each stream consumes
  for a block never depends on ``top``: a block's marks are the same at every rate,
  which is what makes the hits nested and reproducible.
- above ``1/16`` a draw per cell is cheaper: a cell with no mark below ``t(1/16)`` has
  ``T = t(1/16) + Exp(1)`` (memorylessness), i.e. height ``1/16 + (15/16) V`` with
  ``V ~ U(0, 1)``, one raw draw per cell from the time stream.

Expected work: ``(1..2) * top * n`` marks plus ~40 Poisson draws. Uniforms are float64
with 53 random bits; no float32 thresholds anywhere, so rates down to ~1e-12 are exact
up to float64 rounding. Per-cell rates ``r(cell) <= top`` thin the marks (each mark
survives iff its time ``< t(rate(cell))``), which keeps non-uniform models exact and
nested.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

J = 40  # the bottom block covers rates [0, 2^-41)
DENSE_FROM = 1.0 / 16.0  # rates above this: one draw per cell
CHUNK = 1 << 20  # cells per dense batch (one raw draw per cell, so batching is invisible)
_U53 = 2.0**-53

# Block bounds in time, bottom-up: t(0)=0, t(2^-41), ..., t(1/32), t(1/16).
_BOUNDS = [0.0] + [-math.log1p(-(2.0**-j)) for j in range(J + 1, 3, -1)]
BLOCKS: tuple[tuple[float, float], ...] = tuple(zip(_BOUNDS[:-1], _BOUNDS[1:]))
T_DENSE = _BOUNDS[-1]  # time of DENSE_FROM: above it every block is drawn

# cells -> their own time thresholds t(rate), each <= t(top)
TimeFn = Callable[[np.ndarray], np.ndarray]


def rate_time(rate: float | np.ndarray) -> np.ndarray:
    """``t(r) = -log(1 - r)`` (``inf`` at ``r = 1``): hit at rate r iff ``T < t(r)``."""
    with np.errstate(divide="ignore"):
        return -np.log1p(-np.asarray(rate, dtype=np.float64))


def _uniform(raw: np.ndarray) -> np.ndarray:
    # top 53 bits -> uniform on [0, 1), exactly as numpy's Generator.random()
    return (raw >> np.uint64(11)).astype(np.float64) * _U53


def unique_sorted(x: np.ndarray) -> np.ndarray:
    # sort + adjacent compare; np.unique's hash path and boolean indexing are slower
    x = np.sort(x)
    first = np.empty(x.size, dtype=bool)
    first[:1] = True
    np.not_equal(x[1:], x[:-1], out=first[1:])
    return np.compress(first, x)


def sample_ladder(
    rng_marks: np.random.Generator,
    rng_times: np.random.Generator,
    n: int,
    top: float,
    *,
    time_of: TimeFn | None = None,
) -> np.ndarray:
    """Sorted unique int64 cells of ``range(n)`` hit at rate ``top``, or, with
    ``time_of``, each cell at its own rate ``r <= top`` given as ``t(r) = time_of(cells)``
    (a table lookup per mark, no logarithm)."""
    t_top = float(rate_time(top))
    # uint32 cells sort about twice as fast; the choice depends on n only (reproducible)
    dt = np.uint32 if n <= 1 << 32 else np.int64
    bg = rng_times.bit_generator
    skipped = 0  # time draws owed by untimed blocks, skipped with advance()
    all_marks: list[np.ndarray] = []  # for the dense part: every mark below 1/16
    kept: list[np.ndarray] = []  # cells of the marks that hit
    for ta, tb in BLOCKS:
        if ta >= t_top:
            break
        m = int(rng_marks.poisson(n * (tb - ta)))
        if m == 0:
            continue
        pos = rng_marks.integers(0, n, size=m, dtype=dt)
        all_marks.append(pos)
        if tb <= t_top and time_of is None:  # block below the top: every mark hits
            kept.append(pos)
            skipped += m
            continue
        if skipped:
            bg.advance(skipped)
            skipped = 0
        raw = bg.random_raw(m)
        if time_of is None:
            # t = ta + (tb - ta) U < t_top  <=>  53-bit integer of U < ceil(frac 2^53)
            k = np.uint64(math.ceil((t_top - ta) / (tb - ta) * 2.0**53))
            kept.append(np.compress((raw >> np.uint64(11)) < k, pos))
        else:  # each mark against its own cell's rate
            t = ta + (tb - ta) * _uniform(raw)
            kept.append(np.compress(t < time_of(pos), pos))

    if t_top > T_DENSE:  # then every block was drawn
        bg.advance(skipped)
        marked = unique_sorted(np.concatenate(all_marks)) if all_marks else np.empty(0, dt)
        for start in range(0, n, CHUNK):
            raw = bg.random_raw(min(CHUNK, n - start))
            cells = np.arange(start, start + raw.size, dtype=dt)
            r = top if time_of is None else -np.expm1(-time_of(cells))  # back to rates
            # height 1/16 + (15/16) V < r, for cells with no mark below t(1/16)
            hit = _uniform(raw) < (r - DENSE_FROM) / (1.0 - DENSE_FROM)
            lo, hi = np.searchsorted(marked, [start, start + raw.size])
            # cells with a mark below t(1/16) are decided by their marks
            hit[marked[lo:hi].astype(np.int64) - start] = False
            kept.append((np.flatnonzero(hit) + start).astype(dt))

    if not kept:
        return np.empty(0, np.int64)
    return unique_sorted(np.concatenate(kept)).astype(np.int64)
