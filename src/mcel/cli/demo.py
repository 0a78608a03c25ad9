"""``mcel demo``: CE vs MCEL vs error injection on the embedded digits data."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from mcel.demo import run_demo

    run_demo(args.out, epochs=args.epochs, trials=args.trials, seed=args.seed)
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="CE vs MCEL vs error injection on digits (the main job)")
    d.add_argument("--out", default="demo-out", help="folder for the table and plot")
    d.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    d.add_argument("--trials", type=int, default=30, help="Monte-Carlo trials per BER")
    d.add_argument("--seed", type=int, default=0, help="training and fault seed")
    d.set_defaults(func=cmd_demo)
