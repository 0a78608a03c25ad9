"""``mcel attack``: the fewest bit flips that break a run (progressive bit search,
`mcel.attack`), or every run of a sweep's results database with a summary per method
(`mcel.experiments.attacks`, `mcel.report.attack`)."""

from __future__ import annotations

import argparse

from mcel.cli.common import add_device_flag, add_threads_flag, floats, listed
from mcel.console import log
from mcel.errors import MCELError


def _settings(args: argparse.Namespace):
    from mcel.attack import AttackSettings

    return AttackSettings(budget=args.budget, candidates=args.candidates, fmt=args.fmt,
                          layers=tuple(args.layers or ("*",)),
                          attack_samples=args.attack_samples, test_samples=args.test_samples,
                          levels=None if args.levels is None else tuple(args.levels),
                          stop=args.stop, seed=args.seed)


def cmd_attack(args: argparse.Namespace) -> int:
    if str(args.run_dir).endswith(".db"):
        return _attack_database(args)
    if args.out or args.runs or args.summary_only:
        raise MCELError("--out, --runs and --summary-only go with a results database (.db); "
                        "for one run folder give --json FILE")
    from mcel.attack import attack_run
    from mcel.io import write_json

    res = attack_run(args.run_dir, _settings(args), device=args.device,
                     data_dir=args.data_dir)
    acc, meta = res.accuracy, res.meta
    print(f"{len(res.flips)} flips ({meta['fmt']}, {meta['test_samples']} test images, attack "
          f"batch of {meta['attack_samples']} training images, seed {args.seed}, "
          f"{res.seconds:.1f} s): accuracy {100 * acc[0]:.2f}% -> {100 * acc[-1]:.2f}%")
    for lv, n in meta["flips_to"].items():
        print(f"  accuracy <= {100 * float(lv):.1f}%: "
              + (f"after {n} flips" if n is not None else f"not within {len(res.flips)} flips"))
    if args.json:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    return 0


def _attack_database(args: argparse.Namespace) -> int:
    """Every run of the database into ``--out``, then the summary beside the results."""
    from mcel.experiments.attacks import attack_sweep
    from mcel.report.attack import summarize_folder

    if args.json:
        raise MCELError("--json is for one run folder; with a database give --out DIR (one "
                        "JSON per run and a summary)")
    if not args.out:
        raise MCELError(f"give --out DIR for the attack results of {args.run_dir} (one JSON "
                        "per run and summary.md/json)")
    if not args.summary_only:
        s = attack_sweep(args.run_dir, args.out, _settings(args), runs_dir=args.runs,
                         device=args.device, data_dir=args.data_dir, log=log)
        print(f"{len(s.run_ids)} runs: {len(s.done)} attacked, {len(s.kept)} done already, "
              f"{len(s.missing)} without a run folder; results in {s.out}")
    md, js = summarize_folder(args.run_dir, args.out)
    print(f"wrote {md} and {js}")
    return 0


def register(sub) -> None:
    from mcel.attack import AttackSettings
    from mcel.quant import list_formats

    d = AttackSettings()
    a = sub.add_parser("attack", help="worst-case bit flips: how few break a trained run, or "
                       "every run of a sweep")
    a.add_argument("run_dir", metavar="RUN_DIR|DB",
                   help="a run folder written by 'mcel train', or a sweep's results database "
                        "(a .db file) to attack every run of it")
    a.add_argument("--budget", type=int, default=d.budget, help="most bits to flip")
    a.add_argument("--candidates", type=int, default=d.candidates,
                   help="gradient-ranked candidate bits tried per layer and flip")
    a.add_argument("--fmt", default=d.fmt, metavar=listed(list_formats()),
                   help="attack the codes stored in this number format (default: the run's "
                        "own)")
    a.add_argument("--layers", action="append", default=None, metavar="PATTERN",
                   help="only flip bits in layers matching this name pattern (repeatable; "
                        "default: every quantized layer)")
    a.add_argument("--attack-samples", type=int, default=d.attack_samples,
                   help="training images whose loss the search raises")
    a.add_argument("--test-samples", type=int, default=d.test_samples,
                   help="first N test images on which accuracy is measured after each flip")
    a.add_argument("--levels", type=floats, default=d.levels,
                   help="accuracies to report the flip count for, fractions (default 0.5 and "
                        "1.1x chance)")
    a.add_argument("--stop", action="store_true",
                   help="stop once accuracy reaches the lowest level")
    a.add_argument("--seed", type=int, default=d.seed, help="seed of the attack batch draw")
    add_device_flag(a)
    add_threads_flag(a)
    a.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    a.add_argument("--json", default=None, help="write every flip and accuracy (fractions) "
                   "here (default: none)")
    a.add_argument("--out", default=None, metavar="DIR",
                   help="with a database: folder for one JSON per run (<run_id>.json, the "
                        "single-run JSON) and summary.md/json; rerunning resumes (default: "
                        "none)")
    a.add_argument("--runs", default=None, metavar="DIR",
                   help="with a database: the folder holding its <run_id>/ run folders "
                        "(default: runs/ beside the database)")
    a.add_argument("--summary-only", action="store_true",
                   help="with a database: only rewrite summary.md/json from the JSONs already "
                        "in the output folder")
    a.set_defaults(func=cmd_attack)
