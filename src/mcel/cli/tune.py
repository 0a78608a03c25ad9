"""``mcel tune-margin``: pick the MCEL margin, CE vs MCEL at candidate margins under one
BER (`mcel.tuning`)."""

from __future__ import annotations

import argparse
import sys

from mcel.cli.common import (
    JSON_UNITS,
    add_threads_flag,
    add_train_flags,
    console,
    error_model,
    floats,
    ints,
    train_config,
)
from mcel.console import log
from mcel.tuning import (
    CANDIDATE_MARGINS,
    CLEAN_BUDGET,
    CORRECTIONS,
    TUNE_TRIALS,
    Candidate,
    TuningResult,
)


def cmd_tune_margin(args: argparse.Namespace) -> int:
    from mcel.io import write_json
    from mcel.tuning import tune_margin

    base = train_config(args)
    if args.dry_run:
        return _print_plan(base, args)
    em = error_model(args.error_model)
    res = tune_margin(base, args.ber, em, margins=args.margins, normalize=None,
                      clean_budget=args.clean_budget, trials=args.trials, seed=args.eval_seed,
                      seeds=args.seeds, correction=args.correction, runs=args.runs,
                      clips=args.clips, jobs=args.jobs, progress=sys.stderr.isatty(), log=log)
    print_tuning(res)
    if args.json:
        write_json(args.json, {"units": JSON_UNITS, **res.to_dict()})
        print(f"wrote {args.json}")
    return 0


def _print_plan(base, args: argparse.Namespace) -> int:
    """``--dry-run``: each candidate and seed, and whether it would be trained."""
    from collections import Counter

    from mcel.tuning import plan

    rows = plan(base, args.margins, clips=args.clips, seeds=args.seeds, runs=args.runs)
    for method, seed, run_id, status in rows:
        print(f"{status:6s} {method} seed {seed} ({run_id})")
    n = Counter(status for *_, status in rows)
    print(f"{len(rows)} runs: {n['reuse']} to reuse, {n['resume']} to resume, "
          f"{n['train']} to train" + (f" in {args.runs}" if args.runs else ""))
    return 0


def print_tuning(res: TuningResult) -> None:
    """The table of everything ``tune_margin`` tried, and its choice."""
    from rich.table import Table

    over = f"{len(res.seeds)} training seeds, " if len(res.seeds) > 1 else ""
    what = "margin and clip" if res.searched_clips else "margin"
    t = Table(title=f"{what} search at BER {res.ber:g} ({over}{res.trials} trials; chosen "
                    f"on {res.n_select} samples: {res.selected_on})")
    t.add_column("method", no_wrap=True)
    delta = "Δ vs CE" + (" [Bonferroni]" if res.correction == "bonferroni" else "")
    for col in ("clean %", f"BER {res.ber:g}: acc % [95% CI]", delta, "in budget",
                "test clean %", "train s"):
        t.add_column(col, justify="right")
    for i, r in enumerate(res.rows):
        mark = " *" if res.best is r else ""
        t.add_row(r.method + mark, f"{100 * r.clean_acc:.2f}",
                  # an accuracy lives in [0, 100]: a t-interval over few seeds may not
                  f"{100 * r.acc:.2f} [{100 * max(0.0, r.ci_low):.2f}, "
                  f"{100 * min(1.0, r.ci_high):.2f}]",
                  "—" if i == 0 else _delta(r),
                  "CE" if i == 0 else ("yes" if r.eligible else "no"),
                  f"{100 * r.test_clean_acc:.2f}", f"{r.train_seconds:.1f}")
    c = console()
    c.print(t)
    for line in _verdict(res):
        c.print(line)


def _delta(r: Candidate) -> str:
    ci = ("" if r.delta_ci_low is None else
          f" [{100 * r.delta_ci_low:+.2f}, {100 * r.delta_ci_high:+.2f}]")
    return f"{100 * r.delta_vs_ce:+.2f}{ci}"


