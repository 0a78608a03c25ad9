"""Benchmark: one in-place bit-error injection into 10M uint8 codes (8 bits each).

Side by side, in the same process and on the same codes, taking turns in every round
(see ``_harness.interleaved``):

- ``sparse``: `mcel.faults.inject_` (exact ladder sampler + XOR), cost ~ flips, with the
  native kernel (`mcel.faults.native`) where it is available;
- ``sparse_np``: the same with the kernel off (numpy path; bit-identical masks);
- ``sample``: `mcel.faults.sample_mask` alone (the part of ``sparse`` that draws);
- ``draws``: as many raw PCG64 draws (numpy ``random_raw``) as the sampler's streams
  consume on average (a 32-bit cell per mark, a 64-bit time per timed mark): the floor
  of any sampler that reproduces these streams;
- ``sort``: numpy's sort of as many uint32 bit positions as flip (the sampler sorts its
  marks to merge duplicates and group bits per code);
- ``xor``: `mcel.faults.apply_mask_` of a mask drawn beforehand (another per round, so
  its codes are as cold in the cache as a fresh injection's): the touched codes only,
  the floor of any in-place method;
- ``dense``: the obvious baseline, one uniform number per bit
  (``torch.rand(N * 8) < p``), packed into a per-code XOR word and applied;
- ``clone``: ``codes.clone()``, the cost of merely copying the tensor; on CPU also
  ``copy_1t``, a single-threaded copy (``numpy.copy``): on a busy machine a
  multi-threaded copy waits for descheduled threads, and the faster of the two copies
  is the baseline (the strict choice).

``dense`` runs in rounds of its own, after the others: it allocates and frees hundreds
of MB, after which the allocator hands a clone fresh pages to fault in, which would make
the copy baseline look slower than it is. Reports medians over rounds, the paired
ratio sparse/copy with its per-round range, and dense/sparse
(goal: sparse/copy <= 1 for p <= 1e-3); prints a table and writes JSON (default
``docs/bench/inject.json``).

    .venv/bin/python benchmarks/bench_inject.py [--device cuda] [--quick] [--out-json PATH]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _harness import (
    goal,
    interleaved,
    machine_info,
    median,
    paired_ratio,
    standalone,
    summary,
    sync_fn,
    table,
)

from mcel.faults import BitErrorModel, FaultKey, apply_mask_, inject_, native, sample_mask

RATES = (1e-4, 1e-3, 1e-2)
BITS = 8
GOAL_BELOW = 1e-3  # the clone goal applies at p <= this


def dense_inject_(codes: torch.Tensor, p: float) -> None:
    """Baseline: a uniform number per bit, then the same sparse XOR as `apply_mask_`."""
    flips = torch.rand(codes.numel(), BITS, device=codes.device) < p
    weights = 1 << torch.arange(BITS, device=codes.device)
    xor = (flips.to(torch.int64) * weights).sum(1)
    index = xor.nonzero().squeeze(1)
    flat = codes.view(-1)
    flat[index] ^= xor[index].to(codes.dtype)


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    n = 1_000_000 if quick else 10_000_000
    rounds = 3 if quick else 11
    dense_rounds = 2 if quick else 3
    dev = torch.device(device)
    sync = sync_fn(dev)
    codes = torch.randint(0, 256, (n,), dtype=torch.uint8, device=dev,
                          generator=torch.Generator(dev).manual_seed(0))
    original = codes.clone()
    rows = []
    for p in RATES:
        model = BitErrorModel(ber=p)
        flips: list[int] = []

        def sparse(r: int, model: BitErrorModel = model, flips: list[int] = flips) -> None:
            mask = inject_(codes, BITS, model, FaultKey(seed=0, trial=r + 1))
            flips.append(mask.nbits_flipped)

        def sparse_np(r: int, model: BitErrorModel = model) -> None:
            with native.disabled():
                inject_(codes, BITS, model, FaultKey(seed=0, trial=r + 1))

        def sample(r: int, model: BitErrorModel = model) -> None:
            sample_mask(codes, BITS, model, seed=0, trial=r + 1)

        marks, timed = native.expected_draws(n * BITS, p)
        n_draws = int(marks / 2 + timed)
        bg = np.random.PCG64(0)

        # a mask of its own per round (drawn beforehand), so the codes it touches are
        # as cold in the cache as those of a fresh injection
        premasks = {r: sample_mask(codes, BITS, model, seed=1, trial=r + 1)
                    for r in range(-1, rounds)}
        unsorted = np.random.default_rng(0).integers(0, n * BITS, size=int(n * BITS * p),
                                                     dtype=np.uint32)
        cases = {"sparse": sparse, "sparse_np": sparse_np, "sample": sample,
                 "draws": lambda r, k=n_draws, g=bg: g.random_raw(k),
                 "sort": lambda r, u=unsorted: np.sort(u),
                 "xor": lambda r, m=premasks: apply_mask_(codes, m[r]),
                 "clone": lambda r: codes.clone()}
        if dev.type == "cpu":
            cases["copy_1t"] = lambda r: np.copy(codes.numpy())
        t = interleaved(cases, rounds, warmup=1, sync=sync)
        t.update(interleaved({"dense": lambda r, p=p: dense_inject_(codes, p)}, dense_rounds,
                             warmup=0, sync=sync))
        codes.copy_(original)
        ms = {k: median(v) * 1e3 for k, v in t.items()}
        base = min(("clone", "copy_1t"), key=lambda k: ms.get(k, float("inf")))
        sparse_over_clone = paired_ratio(t["sparse"], t[base])
        row = {
            "p": p,
            "flips_median": int(np.median(flips)),
            "sparse_ms": round(ms["sparse"], 3),
            "sparse_numpy_ms": round(ms["sparse_np"], 3),
            "numpy_over_sparse": round(paired_ratio(t["sparse_np"], t["sparse"]), 2),
            "sample_ms": round(ms["sample"], 3),
            "draws": n_draws,
            "draws_ms": round(ms["draws"], 3),
            "draws_over_clone": round(paired_ratio(t["draws"], t[base]), 2),
            "sort_ms": round(ms["sort"], 3),
            "sort_over_clone": round(paired_ratio(t["sort"], t[base]), 2),
            "xor_ms": round(ms["xor"], 3),
            "xor_over_clone": round(paired_ratio(t["xor"], t[base]), 2),
            "dense_ms": round(ms["dense"], 3),
            "clone_ms": round(ms["clone"], 3),
            "copy_1t_ms": round(ms["copy_1t"], 3) if "copy_1t" in ms else None,
            "copy_baseline": base,
            "sparse_ms_range": summary(t["sparse"], 1e3, 3),
            "clone_ms_range": summary(t["clone"], 1e3, 3),
            "dense_over_sparse": round(ms["dense"] / ms["sparse"], 2),
            "sparse_over_clone_range": [round(min(a / b for a, b in zip(t["sparse"], t[base])), 2),
                                        round(max(a / b for a, b in zip(t["sparse"], t[base])), 2)],
            "sparse_over_clone": round(sparse_over_clone, 2),
        }
        if p <= GOAL_BELOW:
            row["goal_sparse_over_clone"] = goal(sparse_over_clone, 1.0)
        rows.append(row)
    # sanity: the sparse path is an involution on the codes
    mask = inject_(codes, BITS, BitErrorModel(ber=1e-3), FaultKey(1))
    apply_mask_(codes, mask)
    assert torch.equal(codes, original)
    return {
        "benchmark": "inject",
        "title": "Injection at the limit: in-place sparse injection vs clone and dense",
        "machine": machine_info(dev),
        "device": str(dev),
        "sampler": "native kernel" if native.load() is not None else native.status(),
        "n_codes": n,
        "bits": BITS,
        "repeats": rounds,
        "dense_repeats": dense_rounds,
        "statistic": "median over rounds; sparse/copy: median of per-round ratios; "
                     "dense/sparse: ratio of medians",
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [[r["p"], f"{r['flips_median']:,}", r["sparse_ms"], r["sparse_numpy_ms"],
             r["sample_ms"], r["draws_ms"], r.get("xor_ms", "-"), r["dense_ms"],
             r["clone_ms"], r["copy_1t_ms"] if r.get("copy_1t_ms") is not None else "-",
             f"{r['dense_over_sparse']:.1f}", f"{r['sparse_over_clone']:.2f}",
             r.get("goal_sparse_over_clone", {}).get("met", "-")] for r in result["rows"]]
    return (f"inject_: {result['n_codes']:,} uint8 codes x {result['bits']} bits on "
            f"{result['device']}, median of {result['repeats']}\n"
            + f"{result['sampler']}\n"
            + table(["p", "flips", "sparse ms", "numpy path ms", "(sample ms)", "(draws ms)",
                     "(xor ms)", "dense ms", "clone ms",
                     "copy 1t ms", "dense/sparse", "sparse/copy", "<=1"], rows))


if __name__ == "__main__":
    standalone(run, "inject", format_table, __doc__)
