"""Output folders: never write over what a user owns, and one run at a time.

`run --out`, `train --out` and `vqvae train --out` write many files (results, reports,
weights, `config.json`, `data/train.jsonl`). Before any of them is written, `claim`
accepts the folder only if it is missing, empty, or one of ours — marked by
`OUT/.token-assorted-<kind>.json`, written when a command first claims the folder, or
(for folders written before the marker existed) holding our own files. Anything else is
refused unless the user passes `--force`. `run` also holds an exclusive `flock` on
`OUT/.token-assorted-run.lock` for its whole life, so a second run into the same folder
is refused while the first is alive; the lock dies with its process (exit, crash or kill).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .. import __version__
from .errors import OutputDirError
from .io import atomic_write_json, read_json, writing

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the ownership check still applies)
    fcntl = None  # type: ignore[assignment]

KINDS = ("run", "train", "vqvae")


def marker_path(out: Path, kind: str) -> Path:
    return out / f".token-assorted-{kind}.json"


def _written_before_markers(out: Path, kind: str) -> bool:
    """Whether `out` holds a `kind` run of ours written before markers existed (by its own files)."""
    if kind == "run":  # a finished stage's marker (a results.json alone could be anyone's)
        return any(out.glob("*/.complete.json"))
    if kind == "train":
        # "token_assorted.json" is model_dir.MODEL_META, named here because model_dir loads torch
        return (out / "token_assorted.json").is_file() or (out / "state" / "latest.json").is_file()
    try:
        info = read_json(out / "config.json") if (out / "config.json").is_file() else {}
    except Exception:  # noqa: BLE001 - an unreadable config.json is not ours
        info = {}
    ours = isinstance(info, dict) and str(info.get("format", "")).startswith("token-assorted-vqvae")
    return ours or (out / "state" / "state.json").is_file()


def owner(out: Path) -> str | None:
    """Which kind of token-assorted folder `out` is, or None when it is not one of ours."""
    marked = [kind for kind in KINDS if marker_path(out, kind).is_file()]
    # Without a marker, by its files: a VQ-VAE's config.json before the state both stages keep.
    return next(iter(marked), None) or next((kind for kind in ("run", "vqvae", "train")
                                             if _written_before_markers(out, kind)), None)


@contextlib.contextmanager
def claimed(out: str | Path, kind: str, *, force: bool = False, **info: object) -> Iterator[Path]:
    """`claim` the folder for the block; if the block fails before writing any file into a
    folder it created, the folder is removed again (bad input leaves nothing behind)."""
    out = Path(out)
    existed = out.exists()
    claim(out, kind, force=force, **info)
    try:
        yield out
    except BaseException:
        if not existed and not any(p.is_file() and not p.name.startswith(".token-assorted-")
                                   for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def claim(out: str | Path, kind: str, *, force: bool = False, **info: object) -> Path:
    """Accept `out` as the output folder of a `kind` command and mark it as ours.

    Refused (OutputDirError) when `out` is a file, or a non-empty folder that is not a
    `kind` folder of ours, unless `force`. `info` (e.g. the preset) goes into the marker.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: is a file; --out must be a folder")
    # Our own markers and locks (and their temp files, mid-write by a run starting now) are not
    # a user's files: a folder holding only them is as good as empty.
    entries = sorted(p.name for p in out.iterdir() if ".token-assorted-" not in p.name) if out.is_dir() else []
    found = owner(out) if entries else None
    if entries and found != kind and not force:
        what = f"a token-assorted {found} folder" if found else "not a token-assorted folder"
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise OutputDirError(f"{out}: not empty and {what} (holds {shown}); refusing to write over its "
                             f"files: choose another --out, or pass --force to write into it anyway")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    if not marker_path(out, kind).is_file():
        atomic_write_json(marker_path(out, kind), {"kind": kind, "created": time.time(),
                                                   "version": __version__, **info})
    return out


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold OUT/.token-assorted-run.lock exclusively while the block runs; refuse if it is held."""
    if fcntl is None:
        yield
        return
    path = Path(out) / ".token-assorted-run.lock"
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"{out}: another token-assorted run is writing into this folder "
                                 f"({_holder(fd)}); wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock; so does the process ending in any way


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {json.loads(os.pread(fd, 200, 0))['pid']}"
    return "its process id is unknown"
