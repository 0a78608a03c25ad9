"""Benchmark: several Monte-Carlo trials in one batched forward (``trial_batch``).

``evaluate(..., trial_batch=K)`` stacks K faulty weight sets (one weight copy per
trial) and runs the K trials as one ``torch.func.vmap`` forward. Side by side, taking
turns in every round, on the same model and data with the same faults:

- ``k1``: ``evaluate(model, x, y, [BER], trials=T)``, one trial per forward;
- ``kK``: the same with ``trial_batch=K``.

Two models: the small int4 MLP (784-256-256-10) on 1,000 test images, where a trial's
fixed costs (Python, small kernels) dominate, and the int4 vgg3 of bench_eval on 1,000
images, where the convolutions dominate. Reports trials per second and the paired
ratio K/1 of seconds per trial (< 1: batching is faster). Results are equal by
construction (tested in tests/test_engine.py); this only measures speed. The point of
batching is a GPU, which small models cannot fill one trial at a time; on CPU the
figures show what it costs or gains there.

    .venv/bin/python benchmarks/bench_batch.py [--device cuda] [--quick]
"""

from __future__ import annotations

from typing import Any

import torch
from _harness import (
    interleaved,
    load_split,
    machine_info,
    median,
    paired_ratio,
    standalone,
    sync_fn,
    table,
)

from mcel.evaluate import evaluate
from mcel.models import create_model
from mcel.quant import QuantSpec, quantize_model

BER = 1e-2
N_IMAGES = 1_000


def _model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(create_model(name, 10, (1, 28, 28)), QuantSpec("int4")).to(device).eval()


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    sync = sync_fn(dev)
    k = 8 if dev.type == "cpu" else 32
    trials = k * (1 if quick else 2)
    rounds = 2 if quick else 3
    x, y, source = load_split("fashion-mnist", "test", N_IMAGES, data_dir)
    x, y = x.to(dev), y.to(dev)
    rows = []
    for name in ("mlp", "vgg3"):
        model = _model(name, dev)

        def once(r: int, kk: int, model: torch.nn.Module = model) -> None:
            evaluate(model, x, y, [BER], trials=trials, seed=max(r, 0), trial_batch=kk,
                     batch_size=N_IMAGES)

        t = interleaved({"k1": lambda r, f=once: f(r, 1), "kK": lambda r, f=once: f(r, k)},
                        rounds, warmup=1, sync=sync)
        per = {c: median(v) / trials for c, v in t.items()}
        rows.append({
            "model": f"{name} int4", "trials": trials, "trial_batch": k,
            "ms_per_trial_k1": round(per["k1"] * 1e3, 2),
            "ms_per_trial_kK": round(per["kK"] * 1e3, 2),
            "trials_per_s_k1": round(1 / per["k1"], 1),
            "trials_per_s_kK": round(1 / per["kK"], 1),
            "batched_over_single": round(paired_ratio(t["kK"], t["k1"]), 3),
        })
    return {
        "benchmark": "batch",
        "title": "Batched trials: trial_batch=K vs one trial per forward",
        "machine": machine_info(dev),
        "device": str(dev),
        "data": source,
        "images": N_IMAGES,
        "ber": BER,
        "repeats": rounds,
        "statistic": "median over rounds; ratio is the median of per-round ratios",
        "rows": rows,
    }


def format_result(res: dict[str, Any]) -> str:
    rows = [[r["model"], r["trials"], r["trial_batch"], r["ms_per_trial_k1"],
             r["ms_per_trial_kK"], r["batched_over_single"]] for r in res["rows"]]
    return (f"batched trials on {res['device']}, {res['images']} images, BER {res['ber']:g}, "
            f"median of {res['repeats']}\n"
            + table(["model", "trials", "K", "ms/trial K=1", "ms/trial K", "K / 1"], rows))


if __name__ == "__main__":
    standalone(run, "batch", format_result, __doc__)
