"""Benchmark: peak memory of an evaluation vs model + data + one copy of the weights.

Each phase runs in a fresh child process, so no phase inherits another's peak or the
memory the allocator kept: the child builds the vgg3 int4 model (as in bench_eval) and
loads the data, records its memory as the *baseline* (interpreter, torch, model, data),
then runs one phase and reports the peak above that baseline:

- ``clean``: one clean inference pass: the activations any inference needs;
- ``evaluate``: ``evaluate(model, x, y, [1e-3, 1e-2], trials=1)``: the stored image
  (codes + dequantized values), the samplers' masks and the state checks on top;
- ``naive``: one trial of the naive recipe of bench_eval (deep copy, per-bit draws).

On CPU memory is the resident set (Linux ``VmRSS``/``VmHWM``; the peak is reset through
``/proc/self/clear_refs`` after the baseline; tracemalloc cannot see torch's
allocations). On CUDA it is ``torch.cuda.max_memory_allocated`` above
``memory_allocated`` at the baseline. Goal: the evaluation's peak growth <= the clean
pass's + one copy of the quantized weights (float32) + their codes.

On CPU, clean and evaluate run once more with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed
at 128 KiB: then every large block goes back to the OS when freed, so the peak shows
the memory that is live, not what the allocator kept of freed temporaries. The goal is
judged on that live figure, the CPU analogue of CUDA's ``max_memory_allocated``; the
default-allocator figure is reported beside it (glibc raises its mmap threshold after
the first large free and then keeps freed blocks, which is allocator policy).

Batch 256 on 1,024 images (the activations of a 1024 batch are ~400 MiB on vgg3 and
would bury the weights' share in their noise); clean and evaluate run twice, alternating,
and the smaller peak counts (noise only ever adds memory).

    .venv/bin/python benchmarks/bench_memory.py [--device cuda] [--quick]
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from _harness import (
    goal,
    load_split,
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    standalone,
    table,
)

PHASES = ("clean", "evaluate", "naive")
N_IMAGES = 1_024
BATCH = 256
REPEATS = 2
MIB = 1 << 20


def _child(device: str, phase: str, n_images: int, data_dir: str | None) -> dict[str, Any]:
    from bench_eval import BERS, NAIVE_BER, build_model, clean_accuracy, naive_faulty_copy

    from mcel.evaluate import evaluate
    from mcel.quant import quant_layers

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build_model(dev)
    x, y, source = load_split("fashion-mnist", "test", n_images, data_dir)
    x, y = x.to(dev), y.to(dev)
    # load kernels, libraries and modules (the progress bar's too) before the baseline
    clean_accuracy(model, x[:8], y[:8])
    evaluate(model, x[:8], y[:8], BERS, trials=1, seed=0, batch_size=BATCH)
    gc.collect()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_dev = torch.cuda.memory_allocated(dev)
    base = rss_bytes()
    reset_ok = reset_peak_rss()

    if phase == "clean":
        clean_accuracy(model, x, y, BATCH)
    elif phase == "evaluate":
        evaluate(model, x, y, BERS, trials=1, seed=0, batch_size=BATCH)
    else:
        clean_accuracy(naive_faulty_copy(model, NAIVE_BER, torch.Generator(dev).manual_seed(0)),
                       x, y, BATCH)

    out: dict[str, Any] = {
        "phase": phase,
        "baseline_rss": base,
        "peak_rss_growth": peak_rss_bytes() - base if reset_ok else None,
        "peak_reset_ok": reset_ok,
        "model_bytes": sum(t.numel() * t.element_size()
                           for t in list(model.parameters()) + list(model.buffers())),
        "data_bytes": x.numel() * x.element_size() + y.numel() * y.element_size(),
        "quantized_weights": sum(layer.weight.numel() for _, layer in quant_layers(model)),
        "data": source,
    }
    if cuda:
        torch.cuda.synchronize(dev)
        out["baseline_device"] = base_dev
        out["peak_device_growth"] = torch.cuda.max_memory_allocated(dev) - base_dev
    return out


LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _spawn(phase: str, device: str, data_dir: str | None,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    import os

    here = Path(__file__).resolve()
    cmd = [sys.executable, str(here), "--child", phase, "--device", device,
           "--images", str(N_IMAGES)] + (["--data-dir", data_dir] if data_dir else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=here.parent, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"memory child '{phase}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for i in range(REPEATS):
        for phase in PHASES:
            if phase == "naive" and i > 0:  # only a contrast: once is enough
                continue
            runs[phase].append(_spawn(phase, device, data_dir))
    cuda = torch.device(device).type == "cuda"
    key = "peak_device_growth" if cuda else "peak_rss_growth"

    def smallest(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in rs if r.get(key) is not None]
        best = dict(min(ok, key=lambda r: r[key]) if ok else rs[0])
        best["all_peaks"] = [r.get(key) for r in rs]
        return best

    phases = {p: smallest(rs) for p, rs in runs.items()}

    first = phases["clean"]
    n_w = first["quantized_weights"]
    weight_copy = n_w * 4  # float32 values of every quantized weight
    codes = n_w * 1  # uint8 codes (int4 codes stored one per byte)
    clean, ev, naive = (phases[p][key] for p in PHASES)
    res: dict[str, Any] = {
        "benchmark": "memory",
        "title": "Peak memory of an evaluation",
        "machine": machine_info(device),
        "model": "vgg3 int4, eval mode",
        "data": first["data"],
        "images": N_IMAGES,
        "batch_size": BATCH,
        "repeats": REPEATS,
        "measure": ("torch.cuda.max_memory_allocated above the baseline" if cuda else
                    "resident set (VmHWM - VmRSS at the baseline), one fresh process per phase"),
        "baseline_rss_mib": round(first["baseline_rss"] / MIB, 1),
        "model_mib": round(first["model_bytes"] / MIB, 2),
        "data_mib": round(first["data_bytes"] / MIB, 2),
        "weight_copy_mib": round(weight_copy / MIB, 2),
        "codes_mib": round(codes / MIB, 2),
        "phases": phases,
    }
    if None in (clean, ev, naive):
        res["note"] = "peak could not be reset (/proc/self/clear_refs); no growth figures"
        return res
    budget = clean + weight_copy + codes
    res |= {
        "peak_growth_mib": {p: round(phases[p][key] / MIB, 1) for p in PHASES},
        "evaluate_extra_over_clean_mib": round((ev - clean) / MIB, 1),
        "evaluate_extra_in_weight_copies": round((ev - clean) / weight_copy, 2),
        "naive_extra_over_clean_mib": round((naive - clean) / MIB, 1),
        "naive_extra_in_weight_copies": round((naive - clean) / weight_copy, 2),
        "budget_mib": round(budget / MIB, 1),
        "goal": goal(ev / budget, 1.0),
    }
    if not cuda:  # judged on live memory below; this is the default allocator's view
        res["default_allocator_ratio"] = res.pop("goal")["value"]
    if not cuda:
        live_runs = {p: [_spawn(p, device, data_dir, LIVE_ENV)["peak_rss_growth"]
                         for _ in range(REPEATS)] for p in ("clean", "evaluate")}
        live = {p: None if None in v else min(v) for p, v in live_runs.items()}
        if None not in live.values():
            res["live_memory_check"] = {
                "env": " ".join(f"{k}={v}" for k, v in LIVE_ENV.items()),
                "peak_growth_mib": {p: round(v / MIB, 1) for p, v in live.items()},
                "evaluate_extra_over_clean_mib": round((live["evaluate"] - live["clean"]) / MIB, 1),
                "evaluate_extra_in_weight_copies": round(
                    (live["evaluate"] - live["clean"]) / weight_copy, 2),
                "budget_mib": round((live["clean"] + weight_copy + codes) / MIB, 1),
            }
            res["goal"] = goal(live["evaluate"] / (live["clean"] + weight_copy + codes), 1.0)
    if cuda:
        res["host_rss_growth_mib"] = {p: round((phases[p]["peak_rss_growth"] or 0) / MIB, 1)
                                      for p in PHASES}
    return res


def format_result(res: dict[str, Any]) -> str:
    if "peak_growth_mib" not in res:
        return res.get("note", "no memory figures")
    g = res["peak_growth_mib"]
    rows = [[p, g[p]] for p in PHASES]
    return (f"memory: {res['model']}, {res['images']} images, {res['measure']}\n"
            f"baseline {res['baseline_rss_mib']} MiB (model {res['model_mib']}, data "
            f"{res['data_mib']}); one weight copy {res['weight_copy_mib']} MiB, codes "
            f"{res['codes_mib']} MiB\n"
            + table(["phase", "peak growth MiB"], rows)
            + f"\nevaluate over clean: {res['evaluate_extra_over_clean_mib']} MiB "
              f"({res['evaluate_extra_in_weight_copies']} weight copies); naive over clean: "
              f"{res['naive_extra_over_clean_mib']} MiB; budget {res['budget_mib']} MiB"
            + ("" if "live_memory_check" not in res else
               f"\nlive memory ({res['live_memory_check']['env']}): evaluate over clean "
               f"{res['live_memory_check']['evaluate_extra_over_clean_mib']} MiB "
               f"({res['live_memory_check']['evaluate_extra_in_weight_copies']} weight copies)")
            + (f"\ngoal (evaluate <= budget): {res['goal']['value']:.3f}, "
               f"met: {res['goal']['met']}" if "goal" in res else ""))


if __name__ == "__main__":
    if "--child" in sys.argv:
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("--child", choices=PHASES, required=True)
        ap.add_argument("--device", default="cpu")
        ap.add_argument("--images", type=int, default=N_IMAGES)
        ap.add_argument("--data-dir", default=None)
        a = ap.parse_args()
        print(json.dumps(_child(a.device, a.child, a.images, a.data_dir)))
    else:
        standalone(run, "memory", format_result, __doc__)
