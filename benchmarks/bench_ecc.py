"""Benchmark: one trial's injection with SEC-DED correction (``ecc=64``) and with bursts of
adjacent flips (``burst=4``) vs plain uniform flips.

The full-width int4 VGG3 of the Fashion-MNIST study (6.5 M weights, 26 M stored bits) in
a `mcel.engine.MemoryImage`. At each BER, side by side and taking turns in every round
(``_harness.interleaved``), one trial's ``image.inject`` then ``image.restore``:

- ``plain``: uniform flips, the engine's usual trial;
- ``ecc64``: the same flips through SEC-DED over 64-bit words (`mcel.faults.ecc`): the
  flips' addresses, their words, the check bits of words with one flip, the rebuilt
  masks;
- ``burst4``: flips in bursts of 4 adjacent bits at the same per-bit rate (numpy path:
  burst starts, then the bits they cover);
- ``burst4_ecc64i4``: those bursts through SEC-DED over 64-bit words interleaved 4 ways.

Reports medians over rounds, paired ratios over plain, and the residual rates; the
forward passes of a trial (hundreds of ms for this model on 10,000 images) come on top
of both. Prints a table and writes JSON (default ``docs/bench/ecc.json``).

    .venv/bin/python benchmarks/bench_ecc.py [--quick] [--out-json PATH]
"""

from __future__ import annotations

from typing import Any

import torch
from _harness import interleaved, machine_info, median, paired_ratio, standalone, table

from mcel.engine import MemoryImage
from mcel.faults import BitErrorModel
from mcel.models import create_model
from mcel.quant import quantize_model

RATES = (1e-4, 1e-3, 1e-2)


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    width = 0.25 if quick else 1.0
    model = quantize_model(create_model("vgg3", 10, (1, 28, 28), width=width), "int4")
    model = model.to(device).eval()
    rounds = 5 if quick else 15
    rows = []
    with MemoryImage(model) as image:
        for p in RATES:
            models = {"plain": BitErrorModel(ber=p), "ecc64": BitErrorModel(ber=p, ecc=64),
                      "burst4": BitErrorModel(ber=p, burst=4),
                      "burst4_ecc64i4": BitErrorModel(ber=p, burst=4, ecc=64, ecc_interleave=4)}
            rates: dict[str, list[float]] = {k: [] for k in models}

            def trial(r: int, em: BitErrorModel, out: list[float]) -> None:
                out.append(image.inject(em, seed=0, trial=r + 2).empirical_rate)
                image.restore()

            t = interleaved({k: lambda r, em=em, out=rates[k]: trial(r, em, out)
                             for k, em in models.items()}, rounds, warmup=1)
            row: dict[str, Any] = {"p": p, "plain_ms": round(median(t["plain"]) * 1e3, 2)}
            for k in list(models)[1:]:
                row[f"{k}_ms"] = round(median(t[k]) * 1e3, 2)
                row[f"{k}_over_plain"] = round(paired_ratio(t[k], t["plain"]), 2)
            row["residual_rate"] = float(f"{median(rates['ecc64']):.3g}")
            row["burst4_ecc64i4_residual_rate"] = float(f"{median(rates['burst4_ecc64i4']):.3g}")
            rows.append(row)
        bits = image.total_bits
    return {"benchmark": "ecc",
            "title": "SEC-DED correction and bursts in a trial (ecc=64, burst=4)",
            "machine": machine_info(device), "device": device, "model": f"vgg3 width {width}",
            "stored_bits": bits, "repeats": rounds,
            "statistic": "median over rounds; ecc64 / plain: median of per-round ratios",
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    rows = [[r["p"], r["plain_ms"], r["ecc64_ms"], f"{r['ecc64_over_plain']:.2f}x",
             r["residual_rate"], r["burst4_ms"], f"{r['burst4_over_plain']:.2f}x",
             f"{r['burst4_ecc64i4_over_plain']:.2f}x", r["burst4_ecc64i4_residual_rate"]]
            for r in result["rows"]]
    return (f"inject + restore: {result['model']} int4, {result['stored_bits']:,} stored "
            f"bits, median of {result['repeats']}\n"
            + table(["BER", "plain ms", "ecc=64 ms", "ecc / plain", "residual rate",
                     "burst=4 ms", "burst / plain", "burst+ecc i4 / plain",
                     "burst+ecc i4 residual"], rows))


if __name__ == "__main__":
    standalone(run, "ecc", format_table, __doc__)
