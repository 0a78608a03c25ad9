"""Commands for understanding results: ``mcel margins``, ``mcel tune-margin``,
``mcel report``. Registered in ``mcel.cli`` through ``_extra_commands()``; like every
command they are thin over library functions (``mcel.analysis``, ``mcel.tuning``,
``mcel.report.build``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _console():
    from rich.console import Console

    # Piped or captured output has no width of its own; rich's 80 columns would wrap
    # the tables into unreadable cells.
    return Console() if sys.stdout.isatty() else Console(width=140)


# -- margins ------------------------------------------------------------------------------

def cmd_margins(args: argparse.Namespace) -> int:
    import torch

    from mcel.analysis import flip_certificate, survival
    from mcel.data import load_dataset
    from mcel.checks import check_targets
    from mcel.errors import MCELError
    from mcel.experiments.store import versions
    from mcel.faults import parse_error_model
    from mcel.io import check_writable, write_json
    from mcel.plots import plot_margin_survival
    from mcel.quant import quant_layers
    from mcel.runs import load_run

    if not 0.0 <= args.ber <= 1.0:
        raise MCELError(f"BER {args.ber} is outside [0, 1]")
    if args.max_flips < 1:
        raise MCELError(f"--max-flips must be >= 1, got {args.max_flips}")
    model, config = load_run(args.run_dir, args.device)
    em = parse_error_model(args.error_model) if args.error_model else None
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
    margin, correct = s["margin"], s["clean_correct"]

    def quantiles(t: torch.Tensor) -> dict[str, float]:
        if t.numel() == 0:
            return {}
        q = torch.quantile(t.double(), torch.tensor(QUANTILES, dtype=torch.float64))
        return {f"q{int(100 * p)}": float(v) for p, v in zip(QUANTILES, q)}

    cap = args.max_flips
    counts = {(str(k) if k <= cap else f">{cap}"): int((cert == k).sum()) for k in range(cap + 2)}
    result: dict[str, Any] = {
        "run_dir": str(args.run_dir), "dataset": config.dataset, "samples": len(y),
        "config": config.to_dict(), "versions": versions(),
        "ber": s["ber"], "trials": s["trials"], "seed": s["seed"],
        "error_model": s["error_model"], "clean_accuracy": s["clean_accuracy"],
        "accuracy": s["accuracy"], "spearman": _num(s["spearman"]),
        "spearman_p": _num(s["spearman_p"]), "bins": s["bins"],
        "margin_quantiles": {"all": quantiles(margin), "clean_correct": quantiles(margin[correct])},
        "certificate": {"max_flips": cap, "counts": counts,
                        "note": "fewest output-layer bit flips that can change the prediction "
                                "(ties count as a change); 0 = wrong without faults"},
        "per_sample": {"label": y.tolist(), "margin": margin.tolist(),
                       "survival": [_num(v) for v in s["survival"].tolist()],
                       "certificate": cert.tolist()},
    }
    png = plot_margin_survival(margin.tolist(), s["survival"].tolist(), s["bins"],
                               out / "margin_survival.png", certificate=cert.tolist(), cap=cap,
                               title=f"{config.dataset}/{config.model}: BER {s['ber']:g}, "
                                     f"{s['trials']} trials")
    write_json(out / "margins.json", result)
    _print_margins(result)
    print(f"wrote {png} and {out / 'margins.json'}")
    return 0


def _num(v: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if v is None or math.isnan(v) else float(v)


def _print_margins(r: dict[str, Any]) -> None:
    from rich.table import Table

    c = _console()
    t = Table(title=f"output margins ({r['samples']} test samples)")
    t.add_column("samples")
    for p in QUANTILES:
        t.add_column({0.0: "min", 1.0: "max"}.get(p, f"{100 * p:g}%"), justify="right")
    for name, q in r["margin_quantiles"].items():
        if q:
            t.add_row(name.replace("_", "-"), *[f"{v:.3f}" for v in q.values()])
    c.print(t)
    rho = "undefined" if r["spearman"] is None else f"{r['spearman']:.3f}"
    c.print(f"BER {r['ber']:g}, {r['trials']} trials: accuracy {r['accuracy']:.4f} "
            f"(clean {r['clean_accuracy']:.4f}); Spearman rho(margin, survival) = {rho} "
            "over clean-correct samples")
    b = Table(title="survival by margin decile")
    for col in ("margins", "samples", "survival"):
        b.add_column(col, justify="right")
    for row in r["bins"]:
        b.add_row(f"[{row['margin_low']:.2f}, {row['margin_high']:.2f}]", str(row["count"]),
                  f"{row['survival_mean']:.3f}")
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


# -- tune-margin ----------------------------------------------------------------------------

def cmd_tune_margin(args: argparse.Namespace) -> int:
    from mcel.cli import _log, _train_config
    from mcel.faults import parse_error_model
    from mcel.io import write_json
    from mcel.tuning import tune_margin

    base = _train_config(args)
    em = parse_error_model(args.error_model) if args.error_model else None
    res = tune_margin(base, args.ber, em, margins=args.margins, normalize=None,
                      clean_budget=args.clean_budget, trials=args.trials, seed=args.eval_seed,
                      seeds=args.seeds, progress=sys.stderr.isatty(), log=_log)
    print_tuning(res)
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def print_tuning(res: dict[str, Any]) -> None:
    """The table of everything ``tune_margin`` tried, and its choice."""
    from rich.table import Table

    seeds = res.get("seeds") or [None]
    over = f"{len(seeds)} training seeds, " if len(seeds) > 1 else ""
    t = Table(title=f"margin search at BER {res['ber']:g} ({over}{res['trials']} trials; chosen "
                    f"on {res['n_select']} samples: {res['selected_on']})")
    t.add_column("method", no_wrap=True)
    for col in ("clean %", f"BER {res['ber']:g}: acc % [95% CI]", "Δ vs CE", "in budget",
                "test clean %", "train s"):
        t.add_column(col, justify="right")

    def delta(r: dict[str, Any]) -> str:
        if r["loss"] == "ce":
            return "—"
        ci = ("" if "delta_ci_low" not in r else
              f" [{100 * r['delta_ci_low']:+.2f}, {100 * r['delta_ci_high']:+.2f}]")
        return f"{100 * r['delta_vs_ce']:+.2f}{ci}"

    for r in res["rows"]:
        mark = " *" if res["best"] is r else ""
        t.add_row(r["method"] + mark, f"{100 * r['clean_acc']:.2f}",
                  # an accuracy lives in [0, 100]: a t-interval over few seeds may not
                  f"{100 * r['acc']:.2f} [{100 * max(0.0, r['ci_low']):.2f}, "
                  f"{100 * min(1.0, r['ci_high']):.2f}]",
                  delta(r),
                  "CE" if r["loss"] == "ce" else ("yes" if r["eligible"] else "no"),
                  f"{100 * r['test_clean_acc']:.2f}", f"{r['train_seconds']:.1f}")
    c = _console()
    c.print(t)
    if res["best"] is None:
        c.print(f"no margin keeps clean accuracy within {100 * res['clean_budget']:g} points of "
                "CE; try smaller margins or a larger --clean-budget")
        c.print("recommended: margin 0 (MCEL at margin 0 is CE)")
    else:
        b = res["best"]
        if b["delta_vs_ce"] <= 0:
            verdict = "worse than or equal to"
        elif res["beats_ce"]:
            verdict = "better than"
        else:
            verdict = "not significantly better than" if len(seeds) > 1 else "not better than"
        c.print(f"best margin {b['margin']:g} ({b['method']}): {b['acc']:.4f} at BER "
                f"{res['ber']:g}, {verdict} CE's {res['ce']['acc']:.4f} "
                f"({100 * b['delta_vs_ce']:+.2f} points)")
        c.print(f"recommended: margin {res['recommended_margin']:g}"
                + ("" if res["beats_ce"] else " (MCEL at margin 0 is CE: no margin beat it)"))


# -- report ---------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from mcel.report.build import build_report

    md = build_report(args.db, args.out)
    print(f"wrote {md}, {md.with_name('report.html')} and the plots beside them")
    return 0


# -- registration ---------------------------------------------------------------------------

def add_analysis_commands(sub) -> None:
    """Add ``margins``, ``tune-margin`` and ``report`` to the ``mcel`` subparsers."""
    from mcel.cli import _add_train_flags, _floats, _ints
    from mcel.tuning import CANDIDATE_MARGINS, CLEAN_BUDGET, TUNE_TRIALS

    m = sub.add_parser("margins", help="margins vs survival under bit errors, and flip "
                                       "certificates of the output layer")
    m.add_argument("run_dir", help="a run folder written by 'mcel train'")
    m.add_argument("--ber", type=float, default=0.01, help="bit error rate (default 0.01)")
    m.add_argument("--trials", type=int, default=50, help="Monte-Carlo trials (default 50)")
    m.add_argument("--seed", type=int, default=0, help="fault seed")
    m.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2'; --ber then sets its largest rate")
    m.add_argument("--max-flips", type=int, default=16,
                   help="certificates above this are reported as '>N' (default 16)")
    m.add_argument("--out", default=None, help="folder for the PNG and JSON "
                                               "(default RUN_DIR/margins)")
    m.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    m.add_argument("--limit-test", type=int, default=None,
                   help="use the first N test images only")
    m.add_argument("--batch-size", type=int, default=1024, help="images per forward")
    m.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    m.set_defaults(func=cmd_margins)

    t = sub.add_parser("tune-margin", help="pick the MCEL margin: CE vs MCEL at candidate "
                                           "margins, evaluated at one BER")
    _add_train_flags(t, skip=("loss", "margin"))  # the tuner sets both per candidate
    t.add_argument("--ber", type=float, required=True, help="bit error rate to tune for")
    t.add_argument("--margins", type=_floats, default=list(CANDIDATE_MARGINS),
                   help="comma-separated candidate margins")
    t.add_argument("--clean-budget", type=float, default=CLEAN_BUDGET,
                   help="largest clean-accuracy loss vs CE allowed")
    t.add_argument("--trials", type=int, default=TUNE_TRIALS, help="Monte-Carlo trials")
    t.add_argument("--eval-seed", type=int, default=0, help="fault seed")
    t.add_argument("--seeds", type=_ints, default=None,
                   help="training seeds, e.g. 0,1,2,3,4: a margin must then beat CE with a "
                        "95%% interval (paired by seed) above zero; where CE's accuracy under "
                        "faults varies much by seed, three seeds are rarely enough "
                        "(default: --seed only)")
    t.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2'; --ber then sets its largest rate")
    t.add_argument("--json", default=None, help="write everything tried as JSON here")
    t.set_defaults(func=cmd_tune_margin)

    r = sub.add_parser("report", help="Markdown + HTML report from a results database")
    r.add_argument("db", help="results database (SQLite) written by a sweep")
    r.add_argument("--out", default="report", help="output folder (default ./report)")
    r.set_defaults(func=cmd_report)
