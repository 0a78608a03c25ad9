"""Benchmark: one trial's injection with SEC-DED correction (``ecc=64``) vs without.

The full-width int4 VGG3 of the Fashion-MNIST study (6.5 M weights, 26 M stored bits) in
a `mcel.engine.MemoryImage`. At each BER, side by side and taking turns in every round
(``_harness.interleaved``), one trial's ``image.inject`` then ``image.restore``:

- ``plain``: uniform flips, the engine's usual trial;
- ``ecc64``: the same flips through SEC-DED over 64-bit words (`mcel.faults.ecc`): the
  flips' addresses, their words, the check bits of words with one flip, the rebuilt
  masks.

Reports medians over rounds, the paired ratio ecc64 / plain, and the residual rate; the
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
            models = {"plain": BitErrorModel(ber=p), "ecc64": BitErrorModel(ber=p, ecc=64)}
            rates: dict[str, list[float]] = {k: [] for k in models}

            def trial(r: int, em: BitErrorModel, out: list[float]) -> None:
                out.append(image.inject(em, seed=0, trial=r + 2).empirical_rate)
                image.restore()

            t = interleaved({k: lambda r, em=em, out=rates[k]: trial(r, em, out)
                             for k, em in models.items()}, rounds, warmup=1)
            rows.append({"p": p, "plain_ms": round(median(t["plain"]) * 1e3, 2),
                         "ecc64_ms": round(median(t["ecc64"]) * 1e3, 2),
                         "ecc64_over_plain": round(paired_ratio(t["ecc64"], t["plain"]), 2),
                         "residual_rate": float(f"{median(rates['ecc64']):.3g}")})
        bits = image.total_bits
    return {"benchmark": "ecc", "title": "SEC-DED correction in a trial (ecc=64)",
            "machine": machine_info(device), "device": device, "model": f"vgg3 width {width}",
            "stored_bits": bits, "repeats": rounds,
            "statistic": "median over rounds; ecc64 / plain: median of per-round ratios",
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    rows = [[r["p"], r["plain_ms"], r["ecc64_ms"], f"{r['ecc64_over_plain']:.2f}x",
             r["residual_rate"]] for r in result["rows"]]
    return (f"inject + restore: {result['model']} int4, {result['stored_bits']:,} stored "
            f"bits, median of {result['repeats']}\n"
            + table(["BER", "plain ms", "ecc=64 ms", "ecc / plain", "residual rate"], rows))


if __name__ == "__main__":
    standalone(run, "ecc", format_table, __doc__)
