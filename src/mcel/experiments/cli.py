"""Moved: ``mcel sweep`` lives in `mcel.cli.sweep`. The names that lived here are kept so
that earlier imports keep working."""

from __future__ import annotations

from mcel.cli.sweep import cmd_sweep
from mcel.cli.sweep import register as add_sweep_command

__all__ = ["add_sweep_command", "cmd_sweep"]
