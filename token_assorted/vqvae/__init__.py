"""Stage 1 of Token Assorted: a VQ-VAE that turns trace chunks into latent tokens and back.

    config.py     VQVAEConfig: the VQ-VAE's options and their checks (no torch)
    options.py    VQVAETrainConfig (VQVAEConfig + the shared optimisation options + the run's), and the
                  options of `vqvae encode|evaluate|decode` (no torch)
    chunks.py     traces -> chunks of L tokens, batched with their prompts
    tokens.py     TextVocab (the tokenizer's sizes) and TokenEmbedding: embeddings, local context,
                  the tied vocabulary head
    prompt.py     PromptMemory g(P), and MemoryKV: the keys and values it gives the decoder
    stack.py      ChunkStack: the transformer over chunks the encoder and decoder are; its layers run by hand
    encoder.py    ChunkEncoder f_enc: a chunk -> L/r latents
    quantizer.py  q: the library VQ codebook (nearest code) or the search's codebook
    decoder.py    ChunkDecoder f_dec: L/r code vectors -> L hidden states (one pass or autoregressive)
    copy_head.py  CopyHead: attention over the prompt, its prefix weights, and the output mixture
    parts.py      VQVAEParts: owns the parts above, and the passes through them on token ids
    decoding.py   greedy decoding of code vectors into chunk text
    search.py     assignment by search: a chunk's code is the one its decoding fits best
    model.py      VQVAE: ties them (training pass, codes of chunks, text of codes)
    train.py      train_vqvae: stage 1 on the training skeleton both stages share (training/fit.py)
    metrics.py    reconstruction accuracy, codebook usage, compression
    store.py      the saved directory: load_vqvae, encode_examples, decode_codes, ...

Names are imported lazily so `token-assorted --help` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQVAE": "model", "VQVAEOutput": "model", "VQVAEConfig": "config", "TextVocab": "tokens",
    "ChunkedExample": "chunks", "chunk_examples": "chunks", "split_trace": "chunks",
    "VQVAETrainConfig": "options", "train_vqvae": "train",
    "LoadedVQVAE": "store", "load_vqvae": "store", "check_compatible": "store", "encode_examples": "store",
    "chunk_traces": "store", "encode_chunked": "store",
    "decode_codes": "store", "decode_code_ids": "store",
    "evaluate_reconstruction": "store", "prompt_ids_for": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
