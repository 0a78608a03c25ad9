"""Benchmark: forward precision fp32 vs bf16 autocast, in training and in evaluation.

`mcel.precision` runs the forward under ``torch.autocast(device, bfloat16)`` (conv models
in channels_last when training; the loss, the optimizer and the stored codes stay fp32).
bf16 pays only on hardware with bf16 units (x86: ``avx512_bf16`` / AMX; NVIDIA: Ampere
and newer); elsewhere autocast emulates it and it is *slower* than fp32. The machine
facts that decide which (``bf16_native``, the CPU flags) are recorded next to the numbers.

Side by side in one run, the cases of each comparison taking turns round by round (the
first case rotating), each case with its own identically initialised model:

1. Training step (forward + fp32 MCEL loss (margin 10) + backward + Adam step +
   ``loss.item()``), batch 128, 28x28x1, 10 classes, int4 weights, for mlp, vgg3, vgg7
   and resnet20, in ``fp32``, ``bf16`` (autocast) and ``bf16_cl`` (autocast, model and
   input in channels_last, what ``TrainConfig(precision="bf16")`` does for conv models).
   Goals (bf16 + channels_last over fp32): vgg7 >= 3.0x, resnet20 >= 2.0x, vgg3 >= 1.8x.
2. The trainer's floor: a bare PyTorch loop (the same quantized model, batches sliced in
   order, forward / loss / backward / step / ``loss.item()``) vs ``mcel.train.train`` over
   the same number of batches at the same precision and layout, for mlp (on one thread,
   see FLOOR_PLAN) and vgg3. The trainer's time is its own epoch timer
   (``metrics["epochs"][0]["seconds"]``: the step loop, without data loading, model
   building and the test pass, whose sum is reported separately); beyond the bare loop
   it shuffles (gathers each batch through a permutation) and counts correct
   predictions. Goal: trainer / bare <= 1.05.
3. ``torch.compile`` (mode default) of the vgg3 training step in fp32 and bf16 (+
   channels_last), next to the same steps eager: compile time (first call minus a
   steady step) apart from steady-state step time; a failure is recorded with its
   error's first line.
4. Evaluation: ``evaluate(model, x, y, [0.01], trials=K, precision=p)`` (persistent
   weight faults at BER 1e-2) over the Fashion-MNIST test set (10,000 images; 1,000 with
   ``--quick``) for a vgg3 int4 model trained here for a few dozen steps (so that the
   agreement of bf16 with fp32 predictions means something). Per-trial time from
   ``EvalResult.results[0].trial_seconds``; goals: bf16 trial >= 2x faster than fp32,
   agreement >= 99.5%. Also: whether bf16's mean accuracy at BER 1e-2 lies within the
   fp32 trials' 95% interval (the same faults: same seed and trial indices).

Budget: on a CPU without bf16 units a bf16 step of vgg7 takes minutes, so the expensive
models run few rounds (a per-model time budget stops adding rounds; every case gets at
least one sample), and a warm-up step that takes longer than ``SLOW_WARMUP_S`` counts as
the case's first sample (one-time set-up is negligible next to it). ``--quick`` skips
vgg7, resnet20 and torch.compile and uses fewer steps.

    .venv/bin/python benchmarks/bench_precision.py [--quick] [--data-dir DIR] [--device cuda]
"""

from __future__ import annotations

import contextlib
import struct
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import (
    data_dirs,
    goal,
    load_split,
    machine_info,
    median,
    paired_ratio,
    standalone,
    summary,
    sync_fn,
    table,
)

from mcel.evaluate import evaluate
from mcel.losses import MCELoss
from mcel.models import create_model
from mcel.precision import autocast, bf16_native, memory_format
from mcel.quant import QuantSpec, quantize_model
from mcel.train import TrainConfig, train

BATCH = 128
SHAPE = (1, 28, 28)
MARGIN = 10.0
BER = 1e-2
SLOW_WARMUP_S = 5.0
SPEEDUP_GOALS = {"vgg7": 3.0, "resnet20": 2.0, "vgg3": 1.8}  # bf16 + channels_last over fp32
TRAINER_GOAL = 1.05
EVAL_SPEEDUP_GOAL = 2.0
AGREEMENT_GOAL = 0.995
VARIANTS = ("fp32", "bf16", "bf16_cl")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")

