"""The stage-1 directory and the API stage 2 uses: load, encode traces, decode codes.

```
DIR/config.json        {"format", "model": VQVAEConfig, "vocab": TextVocab, "train": VQVAETrainConfig,
                        "task", "task_options", "chat_template", "tokenizer_fingerprint", "step", "valid"}
DIR/model.safetensors  weights and codebook buffers (written atomically)
DIR/tokenizer/         the shared text tokenizer (HF format)
DIR/logs/, DIR/state/  the training's logs and resume state (training/fit.py, training/checkpoint.py)
```
Nothing else writes here: the codes of a data set go to a codes file of their own
(`vqvae encode`, the pipeline's codes stage; latents.py).
Weights are read only from safetensors: a pickle where safetensors is expected is
refused, never unpickled. A folder of another format (an older token-assorted's) is refused
in one line naming it: retrain it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from transformers import PreTrainedTokenizerBase

from ..core.config import from_mapping
from ..core.errors import CheckpointError, ConfigError
from ..core.io import atomic_open, atomic_write_json, read_json
from ..data.encoding import encode_prompt
from ..data.schema import Example
from ..data.tasks.base import Task
from ..data.tokenizer import load_tokenizer, tokenizer_fingerprint
from .chunks import ChunkedExample, chunk_examples, collate
from .config import VQVAEConfig
from .metrics import reconstruction_metrics
from .model import VQVAE
from .tokens import TextVocab

FORMAT = "token-assorted-vqvae/2"  # /2: a module per part, the vocabulary beside the options
WEIGHTS, CONFIG, TOKENIZER_DIR = "model.safetensors", "config.json", "tokenizer"


@dataclass
class LoadedVQVAE:
    """A trained VQ-VAE with its tokenizer and the facts recorded beside it."""

    model: VQVAE
    tokenizer: PreTrainedTokenizerBase
    config: VQVAEConfig
    directory: Path
    task: str
    chat_template: bool
    tokenizer_fingerprint: str
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the generic task's (qa)

    @property
    def latents_per_chunk(self) -> int:
        return self.config.latents_per_chunk


# --- weights ---------------------------------------------------------------------
def save_weights(path: Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors, atomically (temp file, fsync, rename)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    data = save_safetensors_bytes(state, metadata=metadata)
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read safetensors weights; refuse pickles and anything else that is not safetensors."""
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {', '.join(found)}: pickle checkpoints are not loaded)" if found else ""
        raise CheckpointError(f"{path.parent}: no {path.name}; not a VQ-VAE directory{hint}")
    data = path.read_bytes()
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(f"{path}: is a pickle (torch.save) file, not safetensors; refusing to "
                              f"load it, since unpickling can run arbitrary code")
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def save_vqvae(directory: Path, model: VQVAE, info: dict[str, Any]) -> None:
    """Write weights then config.json (config last: its presence marks a complete checkpoint).

    Training checks the weights are finite before it saves them (training/fit.py).
    """
    save_weights(directory / WEIGHTS, model, {"format": FORMAT, "step": str(info.get("step", 0))})
    atomic_write_json(directory / CONFIG, {"format": FORMAT, "model": dataclasses.asdict(model.config),
                                           "vocab": dataclasses.asdict(model.vocab), **info})


