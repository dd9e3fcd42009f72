"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class EpmError(Exception):
    """An error caused by the user's input or environment, with a message a person can act on."""


class InputError(EpmError):
    """Bad input data; the message names the file and, where known, the row and column."""

    def __init__(self, path, message: str, row: int | None = None, column: str | None = None):
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.column = path, row, column


class ModelError(EpmError):
    """A model file or directory that is missing, corrupt or incompatible."""
