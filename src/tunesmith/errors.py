"""Typed errors that users see.

Every error a user can cause derives from :class:`TunesmithError`. Its message is one
line that says what went wrong, where (file, row, column or setting) and what to do.
The CLI prints that line and exits non-zero, with no stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path


class TunesmithError(Exception):
    """Base class of every error caused by user input, configuration or artifacts."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self._compose())

    def _location(self) -> str:
        return ""

    def _compose(self) -> str:
        where = self._location()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text = f"{text}. {self.hint}" if not text.endswith(".") else f"{text} {self.hint}"
        return text


class DataError(TunesmithError, ValueError):
    """Bad input data. Names the file, the 1-based data row (header excluded) and the column."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        super().__init__(message, hint=hint)

    def _location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        return ", ".join(parts)


class ConfigError(TunesmithError, ValueError):
    """A setting that is unknown, out of range or in conflict with another."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        super().__init__(message, hint=hint)

    def _location(self) -> str:
        return f"setting {self.key!r}" if self.key else ""


class ArtifactError(TunesmithError):
    """A model folder or run record that is missing, incomplete or unsafe to load."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, hint: str | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        super().__init__(message, hint=hint)

    def _location(self) -> str:
        return self.path or ""


class NotFittedError(TunesmithError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""
