"""Output folders and files: never write over, or delete, what a user owns; one writer at a time.

A folder is ours only when its marker says so: `OUT/.token-assorted-<kind>.json`, written when a
command first claims the folder. Every file a command writes there is recorded first, in
`OUT/.token-assorted-files` (one relative path a line, appended before the file is created; a
line ending in `/` is a folder we created with everything in it, a line with `*` a pattern of
our file names). So a later command knows exactly which files are ours:

- `claim` accepts a folder that is missing, empty, or marked as this kind and holding only files
  of ours; anything else (a user's folder, one of ours with a user's file added, one written
  by a version that kept no record) is refused unless `--force`;
- with `--force` we write our files there, but a file we did not write is never deleted
  (`remove_ours` deletes recorded files only) and never becomes ours;
- every writing command holds an exclusive `flock` on its output (`OUT/.token-assorted.lock`
  for a folder, `.NAME.lock` beside an output file) for its whole life; the lock dies with the
  process, so a second writer is refused while the first lives, never after;
- `check_outputs` refuses an output that is one of the command's inputs, lies inside a
  folder it reads, or (for a folder) holds one of them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .. import __version__
from .errors import OutputDirError
from .io import WRITE_OBSERVERS, atomic_write_json, read_json, writing

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the ownership check still applies)
    fcntl = None  # type: ignore[assignment]

KINDS = ("run", "train", "vqvae")
MANIFEST = ".token-assorted-files"
LOCK = ".token-assorted.lock"
PREFIX = ".token-assorted"  # our bookkeeping files at a folder's top: markers, the manifest, locks
MANIFEST_VERSION = 2  # markers written with a manifest beside them


def marker_path(out: Path, kind: str) -> Path:
    return Path(out) / f".token-assorted-{kind}.json"


# --------------------------------------------------------------------------- the record of our files
class Manifest:
    """The files of one output folder that token-assorted wrote (read, and appended to)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.exact: set[str] = set()
        self.folders: set[str] = set()  # "a/b/": everything under it
        self.patterns: set[str] = set()
        path = self.root / MANIFEST
        if path.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in path.read_text(encoding="utf-8").split("\n"):
                    self._add(line.strip())

    def _add(self, entry: str) -> bool:
        if not entry:
            return False
        group = self.folders if entry.endswith("/") else self.patterns if "*" in entry else self.exact
        if entry in group:
            return False
        group.add(entry)
        return True

    def owns(self, relative: str) -> bool:
        """Whether the file at `relative` (posix, under the root) is ours."""
        if relative in self.exact or relative.split("/", 1)[0].startswith(PREFIX):
            return True
        if any(relative.startswith(folder) for folder in self.folders):
            return True
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in self.patterns):
            return True
        # A temp file of an atomic write (.NAME.XXXX.tmp) left by a kill: ours when NAME is.
        head, _, name = relative.rpartition("/")
        if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
            target = name[1:].rsplit(".", 2)[0]
            return self.owns(f"{head}/{target}" if head else target) if target else False
        return False

    def foreign(self) -> list[str]:
        """Files (and links) under the root that are not ours, sorted; folders are not counted."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            base = os.path.relpath(folder, self.root)
            for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
                relative = name if base == "." else f"{base}/{name}".replace(os.sep, "/")
                if not self.owns(relative):
                    found.append(relative)
        return sorted(found)


class _Recorder:
    """An output folder this process writes into: new entries are appended to its manifest."""

    def __init__(self, root: Path) -> None:
        self.manifest = Manifest(root)
        self.root = self.manifest.root

    def add(self, entry: str) -> None:
        if self.manifest.owns(entry.rstrip("/")) and not entry.endswith("/") and "*" not in entry:
            return
        if self.manifest._add(entry):
            # Appended (O_APPEND) and flushed before the file exists: a kill leaves no file of ours unrecorded.
            with writing(self.root / MANIFEST), open(self.root / MANIFEST, "a", encoding="utf-8") as handle:
                handle.write(entry + "\n")


_ACTIVE: dict[Path, _Recorder] = {}


def adopt(out: str | Path) -> None:
    """Record this process's writes under `out` (a folder already claimed, e.g. by the parent process)."""
    root = Path(os.path.abspath(out))
    if root not in _ACTIVE and not any(root.is_relative_to(r) for r in _ACTIVE):
        _ACTIVE[root] = _Recorder(root)


def release(out: str | Path) -> None:
    _ACTIVE.pop(Path(os.path.abspath(out)), None)


def _recorder_of(path: Path) -> tuple[_Recorder, str] | None:
    """The claimed folder `path` lies in (or is), and `path` relative to it."""
    absolute = Path(os.path.abspath(path))
    for root, recorder in _ACTIVE.items():
        if absolute.is_relative_to(root):
            return recorder, absolute.relative_to(root).as_posix()
    return None