def _verdict(res: TuningResult) -> list[str]:
    """The choice in words: the best margin against CE, and the recommendation."""
    b = res.best
    margins_only = not res.searched_clips
    if b is None and not margins_only:
        return [f"no candidate keeps clean accuracy within {100 * res.clean_budget:g} points "
                f"of {res.ce.method}; try smaller margins, looser clips or a larger "
                "--clean-budget", f"recommended: {_flags(res.recommended)}"]
    if b is None:
        return [f"no margin keeps clean accuracy within {100 * res.clean_budget:g} points of "
                "CE; try smaller margins or a larger --clean-budget",
                "recommended: margin 0 (MCEL at margin 0 is CE)"]
    if b.delta_vs_ce <= 0:
        verdict = "worse than or equal to"
    elif res.beats_ce:
        verdict = "better than"
    else:
        verdict = "not significantly better than" if len(res.seeds) > 1 else "not better than"
    what = f"margin {b.margin:g}" if margins_only else "candidate"
    head = (f"best {what} ({b.method}): {100 * b.acc:.2f}% at BER {res.ber:g}, {verdict} "
            f"{res.ce.method}'s {100 * res.ce.acc:.2f}% ({100 * b.delta_vs_ce:+.2f} points)")
    if margins_only:  # the answer is a margin
        return [head, f"recommended: margin {res.recommended_margin:g}"
                + ("" if res.beats_ce else " (MCEL at margin 0 is CE: no margin beat it)")]
    return [head, f"recommended: {_flags(res.recommended)}"
            + ("" if res.beats_ce else f" ({res.ce.method}: no candidate beat it)")]


def _flags(settings: dict) -> str:
    """Training settings as the `mcel train` flags that set them."""
    words = [f"--loss {settings['loss']}"]
    words += [f"--{k.replace('_', '-')} {v:g}" for k, v in settings.items()
              if k != "loss" and v is not None]
    return " ".join(words)


def _words(text: str) -> list[str]:
    from mcel.errors import MCELError
    from mcel.tuning import parse_clip

    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError("give at least one clip, e.g. none,auto:1")
    for w in words:  # a bad word fails here, before any training
        try:
            parse_clip(w)
        except MCELError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return words


def register(sub) -> None:
    t = sub.add_parser("tune-margin", help="pick the MCEL margin: CE vs MCEL at candidate "
                                           "margins, evaluated at one BER")
    add_train_flags(t, skip=("loss", "margin"))  # the tuner sets both per candidate
    add_threads_flag(t)
    t.add_argument("--ber", type=float, required=True,
                   help="bit error rate to tune for, a fraction (0.01 = 1%%)")
    t.add_argument("--margins", type=floats, default=list(CANDIDATE_MARGINS),
                   help="comma-separated candidate margins")
    t.add_argument("--clean-budget", type=float, default=CLEAN_BUDGET,
                   help="largest clean-accuracy loss vs CE allowed, a fraction (0.005 = "
                        "half a point)")
    t.add_argument("--trials", type=int, default=TUNE_TRIALS, help="Monte-Carlo trials")
    t.add_argument("--eval-seed", type=int, default=0, help="fault seed")
    t.add_argument("--seeds", type=ints, default=None,
                   help="training seeds, e.g. 0,1,2,3,4: a margin must then beat CE with a "
                        "95%% interval (paired by seed) above zero; where CE's accuracy under "
                        "faults varies much by seed, three seeds are rarely enough "
                        "(default: --seed only)")
    t.add_argument("--correction", choices=CORRECTIONS, default="none",
                   help="with --seeds: widen the paired intervals for picking the best of "
                        "K margins (bonferroni: 95%% for the whole search, fewer "
                        "recommendations) (default none)")
    t.add_argument("--clips", type=_words, default=None, metavar="LIST",
                   help="comma-separated candidate weight clips (none, a number = --clip, "
                        "auto:C = --clip-auto C, rel:C = --clip-rel C), e.g. "
                        "none,0.025,auto:1: CE and every margin are trained under each and "
                        "compared with plain CE, so the search picks the clip with the margin "
                        "(default: the --clip settings given, margins only)")
    t.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2'; --ber then sets its largest rate "
                        "(default: uniform flips in the weights)")
    t.add_argument("--runs", default=None, metavar="DIR",
                   help="keep each trained candidate in DIR/RUN_ID and reuse the finished "
                        "ones: a rerun of the search, or a sweep's runs/ folder that "
                        "trained the same configs, costs only the evaluations "
                        "(default: train everything, keep nothing)")
    t.add_argument("--jobs", type=int, default=1,
                   help="train the candidates missing in --runs this many at a time first, "
                        "one CPU thread each (as a sweep's cells; needs --runs), then "
                        "evaluate them; 1: one after the other, at --threads (default 1)")
    t.add_argument("--dry-run", action="store_true",
                   help="only list each candidate and seed and whether it would be reused, "
                        "resumed or trained (default: run the search)")
    t.add_argument("--json", default=None, help="write everything tried as JSON here, "
                   "accuracies as fractions (default: none)")
    t.set_defaults(func=cmd_tune_margin)
