"""The ``mcel`` command: the parser, its error style and exit codes, over one module per
command (`mcel.cli.train`, ``evaluate``, ``demo``, ``sweep``, ``margins``, ``tune``,
``report``, ``attack``, ``maps``, ``export``, ``data``), each thin over the library.

User mistakes (``MCELError``, unreadable files, bad YAML) print one line and exit 2;
nothing else is caught, so real bugs keep their traceback (exit 1). An interrupt exits
130. ``mcel sweep`` exits 3 when some cells failed but the sweep went on
(`mcel.cli.sweep.EXIT_CELLS_FAILED`). Command modules import the
library inside their functions: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from mcel.cli import attack, data, demo, evaluate, export, maps, margins, report, sweep, train, tune
from mcel.errors import MCELError

EXIT_USAGE = 2
COMMANDS = (train, evaluate, demo, sweep, margins, tune, report, attack,
            maps, export, data)  # in the order of --help


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line and exit 2, not the usage block
    (subcommands inherit it through ``add_subparsers``)."""

    def __init__(self, *a, **kw) -> None:
        kw.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where its help does not already name it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) \
            if isinstance(default, list) else "%(default)s"
        return f"{text} (default {shown})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mcel", description="Make quantized neural networks tolerant to bit "
                "errors, and measure how tolerant they are. 'mcel COMMAND --help' for each.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


class _VersionAction(argparse.Action):
    """``--version``: what is installed and which sampler runs (built only when asked)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and whether the native sampler is in use")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from mcel import __version__
    from mcel.faults import native

    return f"mcel {__version__}; {native.status()}"


def _check_common_flags(args: argparse.Namespace) -> None:
    """Flags several commands share, checked before any work: sizes are positive, an
    --adaptive half-width is a positive number, a --json file can be written."""
    import math

    for name in ("batch_size", "limit_train", "limit_test", "epochs", "trials", "trial_batch"):
        v = getattr(args, name, None)
        if name == "epochs" and v == 0 and getattr(args, "command", None) == "train":
            continue  # 0 epochs measures --init weights untrained: the config checks that
        if v is not None and v < 1:
            raise MCELError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    hw = getattr(args, "adaptive", None)
    if hw is not None and not (math.isfinite(hw) and 0 < hw < 1):
        raise MCELError(f"--adaptive is a 95% half-width of an accuracy, in (0, 1) (e.g. "
                        f"0.005 for +-0.5 points), got {hw}")
    if getattr(args, "json", None) is not None:
        from mcel.io import check_can_create

        check_can_create(args.json)
    threads = getattr(args, "torch_threads", None)
    if threads is not None and threads < 1:
        raise MCELError(f"--threads must be a positive integer, got {threads}")


def _threads(n: int | None):
    """--threads for the command's duration (torch is imported only when it is given)."""
    if n is None:
        return contextlib.nullcontext()
    from mcel.precision import cpu_threads

    return cpu_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # bare `mcel`: what there is to do
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        _check_common_flags(args)
        with _threads(getattr(args, "torch_threads", None)):
            return int(args.func(args) or 0)
    except MCELError as e:
        print(f"mcel {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"mcel {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "EXIT_USAGE", "build_parser", "main"]