def note_write(path: str | Path, *, folder: bool = False, pattern: str | None = None) -> None:
    """Record, before writing it, that `path` is ours (a file; with `folder`, a folder we create and all
    in it; with `pattern`, the names `path/pattern`). Outside any claimed folder this does nothing."""
    found = _recorder_of(Path(path) / pattern if pattern else Path(path))
    if found is not None and found[1] != ".":
        recorder, relative = found
        recorder.add(relative + "/" if folder else relative)


WRITE_OBSERVERS.append(note_write)  # every atomic write is recorded before it happens


def is_ours(path: str | Path) -> bool | None:
    """Whether `path` is a file of ours by the record of its claimed folder (None: no folder claimed)."""
    found = _recorder_of(Path(path))
    return None if found is None else found[0].manifest.owns(found[1])


def not_ours(folder: str | Path) -> list[str]:
    """The files under `folder` that we did not write (all of them outside a claimed folder)."""
    folder = Path(folder)
    found = _recorder_of(folder)
    left = []
    for directory, dirs, files in os.walk(folder):
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(directory, d)))]:
            path = Path(directory) / name
            if found is None or not found[0].manifest.owns(
                    Path(os.path.abspath(path)).relative_to(found[0].root).as_posix()):
                left.append(str(path))
    return sorted(left)


def remove_ours(folder: str | Path) -> list[str]:
    """Delete the files of `folder` that we wrote (by the record), then its empty subfolders; return
    the files left because they are not ours (never deleted). Outside a claimed folder nothing is ours."""
    folder = Path(folder)
    if not folder.exists():
        return []
    found = _recorder_of(folder)
    left = []
    for directory, dirs, files in os.walk(folder, topdown=False):
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(directory, d)))]:
            path = Path(directory) / name
            relative = Path(os.path.abspath(path)).relative_to(found[0].root).as_posix() if found else None
            if name.startswith(PREFIX):
                continue  # our bookkeeping (a manifest, a lock) is never removed with the files it records
            if found is not None and found[0].manifest.owns(relative):
                with writing(path):
                    path.unlink()
            else:
                left.append(str(path))
        if directory != str(folder):
            with contextlib.suppress(OSError):  # not empty: a file of the user's stays in it
                os.rmdir(directory)
    return sorted(left)


def save_pretrained_into(thing: object, folder: str | Path) -> None:
    """`thing.save_pretrained` (a model, a tokenizer) into `folder`: each file recorded as ours,
    written in a temporary folder beside and renamed into place with the usual mode."""
    import tempfile

    from .io import new_file_mode

    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        note_write(folder, pattern=".save-*")  # the temporary folders (and their files), one record for all
        with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as tmp:
            thing.save_pretrained(tmp)  # type: ignore[attr-defined]
            for path in sorted(Path(tmp).iterdir()):
                if path.is_file():
                    note_write(folder / path.name)
                    path.chmod(new_file_mode())  # safetensors' temp files are 0600; results are shared
                    os.replace(path, folder / path.name)


# --------------------------------------------------------------------------- claiming a folder
def owner(out: Path) -> str | None:
    """Which kind of token-assorted folder `out` is, by its marker; None when it has none."""
    return next((kind for kind in KINDS if marker_path(out, kind).is_file()), None)


def _marker_version(out: Path, kind: str) -> int:
    with contextlib.suppress(Exception):
        record = read_json(marker_path(out, kind))
        if isinstance(record, dict) and isinstance(record.get("manifest"), int):
            return record["manifest"]
    return 1


def _enclosing(out: Path) -> tuple[Path, str] | None:
    """The nearest folder above `out` marked as one of ours, with its kind."""
    for parent in Path(os.path.abspath(out)).parents:
        kind = owner(parent)
        if kind is not None:
            return parent, kind
    return None


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


