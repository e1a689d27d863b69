"""Where stage 2 gets its latent codes: a stage-1 VQ-VAE directory or a precomputed codes file.

`LatentCodes` is what training needs from stage 1: the chunk layout (L, L/r, K), the
codes of every training trace, the codebook (for the ``codebook`` embedding init) and
the text tokenizer the codes were computed with. A codes file is the same in JSON —
`{"chunk_size": L, "latents_per_chunk": L/r, "codebook_size": K, "codes": [[z, ...], ...]}`
with one list per training example, in file order (optionally `"codebook": [[...], ...]`
and `"tokenizer": DIR`) — useful to reuse codes across runs, or to test without a VQ-VAE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, DataError
from .io import read_json
from .schema import Example
from .tasks import Task


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
    """From `config.vqvae` (encoding `train` with it) or from `config.codes`.

    Examples longer than `config.max_length` as all-text sequences are not encoded: stage 2
    drops them anyway (its length bound counts at least the whole text trace), and one very
    long trace could exhaust memory in the VQ-VAE's encoder.
    """
    if config.vqvae:
        too_long = functools.partial(_too_long, task=task, examples=train,
                                     max_length=getattr(config, "max_length", None),
                                     chat_template=getattr(config, "chat_template", False))
        return from_vqvae(Path(config.vqvae), task, train, need_codes, config.data, too_long)
    return from_codes_file(Path(config.codes), len(train))


def _too_long(tokenizer: Any, *, task: Task, examples: list[Example], max_length: int | None,
              chat_template: bool) -> list[bool] | None:
    """Which examples are longer than `max_length` tokens as prompt + trace + solution."""
    from .encoding import encode_example

    if max_length is None:
        return None
    lengths = (len(e.prompt_ids) + len(e.trace_ids) + len(e.solution_ids)
               for e in (encode_example(tokenizer, task, ex, chat_template) for ex in examples))
    return [length > max_length for length in lengths]


def from_vqvae(directory: Path, task: Task, train: list[Example], need_codes: bool,
               data_path: str | Path, too_long: Callable[[Any], list[bool] | None] | None = None) -> LatentCodes:
    """Codes of `train` (read from `data_path`) by the VQ-VAE in `directory`, cached by stage 1.

    `too_long(tokenizer)` marks examples not to encode (their codes are empty)."""
    try:
        from .vqvae.store import encode_examples_cached, load_vqvae
    except ImportError as exc:
        raise CheckpointError(f"cannot use the VQ-VAE in {directory}: {exc}") from None
    loaded = load_vqvae(directory)
    cfg = loaded.config
    per_chunk = cfg.chunk_size // cfg.compression  # L / r
    skip = too_long(loaded.tokenizer) if too_long is not None and need_codes else None
    codes = encode_examples_cached(loaded, task, data_path, train, skip=skip) if need_codes else None
    return LatentCodes(cfg.chunk_size, per_chunk, cfg.codebook_size, codes,
                       codebook_of(loaded.model, cfg.codebook_size), loaded.tokenizer)


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


def from_codes_file(path: Path, n_examples: int) -> LatentCodes:
    record = read_json(path)
    if not isinstance(record, dict):
        raise DataError(path, "expected a JSON object")
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
    tokenizer = None
    if record.get("tokenizer"):
        if not isinstance(record["tokenizer"], str):
            raise DataError(path, "must be a directory name", field="tokenizer")
        from .tokenizer import load_tokenizer
        tokenizer = load_tokenizer(path.parent / record["tokenizer"])
    codebook = _codebook(path, record.get("codebook")) if record.get("codebook") else None
    return LatentCodes(*sizes, codes, codebook, tokenizer)


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
