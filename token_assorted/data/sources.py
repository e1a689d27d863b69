"""Where a data set's records come from: our JSON / JSONL reader, or anything `datasets` reads.

A data source is one string:

    FILE.jsonl, FILE.json           read by `io.read_records`: errors name the line
    FILE.parquet, FILE.csv, .tsv    read by `datasets.load_dataset("parquet" | "csv", data_files=FILE)`
    DIR                             a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder
    DIR:SPLIT                       one split of a saved `DatasetDict`
    hf:REPO[@CONFIG][:SPLIT]        a data set on the Hugging Face Hub (needs the network and
                                    HF_HUB_OFFLINE=0: the CLI sets it to 1 unless it is set)

Every reader returns `Table`: the records as plain dicts, each with the place errors name
(`line N` for JSON files, `row N`, 1-based, for tables, which have no lines). JSON and JSONL
stay on our own reader rather than `datasets`' JSON builder: that one infers one Arrow schema
for the whole file and fails on the first record of another type with a multi-line Arrow
error and no line number, where ours names the line and leaves the typing to the task.
Nothing here writes a file: `datasets` caches what it converts, so each read gets a
temporary cache that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.io import read_json, read_records

HUB_PREFIX = "hf:"
TABLE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
EMPTY = "no records (the split is empty)"
_SPLIT = re.compile(r"^(?P<base>.+):(?P<split>[A-Za-z0-9_.\-\[\]%+]+)$")


@dataclass
class Table:
    """Records of one source, each with where it is (a line of a file, or a row of a table)."""

    source: str
    unit: str  # "line" or "row": what `where` counts
    records: list[tuple[int, dict[str, Any]]]

    def error(self, message: str, where: int | None = None, field: str | None = None) -> DataError:
        """A DataError naming this source, the record's line or row, and the field."""
        place = {} if where is None else {self.unit: where}
        return DataError(self.source, message, field=field, **place)


def read_table(source: str | Path) -> Table:
    """The records of `source` (see the module docstring for what a source can be)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _hub_table(text)
    path = Path(text)
    split = None
    if not path.exists():
        match = _SPLIT.match(text)
        if match and Path(match["base"]).is_dir():
            path, split = Path(match["base"]), match["split"]
    if path.is_dir():
        return _disk_table(text, path, split)
    builder = TABLE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        return Table(text, "line", read_records(path))  # missing file, JSONL or a JSON list
    if not path.is_file():
        raise DataError(path, "file not found")
    return _builder_table(text, builder, path)


def exists(source: str | Path) -> bool:
    """Whether a local source is there (hub names are checked when they are read)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return True
    match = _SPLIT.match(text)
    return Path(text).exists() or bool(match and Path(match["base"]).is_dir())


def fingerprint(source: str | Path) -> str:
    """A short content hash of a local source (a file, or every file of a saved folder).

    A hub name hashes as its name: its content cannot be known without downloading it.
    """
    text = str(source)
    digest = hashlib.sha256()
    match = _SPLIT.match(text)
    path = Path(text) if Path(text).exists() or not match else Path(match["base"])
    if text.startswith(HUB_PREFIX) or not path.exists():
        digest.update(text.encode())
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode() + b"\0" + child.read_bytes())
        digest.update(text.encode())  # the split, when one is named
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- the readers
def _rows(source: str, dataset: Any) -> Table:
    # Row-wise iteration gives plain Python values (lists, str, int, None), what tasks check.
    records = [(index, dict(row)) for index, row in enumerate(dataset, start=1)]
    if not records:
        raise DataError(source, EMPTY)
    return Table(source, "row", records)


def _builder_table(source: str, builder: str, path: Path) -> Table:
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    with _quiet_datasets() as datasets, tempfile.TemporaryDirectory(prefix="token-assorted-") as cache:
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                            keep_in_memory=True, **options)
        except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many types for one bad file
            if "corresponds to no data" in str(exc):  # datasets' words for a file of 0 rows
                raise DataError(path, EMPTY) from None
            raise DataError(path, f"cannot read as {builder}: {_first_line(exc)}") from None
        return _rows(source, dataset)


def _disk_table(source: str, path: Path, split: str | None) -> Table:
    splits_file = path / "dataset_dict.json"  # a DatasetDict: one folder per split
    if splits_file.is_file():
        splits = read_json(splits_file).get("splits", []) if isinstance(read_json(splits_file), dict) else []
        split = _choose_split(source, [str(name) for name in splits], split)
        path = path / split
    elif split is not None:
        raise DataError(source, f"a single data set has no split {split!r}; drop ':{split}'")
    # `datasets` saves an empty split without data files, then fails to load it (IndexError).
    state = path / "state.json"
    if state.is_file() and isinstance(read_json(state), dict) and read_json(state).get("_data_files") == []:
        raise DataError(source, EMPTY)
    with _quiet_datasets() as datasets:
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001 - a folder that is not a saved data set, or a damaged one
            raise DataError(path, f"not a data set saved with save_to_disk: {_first_line(exc)}") from None
        return _rows(source, loaded)


def _choose_split(source: str, splits: list[str], split: str | None) -> str:
    if split is None and len(splits) == 1:
        return splits[0]
    if split not in splits:
        raise DataError(source, f"{'no split ' + repr(split) if split else 'several splits'}; name one "
                        f"as SOURCE:SPLIT with SPLIT one of {', '.join(splits)}")
    return split


def _hub_table(source: str) -> Table:
    spec = source[len(HUB_PREFIX):]
    repo, _, split = spec.partition(":")
    repo, _, config = repo.partition("@")
    if not repo:
        raise DataError(source, "expected hf:OWNER/NAME[@CONFIG][:SPLIT]")
    with _quiet_datasets() as datasets:
        try:
            loaded = datasets.load_dataset(repo, config or None, split=split or None)
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, unknown split
            reason = _first_line(exc)
            if "offline" in reason.lower():
                reason += ("; the Hub is not reachable with HF_HUB_OFFLINE=1 (token-assorted sets it unless it "
                           "is set: export HF_HUB_OFFLINE=0 to download)")
            raise DataError(source, f"cannot load from the Hugging Face Hub: {reason}") from None
        return _rows(source, _pick_split(source, loaded, None))


def _pick_split(source: str, loaded: Any, split: str | None) -> Any:
    """A Dataset from a Dataset or a DatasetDict (its one split, or the named one)."""
    if not hasattr(loaded, "keys"):
        return loaded
    return loaded[_choose_split(source, list(loaded.keys()), split)]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """`datasets`, with its progress bars and error logging off (our error is the one line)."""
    try:
        import datasets
    except ImportError:
        raise DataError(None, "reading parquet, CSV, saved data sets or the Hub needs the 'datasets' "
                        "package: pip install datasets") from None
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield datasets
    finally:
        logger.setLevel(level)
        if was_enabled:
            datasets.enable_progress_bars()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
