"""Safe file I/O: atomic writes and strict JSON / JSONL record reading.

Writes go to a temporary file in the target's directory, are fsynced, then renamed
over the target, so a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DataError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory; expected an output file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a parent that is a file, no permission, read-only disk
        raise DataError(path, f"cannot write: {exc.strerror}") from None
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_text(path: str | Path) -> str:
    """Read a UTF-8 file, turning every failure into a DataError that names the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte {exc.start})", line=line) from None


def read_json(path: str | Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON: {exc.msg}", line=exc.lineno) from None


def split_lines(text: str) -> list[str]:
    r"""A text file's lines, split at \n (and \r\n) only.

    Not str.splitlines(): it also breaks at U+2028, U+0085 and other separators that a JSON
    string may hold unescaped (GSM8K train has U+2028 in a question), cutting a record in two.
    """
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """Records of a JSONL file or of a JSON list, each with its 1-based line number.

    For a JSON list the line is where the record starts, so errors still point at it.
    """
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "file is empty")
    if text.lstrip().startswith("["):
        return _records_of_json_list(path, text)
    records = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON line: {exc.msg}", line=number) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        records.append((number, record))
    return records


def _records_of_json_list(path: Path, text: str) -> list[tuple[int, dict]]:
    decoder = json.JSONDecoder()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON: {exc.msg}", line=exc.lineno) from None
    # Recover each record's starting line by scanning object starts at depth 1.
    starts = _object_start_lines(text, decoder)
    records = []
    for index, item in enumerate(items):
        line = starts[index] if index < len(starts) else None
        if not isinstance(item, dict):
            raise DataError(path, f"record {index}: expected a JSON object, got {type(item).__name__}",
                            line=line)
        records.append((line if line is not None else index + 1, item))
    return records


def _object_start_lines(text: str, decoder: json.JSONDecoder) -> list[int]:
    lines, position = [], text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return lines
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)
