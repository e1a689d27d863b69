"""Safe file I/O: atomic writes and strict JSON / JSONL record reading.

Writes go to a temporary file in the target's directory, are fsynced, then renamed
over the target, so a killed process never leaves a half-written file behind. A write
the operating system refuses (no space left, no permission, a read-only disk) is a
`WriteError` naming the file, and the old file stays as it was. New files get the
usual mode (0o666 less the umask); a replaced file keeps its own.

Readers are strict: a duplicated key, a number of more than 4300 digits, nesting too deep
for the parser, or (in data records) NaN and Infinity are `DataError`s naming the file
and line, never a traceback or a silently dropped value.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DataError, WriteError


# Called with each path `atomic_open` is about to write, before it writes: outdir.py adds its record
# of our files here (it imports this module, so this module cannot import it).
WRITE_OBSERVERS: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory; expected an output file name")
    special = special_file(path)
    if special is not None:
        # /dev/null, a pipe: written in place (a rename would replace the device by a file).
        if special not in ("character device", "pipe"):
            raise DataError(path, f"is a {special}; refusing to write an output there")
        with writing(path), open(path, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
        return
    for observe in WRITE_OBSERVERS:  # outdir.py records the files of a claimed output folder
        observe(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would hide results from the user's group
    except OSError as exc:  # a parent that is a file, no permission, read-only disk
        raise WriteError(path, os_reason(exc)) from None
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # out of space or quota while writing: the old file is intact
            raise WriteError(path, os_reason(exc)) from exc
        raise


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn the operating system refusing a write under `path` into a WriteError naming it.

    For writers outside `atomic_open` (save_pretrained, safetensors, folders): safetensors
    reports the OS error only as text ("... (os error 28)"), which is read back here.
    """
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(exc.filename or path, os_reason(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - only library errors that carry an OS error are converted
        reason = library_os_reason(exc)
        if reason is None:
            raise
        raise WriteError(path, reason) from exc


def special_file(path: str | Path) -> str | None:
    """What an existing path is when it is not a regular file or a folder (a device, a pipe)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISCHR, "character device"), (stat.S_ISFIFO, "pipe"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"))
    return next((name for test, name in kinds if test(mode)), None)


def os_reason(exc: OSError) -> str:
    """The operating system's words for an OSError ("No space left on device")."""
    return exc.strerror or str(exc) or type(exc).__name__


_OS_ERROR_TEXT = (re.compile(r"\(os error (\d+)\)"), re.compile(r"strerror: ([^\n]+)"))


def library_os_reason(exc: BaseException) -> str | None:
    """The OS error inside a library's message (safetensors, torch), or None if there is none."""
    text = str(exc)
    number = _OS_ERROR_TEXT[0].search(text)
    if number:
        return os.strerror(int(number.group(1)))
    words = _OS_ERROR_TEXT[1].search(text)
    return words.group(1).strip() if words else None


def _file_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)  # a replaced file keeps the mode its owner gave it
    except OSError:
        return new_file_mode()


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # /proc gives the umask without changing it (os.umask can only read it by setting it).
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    special = special_file(path)
    if special in ("character device", "block device", "socket"):
        # /dev/zero would be read until memory runs out; a pipe (`<(cat file)`) is read to its end.
        raise DataError(path, f"is a {special}, not a file; expected a data file")
    pipe = (str(path), os.stat(path).st_ino) if special == "pipe" else None
    if pipe in _PIPES_READ:
        return _PIPES_READ[pipe]  # a pipe gives its bytes once; readers that look twice get them again
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte {exc.start})", line=line) from None
    if pipe is not None:
        _PIPES_READ[pipe] = text
    return text


_PIPES_READ: dict[tuple[str, int] | None, str] = {}  # `data stats <(cat FILE)`: the pipe's text, for the second reader


class _Refused(ValueError):
    """Raised by the strict decoder's hooks: a duplicated key, or NaN where data is read."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):  # json would keep the last value silently
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"duplicate key {duplicate!r:.60}")
    return record


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys)
_STRICT_DATA = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)


@contextlib.contextmanager
def _json_errors(path: Path, line: int | None, malformed: str = "malformed JSON") -> Iterator[None]:
    """Every way json can fail on hostile text, as a DataError naming the file and line."""
    try:
        yield
    except json.JSONDecodeError as exc:
        raise DataError(path, f"{malformed}: {exc.msg}", line=line if line is not None else exc.lineno) from None
    except _Refused as exc:
        raise DataError(path, str(exc), line=line) from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply to read", line=line) from None
    except ValueError as exc:  # int() refuses more than 4300 digits
        raise DataError(path, f"unreadable JSON value: {str(exc).split(';')[0]}", line=line) from None


def read_json(path: str | Path) -> Any:
    """A JSON file (a config, metadata); duplicated keys and unreadable values are DataErrors."""
    text = read_text(path)
    with _json_errors(Path(path), None):
        return _STRICT.decode(text)


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
        with _json_errors(path, number, "malformed JSON line"):
            record = _STRICT_DATA.decode(line)
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        records.append((number, record))
    return records


def _records_of_json_list(path: Path, text: str) -> list[tuple[int, dict]]:
    try:
        items = _STRICT_DATA.decode(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON: {exc.msg}", line=exc.lineno) from None
    except (ValueError, RecursionError):
        _item_lines(path, text)  # raises the failure again, at the record it is in
        raise DataError(path, "unreadable JSON") from None
    starts = _item_lines(path, text)
    records = []
    for index, item in enumerate(items):
        line = starts[index] if index < len(starts) else None
        if not isinstance(item, dict):
            raise DataError(path, f"record {index}: expected a JSON object, got {type(item).__name__}",
                            line=line)
        records.append((line if line is not None else index + 1, item))
    return records


def _item_lines(path: Path, text: str) -> list[int]:
    """The line each item of a JSON list starts on (errors inside an item name that line)."""
    lines, position = [], text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return lines
        lines.append(text.count("\n", 0, position) + 1)
        with _json_errors(path, lines[-1]):
            _, position = _STRICT_DATA.raw_decode(text, position)
