"""``mcel report``: Markdown and HTML report of a results database (`mcel.report`)."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from mcel.report.build import build_report

    dbs = args.db[0] if len(args.db) == 1 else args.db
    md = build_report(dbs, args.out, voltage_curve=args.voltage_curve, baseline=args.baseline,
                      grid=args.grid)
    print(f"wrote {md}, {md.with_name('report.html')} and the plots beside them")
    return 0


def register(sub) -> None:
    r = sub.add_parser("report", help="Markdown + HTML report from a results database")
    r.add_argument("db", nargs="+", help="results database (SQLite) written by a sweep; "
                   "several are read as one study (sister grids whose runs pair by seed)")
    r.add_argument("--out", default="report", help="output folder")
    r.add_argument("--voltage-curve", default=None, metavar="CSV",
                   help="a memory's 'voltage,ber' curve: adds each method's lowest safe "
                        "voltage and dynamic energy saving (default: none)")
    r.add_argument("--baseline", default=None, metavar="METHOD",
                   help="the method the Δ columns compare with, as the tables name it, e.g. "
                        "'CE+clip(0.025)' (does MCEL add to the clip?) (default CE)")
    r.add_argument("--grid", nargs="+", default=None, metavar="GRID",
                   help="report only the runs of these grid files' current cells (a "
                        "database keeps the runs of cells since dropped or changed; a note "
                        "names them) (default: every run)")
    r.set_defaults(func=cmd_report)