def claim(out: str | Path, kind: str, *, force: bool = False, **info: object) -> Path:
    """Accept `out` as the output folder of a `kind` command, mark it and record our files in it.

    Refused (OutputDirError) when `out` is a file, lies inside another token-assorted folder, or
    is a non-empty folder that is not a `kind` folder of ours holding only our files, unless
    `force`. `info` (e.g. the preset) goes into the marker.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: is not a folder; --out must be a folder")
    enclosing = _enclosing(out)
    if enclosing is not None and not force:
        raise OutputDirError(f"{out}: lies inside the token-assorted {enclosing[1]} folder {enclosing[0]}, whose "
                             f"files are its own; choose an --out outside it (or pass --force)")
    # Our markers, manifest and locks (and their temp files) are not a user's files: a folder
    # holding only them is as good as empty.
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(PREFIX)) if out.is_dir() else []
    found = owner(out)
    if entries and not force:
        if found != kind:
            what = f"a token-assorted {found} folder" if found else "not a token-assorted folder (it has no marker)"
            raise OutputDirError(f"{out}: not empty and {what} (holds {_shown(entries)}); refusing to write "
                                 f"there: choose another --out, or pass --force to add our files to it (a file "
                                 f"we did not write is never deleted)")
        if _marker_version(out, kind) < MANIFEST_VERSION:
            raise OutputDirError(f"{out}: written by an older token-assorted that kept no record of its files, "
                                 f"so they cannot be told from yours; choose another --out, or pass --force to "
                                 f"write into it (a file we did not write is never deleted)")
        foreign = Manifest(out).foreign()
        if foreign:
            raise OutputDirError(f"{out}: holds files token-assorted did not write ({_shown(foreign)}); refusing "
                                 f"to write beside them: move them out, choose another --out, or pass --force "
                                 f"(a file we did not write is never deleted)")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    if not marker_path(out, kind).is_file() or _marker_version(out, kind) < MANIFEST_VERSION:
        atomic_write_json(marker_path(out, kind), {"kind": kind, "created": time.time(), "version": __version__,
                                                   "manifest": MANIFEST_VERSION, **info})
    adopt(out)
    return out


@contextlib.contextmanager
def claimed(out: str | Path, kind: str, *, force: bool = False, **info: object) -> Iterator[Path]:
    """Lock `out`, `claim` it and record our writes for the block. If the block fails before
    writing any file into a folder it created, the folder is removed again (bad input leaves
    nothing behind)."""
    out = Path(out)
    existed = out.exists()
    if existed and not out.is_dir():
        raise OutputDirError(f"{out}: is not a folder; --out must be a folder")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out):
            claim(out, kind, force=force, **info)
            try:
                yield out
            finally:
                release(out)
    except BaseException:
        if not existed:
            _remove_if_only_bookkeeping(out)
        raise


def _remove_if_only_bookkeeping(out: Path) -> None:
    """Remove a folder we created if it holds nothing but our markers, manifest, lock and empty folders."""
    with contextlib.suppress(OSError):
        walked = list(os.walk(out, topdown=False))
        if any(not name.startswith(PREFIX) for _, _, files in walked for name in files):
            return
        for directory, _, files in walked:
            for name in files:
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)


# --------------------------------------------------------------------------- locks
def folder_lock(out: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold OUT/.token-assorted.lock exclusively while the block runs (removed after); refuse if it is held."""
    return _held(Path(out) / LOCK, f"{out}: another token-assorted command is writing into this folder", remove=True)


def run_lock(out: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a run's folder (the same lock as every other writer of the folder)."""
    return folder_lock(out)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside the output file `path` while the block runs (removed after); a
    device or pipe as output is not locked (nothing is replaced there)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        yield
        return
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)  # as the write itself would
    with _held(path.with_name(f".{path.name}.lock"), f"{path}: another token-assorted command is writing it",
               remove=True):
        yield


@contextlib.contextmanager
def _held(path: Path, refusal: str, remove: bool = False) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    for _ in range(10):
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputDirError(f"{refusal} ({holder}); wait for it to finish or choose another --out") from None
        # The holder before us may have removed the lock file between our open and our flock:
        # then our lock is on a file nobody else sees; open the path again.
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    else:
        raise OutputDirError(f"{refusal} (its lock file keeps changing)")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)  # closing releases the flock; so does the process ending in any way


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return f"pid {json.loads(os.pread(fd, 200, 0))['pid']}"
    return "its process id is unknown"


# --------------------------------------------------------------------------- outputs that are inputs
def _identity(path: Path) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        info = path.stat()
        return info.st_dev, info.st_ino
    return None


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None],
                  folders: Iterable[str] = ()) -> None:
    """Refuse an output that is one of the inputs, lies inside an input folder, or (outputs named
    in `folders`, which are written as folders) holds an input. Links and hard links count as
    the file they lead to. Names are the options (`--out`, `--data`)."""
    folders = set(folders)
    given_inputs = {name: Path(p) for name, p in inputs.items() if p not in (None, "")}
    for out_name, out in outputs.items():
        if out in (None, ""):
            continue
        out = Path(out)
        option = out_name.split()[0]  # "--out (its predictions file)" -> choose another --out
        real_out = Path(os.path.realpath(out))
        for in_name, source in given_inputs.items():
            real_in = Path(os.path.realpath(source))
            same = real_out == real_in or (_identity(out) is not None and _identity(out) == _identity(source))
            if same:
                raise OutputDirError(f"{out_name} {out} is {in_name} {source}: an output may not overwrite an input "
                                     f"of the same command; choose another {option}")
            if real_out.is_relative_to(real_in) and real_in.is_dir():
                raise OutputDirError(f"{out_name} {out} lies inside {in_name} {source}, which this command reads; "
                                     f"choose another {option}")
            if out_name in folders and real_in.is_relative_to(real_out):
                raise OutputDirError(f"{out_name} {out} holds {in_name} {source}, which this command reads and "
                                     f"could write over; choose another {option}")

