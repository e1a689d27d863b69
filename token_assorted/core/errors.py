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
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        # Picklable with its own arguments: errors of parallel workers reach the parent process.
        return (type(self), (self.path, self.message), {"line": self.line, "field": self.field})

    def __setstate__(self, state: dict) -> None:
        self.__init__(self.path, self.message, **state)


class ConfigError(TokenAssortedError):
    """An option, preset or config file is invalid (unknown key, wrong type, unknown name)."""


class OptionError(ConfigError, ValueError):
    """One option of a typed config is out of range or inconsistent with another, raised by the
    config's own checks; `config.from_mapping` adds where the option was given (`SOURCE: section.`)."""

    def __init__(self, option: str, message: str) -> None:
        self.option, self.message = option, message
        super().__init__(f"{option}: {message}")

    def __reduce__(self):
        return (type(self), (self.option, self.message))


class CheckpointError(TokenAssortedError):
    """A checkpoint or model directory is missing, unsafe or does not match the data/tokenizer."""


class WriteError(TokenAssortedError):
    """A file or folder could not be written: no space left, no permission, a read-only disk.

    The operating system's reason, with the path it concerns; raised where a write fails
    (`io.atomic_open`, `io.writing`) so the user learns which output could not be written.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot write: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class OutputDirError(TokenAssortedError):
    """An output folder that must not be written: a user's own files, or a run in progress."""


class TrainingError(TokenAssortedError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""