# (model, torch threads (0: default), steps per timed sample, most rounds, time budget in
# s): rounds stop once the budget is spent (a bf16 step of vgg7 takes minutes where bf16
# is emulated). The mlp runs on one thread: its step is many tiny ops, and on a shared
# machine each op of a multi-threaded pool waits at a barrier for a descheduled thread,
# which scatters its times several-fold (see bench_train); one thread shows its own cost.
TRAIN_PLAN = [("mlp", 1, 10, 5, 30.0), ("vgg3", 0, 1, 3, 45.0), ("resnet20", 0, 1, 2, 60.0),
              ("vgg7", 0, 1, 2, 60.0)]
TRAIN_PLAN_QUICK = [("mlp", 1, 5, 3, 10.0), ("vgg3", 0, 1, 1, 30.0)]
# (model, precision, torch threads (0: default), steps per call, most rounds, budget in s)
FLOOR_PLAN = [("mlp", "fp32", 1, 50, 6, 30.0), ("mlp", "bf16", 1, 20, 4, 30.0),
              ("vgg3", "fp32", 0, 3, 3, 40.0), ("vgg3", "bf16", 0, 1, 2, 30.0)]
FLOOR_PLAN_QUICK = [("mlp", "fp32", 1, 30, 3, 10.0), ("vgg3", "fp32", 0, 2, 1, 20.0)]
# the evaluated model's training steps, test images, trials in fp32 and in bf16
EVAL_PLAN = (48, 10_000, 3, 1)
EVAL_PLAN_QUICK = (16, 1_000, 2, 1)


# ----------------------------------------------------------------------------- helpers


def _rounds(cases: dict[str, Callable[[], Any]], max_rounds: int, budget_s: float, *,
            sync: Callable[[], None] = lambda: None, warmup: bool = True,
            ) -> dict[str, list[float]]:
    """Wall and CPU seconds per call of each case, taking turns (the first case rotating).

    A warm-up call per case first; one that takes longer than ``SLOW_WARMUP_S`` is kept as
    the case's first sample. Rounds go on until ``max_rounds`` samples per case or until
    ``budget_s`` is spent (checked between rounds; every case gets >= 1 sample). Round
    ``r`` runs the cases with <= r samples. A case may return ``{label: seconds}`` of
    times it measured inside itself: kept as ``"case.label"``. CPU time as ``"case@cpu"``.
    """
    names = list(cases)
    out: dict[str, list[float]] = {}

    def call(n: str) -> tuple[float, float, Any]:
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        inner = cases[n]()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0, inner

    def keep(n: str, wall: float, cpu: float, inner: Any) -> None:
        out.setdefault(n, []).append(wall)
        out.setdefault(f"{n}@cpu", []).append(cpu)
        if isinstance(inner, dict):
            for label, sec in inner.items():
                out.setdefault(f"{n}.{label}", []).append(float(sec))

    t_start = time.perf_counter()
    if warmup:
        for n in names:
            wall, cpu, inner = call(n)
            if wall >= SLOW_WARMUP_S:
                keep(n, wall, cpu, inner)
    for r in range(max_rounds):
        if r > 0 and time.perf_counter() - t_start > budget_s:
            break
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if len(out.get(n, [])) <= r:
                keep(n, *call(n))
    return out


def _ratio_range(num: list[float], den: list[float]) -> list[float]:
    rs = [a / b for a, b in zip(num, den, strict=False)]
    return [round(min(rs), 3), round(max(rs), 3)]


def _qmodel(name: str, dev: torch.device, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = quantize_model(create_model(name, 10, SHAPE), QuantSpec("int4")).to(dev).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _step_fn(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
             precision: str, dev: torch.device, steps: int):
    """``steps`` bare training steps over ``batches`` (cycled)."""
    loss_fn = MCELoss(margin=MARGIN)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    i = [0]

    def fn() -> None:
        for _ in range(steps):
            xb, yb = batches[i[0] % len(batches)]
            i[0] += 1
            with autocast(precision, dev):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)  # the loss is fp32, as in mcel.train
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

    return fn


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300]