# --- loading and checks ------------------------------------------------------------
def load_vqvae(directory: str | Path, *, codebook_size: int | None = None, chunk_size: int | None = None,
               tokenizer: PreTrainedTokenizerBase | None = None, device: str = "cpu",
               search_rerank: int | None = None, encode_candidates: int | None = None) -> LoadedVQVAE:
    """Load DIR; with `codebook_size`, `chunk_size` or `tokenizer`, refuse a checkpoint that differs.

    `search_rerank` and `encode_candidates` override the saved settings of how a search model
    picks codes outside training (they change no weight).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: VQ-VAE directory not found")
    state = load_weights(directory / WEIGHTS)
    info = _read_config(directory)
    config = from_mapping(VQVAEConfig, info["model"], f"{directory / CONFIG}:model")
    vocab = from_mapping(TextVocab, info["vocab"], f"{directory / CONFIG}:vocab")
    overrides = {name: value for name, value in (("search_rerank", search_rerank),
                                                 ("encode_candidates", encode_candidates)) if value is not None}
    if overrides:
        try:
            config = dataclasses.replace(config, **overrides)
        except ValueError as exc:
            raise ConfigError(f"{directory}: {exc}") from None
    saved_tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    fingerprint = tokenizer_fingerprint(saved_tokenizer)
    if fingerprint != info.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{directory / TOKENIZER_DIR}: tokenizer fingerprint {fingerprint} differs from "
                              f"the one recorded in config.json ({info.get('tokenizer_fingerprint')})")
    model = VQVAE(config, vocab)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: weights do not match config.json: "
                              f"{str(exc).splitlines()[0]}") from None
    loaded = LoadedVQVAE(model.to(device).eval(), saved_tokenizer, config, directory, str(info.get("task", "")),
                         bool(info.get("chat_template", False)), fingerprint, dict(info.get("task_options") or {}))
    check_compatible(loaded, codebook_size=codebook_size, chunk_size=chunk_size, tokenizer=tokenizer)
    return loaded


def _read_config(directory: Path) -> dict[str, Any]:
    if not (directory / CONFIG).is_file():
        raise CheckpointError(f"{directory}: no {CONFIG}; the checkpoint is incomplete")
    info = read_json(directory / CONFIG)
    found = info.get("format") if isinstance(info, dict) else None
    if isinstance(found, str) and found.startswith("token-assorted-vqvae/") and found != FORMAT:
        older = found < FORMAT  # one digit: the formats sort as their versions
        raise CheckpointError(f"{directory}: a VQ-VAE saved by {'an older' if older else 'another'} token-assorted "
                              f"(format {found}; this one reads {FORMAT}); retrain it")
    if found != FORMAT or not all(isinstance(info.get(key), dict) for key in ("model", "vocab", "train")):
        raise CheckpointError(f"{directory / CONFIG}: not a token-assorted VQ-VAE config")
    return info


def check_compatible(loaded: LoadedVQVAE, *, codebook_size: int | None = None, chunk_size: int | None = None,
                     tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Refuse a VQ-VAE whose K, L or tokenizer differs from what the caller will use."""
    where = loaded.directory
    if codebook_size is not None and codebook_size != loaded.config.codebook_size:
        raise CheckpointError(f"{where}: VQ-VAE has codebook size K={loaded.config.codebook_size}, "
                              f"but K={codebook_size} was asked for")
    if chunk_size is not None and chunk_size != loaded.config.chunk_size:
        raise CheckpointError(f"{where}: VQ-VAE has chunk size L={loaded.config.chunk_size}, "
                              f"but L={chunk_size} was asked for")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != loaded.tokenizer_fingerprint:
        raise CheckpointError(f"{where}: VQ-VAE was trained with another tokenizer (fingerprint "
                              f"{loaded.tokenizer_fingerprint}, given {tokenizer_fingerprint(tokenizer)})")


def _check_task(loaded: LoadedVQVAE, task: Task) -> None:
    if loaded.task and task.name and loaded.task != task.name:
        raise CheckpointError(f"{loaded.directory}: VQ-VAE was trained on task {loaded.task!r}, "
                              f"not {task.name!r}")


# --- encoding traces ----------------------------------------------------------------
def chunk_traces(loaded: LoadedVQVAE, task: Task, examples: Sequence[Example]) -> list[ChunkedExample]:
    """`examples` tokenized and cut into this VQ-VAE's chunks (its tokenizer, L and chat template)."""
    _check_task(loaded, task)
    return chunk_examples(loaded.tokenizer, task, examples, loaded.config.chunk_size, loaded.chat_template)


def encode_examples(loaded: LoadedVQVAE, task: Task, examples: Sequence[Example], batch_size: int = 64,
                    skip: Sequence[bool] | None = None) -> list[list[int]]:
    """The latent codes of each example's trace: L/r codes per chunk, partial chunk included.

    `skip[i]` True: example i is not encoded (its codes come back empty), see `encode_chunked`.
    """
    return encode_chunked(loaded, chunk_traces(loaded, task, examples), batch_size, skip)


