"""Stage 1 of Token Assorted: a VQ-VAE that turns trace chunks into latent tokens and back.

    model.py    VQVAEConfig, VQVAE (chunk encoder, quantizer, prompt-conditioned decoder)
    search.py   assignment by search: a chunk's code is the one its decoding fits best
    beam.py     beam search: the most probable text of a chunk under its code (autoregressive decoder)
    chunks.py   traces -> chunks of L tokens, batched with their prompts
    options.py  VQVAETrainConfig (every `vqvae train` option)
    train.py    train_vqvae (resumable loop, logging, checkpoints)
    metrics.py  reconstruction accuracy, codebook usage, compression
    store.py    the saved directory: load_vqvae, encode_examples, decode_codes, ...
    state.py    resume state (optimizer, scheduler, RNG, step)

Names are imported lazily so `token-assorted --help` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQVAE": "model", "VQVAEConfig": "model", "VQVAEOutput": "model",
    "ChunkedExample": "chunks", "chunk_examples": "chunks", "split_trace": "chunks",
    "VQVAETrainConfig": "options", "train_vqvae": "train",
    "LoadedVQVAE": "store", "load_vqvae": "store", "check_compatible": "store", "encode_examples": "store",
    "encode_examples_cached": "store", "decode_codes": "store", "decode_code_ids": "store",
    "evaluate_reconstruction": "store", "prompt_ids_for": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
