"""User-facing errors: one clear message naming the file, line and field.

Every error a user can cause by handing us bad input derives from
`TokenAssortedError`; the CLI prints its message and exits non-zero instead of a
traceback. Bugs stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations

from pathlib import Path


class TokenAssortedError(Exception):
    """Base class of every error caused by user input (exit code 2 in the CLI)."""


class DataError(TokenAssortedError):
    """A data file is unreadable or a record in it is malformed."""

    def __init__(self, path: str | Path | None, message: str, *, line: int | None = None,
                 field: str | None = None, row: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.row = row  # 1-based record of a table (parquet, CSV, a `datasets` folder), which has no lines
        self.field = field
        where = self.path or "<data>"
        if line is not None:
            where += f", line {line}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ConfigError(TokenAssortedError):
    """An option, preset or config file is invalid (unknown key, wrong type, unknown name)."""


class CheckpointError(TokenAssortedError):
    """A checkpoint or model directory is missing, unsafe or does not match the data/tokenizer."""
