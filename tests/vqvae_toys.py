"""The toys stage 1's tests share: hand-made syllogisms, a tiny VQ-VAE, a random batch, and the
slow reference computations the fast paths are checked against (one code, one position at a time).

The syllogisms are ProsQA-shaped, so the `prosqa` task renders and loads them (no task of our
own to register); the model is small enough that everything runs in seconds on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import torch

from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task
from token_assorted.vqvae import VQVAE, TextVocab, VQVAEConfig, VQVAETrainConfig

NAMES = ["Tom", "Ann", "Rex", "Max", "Sam", "Eve", "Bob", "Zoe"]
WORDS = ["wumpus", "yimpus", "lempus", "gerpus", "rorpus", "timpus", "kerpus", "bompus", "felpus"]
TASK = get_task("prosqa")


def toy_examples(n: int = 8) -> list[Example]:
    """Three-step syllogisms: the trace follows from the prompt, as in ProsQA."""
    examples = []
    for i in range(n):
        name, a, b, c = NAMES[i % 8], WORDS[i % 9], WORDS[(i + 3) % 9], WORDS[(i + 5) % 9]
        steps = [f"{name} is a {a}.", f"Every {a} is a {b}.", f"Every {b} is a {c}."]
        examples.append(Example(f"Every {b} is a {c}. {name} is a {a}. Every {a} is a {b}. Is {name} a {c}?",
                                steps, "Yes"))
    return examples


TINY = dict(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, prompt_layers=1, codebook_dim=8,
            max_prompt_len=64)


def tiny_config(data: Path, out: Path, **overrides) -> VQVAETrainConfig:
    options = dict(task="prosqa", data=str(data), valid=str(data), out=str(out), chunk_size=4, compression=4,
                   codebook_size=8, steps=250, batch_size=8, lr=5e-3, warmup=10, valid_every=50,
                   dead_code_threshold=0.1, progress=False, **TINY)
    options.update(overrides)
    return VQVAETrainConfig(**options)


def tiny_model(output_size: int = 0, **overrides) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**dict(chunk_size=4, compression=2, codebook_size=8, dead_code_threshold=0.5),
                                **TINY, **overrides}), TextVocab(40, 0, output_size))


# The output distribution of a model's decoder states (copy_head.py), by the model's own parts.
def log_probs(model: VQVAE, *args, **kwargs) -> torch.Tensor:
    return model.copy_head.log_probs(model.tokens, *args, **kwargs)


def target_log_probs(model: VQVAE, *args, **kwargs) -> torch.Tensor:
    return model.copy_head.target_log_probs(model.tokens, *args, **kwargs)


def predict(model: VQVAE, *args, **kwargs) -> torch.Tensor:
    return model.copy_head.predict(model.tokens, *args, **kwargs)


def random_batch(batch: int = 3, chunks: int = 2, chunk_size: int = 4):
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(4, 40, (batch, 6), generator=generator)
    pad = torch.zeros_like(prompt, dtype=torch.bool)
    pad[0, 4:] = True
    chunk_ids = torch.randint(4, 40, (batch, chunks, chunk_size), generator=generator)
    present = torch.ones(batch, chunks, dtype=torch.bool)
    present[1, 1] = False  # example 1 has one chunk: the second slot is batch padding
    return prompt, pad, chunk_ids, present


def decoder_states(model: VQVAE, prompt, pad, chunk_ids, present):
    """Teacher-forced decoder states of a batch, and the prompt memory they read."""
    memory = model.encode_prompt(prompt, pad)
    quantized = model.quantizer(model.encode(chunk_ids, memory, pad)[present])[0]
    grid = torch.zeros(*present.shape, model.config.latents_per_chunk, model.config.d_model)
    grid[present] = quantized
    return model.decode(grid, memory, pad, chunk_ids), memory


def reference_greedy(model: VQVAE, quantized, memory, pad, prompt) -> torch.Tensor:
    """Greedy decoding the slow way: the whole teacher-forced decoder once per position."""
    tokens = torch.full((*quantized.shape[:2], model.config.chunk_size), model.vocab.pad_id)
    for position in range(model.config.chunk_size):
        hidden = model.decode(quantized, memory, pad, tokens)[:, :, position:position + 1]
        prefix = model.prefix_of(tokens[:, :, :position + 1])
        prefix = prefix[:, :, position:] if prefix is not None else None
        tokens[:, :, position] = predict(model, hidden, memory, pad, prompt, prefix)[:, :, 0]
    return tokens


def output_vocab_model(**overrides) -> tuple[VQVAE, tuple]:
    """A tiny model whose head scores only the batch's chunk ids; some prompt ids lie outside them."""
    batch = random_batch()
    ids = sorted(set(batch[2][batch[3]].flatten().tolist()) | {0})
    model = tiny_model(output_size=len(ids), **overrides)
    model.set_output_vocab(ids)
    assert set(batch[0][~batch[1]].tolist()) - set(ids), "the test needs prompt ids outside the vocabulary"
    return model, batch


SEARCH = dict(compression=4, assignment="search", search_candidates=4, search_explore=1)


def code_log_likelihoods(model: VQVAE, prompt, pad, chunk_ids, present) -> torch.Tensor:
    """(K, C): every real chunk's teacher-forced log likelihood under each code, one code at a time."""
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        rows = []
        for code in range(model.config.codebook_size):
            grid = model.quantizer.vectors(torch.full(present.shape, code))[:, :, None]
            hidden = model.decode(grid, memory, pad, chunk_ids)
            prefix = model.prefix_of(chunk_ids)
            rows.append(target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present,
                                         prefix).sum(-1))
    return torch.stack(rows)


def spread_search_model(**overrides) -> VQVAE:
    model = tiny_model(**SEARCH, **overrides).eval()
    with torch.no_grad():
        model.quantizer.codebook.mul_(3)  # spread the codes so that not every chunk prefers the same one
    return model


def greedy_errors(model: VQVAE, prompt, pad, chunk_ids, present) -> torch.Tensor:
    """(K, C) tokens each code's greedy decoding gets wrong, for every real chunk (the slow way)."""
    memory = model.encode_prompt(prompt, pad)
    rows = []
    for code in range(model.config.codebook_size):
        grid = model.quantizer.vectors(torch.full(present.shape, code))[:, :, None]
        decoded = reference_greedy(model, grid, memory, pad, prompt)[present]
        rows.append((decoded != chunk_ids[present]).sum(-1))
    return torch.stack(rows)


