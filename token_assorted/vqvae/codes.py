"""Where stage 2 gets its latent codes: a codes file, or a VQ-VAE folder that encodes in memory.

`LatentCodes` is what training needs from stage 1: the chunk layout (L, L/r, K), the codes of
every training trace, the codebook (for the ``codebook`` embedding init), the text tokenizer
the codes were computed with and the VQ-VAE that wrote them. A codes file is the same in JSON,
written by `vqvae encode` and by the pipeline's codes stage (`write_codes_file`):

    {"format": "token-assorted-codes/1", "chunk_size": L, "latents_per_chunk": L/r,
     "codebook_size": K, "codes": [[z, ...], ...],   # one list per example, in file order
     "codebook": [[...], ...],                        # optional: K rows (the decoder's vectors)
     "tokenizer": DIR, "vqvae": DIR,                  # optional, relative to the file's folder
     "data": FILE, "data_fingerprint": HASH, "skipped": [i, ...]}   # what was encoded

An example too long to encode gets `[]` and its index in `skipped`. Stage 2 reads the codes,
the codebook and the tokenizer; nothing is ever written into a VQ-VAE's folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, DataError
from ..core.io import atomic_write_json, read_json
from ..data.schema import Example
from ..data.tasks import Task
from ..data.tokenizer import tokenizer_fingerprint

FORMAT = "token-assorted-codes/1"


@dataclass
class LatentCodes:
    """Stage-1 output as stage 2 uses it."""

    chunk_size: int  # L
    latents_per_chunk: int  # L / r
    codebook_size: int  # K
    codes: list[list[int]] | None  # per training example, latents_per_chunk per chunk
    codebook: torch.Tensor | None = None  # (K, d_vq)
    tokenizer: Any = None  # the text tokenizer the codes were computed with
    vqvae: str | None = None  # the VQ-VAE folder that wrote them (explain decodes latent spans with it)


def load_latent_codes(config: Any, task: Task, train: list[Example], need_codes: bool = True) -> LatentCodes:
    """From `config.codes` (a codes file of `config.data`) or `config.vqvae` (encoding `train` with it).

    Examples longer than `config.max_length` as all-text sequences are not encoded: stage 2
    drops them anyway (its length bound counts at least the whole text trace), and one very
    long trace could exhaust memory in the VQ-VAE's encoder.
    """
    if config.codes:
        return from_codes_file(Path(config.codes), len(train), config.data)
    too_long = functools.partial(_too_long, task=task, examples=train, max_length=config.max_length,
                                 chat_template=config.chat_template)
    return from_vqvae(Path(config.vqvae), task, train, need_codes, too_long)


def _too_long(tokenizer: Any, *, task: Task, examples: list[Example], max_length: int,
              chat_template: bool) -> list[bool]:
    """Which examples are longer than `max_length` tokens as prompt + trace + solution."""
    from ..data.encoding import encode_example

    lengths = (len(e.prompt_ids) + len(e.trace_ids) + len(e.solution_ids)
               for e in (encode_example(tokenizer, task, ex, chat_template) for ex in examples))
    return [length > max_length for length in lengths]


def from_vqvae(directory: Path, task: Task, examples: list[Example], need_codes: bool = True,
               too_long: Callable[[Any], list[bool]] | None = None) -> LatentCodes:
    """The codes of `examples` by the VQ-VAE in `directory`, computed in memory (the folder is only read).

    `too_long(tokenizer)` marks examples not to encode (their codes are empty)."""
    from .store import encode_examples, load_vqvae

    loaded = load_vqvae(directory)
    skip = too_long(loaded.tokenizer) if too_long is not None and need_codes else None
    return _latents_of(loaded, encode_examples(loaded, task, examples, skip=skip) if need_codes else None)


def _latents_of(loaded: Any, codes: list[list[int]] | None) -> LatentCodes:
    config = loaded.config
    return LatentCodes(config.chunk_size, config.latents_per_chunk, config.codebook_size, codes,
                       codebook_of(loaded.model, config.codebook_size), loaded.tokenizer, str(loaded.directory))


def encode_codes_file(loaded: Any, task: Task, data: str | Path, path: str | Path, max_trace_len: int | None = None,
                      batch_size: int = 64) -> str:
    """The codes file `path` of every trace of `data` by a loaded VQ-VAE; returns a one-line summary.

    Traces longer than `max_trace_len` tokens (default: the VQ-VAE's own limit) are skipped
    before encoding: one very long trace would ask the encoder for hundreds of GB.
    """
    from .store import chunk_traces, encode_chunked, trace_limit

    examples = task.load(data)
    items = chunk_traces(loaded, task, examples)
    limit = max_trace_len or trace_limit(loaded.directory)
    skip = [item.trace_length > limit for item in items]
    codes = encode_chunked(loaded, items, batch_size, skip)
    skipped = [i for i, flag in enumerate(skip) if flag]
    write_codes_file(path, _latents_of(loaded, codes), data, skipped)
    tokens = sum(item.trace_length for item, flag in zip(items, skip) if not flag)
    note = f" ({len(skipped)} skipped: trace longer than {limit} tokens)" if skipped else ""
    return (f"{len(examples) - len(skipped)} traces, {sum(map(len, codes))} latent tokens for {tokens} text tokens "
            f"-> {path}{note}")


def write_codes_file(path: str | Path, latents: LatentCodes, data: str | Path, skipped: list[int]) -> None:
    """`latents` as a codes file for the examples of `data` (their tokenizer and VQ-VAE named by path)."""
    from ..data.sources import fingerprint

    path = Path(path)
    here = path.parent.resolve()
    vqvae = Path(latents.vqvae) if latents.vqvae else None
    atomic_write_json(path, {
        "format": FORMAT, "chunk_size": latents.chunk_size, "latents_per_chunk": latents.latents_per_chunk,
        "codebook_size": latents.codebook_size, "codes": latents.codes,
        "codebook": latents.codebook.tolist() if latents.codebook is not None else None,
        "tokenizer": os.path.relpath((vqvae / "tokenizer").resolve(), here) if vqvae else None,
        "vqvae": os.path.relpath(vqvae.resolve(), here) if vqvae else None,
        "tokenizer_fingerprint": tokenizer_fingerprint(latents.tokenizer) if latents.tokenizer is not None else None,
        "data": str(data), "data_fingerprint": fingerprint(data), "skipped": skipped})


def layout_of(latents: LatentCodes | None) -> dict[str, int] | None:
    """K, L and L/r of a run's latent codes (recorded in its training state)."""
    if latents is None:
        return None
    return {"codebook_size": latents.codebook_size, "chunk_size": latents.chunk_size,
            "latents_per_chunk": latents.latents_per_chunk}


def check_layout(trainer: Any, latents: LatentCodes | None, source: str | None) -> None:
    """Refuse to resume a run whose saved latent layout differs from the VQ-VAE (or codes) given now."""
    now = layout_of(latents)
    saved = trainer.get("latents", now) if isinstance(trainer, dict) else now  # states before the record: as now
    if saved == now:
        return
    changes = (f"latent codes {'added' if saved is None else 'removed'}" if saved is None or now is None else
               ", ".join(f"{key} {saved.get(key)} -> {value}" for key, value in now.items() if saved.get(key) != value))
    raise ConfigError(f"--resume: the latent codes changed since the run was saved ({source}): {changes}; resume "
                      f"with the VQ-VAE the run was trained with, or start a new run")


def codebook_of(model: torch.nn.Module, codebook_size: int) -> torch.Tensor | None:
    """The (K, d) codebook of a VQ-VAE model (an attribute, or the quantizer's buffer)."""
    # vector-quantize-pytorch exposes it as `VectorQuantize.codebook` (our VQVAE's `quantizer`).
    for holder in (model, getattr(model, "quantizer", None)):
        codebook = getattr(holder, "codebook", None)
        if isinstance(codebook, torch.Tensor) and codebook.numel() % codebook_size == 0:
            return codebook.detach().float().reshape(codebook_size, -1)
    for name, tensor in model.state_dict().items():
        squeezed = tensor.squeeze(0) if tensor.dim() == 3 else tensor
        # `embed`, never `embed_avg`: the EMA sums are the codebook scaled by each code's usage.
        if name.endswith("embed") and squeezed.dim() == 2 and squeezed.shape[0] == codebook_size:
            return squeezed.detach().float()
    return None


def from_codes_file(path: Path, n_examples: int, data: str | Path | None = None) -> LatentCodes:
    """A codes file of `n_examples` examples; one that records another data file than `data` is refused."""
    from ..data.sources import fingerprint

    record = read_json(path)
    if not isinstance(record, dict):
        raise DataError(path, "expected a JSON object")
    recorded = record.get("data_fingerprint")
    if data is not None and recorded is not None and recorded != fingerprint(data):
        raise ConfigError(f"{path}: its codes are those of {record.get('data')}, not of {data} (the data "
                          f"files differ); encode {data} with `token-assorted vqvae encode`")
    for key in ("chunk_size", "latents_per_chunk", "codebook_size", "codes"):
        if key not in record:
            raise DataError(path, "missing field", field=key)
    sizes = [_positive_int(path, record, key) for key in ("chunk_size", "latents_per_chunk", "codebook_size")]
    codes = record["codes"]
    if not isinstance(codes, list) or len(codes) != n_examples:
        raise DataError(path, f"expected {n_examples} code lists (one per training example)", field="codes")
    for i, example_codes in enumerate(codes):
        if not isinstance(example_codes, list) or not all(_is_int(z) for z in example_codes):
            raise DataError(path, f"code list {i} must be a list of integers", field="codes")
    tokenizer = vqvae = None
    for key in ("tokenizer", "vqvae"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise DataError(path, "must be a directory name", field=key)
    if record.get("tokenizer"):
        from ..data.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(path.parent / record["tokenizer"])
    if record.get("vqvae"):
        vqvae = os.path.normpath(path.parent / record["vqvae"])
    if tokenizer is not None:
        _check_codes_tokenizer(path, record, tokenizer, vqvae)
    codebook = _codebook(path, record.get("codebook")) if record.get("codebook") else None
    return LatentCodes(*sizes, codes, codebook, tokenizer, vqvae)


def _check_codes_tokenizer(path: Path, record: dict[str, Any], tokenizer: Any, vqvae: str | None) -> None:
    """The tokenizer a codes file names must be the one its codes were computed with: another one
    reads every trace as <unk> and trains on them without a word. Checked against the fingerprint
    the file records, or (files written before it did) the one its VQ-VAE's config.json records."""
    expected = record.get("tokenizer_fingerprint")
    source = "the codes file"
    if expected is None and vqvae is not None and (Path(vqvae) / "config.json").is_file():
        info = read_json(Path(vqvae) / "config.json")
        expected = info.get("tokenizer_fingerprint") if isinstance(info, dict) else None
        source = f"its VQ-VAE {vqvae}"
    if expected is not None and expected != tokenizer_fingerprint(tokenizer):
        raise DataError(path, f"names the tokenizer {record['tokenizer']}, which is not the one its codes were "
                              f"computed with (as {source} records); encode the data again with `token-assorted "
                              f"vqvae encode`", field="tokenizer")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a code


def _positive_int(path: Path, record: dict[str, Any], key: str) -> int:
    value = record[key]
    if not _is_int(value) or value < 1:
        raise DataError(path, f"must be a positive integer, got {value!r}", field=key)
    return value


def _codebook(path: Path, rows: Any) -> torch.Tensor:
    """The (K, d) codebook of a codes file: rows of numbers, all of one length."""
    if (not isinstance(rows, list) or not all(isinstance(row, list) and row for row in rows)
            or len({len(row) for row in rows}) != 1
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for row in rows for x in row)):
        raise DataError(path, "must be a list of equally long lists of numbers", field="codebook")
    return torch.tensor(rows, dtype=torch.float32)  # (K, d)
