"""``mcel train``: train one config into a run folder (resumes; data-parallel under
torchrun)."""

from __future__ import annotations

import argparse
import sys

from mcel.cli.common import add_threads_flag, add_train_flags, train_config
from mcel.console import log


def cmd_train(args: argparse.Namespace) -> int:
    from mcel.distributed import is_main_process
    from mcel.train import train

    config = train_config(args)
    _, metrics = train(config, args.out, progress=sys.stderr.isatty(), log=log)
    if is_main_process():  # under torchrun every rank gets here; one line is enough
        print(f"clean test accuracy {100 * metrics['test_acc']:.2f}%; run folder {args.out}")
    return 0


def register(sub) -> None:
    t = sub.add_parser("train", help="train a quantized model (CE, MCEL, MHL, error injection)")
    add_train_flags(t)
    add_threads_flag(t)
    t.add_argument("--out", required=True, help="run folder (resumes if it holds this config)")
    t.set_defaults(func=cmd_train)
