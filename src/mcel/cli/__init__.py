"""The ``mcel`` command (console entry point ``mcel.cli:main``; ``python -m mcel.cli``).

`mcel.cli.app` builds the parser and runs a command; each command lives in a module of
its own, and the flags several commands share in `mcel.cli.common`.
"""

from mcel.cli.app import EXIT_USAGE, build_parser, main

__all__ = ["EXIT_USAGE", "build_parser", "main"]
