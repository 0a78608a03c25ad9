"""``mcel margins``: output margins of a run against its survival under bit errors, and
flip certificates of its output layer."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcel.cli.common import (
    JSON_UNITS,
    add_device_flag,
    add_threads_flag,
    console,
    error_model,
)

if TYPE_CHECKING:  # the command line loads torch only when a command runs
    from mcel.analysis import Survival

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def cmd_margins(args: argparse.Namespace) -> int:

    from mcel.analysis import flip_certificate, survival
    from mcel.checks import ber_range_error, check_targets
    from mcel.data import load_dataset
    from mcel.errors import MCELError
    from mcel.io import check_writable, write_json
    from mcel.plots import plot_margin_survival
    from mcel.quant import quant_layers
    from mcel.runs import load_run

    if not 0.0 <= args.ber <= 1.0:
        raise MCELError(ber_range_error(args.ber))
    if args.max_flips < 1:
        raise MCELError(f"--max-flips must be >= 1, got {args.max_flips}")
    model, config = load_run(args.run_dir, args.device)
    em = error_model(args.error_model)
    if not quant_layers(model):  # checked now: no output folder for a run that cannot work
        raise MCELError(f"{args.run_dir} holds a float model: it stores no codes to flip; "
                        "train it with --quant (e.g. int4)")
    if em is not None:
        check_targets(model, em)
    x, y = load_dataset(config.dataset, "test", args.data_dir or config.data_dir,
                        limit=args.limit_test or config.limit_test)
    out = check_writable(args.out or Path(args.run_dir) / "margins")  # after the inputs
    s = survival(model, x, y, args.ber, em, trials=args.trials, seed=args.seed,
                 batch_size=args.batch_size, progress=sys.stderr.isatty())
    cert = flip_certificate(model, x, y, max_flips=args.max_flips, batch_size=args.batch_size)
    result = _result(args, config, y, s=s, cert=cert)
    png = plot_margin_survival(s.margin.tolist(), s.survival.tolist(), result["bins"],
                               out / "margin_survival.png", certificate=cert.tolist(),
                               cap=args.max_flips,
                               title=f"{config.dataset}/{config.model}: BER {s.ber:g}, "
                                     f"{s.trials} trials")
    write_json(out / "margins.json", result)
    print_margins(result)
    print(f"wrote {png} and {out / 'margins.json'}")
    return 0


def _quantiles(t) -> dict[str, float]:
    import torch

    if t.numel() == 0:
        return {}
    q = torch.quantile(t.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"q{int(100 * p)}": float(v) for p, v in zip(QUANTILES, q)}


def _result(args: argparse.Namespace, config, y, *, s: Survival, cert) -> dict[str, Any]:
    """What margins.json holds: the run, the survival analysis ``s`` and the certificates."""
    from mcel.experiments.store import versions

    margin, correct, cap = s.margin, s.clean_correct, args.max_flips
    counts = {(str(k) if k <= cap else f">{cap}"): int((cert == k).sum()) for k in range(cap + 2)}
    return {
        "units": JSON_UNITS,
        "run_dir": str(args.run_dir), "dataset": config.dataset, "samples": len(y),
        "config": config.to_dict(), "versions": versions(),
        "ber": s.ber, "trials": s.trials, "seed": s.seed,
        "error_model": s.error_model, "clean_accuracy": s.clean_accuracy,
        "accuracy": s.accuracy, "spearman": _num(s.spearman),
        "spearman_p": _num(s.spearman_p), "bins": [b.to_dict() for b in s.bins],
        "margin_quantiles": {"all": _quantiles(margin),
                             "clean_correct": _quantiles(margin[correct])},
        "certificate": {"max_flips": cap, "counts": counts,
                        "note": "fewest output-layer bit flips that can change the prediction "
                                "(ties count as a change); 0 = wrong without faults"},
        "per_sample": {"label": y.tolist(), "margin": margin.tolist(),
                       "survival": [_num(v) for v in s.survival.tolist()],
                       "certificate": cert.tolist()},
    }


def _num(v: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if v is None or math.isnan(v) else float(v)


def print_margins(r: dict[str, Any]) -> None:
    from rich.table import Table

    c = console()
    t = Table(title=f"output margins ({r['samples']} test samples)")
    t.add_column("samples")
    for p in QUANTILES:
        t.add_column({0.0: "min", 1.0: "max"}.get(p, f"{100 * p:g}%"), justify="right")
    for name, q in r["margin_quantiles"].items():
        if q:
            t.add_row(name.replace("_", "-"), *[f"{v:.3f}" for v in q.values()])
    c.print(t)
    rho = "undefined" if r["spearman"] is None else f"{r['spearman']:.3f}"
    c.print(f"BER {r['ber']:g}, {r['trials']} trials: accuracy {100 * r['accuracy']:.2f}% "
            f"(clean {100 * r['clean_accuracy']:.2f}%); Spearman rho(margin, survival) = {rho} "
            "over clean-correct samples")
    b = Table(title="survival by margin decile")
    for col in ("margins", "samples", "survival %"):
        b.add_column(col, justify="right")
    for row in r["bins"]:
        b.add_row(f"[{row['margin_low']:.2f}, {row['margin_high']:.2f}]", str(row["count"]),
                  f"{100 * row['survival_mean']:.1f}")
    c.print(b)
    ct = Table(title="flip certificate: fewest output-layer bit flips that change the "
                     "prediction (0 = already wrong)")
    ct.add_column("flips", justify="right")
    ct.add_column("samples", justify="right")
    ct.add_column("%", justify="right")
    n = max(1, r["samples"])
    for k, v in r["certificate"]["counts"].items():
        if v:
            ct.add_row(k, str(v), f"{100 * v / n:.1f}")
    c.print(ct)


def register(sub) -> None:
    m = sub.add_parser("margins", help="margins vs survival under bit errors, and flip "
                                       "certificates of the output layer")
    m.add_argument("run_dir", help="a run folder written by 'mcel train'")
    m.add_argument("--ber", type=float, default=0.01,
                   help="bit error rate, a fraction (0.01 = 1%%)")
    m.add_argument("--trials", type=int, default=50, help="Monte-Carlo trials")
    m.add_argument("--seed", type=int, default=0, help="fault seed")
    m.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2'; --ber then sets its largest rate "
                        "(default: uniform flips in the weights)")
    m.add_argument("--max-flips", type=int, default=16,
                   help="certificates above this are reported as '>N'")
    m.add_argument("--out", default=None, help="folder for the PNG and JSON "
                                               "(default RUN_DIR/margins)")
    m.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    m.add_argument("--limit-test", type=int, default=None,
                   help="use the first N test images only (default: the run's own limit, "
                        "else all)")
    m.add_argument("--batch-size", type=int, default=1024, help="images per forward")
    add_device_flag(m)
    add_threads_flag(m)
    m.set_defaults(func=cmd_margins)

