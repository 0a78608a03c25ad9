"""What a long job shows while it runs: a progress bar and log lines, both on stderr.

The library draws nothing unless asked (``progress=True``, a ``log`` callable); the
command line asks when stderr is a terminal. Kept low, with no other mcel import, so
that training, evaluation, sweeps and commands can all share it.
"""

from __future__ import annotations

import sys


def progress(enabled: bool):
    """A rich progress bar (a context manager) that draws nothing when not ``enabled``;
    each task carries an ``info`` field shown after its count."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled, transient=True)


def log(msg: str) -> None:
    """One line on stderr, at once (stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)


__all__ = ["log", "progress"]