def encode_chunked(loaded: LoadedVQVAE, items: Sequence[ChunkedExample], batch_size: int = 64,
                   skip: Sequence[bool] | None = None) -> list[list[int]]:
    """The latent codes of examples already cut by `chunk_traces` (callers that also need the
    chunks, to measure or filter them, tokenize once).

    `skip[i]` True: item i is not encoded (its codes come back empty), because it is too long
    for the caller; one very long trace could otherwise exhaust memory in the encoder. Batches
    hold the encoded items only, in order.
    """
    config, model = loaded.config, loaded.model
    device = next(model.parameters()).device
    model.eval()
    codes: list[list[int]] = [[] for _ in items]
    encoded = [i for i, item in enumerate(items) if item.chunks and not (skip and skip[i])]
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start:start + batch_size]
        batch = collate([items[i] for i in rows], model.vocab.pad_id, config.max_prompt_len).to(device)
        chunk_codes = model.codes_of(batch.prompt_ids, batch.prompt_pad, batch.chunk_ids,
                                     batch.chunk_present).cpu().tolist()  # (C, L/r)
        owners = batch.chunk_present.nonzero()[:, 0].tolist()  # example of each real chunk, in order
        for owner, chunk in zip(owners, chunk_codes):
            codes[rows[owner]].extend(chunk)
    return codes


def trace_limit(directory: str | Path) -> int:
    """The longest trace (tokens) the VQ-VAE in `directory` was trained to accept (max_trace_len)."""
    train = _read_config(Path(directory))["train"]
    limit = train.get("max_trace_len")
    if not isinstance(limit, int) or limit < 1:
        raise CheckpointError(f"{Path(directory) / CONFIG}: train.max_trace_len must be a positive integer, "
                              f"got {limit!r}")
    return limit


# --- decoding codes -----------------------------------------------------------------
def decode_code_ids(loaded: LoadedVQVAE, prompt_ids: Sequence[int], codes: Sequence[int]) -> list[int]:
    """Text token ids that latent tokens stand for (chunk i is the trace's i-th), pads dropped."""
    config, model = loaded.config, loaded.model
    _check_codes(codes, config)
    if not codes:
        return []
    device = next(model.parameters()).device
    model.eval()
    prompt = torch.tensor([list(prompt_ids)[-config.max_prompt_len:]], dtype=torch.long, device=device)
    code_grid = torch.tensor(list(codes), dtype=torch.long, device=device).view(-1, config.latents_per_chunk)
    present = torch.ones(1, len(code_grid), dtype=torch.bool, device=device)  # one trace of N chunks
    tokens = model.tokens_of(prompt, torch.zeros_like(prompt, dtype=torch.bool), code_grid, present)  # (N, L)
    return [token for token in tokens.flatten().tolist() if token != model.vocab.pad_id]


def decode_codes(loaded: LoadedVQVAE, prompt_ids: Sequence[int], codes: Sequence[int]) -> str:
    """The text those latent tokens stand for, given the prompt they were encoded under."""
    return loaded.tokenizer.decode(decode_code_ids(loaded, prompt_ids, codes))


def prompt_ids_for(loaded: LoadedVQVAE, task: Task, question: str) -> list[int]:
    """Prompt ids of a question, rendered as the VQ-VAE saw prompts in training."""
    example = Example(question=question, steps=[], answer="?")
    return encode_prompt(loaded.tokenizer, task, example, loaded.chat_template)


def _check_codes(codes: Sequence[int], config: VQVAEConfig) -> None:
    bad = [code for code in codes if not 0 <= int(code) < config.codebook_size]
    if bad:
        raise ConfigError(f"latent codes must lie in 0..{config.codebook_size - 1}; got {bad[:5]}")
    if len(codes) % config.latents_per_chunk:
        raise ConfigError(f"{len(codes)} codes is not a whole number of chunks "
                          f"({config.latents_per_chunk} codes per chunk)")


def evaluate_reconstruction(loaded: LoadedVQVAE, task: Task, examples: Sequence[Example],
                            batch_size: int = 32) -> dict[str, float]:
    """Token / exact-chunk accuracy, codebook usage, perplexity and compression on `examples`."""
    return reconstruction_metrics(loaded.model, chunk_traces(loaded, task, examples), batch_size)


def read_info(directory: str | Path) -> dict[str, Any]:
    """config.json of a VQ-VAE directory (for resume checks)."""
    return _read_config(Path(directory))
