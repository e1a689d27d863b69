"""Refusing untrusted weight files before anything parses them.

Weights are only ever read from safetensors. A pickle (a `torch.save` file, plain or in
its zip container) handed in where safetensors is expected is refused with a
`CheckpointError` naming the file, and is never unpickled: unpickling runs whatever
code the file's author chose. The check reads the first bytes only, so it is cheap
enough to run before every load.

A model folder's files are read only from inside it: a file that is a symbolic link to a
place outside the folder (`tokenizer.json -> /home/user/.ssh/...`) is refused before any
parser opens it (`refuse_outside_links`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors itself refuses headers over 100 MB


def sniff_format(head: bytes) -> str:
    """'safetensors', 'zip' (torch.save's container), 'pickle' or 'unknown', from a file's first 9 bytes."""
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        # The safetensors layout: an 8-byte little-endian header length, then a JSON object.
        if 2 <= length <= _HEADER_LIMIT and head[8:9] == b"{":
            return "safetensors"
    if head[:2] == b"PK":
        return "zip"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}", b"c"):
        # Protocol 2+ pickles open with PROTO (0x80); protocol 0/1 ones with a mark, a list,
        # a dict or a GLOBAL opcode.
        return "pickle"
    return "unknown"


def refuse_pickle(path: str | Path) -> None:
    """Raise CheckpointError unless `path` is a readable safetensors file (checked, not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    with open(path, "rb") as handle:
        head = handle.read(9)
        kind = sniff_format(head)
        if kind == "safetensors":
            (length,) = struct.unpack("<Q", head[:8])
            handle.seek(8)
            _check_header(path, handle.read(length))
            return
    if kind in ("pickle", "zip"):
        raise CheckpointError(f"{path}: is a pickle ({'torch.save zip' if kind == 'zip' else 'raw pickle'}), "
                              f"not safetensors; refusing to load it, since unpickling can run arbitrary code")
    raise CheckpointError(f"{path}: not a safetensors file")


def _check_header(path: Path, header: bytes) -> None:
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")


def refuse_pickle_dir(directory: str | Path) -> list[Path]:
    """Check every `*.safetensors` file of a model directory; return them (none: CheckpointError)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickle weights are never loaded)" if pickles else ""
        raise CheckpointError(f"{directory}: no *.safetensors weights{hint}")
    for path in files:
        refuse_pickle(path)
    return files


def refuse_outside_links(directory: str | Path) -> None:
    """Refuse a file of `directory` that is a symbolic link resolving outside it.

    A Hugging Face cache snapshot (`.../snapshots/<rev>/`) links every file into its
    repository's `blobs/` folder; those links are allowed.
    """
    directory = Path(directory)
    allowed = [directory.resolve()]
    if directory.resolve().parent.name == "snapshots":
        allowed.append(directory.resolve().parent.parent / "blobs")
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            target = entry.resolve()
            if not any(target.is_relative_to(root) for root in allowed):
                raise CheckpointError(f"{entry}: is a link to {target}, outside the model folder; "
                                      f"refusing to read it")
