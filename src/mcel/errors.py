"""User-facing errors.

`MCELError` marks a mistake in the user's input (a name, a rate, a file). The CLI prints
its message as one line and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class MCELError(ValueError):
    """A user mistake: the message says what is wrong and how to fix it."""