# ----------------------------------------------------------------------------- machine


def cpu_flags() -> dict[str, bool]:
    """The CPU flags (as in lscpu) that decide whether bf16 runs in hardware."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in CPU_FLAGS}


def precision_facts(dev: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "bf16_native_cpu": bf16_native("cpu"),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        facts["bf16_native_device"] = bf16_native(dev)
    return facts


# ----------------------------------------------------------------------------- data


def _fashion_dir(data_dir: str | None) -> str | None:
    """The folder of the real Fashion-MNIST files (searched as `_harness.load_split` does)."""
    from mcel.data.datasets import resolve_data_dir
    from mcel.errors import MCELError

    for d in data_dirs(data_dir):
        try:
            return str(resolve_data_dir("fashion-mnist", d))
        except MCELError:
            continue
    return None


def _fake_fashion(folder: Path, n_train: int, n_test: int) -> str:
    """Random images and labels in Fashion-MNIST's IDX files (for ``mcel.train.train``
    when the real files are missing: the timings stay meaningful, accuracies don't)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, n, 28, 28) + img.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">ii", 2049, n) + lab.tobytes())
    return str(folder)


# ----------------------------------------------------------------------------- 1. steps


def bench_train_steps(dev: torch.device, plan, xb, yb, sync) -> dict[str, Any]:
    out = {}
    default_threads = torch.get_num_threads()
    for name, threads, steps, max_rounds, budget in plan:
        cases = {}
        for v in VARIANTS:
            cl = v == "bf16_cl"
            model = _qmodel(name, dev, channels_last=cl)
            cases[v] = _step_fn(model, [(_layout(xb, cl), yb)], v.removesuffix("_cl"), dev,
                                steps)
        t0 = time.perf_counter()
        torch.set_num_threads(threads or default_threads)
        try:
            t = _rounds(cases, max_rounds, budget, sync=sync)
        finally:
            torch.set_num_threads(default_threads)
        m: dict[str, Any] = {
            "threads": threads or default_threads,
            "steps_per_sample": steps,
            "samples": {v: len(t[v]) for v in VARIANTS},
            "step_ms": {v: summary(t[v], 1e3 / steps, 1) for v in VARIANTS},
            "step_cpu_ms": {v: summary(t[f"{v}@cpu"], 1e3 / steps, 1) for v in VARIANTS},
            # > 1: bf16 is faster (fp32 time / bf16 time, median of per-round ratios)
            "speedup_over_fp32": {v: round(paired_ratio(t["fp32"], t[v]), 3)
                                  for v in VARIANTS if v != "fp32"},
            "speedup_over_fp32_cpu_time": {v: round(paired_ratio(t["fp32@cpu"], t[f"{v}@cpu"]), 3)
                                           for v in VARIANTS if v != "fp32"},
            "speedup_range": {v: _ratio_range(t["fp32"], t[v]) for v in VARIANTS if v != "fp32"},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if name in SPEEDUP_GOALS:
            m["goal"] = goal(m["speedup_over_fp32"]["bf16_cl"], SPEEDUP_GOALS[name], below=False)
        out[name] = m
        print(f"  step {name}: " + ", ".join(f"{v} {m['step_ms'][v]['median']:.0f} ms"
                                             for v in VARIANTS)
              + f" ({m['seconds']} s)", flush=True)
    return out


# ----------------------------------------------------------------------------- 2. floor


def _floor_cases(name: str, precision: str, steps: int, cl: bool, batches, config, dev, sync):
    """The two cases of one floor row: a bare loop and ``mcel.train.train``, each timing
    its own ``steps`` steps (a fresh, identically initialised model per call)."""

    def bare() -> dict[str, float]:
        fn = _step_fn(_qmodel(name, dev, channels_last=cl), batches, precision, dev, steps)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return {"loop": time.perf_counter() - t0}

    def trainer() -> dict[str, float]:
        with warnings.catch_warnings():  # the "bf16 is emulated here" warning
            warnings.simplefilter("ignore")
            _, metrics = train(config)
        return {"loop": metrics["epochs"][0]["seconds"]}

    return bare, trainer


def bench_floor(dev: torch.device, plan, data_dir: str, sync) -> dict[str, Any]:
    """mcel.train.train vs a bare loop over the same batches, same precision and layout."""
    from mcel.data import load_dataset

    out = {}
    default_threads = torch.get_num_threads()
    for name, precision, threads, steps, max_rounds, budget in plan:
        n = steps * BATCH
        x, y = load_dataset("fashion-mnist", "train", data_dir, limit=n)
        # the layout mcel.train uses at this precision (channels_last: conv models in bf16)
        cl = memory_format(precision, create_model(name, 10, SHAPE)) == torch.channels_last
        batches = [(_layout(x[i:i + BATCH], cl).to(dev), y[i:i + BATCH].to(dev))
                   for i in range(0, n, BATCH)]
        config = TrainConfig(dataset="fashion-mnist", data_dir=data_dir, model=name,
                             quant="int4", loss="mcel", margin=MARGIN, epochs=1,
                             batch_size=BATCH, limit_train=n, limit_test=BATCH,
                             schedule="none", device=str(dev), precision=precision)

        bare, trainer = _floor_cases(name, precision, steps, cl, batches, config, dev, sync)
        t0 = time.perf_counter()
        torch.set_num_threads(threads or default_threads)
        try:
            t = _rounds({"bare": bare, "trainer": trainer}, max_rounds, budget, sync=sync)
        finally:
            torch.set_num_threads(default_threads)
        threads = threads or default_threads
        key = f"{name} {precision}" + (" (1 thread)" if threads == 1 != default_threads else "")
        ratio = paired_ratio(t["trainer.loop"], t["bare.loop"])
        out[key] = {
            "model": name, "precision": precision, "channels_last": cl, "threads": threads,
            "steps_per_call": steps, "samples": len(t["trainer.loop"]),
            "step_ms": {c: summary(t[f"{c}.loop"], 1e3 / steps, 2) for c in ("bare", "trainer")},
            "trainer_over_bare": round(ratio, 4),
            "ratio_range": _ratio_range(t["trainer.loop"], t["bare.loop"]),
            # what train() costs around its step loop: data loading, model, test pass
            "trainer_fixed_seconds_per_call": round(median(
                [a - b for a, b in zip(t["trainer"], t["trainer.loop"], strict=True)]), 2),
            "goal": goal(ratio, TRAINER_GOAL),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"  floor {key}: trainer/bare {ratio:.3f} "
              f"({out[key]['seconds']} s)", flush=True)
    return out


# ----------------------------------------------------------------------------- 3. compile


def _cold_compile_cache():
    """A fresh, empty inductor cache for the compile section (a warm on-disk cache from an
    earlier run would hide most of the compile time); a no-op where torch lacks it."""
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:
        return contextlib.nullcontext(), "torch's default (possibly warm)"
    tmp = tempfile.TemporaryDirectory(prefix="bench-precision-inductor-")
    stack = contextlib.ExitStack()
    stack.callback(tmp.cleanup)
    stack.enter_context(temporary_cache_dir(tmp.name))
    return stack, "cold (a fresh, empty inductor cache folder)"


def bench_compile(dev: torch.device, xb, yb, sync, rounds: int, budget: float,
                  name: str = "vgg3") -> dict[str, Any]:
    """torch.compile (mode default) of a training step, fp32 and bf16 + channels_last."""
    cache, cache_note = _cold_compile_cache()
    with cache:
        res = _bench_compile(dev, xb, yb, sync, rounds, budget, name)
    res["compile_cache"] = cache_note
    return res


def _bench_compile(dev: torch.device, xb, yb, sync, rounds: int, budget: float,
                   name: str) -> dict[str, Any]:
    res: dict[str, Any] = {"model": name, "mode": "default"}
    cases: dict[str, Callable[[], Any]] = {}
    for precision in ("fp32", "bf16"):
        cl = precision == "bf16"
        xin = _layout(xb, cl)
        cases[f"eager_{precision}"] = _step_fn(_qmodel(name, dev, cl), [(xin, yb)],
                                               precision, dev, 1)
        try:
            compiled = torch.compile(_qmodel(name, dev, cl))
            fn = _step_fn(compiled, [(xin, yb)], precision, dev, 1)
            sync()
            t0 = time.perf_counter()
            fn()  # compiles forward and backward
            sync()
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            fn()  # may recompile once (e.g. grads now exist)
            sync()
            second = time.perf_counter() - t0
            res[f"compiled_{precision}"] = {"ok": True, "first_call_seconds": round(first, 2),
                                            "second_call_seconds": round(second, 2)}
            cases[f"compiled_{precision}"] = fn
        except Exception as e:  # a compiler missing, an unsupported op: record it
            res[f"compiled_{precision}"] = {"ok": False, "error": _first_line(e)}
            print(f"  compile {precision} failed: {_first_line(e)}", flush=True)
    t = _rounds(cases, rounds, budget, sync=sync)
    res["step_ms"] = {c: summary(t[c], 1e3, 1) for c in cases}
    for precision in ("fp32", "bf16"):
        c = res[f"compiled_{precision}"]
        if not c["ok"]:
            continue
        steady = median(t[f"compiled_{precision}"])
        c["compile_seconds"] = round(c["first_call_seconds"] - steady, 2)
        # > 1: compiled is faster than eager at the same precision
        c["speedup_over_eager"] = round(paired_ratio(t[f"eager_{precision}"],
                                                     t[f"compiled_{precision}"]), 3)
        c["speedup_over_eager_fp32"] = round(paired_ratio(t["eager_fp32"],
                                                          t[f"compiled_{precision}"]), 3)
    return res


# ----------------------------------------------------------------------------- 4. eval


def bench_eval(dev: torch.device, quick: bool, data_dir: str, real: bool, sync,
               ) -> dict[str, Any]:
    from mcel.data import load_dataset

    steps, n_images, trials_fp32, trials_bf16 = EVAL_PLAN_QUICK if quick else EVAL_PLAN
    t0 = time.perf_counter()
    config = TrainConfig(dataset="fashion-mnist", data_dir=data_dir, model="vgg3",
                         quant="int4", loss="mcel", margin=MARGIN, epochs=1,
                         batch_size=BATCH, limit_train=steps * BATCH, limit_test=1000,
                         schedule="none", device=str(dev))
    model, metrics = train(config)
    model.eval()
    train_seconds = time.perf_counter() - t0
    x, y = load_dataset("fashion-mnist", "test", data_dir, limit=n_images)
    source = (f"fashion-mnist test split, real data ({len(x)} images)" if real else
              f"RANDOM images ({len(x)}) in Fashion-MNIST's files: the dataset was not found")
    x, y = x.to(dev), y.to(dev)
    res: dict[str, Any] = {}

    def case(precision: str, trials: int):
        def fn() -> None:
            res[precision] = evaluate(model, x, y, [BER], trials=trials, seed=0,
                                      precision=precision)
        return fn

    # one round: every trial of both precisions is timed inside evaluate; the bf16 call
    # also runs the fp32 clean pass of its agreement
    t = _rounds({"fp32": case("fp32", trials_fp32), "bf16": case("bf16", trials_bf16)},
                1, 0.0, sync=sync, warmup=False)
    r32, r16 = res["fp32"], res["bf16"]
    b32, b16 = r32.results[0], r16.results[0]
    ratio = median(b16.trial_seconds) / median(b32.trial_seconds)  # bf16 / fp32 time
    within = b32.ci_low <= b16.mean <= b32.ci_high
    paired = [a - b for a, b in zip(b16.accuracies, b32.accuracies, strict=False)]
    return {
        "model": f"vgg3 int4, trained here: {steps} Adam steps of batch {BATCH} "
                 f"(MCEL margin {MARGIN:g}), test accuracy {metrics['test_acc']:.4f} on "
                 f"1,000 test images" + ("" if real else " (RANDOM data: meaningless)"),
        "train_steps": steps,
        "train_seconds": round(train_seconds, 1),
        "images": len(x),
        "data": source,
        "ber": BER,
        "trials": {"fp32": trials_fp32, "bf16": trials_bf16},
        "trial_seconds": {"fp32": summary(b32.trial_seconds, 1.0, 3),
                          "bf16": summary(b16.trial_seconds, 1.0, 3)},
        "clean_seconds": {"fp32": round(r32.clean_seconds, 3),
                          "bf16": round(r16.clean_seconds, 3)},
        "call_seconds": {"fp32": round(t["fp32"][0], 2), "bf16": round(t["bf16"][0], 2)},
        "bf16_over_fp32_time": round(ratio, 3),
        "speedup": round(1 / ratio, 3),
        "clean_accuracy": {"fp32": round(r32.clean_accuracy, 4),
                           "bf16": round(r16.clean_accuracy, 4)},
        "agreement": round(r16.agreement, 5),
        "mean_at_ber": {"fp32": round(b32.mean, 4), "bf16": round(b16.mean, 4)},
        "fp32_interval": [round(b32.ci_low, 4), round(b32.ci_high, 4)],
        "bf16_mean_within_fp32_interval": bool(within),
        # the same faults (seed 0, the same trial indices): bf16 - fp32 accuracy per trial
        "paired_accuracy_diff": [round(d, 4) for d in paired],
        "goal_speedup": goal(1 / ratio, EVAL_SPEEDUP_GOAL, below=False),
        "goal_agreement": goal(r16.agreement, AGREEMENT_GOAL, below=False),
    }


# ----------------------------------------------------------------------------- run


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    sync = sync_fn(dev)
    facts = precision_facts(dev)
    print(f"  bf16 native on cpu: {facts['bf16_native_cpu']}; flags: "
          + ", ".join(f for f, on in facts["cpu_flags"].items() if on), flush=True)
    x, y, source = load_split("fashion-mnist", "train", BATCH, data_dir)
    xb, yb = x.to(dev), y.to(dev)
    real_dir = _fashion_dir(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        fdir = real_dir or _fake_fashion(Path(tmp), 64 * BATCH, 2_000 if quick else 10_000)
        result: dict[str, Any] = {
            "benchmark": "precision",
            "title": "Forward precision: fp32 vs bf16 autocast (training, compile, evaluation)",
            "machine": machine_info(dev),
            "precision_facts": facts,
            "data": source,
            "batch_size": BATCH,
            "quant": "int4",
            "loss": f"mcel margin {MARGIN:g} (fp32)",
            "optimizer": "adam",
            "statistic": "median over rounds; ratios are medians of per-round ratios",
        }
        t0 = time.perf_counter()
        result["train_steps"] = bench_train_steps(
            dev, TRAIN_PLAN_QUICK if quick else TRAIN_PLAN, xb, yb, sync)
        if quick:
            result["train_steps_skipped"] = "resnet20 and vgg7 (--quick)"
        result["floor"] = bench_floor(dev, FLOOR_PLAN_QUICK if quick else FLOOR_PLAN, fdir,
                                      sync)
        if quick:
            result["compile"] = {"skipped": "--quick (compiling takes minutes on a busy CPU)"}
        else:
            t1 = time.perf_counter()
            result["compile"] = bench_compile(dev, xb, yb, sync, 2, 20.0)
            result["compile"]["seconds"] = round(time.perf_counter() - t1, 1)
            print(f"  compile: {result['compile']['seconds']} s", flush=True)
        t1 = time.perf_counter()
        result["eval"] = bench_eval(dev, quick, fdir, real_dir is not None, sync)
        result["eval"]["seconds"] = round(time.perf_counter() - t1, 1)
        print(f"  eval: {result['eval']['seconds']} s", flush=True)
        result["measure_seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_average_end"] = machine_info(dev)["load_average"]
    return result


def _met(g: dict | None) -> str:
    return "-" if not g else ("met" if g["met"] else "NOT met")


def goal_rows(res: dict[str, Any]) -> list[list[Any]]:
    """(goal, target, measured, status) of every goal, for the console and the page."""
    f = res["precision_facts"]
    native = f.get("bf16_native_device", f["bf16_native_cpu"])
    why = "" if native else " (bf16 emulated here: no bf16 units)"

    def speed(g: dict) -> str:
        return _met(g) + (why if not g["met"] else "")

    rows = []
    for name in ("vgg7", "resnet20", "vgg3"):
        m = res["train_steps"].get(name)
        if m is None:
            rows.append([f"train step {name}: bf16+channels_last vs fp32",
                         f">= {SPEEDUP_GOALS[name]:g}x", "not measured (--quick)", "-"])
            continue
        rows.append([f"train step {name}: bf16+channels_last vs fp32",
                     f">= {SPEEDUP_GOALS[name]:g}x", f"{m['speedup_over_fp32']['bf16_cl']:.3f}x",
                     speed(m["goal"])])
    for key, f in res["floor"].items():
        rows.append([f"mcel train / bare loop, {key}", f"<= {TRAINER_GOAL:g}",
                     f"{f['trainer_over_bare']:.3f}", _met(f["goal"])])
    e = res["eval"]
    rows.append(["eval trial bf16 vs fp32", f">= {EVAL_SPEEDUP_GOAL:g}x",
                 f"{e['speedup']:.3f}x", speed(e["goal_speedup"])])
    rows.append(["eval agreement bf16 vs fp32", f">= {100 * AGREEMENT_GOAL:g}%",
                 f"{100 * e['agreement']:.2f}%", _met(e["goal_agreement"])])
    return rows


def format_result(res: dict[str, Any]) -> str:
    f = res["precision_facts"]
    lines = [f"precision, batch {res['batch_size']}, int4, {res['data']}, on "
             f"{res['machine']['device']}; bf16 native on CPU: {f['bf16_native_cpu']} "
             f"(capability {f['torch_cpu_capability']}; flags "
             + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in f["cpu_flags"].items())
             + f"); torch {f['torch']}, {f['threads']} threads"]
    rows = []
    for name, m in res["train_steps"].items():
        for v in VARIANTS:
            sp = m["speedup_over_fp32"].get(v)
            rows.append([name, m["threads"], v, m["step_ms"][v]["median"],
                         m["step_cpu_ms"][v]["median"], m["samples"][v],
                         "1" if sp is None else f"{sp:.3f}",
                         "-" if sp is None else m["speedup_over_fp32_cpu_time"][v]])
    lines.append(table(["model", "threads", "variant", "step ms", "cpu ms", "n",
                        "speed-up vs fp32", "cpu-time speed-up"], rows))
    rows = [[k, fl["steps_per_call"], fl["samples"], fl["step_ms"]["bare"]["median"],
             fl["step_ms"]["trainer"]["median"], f"{fl['trainer_over_bare']:.3f}",
             "{:.2f}..{:.2f}".format(*fl["ratio_range"]), fl["trainer_fixed_seconds_per_call"]]
            for k, fl in res["floor"].items()]
    lines.append(table(["floor", "steps", "n", "bare ms/step", "trainer ms/step",
                        "trainer/bare", "range", "train() fixed s"], rows))
    c = res["compile"]
    if "skipped" in c:
        lines.append(f"torch.compile: skipped ({c['skipped']})")
    else:
        for p in ("fp32", "bf16"):
            cc = c[f"compiled_{p}"]
            if cc["ok"]:
                lines.append(f"torch.compile {c['model']} {p}: compile {cc['compile_seconds']} s, "
                             f"steady {c['step_ms'][f'compiled_{p}']['median']:.0f} ms vs "
                             f"eager {c['step_ms'][f'eager_{p}']['median']:.0f} ms "
                             f"(speed-up {cc['speedup_over_eager']:.3f}x)")
            else:
                lines.append(f"torch.compile {c['model']} {p}: FAILED: {cc['error']}")
    e = res["eval"]
    lines.append(f"eval ({e['model']}; {e['images']} images, BER {e['ber']:g}): trial "
                 f"fp32 {e['trial_seconds']['fp32']['median']:.2f} s, bf16 "
                 f"{e['trial_seconds']['bf16']['median']:.2f} s (bf16/fp32 "
                 f"{e['bf16_over_fp32_time']:.2f}); agreement {100 * e['agreement']:.2f}%; "
                 f"mean at BER: fp32 {e['mean_at_ber']['fp32']:.4f} "
                 f"[{e['fp32_interval'][0]:.4f}, {e['fp32_interval'][1]:.4f}], bf16 "
                 f"{e['mean_at_ber']['bf16']:.4f} (within: "
                 f"{'yes' if e['bf16_mean_within_fp32_interval'] else 'NO'})")
    lines.append(table(["goal", "target", "measured", "status"], goal_rows(res)))
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(run, "precision", format_result, __doc__)
