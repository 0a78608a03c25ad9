"""Benchmark: Monte-Carlo evaluation throughput under persistent weight faults.

Model: vgg3 (``create_model("vgg3", 10, (1, 28, 28))``, int4, eval mode; untrained:
throughput does not depend on the weights' values). Data: the Fashion-MNIST test set
(10k images; 2k with ``--quick``), random tensors of that shape if the files are
missing. Batch size 1024 everywhere, all inference under ``torch.inference_mode``.

Cases, taking turns in every round (see ``_harness.interleaved``):

- ``clean``: clean inference as a user runs it, ``model(x)`` batch by batch;
- ``evaluate``: ``mcel.evaluate.evaluate(model, x, y, [1e-3, 1e-2], trials=1)``. It
  reports the wall time of its own clean pass (the model reading the stored image's
  clean weights) and of every trial (inject -> forward -> undo), so the overhead of a
  faulty trial over a clean pass is measured within one call;
- ``naive``: one trial the way common fault-injection scripts do it: deep-copy the
  model, re-quantize every layer from its float weights, draw one uniform number per
  stored bit (``torch.rand(numel * bits) < p``), XOR, dequantize the whole tensor,
  write it into the copy (through the layer's ``weight_override``, as re-quantizing a
  faulty tensor would change its scale), and run inference.

Then, separately and cheaply, the fault set-up alone: ``MemoryImage.inject`` +
``restore`` vs the naive copy + re-quantize + per-bit draws, without inference.

    .venv/bin/python benchmarks/bench_eval.py [--device cuda] [--quick]
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from _harness import (
    goal,
    interleaved,
    load_split,
    machine_info,
    median,
    paired_ratio,
    standalone,
    summary,
    sync_fn,
    table,
)

from mcel.engine import MemoryImage
from mcel.evaluate import evaluate
from mcel.faults import BitErrorModel
from mcel.models import create_model
from mcel.quant import QuantSpec, quant_layers, quantize_model

BERS = (1e-3, 1e-2)
NAIVE_BER = 1e-2
BATCH = 1024
GOAL_OVERHEAD = 0.10


def build_model(device: str | torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = quantize_model(create_model("vgg3", 10, (1, 28, 28)), QuantSpec("int4"))
    return model.to(device).eval()


@torch.inference_mode()
def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = BATCH) -> float:
    """Clean inference as users write it (same batching as `evaluate`)."""
    pred = torch.cat([model(x[i:i + batch_size]).argmax(1)
                      for i in range(0, len(x), batch_size)])
    return (pred == y).float().mean().item()


@torch.no_grad()
def naive_faulty_copy(model: torch.nn.Module, p: float,
                      gen: torch.Generator) -> torch.nn.Module:
    """The common recipe: copy, re-quantize from float, one random number per bit."""
    faulty = copy.deepcopy(model)
    for _, layer in quant_layers(faulty):
        qt = layer.quantized_weight()
        n, bits = qt.codes.numel(), qt.bits
        dev = qt.codes.device
        flips = torch.rand(n * bits, device=dev, generator=gen) < p
        xor = (flips.view(n, bits).to(torch.int64) << torch.arange(bits, device=dev)).sum(1)
        codes = (qt.codes.reshape(-1).to(torch.int64) ^ xor).view_as(qt.codes)
        layer.weight_override = qt.table()[codes] * qt.scale
    return faulty


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    sync = sync_fn(dev)
    n_images = 2_000 if quick else 10_000
    rounds = 3
    # the slow baselines take part in fewer rounds (the naive recipe "for fewer trials")
    naive_rounds = 2 if quick else 1
    plain_rounds = 3 if quick else 2
    x, y, source = load_split("fashion-mnist", "test", n_images, data_dir)
    x, y = x.to(dev), y.to(dev)
    model = build_model(dev)
    n_weights = sum(layer.weight.numel() for _, layer in quant_layers(model))
    gen = torch.Generator(device=dev).manual_seed(0)

    # warm-up outside the timed rounds: allocator, kernels, the samplers' first calls
    clean_accuracy(model, x[:BATCH], y[:BATCH])
    evaluate(model, x[:BATCH], y[:BATCH], BERS, trials=1, seed=12345)

    def case_clean(r: int) -> None:
        clean_accuracy(model, x, y)

    def case_evaluate(r: int) -> dict[str, float]:
        t0 = time.perf_counter()
        res = evaluate(model, x, y, BERS, trials=1, seed=max(r, 0), batch_size=BATCH)
        wall = time.perf_counter() - t0
        out = {"clean": res.clean_seconds}
        for br in res.results:
            out[f"ber={br.ber:g}"] = sum(br.trial_seconds) / len(br.trial_seconds)
        out["fixed"] = wall - res.clean_seconds - sum(sum(br.trial_seconds) for br in res.results)
        return out

    def case_naive(r: int) -> dict[str, float]:
        t0 = time.perf_counter()
        faulty = naive_faulty_copy(model, NAIVE_BER, gen)
        sync()
        setup = time.perf_counter() - t0
        clean_accuracy(faulty, x, y)
        return {"setup": setup}

    times = interleaved({"clean": case_clean, "evaluate": case_evaluate, "naive": case_naive},
                        rounds, warmup=0, sync=sync,
                        rounds_of={"naive": naive_rounds, "clean": plain_rounds})

    # the fault set-up alone, many rounds (cheap): ours vs the naive recipe
    em = {b: BitErrorModel(ber=b) for b in BERS}
    with MemoryImage(model) as image:

        def ours(b: float):
            def fn(r: int) -> None:
                image.inject(em[b], seed=0, trial=r + 1)
                image.restore()
            return fn

        setup_cases = {f"ours ber={b:g}": ours(b) for b in BERS}
        setup_cases[f"naive ber={NAIVE_BER:g}"] = lambda r: naive_faulty_copy(model, NAIVE_BER, gen)
        setup_times = interleaved(setup_cases, 3 if quick else 5, warmup=1, sync=sync)

    rows = []
    for b in BERS:
        trial = times[f"evaluate.ber={b:g}"]
        vs_image = paired_ratio(trial, times["evaluate.clean"]) - 1
        vs_plain = paired_ratio(trial, times["clean"]) - 1
        setup_s = median(setup_times[f"ours ber={b:g}"])
        row = {
            "ber": b,
            "trial_seconds": summary(trial),
            "trials_x_images_per_s": round(n_images / median(trial), 1),
            "overhead_vs_clean_pass_in_evaluate": round(vs_image, 4),
            "overhead_vs_plain_clean_inference": round(vs_plain, 4),
            # judged on the paired comparison inside one evaluate call: same code path,
            # same weight tensors, adjacent in time
            "goal_overhead": goal(vs_image, GOAL_OVERHEAD),
            # the part of a trial that a clean pass does not do, timed on its own over
            # many repeats: far less noisy than the difference of two forward passes
            "setup_over_clean_pass": round(setup_s / median(times["evaluate.clean"]), 4),
            "setup_ms_inject_restore": summary(setup_times[f"ours ber={b:g}"], 1e3, 2),
        }
        if b == NAIVE_BER:
            row["naive_trial_seconds"] = summary(times["naive"])
            row["naive_trials_x_images_per_s"] = round(n_images / median(times["naive"]), 1)
            row["naive_trials"] = len(times["naive"])
            row["speedup_over_naive_end_to_end"] = round(paired_ratio(times["naive"], trial), 2)
            naive_setup = setup_times[f"naive ber={NAIVE_BER:g}"]
            # the same from the precisely timed parts: (naive set-up + pass) / (ours + pass)
            clean_pass = median(times["evaluate.clean"])
            row["speedup_over_naive_end_to_end_from_parts"] = round(
                (median(naive_setup) + clean_pass) / (setup_s + clean_pass), 3)
            row["naive_setup_ms"] = summary(naive_setup, 1e3, 1)
            row["speedup_over_naive_setup"] = round(
                median(naive_setup) / median(setup_times[f"ours ber={b:g}"]), 1)
        rows.append(row)

    return {
        "benchmark": "eval",
        "title": "Evaluation throughput under persistent weight faults",
        "machine": machine_info(dev),
        "model": "vgg3 int4 (twos_complement, per-tensor), eval mode, untrained weights",
        "quantized_weights": n_weights,
        "stored_bits": n_weights * 4,
        "data": source,
        "images": n_images,
        "batch_size": BATCH,
        "rounds": rounds,
        "naive_rounds": naive_rounds,
        "plain_clean_rounds": plain_rounds,
        "trials_per_evaluate_call": 1,
        "statistic": "median over rounds; ratios are medians of per-round ratios",
        "clean_seconds_plain": summary(times["clean"]),
        "clean_seconds_in_evaluate": summary(times["evaluate.clean"]),
        "clean_images_per_s": round(n_images / median(times["clean"]), 1),
        "evaluate_fixed_seconds_per_call": summary(times["evaluate.fixed"]),
        "rows": rows,
    }


def format_result(res: dict[str, Any]) -> str:
    head = (f"evaluation: {res['model']}, {res['images']} images ({res['data']}), "
            f"batch {res['batch_size']}, {res['rounds']} rounds on {res['machine']['device']}\n"
            f"clean: {res['clean_seconds_plain']['median']:.3f} s plain, "
            f"{res['clean_seconds_in_evaluate']['median']:.3f} s inside evaluate; "
            f"fixed cost per evaluate call "
            f"{res['evaluate_fixed_seconds_per_call']['median']:.3f} s")
    rows = []
    for r in res["rows"]:
        rows.append([r["ber"], r["trial_seconds"]["median"], r["trials_x_images_per_s"],
                     f"{100 * r['overhead_vs_clean_pass_in_evaluate']:+.1f}%",
                     f"{100 * r['overhead_vs_plain_clean_inference']:+.1f}%",
                     r["goal_overhead"]["met"], r["setup_ms_inject_restore"]["median"],
                     f"{100 * r['setup_over_clean_pass']:.1f}%",
                     r.get("naive_setup_ms", {}).get("median", "-"),
                     r.get("speedup_over_naive_setup", "-"),
                     r.get("speedup_over_naive_end_to_end", "-")])
    return head + "\n" + table(
        ["BER", "trial s", "trials*img/s", "ovh vs eval-clean", "ovh vs plain", "<=10%",
         "inject+restore ms", "setup/clean", "naive setup ms", "setup x", "end-to-end x"], rows)


if __name__ == "__main__":
    standalone(run, "eval", format_result, __doc__)
