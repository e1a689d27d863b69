"""Where stage 2 gets its latent codes: a stage-1 VQ-VAE directory or a precomputed codes file.

`LatentCodes` is what training needs from stage 1: the chunk layout (L, L/r, K), the
codes of every training trace, the codebook (for the ``codebook`` embedding init) and
the text tokenizer the codes were computed with. A codes file is the same in JSON —
`{"chunk_size": L, "latents_per_chunk": L/r, "codebook_size": K, "codes": [[z, ...], ...]}`
with one list per training example, in file order (optionally `"codebook": [[...], ...]`
and `"tokenizer": DIR`) — useful to reuse codes across runs, or to test without a VQ-VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, DataError
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


def load_latent_codes(config: Any, task: Task, train: list[Example], need_codes: bool = True) -> LatentCodes:
    """From `config.vqvae` (encoding `train` with it) or from `config.codes`."""
    if config.vqvae:
        return from_vqvae(Path(config.vqvae), task, train, need_codes, config.data)
    return from_codes_file(Path(config.codes), len(train))


def from_vqvae(directory: Path, task: Task, train: list[Example], need_codes: bool,
               data_path: str | Path) -> LatentCodes:
    """Codes of `train` (read from `data_path`) by the VQ-VAE in `directory`, cached by stage 1."""
    try:
        from .vqvae.store import encode_examples_cached, load_vqvae
    except ImportError as exc:
        raise CheckpointError(f"cannot use the VQ-VAE in {directory}: {exc}") from None
    loaded = load_vqvae(directory)
    cfg = loaded.config
    per_chunk = cfg.chunk_size // cfg.compression  # L / r
    codes = encode_examples_cached(loaded, task, data_path, train) if need_codes else None
    return LatentCodes(cfg.chunk_size, per_chunk, cfg.codebook_size, codes,
                       codebook_of(loaded.model, cfg.codebook_size), loaded.tokenizer)


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
