"""Benchmark: drawing faults from an error map vs uniform flips at the same mean rate.

One tensor of uint8 codes (8 bits each) fills a synthetic chip-like map
(`mcel.faults.error_map.make_map`: log-normal per-cell probabilities, sigma 1) of as
many cells. At each mean rate, side by side and taking turns in every round
(``_harness.interleaved``), `mcel.faults.sample_mask` draws one trial's mask for:

- ``uniform``: `BitErrorModel` at that BER (native kernel where available);
- ``map``: the map, persistent (the default: the failing cells are drawn once per seed,
  each trial only places them);
- ``map_shift``: persistent, placed at a random word offset per trial;
- ``map_fresh``: failing cells drawn afresh in every trial (``persistent=0``).

Reports medians over rounds and the paired ratio of each map case over uniform;
prints a table and writes JSON (default ``docs/bench/maps.json``).

    .venv/bin/python benchmarks/bench_maps.py [--quick] [--out-json PATH]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from _harness import interleaved, machine_info, median, paired_ratio, standalone, table

from mcel.faults import BitErrorModel, parse_error_model, sample_mask
from mcel.faults.error_map import make_map, write_map

RATES = (1e-4, 1e-3, 1e-2)
BITS = 8
CASES = ("map", "map_shift", "map_fresh")


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    rows_, cols = (256, 4096) if quick else (2048, 4096)  # 1M or 8M cells
    rounds = 5 if quick else 15
    codes = torch.randint(0, 256, (rows_ * cols // BITS,), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "chip.npz")
        write_map(path, make_map(rows=rows_, cols=cols, cell_ber=1e-3, spread=1.0, seed=0))
        base = f"map={path},word_bits=32"
        for p in RATES:
            models = {"uniform": BitErrorModel(ber=p),
                      "map": parse_error_model(base).at_rate(p),
                      "map_shift": parse_error_model(base + ",shift=1").at_rate(p),
                      "map_fresh": parse_error_model(base + ",persistent=0").at_rate(p)}
            flips: dict[str, list[int]] = {k: [] for k in models}

            def draw(r: int, em: Any, out: list[int]) -> None:
                out.append(sample_mask(codes, BITS, em, seed=0, trial=r + 2).nbits_flipped)

            t = interleaved({k: lambda r, em=em, out=flips[k]: draw(r, em, out)
                             for k, em in models.items()}, rounds, warmup=1)
            row = {"p": p, "uniform_ms": round(median(t["uniform"]) * 1e3, 3),
                   "flips_uniform": int(median(flips["uniform"]))}
            for k in CASES:
                row[f"{k}_ms"] = round(median(t[k]) * 1e3, 3)
                row[f"{k}_over_uniform"] = round(paired_ratio(t[k], t["uniform"]), 2)
                row[f"flips_{k}"] = int(median(flips[k]))
            rows.append(row)
    return {"benchmark": "maps",
            "title": "Error maps vs uniform flips at the same mean rate",
            "machine": machine_info(device), "device": device, "n_codes": codes.numel(),
            "bits": BITS, "map_cells": rows_ * cols, "spread": 1.0, "repeats": rounds,
            "statistic": "median over rounds; X / uniform: median of per-round ratios",
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    rows = [[r["p"], f"{r['flips_uniform']:,}", r["uniform_ms"]]
            + [f"{r[f'{k}_ms']} ({r[f'{k}_over_uniform']:.2f}x)" for k in CASES]
            for r in result["rows"]]
    return (f"sample_mask: {result['n_codes']:,} uint8 codes x {result['bits']} bits over a "
            f"map of {result['map_cells']:,} cells, median of {result['repeats']}\n"
            + table(["mean rate", "flips", "uniform ms", "map ms (/ uniform)",
                     "map shift ms", "map fresh ms"], rows))


if __name__ == "__main__":
    standalone(run, "maps", format_table, __doc__)
