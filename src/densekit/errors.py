"""Errors densekit raises on purpose.

Every error a user can cause names what was wrong, where (file and line when there is one) and what to
do about it, so that nobody has to read a traceback from deep inside a library to find a typo in a qrel.
"""
from __future__ import annotations

from pathlib import Path


class DensekitError(Exception):
    """Base class of the errors densekit raises deliberately."""


class InputError(DensekitError, ValueError):
    """A data file is missing, malformed or inconsistent.

    The message reads ``path:line: what is wrong. what to do``; ``path``, ``line`` and ``fix`` are kept
    as attributes so callers and tests can inspect them.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 fix: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.fix = fix
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        text = where + message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class ConfigError(DensekitError, ValueError):
    """An argument or combination of arguments cannot work; the message says what to change."""
