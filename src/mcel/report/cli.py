"""Moved to the command-line package: ``mcel margins`` to `mcel.cli.margins`, ``mcel
tune-margin`` to `mcel.cli.tune`, ``mcel report`` to `mcel.cli.report`. The names that
lived here are kept so that earlier imports keep working."""

from __future__ import annotations

from mcel.cli import margins, report, tune
from mcel.cli.margins import QUANTILES, cmd_margins
from mcel.cli.report import cmd_report
from mcel.cli.tune import cmd_tune_margin, print_tuning


def add_analysis_commands(sub) -> None:
    """Add ``margins``, ``tune-margin`` and ``report`` to the ``mcel`` subparsers."""
    for command in (margins, tune, report):
        command.register(sub)


__all__ = ["QUANTILES", "add_analysis_commands", "cmd_margins", "cmd_report",
           "cmd_tune_margin", "print_tuning"]
