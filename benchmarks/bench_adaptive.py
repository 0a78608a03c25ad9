"""Benchmark: fewer Monte-Carlo trials, by adaptive stopping and by nested seeds.

Two small int4 MLPs are trained for a few epochs on a slice of Fashion-MNIST (random
tensors of that shape if the files are missing: then the accuracies mean nothing):
``A`` with cross-entropy, ``B`` with MCEL (margin 2). Then, on the test set:

1. Adaptive mode: for each BER, ``evaluate(..., trials=100, target_half_width=0.005)``
   adds trials (at least 10) until the 95% interval is +-0.5 points, vs the fixed
   100-trial budget: trials, half-width reached and seconds for each; then one call over
   all BERs, in which each BER stops on its own.
   What stopping early costs: runs resampled from the 100 fixed trials, stopped by the
   same rule, give its bias and the coverage of its 95% intervals on that real trial
   distribution (`stopping_rule_check`).
2. Nested seeds (common random numbers): the per-trial accuracy *difference* between
   A and B when both are evaluated with the same ``(seed, trial)`` streams (the same
   bits flip in both, as the layers have the same names and shapes) vs with
   independent seeds. The variance ratio is the factor by which the same streams cut
   the trials needed for a given precision of the difference.

On CPU this benchmark runs torch with one thread: its numbers are trial counts and
variances, which do not depend on speed, and a model this small runs fastest on one
thread (a shared machine makes every op of a thread pool wait for descheduled threads).

    .venv/bin/python benchmarks/bench_adaptive.py [--device cuda] [--quick]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from _harness import goal, load_split, machine_info, standalone, table

from mcel.evaluate import evaluate, narrow_enough, t_interval
from mcel.train import TrainConfig, build_loss, build_model

TARGET = 0.005  # +-0.5 accuracy points
BUDGET = 100
MIN_TRIALS = 10


def train_small(loss: str, x: torch.Tensor, y: torch.Tensor, epochs: int,
                dev: torch.device) -> torch.nn.Module:
    """A few epochs of Adam on (x, y), as `mcel.train.train` would run them."""
    opts = {"margin": 2.0} if loss == "mcel" else {}
    config = TrainConfig(dataset="fashion-mnist", model="mlp", quant="int4", loss=loss, **opts)
    torch.manual_seed(0)
    model = build_model(config).to(dev).train()
    loss_fn = build_loss(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(dev)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            out = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            out.backward()
            opt.step()
    return model.eval()


def _var(v: list[float]) -> float:
    return statistics.variance(v) if len(v) > 1 else 0.0


def stopping_rule_check(accs: list[float], ber: float, reps: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """What the adaptive stopping rule costs, on a real trial distribution: runs drawn
    with replacement from ``accs`` (the 100 fixed trials), each stopped by the rule
    `evaluate` uses (`mcel.evaluate.narrow_enough`, at least MIN_TRIALS, at most BUDGET).
    Returns (mean of the stopped means minus the distribution's mean, the share of
    stopped intervals that contain that mean, mean trials). Stopping when the interval
    first looks narrow favours runs without a bad trial so far: bias > 0 and coverage
    below 95% measure how much."""
    import random

    rng = random.Random(seed)
    truth = sum(accs) / len(accs)
    bias = covered = trials = 0.0
    for _ in range(reps):
        run = [rng.choice(accs) for _ in range(BUDGET)]
        n = next((k for k in range(MIN_TRIALS, BUDGET + 1)
                  if narrow_enough(run[:k], ber, TARGET)), BUDGET)
        m, lo, hi = t_interval(run[:n])
        bias += m - truth
        covered += lo <= truth <= hi
        trials += n
    return bias / reps, covered / reps, trials / reps


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        res = _run(dev, quick, data_dir)
    finally:
        torch.set_num_threads(threads)
    res["torch_threads_used"] = 1 if dev.type == "cpu" else threads
    return res


def _run(dev: torch.device, quick: bool, data_dir: str | None) -> dict[str, Any]:
    n_train, n_test, epochs = (5_000, 2_000, 2) if quick else (10_000, 5_000, 2)
    bers = (1e-3, 3e-2) if quick else (1e-3, 1e-2, 3e-2)
    x_tr, y_tr, src_tr = load_split("fashion-mnist", "train", n_train, data_dir)
    x_te, y_te, src_te = load_split("fashion-mnist", "test", n_test, data_dir, seed=1)
    x_tr, y_tr, x_te, y_te = x_tr.to(dev), y_tr.to(dev), x_te.to(dev), y_te.to(dev)

    t0 = time.perf_counter()
    model_a = train_small("ce", x_tr, y_tr, epochs, dev)
    model_b = train_small("mcel", x_tr, y_tr, epochs, dev)
    train_seconds = time.perf_counter() - t0

    fixed_a = evaluate(model_a, x_te, y_te, bers, trials=BUDGET, seed=0)
    fixed_b = evaluate(model_b, x_te, y_te, bers, trials=BUDGET, seed=0)
    fixed_b1 = evaluate(model_b, x_te, y_te, bers, trials=BUDGET, seed=1)

    rows = []
    for i, b in enumerate(bers):
        ad = evaluate(model_a, x_te, y_te, [b], trials=BUDGET, seed=0,
                      target_half_width=TARGET, min_trials=MIN_TRIALS)
        ra, fa = ad.results[0], fixed_a.results[i]
        same = [p - q for p, q in zip(fa.accuracies, fixed_b.results[i].accuracies, strict=True)]
        indep = [p - q for p, q in zip(fa.accuracies, fixed_b1.results[i].accuracies, strict=True)]
        v_same, v_indep = _var(same), _var(indep)
        mean_d, lo_d, hi_d = t_interval(same)
        _, lo_i, hi_i = t_interval(indep)
        bias, coverage, mean_n = stopping_rule_check(fa.accuracies, b)
        rows.append({
            "ber": b,
            "rule_bias_points": round(100 * bias, 3),
            "rule_coverage": round(coverage, 3),
            "rule_mean_trials": round(mean_n, 1),
            "accuracy_a": round(fa.mean, 4),
            "accuracy_b": round(fixed_b.results[i].mean, 4),
            "std_a": round(fa.std, 4),
            "adaptive_trials": ra.trials,
            "adaptive_half_width": round(ra.half_width, 5),
            "adaptive_reached_target": ra.half_width <= TARGET,
            "adaptive_seconds": round(ad.seconds, 3),
            "fixed_trials": fa.trials,
            "fixed_half_width": round(fa.half_width, 5),
            "fixed_seconds_share": round(fixed_a.seconds / len(bers), 3),
            "trials_saved": f"{100 * (1 - ra.trials / fa.trials):.0f}%",
            "diff_mean_b_minus_a": round(-mean_d, 4),
            "diff_half_width_same_streams": round((hi_d - lo_d) / 2, 5),
            "diff_half_width_independent": round((hi_i - lo_i) / 2, 5),
            "var_diff_same_streams": v_same,
            "var_diff_independent": v_indep,
            "variance_reduction": round(v_indep / v_same, 2) if v_same > 0 else None,
        })
    # one adaptive call over every BER: each BER stops on its own
    ad_all = evaluate(model_a, x_te, y_te, bers, trials=BUDGET, seed=0,
                      target_half_width=TARGET, min_trials=MIN_TRIALS)
    return {
        "benchmark": "adaptive",
        "title": "Fewer trials: adaptive stopping and nested seeds",
        "machine": machine_info(dev),
        "data": {"train": src_tr, "test": src_te},
        "models": "mlp int4 (hidden 256), A: cross-entropy, B: MCEL margin 2; Adam, batch 128",
        "train_images": n_train,
        "epochs": epochs,
        "train_seconds_both": round(train_seconds, 1),
        "clean_accuracy": {"a": round(fixed_a.clean_accuracy, 4),
                           "b": round(fixed_b.clean_accuracy, 4)},
        "test_images": n_test,
        "target_half_width": TARGET,
        "budget": BUDGET,
        "min_trials": MIN_TRIALS,
        "rows": rows,
        "adaptive_all_bers": {
            # the BER that needs the most trials sets the goal's figure
            "trials": max(r.trials for r in ad_all.results),
            "trials_per_ber": {f"{r.ber:g}": r.trials for r in ad_all.results},
            "total_trials": sum(r.trials for r in ad_all.results),
            "fixed_total_trials": BUDGET * len(bers),
            "seconds": round(ad_all.seconds, 3),
            "half_widths": {f"{r.ber:g}": round(r.half_width, 5) for r in ad_all.results},
            "fixed_seconds": round(fixed_a.seconds, 3),
            "goal_fewer_trials_than_budget": goal(max(r.trials for r in ad_all.results),
                                                  BUDGET - 1),
        },
    }


def format_result(res: dict[str, Any]) -> str:
    rows = [[r["ber"], r["accuracy_a"], r["std_a"], r["adaptive_trials"],
             r["adaptive_half_width"], r["fixed_half_width"], r["trials_saved"],
             r["variance_reduction"]] for r in res["rows"]]
    a = res["adaptive_all_bers"]
    return (f"adaptive / nested seeds: {res['models']}; clean A {res['clean_accuracy']['a']}, "
            f"B {res['clean_accuracy']['b']} on {res['test_images']} test images "
            f"(trained in {res['train_seconds_both']} s)\n"
            + table(["BER", "acc A", "std A", "adaptive trials", "adaptive +-",
                     "fixed-100 +-", "saved", "var ratio (indep/same)"], rows)
            + f"\nadaptive over all BERs: at most {a['trials']} trials per BER "
              f"({a.get('total_trials', '?')} in all) in {a['seconds']} s vs fixed 100 per "
              f"BER in {a['fixed_seconds']} s")


if __name__ == "__main__":
    standalone(run, "adaptive", format_result, __doc__)
