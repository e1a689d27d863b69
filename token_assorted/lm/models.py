"""The stage-2 language model: built from scratch (presets) or loaded, then given latent rows.

From-scratch models are ordinary `transformers` Llama or GPT-2 models configured in code
(no download, no remote code), so a trained model directory loads with
`AutoModelForCausalLM.from_pretrained`. Presets (`scratch-*`) go from a CPU-sized
`scratch-tiny` up to GPT-2 small's shape (`scratch-gpt2`: 12 layers, 768 wide, 12 heads), at
random init: the paper trains only the maze's model from scratch (its ProntoQA/ProsQA models
are pretrained GPT-2, `openai-community/gpt2`). A model spec that is not a preset name is a
local HF model directory, a `.gguf` file or a Hub id, loaded by `token_assorted.lm.pretrained`
(with its safety checks).

Latent rows. `extend_vocabulary` resizes the input embeddings (and an untied LM head) to
the tokenizer's size after `add_latent_tokens`, then initialises the new rows:

- ``mean``: every new row is the mean of the existing rows plus Gaussian noise of 0.02x
  their per-dimension std (the delimiters always get this, whatever the choice);
- ``codebook``: the K codebook vectors (dimension d_vq) go through a fixed random
  Gaussian projection to d_model, then are standardised to the existing rows' per-
  dimension mean and std. A random projection keeps the codebook's geometry (codes that
  are close in the VQ space start close in the LM); standardising makes the new rows
  look like ordinary token embeddings to the first layer. There is no paired data to
  fit a least-squares map from the VQ space to the LM's, which is why it is random.

The new rows of an untied LM head get the ``mean`` rule (a near-uniform first guess).
The pause control's `<pause>` row (`add_pause_row`) comes after all of them and gets the
``mean`` rule too, from a generator of its own, so the rest of a pause model starts exactly
as the Token Assorted model of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GPT2Config, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..core.errors import ConfigError
from ..data.latent_tokens import LatentVocab, add_latent_tokens
from .pretrained import check_latent_room

EMBEDDING_INITS = ("mean", "codebook")


@dataclass(frozen=True)
class Preset:
    """A from-scratch architecture (sizes chosen for the device they target)."""

    arch: str  # "llama" (RoPE, RMSNorm, SwiGLU) or "gpt2" (learned positions, LayerNorm, GELU)
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int  # MLP hidden width


# Named scratch-* so that none reads as a Hub model: `gpt2` is OpenAI's GPT-2 on the Hub
# (`openai-community/gpt2`, which `--model` loads), `scratch-gpt2` its architecture at random init.
PRESETS: dict[str, Preset] = {
    "scratch-tiny": Preset("llama", 2, 128, 4, 512),  # CPU demo and tests: ~0.4 M non-embedding parameters
    "scratch-small": Preset("llama", 4, 256, 4, 1024),  # CPU, a few minutes per task
    "scratch-base": Preset("llama", 8, 512, 8, 2048),  # one GPU
    "scratch-gpt2": Preset("gpt2", 12, 768, 12, 3072),  # GPT-2 small's shape (124 M), random init
    "scratch-gpt2-tiny": Preset("gpt2", 2, 128, 4, 512),  # the GPT-2 architecture at CPU scale
}
# The names these presets had before; a spec that is one gets told the new name, not "no such folder".
RENAMED = {"tiny": "scratch-tiny", "small": "scratch-small", "base": "scratch-base", "gpt2": "scratch-gpt2",
           "gpt2-tiny": "scratch-gpt2-tiny"}


def is_preset(spec: str) -> bool:
    return spec in PRESETS


def check_model_spec(spec: str) -> None:
    """Refuse a former preset name, saying what it is called now (and what `gpt2` means instead)."""
    if spec in RENAMED:
        hint = " (random init), or openai-community/gpt2 for OpenAI's pretrained GPT-2" if spec == "gpt2" else ""
        raise ConfigError(f"model {spec!r}: the random-init presets are named scratch-* now; use "
                          f"{RENAMED[spec]}{hint}")


def scratch_config(preset: Preset, tokenizer: PreTrainedTokenizerBase, max_length: int):
    """A transformers config of `preset` over `tokenizer`'s vocabulary."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if preset.arch == "llama":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=preset.d_model,
                           intermediate_size=preset.d_ff, num_hidden_layers=preset.n_layers,
                           num_attention_heads=preset.n_heads, num_key_value_heads=preset.n_heads,
                           max_position_embeddings=max_length, tie_word_embeddings=True,
                           rms_norm_eps=1e-5, **ids)
    if preset.arch == "gpt2":
        # No dropout: the tasks are synthetic and small models underfit before they overfit.
        return GPT2Config(vocab_size=len(tokenizer), n_embd=preset.d_model, n_layer=preset.n_layers,
                          n_head=preset.n_heads, n_inner=preset.d_ff, n_positions=max_length,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    raise ConfigError(f"unknown architecture {preset.arch!r}")


def build_scratch_model(name: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
                        seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of preset `name` (seeded, so runs repeat)."""
    from transformers import AutoModelForCausalLM

    check_model_spec(name)
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}, "
                          f"a model directory, a .gguf file or a Hub id (ORG/NAME[@REVISION])")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(scratch_config(PRESETS[name], tokenizer, max_length))


def extend_vocabulary(model: PreTrainedModel, vocab: LatentVocab, init: str = "mean",
                      codebook: torch.Tensor | None = None, seed: int = 0) -> None:
    """Give `model` rows for the latent tokens and delimiters of `vocab`, initialised by `init`.

    The embedding grows to cover the highest latent id (a pretrained model whose matrix is
    already padded past its tokenizer reuses those unused rows; they are re-initialised).
    ``init="codebook"`` needs `codebook` (K, d_vq); the delimiters always get the mean rule.
    """
    if init not in EMBEDDING_INITS:
        raise ConfigError(f"unknown embedding init {init!r}; choose one of: {', '.join(EMBEDDING_INITS)}")
    if init == "codebook" and codebook is None:
        raise ConfigError("embedding init 'codebook' needs the VQ-VAE's codebook")
    first_new = min(vocab.begin_id, vocab.end_id, vocab.first_code_id)
    last_new = max(vocab.begin_id, vocab.end_id, vocab.first_code_id + vocab.codebook_size - 1)
    rows = model.get_input_embeddings().weight.shape[0]
    if last_new >= rows:
        model.resize_token_embeddings(last_new + 1, mean_resizing=False)
    new_ids = torch.tensor([vocab.begin_id, vocab.end_id, *range(vocab.first_code_id,
                                                                vocab.first_code_id + vocab.codebook_size)])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight  # (V', D)
        existing = embedding[:first_new]  # the rows of the old vocabulary, (V, D)
        embedding[new_ids] = mean_rows(existing, len(new_ids), generator).to(embedding.dtype)
        if init == "codebook":
            rows = project_codebook(codebook, existing, generator)  # (K, D)
            embedding[new_ids[2:]] = rows.to(embedding.dtype)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embedding.data_ptr():
            head.weight[new_ids] = mean_rows(head.weight[:first_new], len(new_ids), generator).to(head.weight.dtype)


def add_pause_row(model: PreTrainedModel, vocab: LatentVocab, seed: int = 0) -> None:
    """Give `model` a row for `vocab.pause_id` (after the latent rows), by the ``mean`` rule."""
    if vocab.pause_id is None:
        raise ConfigError("no pause token to add a row for")
    first_new = min(vocab.begin_id, vocab.end_id, vocab.first_code_id)
    if vocab.pause_id >= model.get_input_embeddings().weight.shape[0]:
        with torch.random.fork_rng():  # resizing draws from the global generator: leave it as it was
            model.resize_token_embeddings(vocab.pause_id + 1, mean_resizing=False)
    # Not `seed` itself: that stream's first draw is <boLatent>'s row, which <pause> must not copy.
    generator = torch.Generator().manual_seed(2 * seed + 1)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight  # (V', D)
        embedding[vocab.pause_id] = mean_rows(embedding[:first_new], 1, generator)[0].to(embedding.dtype)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embedding.data_ptr():
            head.weight[vocab.pause_id] = mean_rows(head.weight[:first_new], 1, generator)[0].to(head.weight.dtype)


def mean_rows(existing: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` rows at the mean of `existing` (V, D), with noise of 0.02 x their std."""
    existing = existing.float()
    noise = torch.randn(n, existing.shape[1], generator=generator)  # (n, D)
    return existing.mean(0) + 0.02 * existing.std(0) * noise


def project_codebook(codebook: torch.Tensor, existing: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Codebook (K, d_vq) -> (K, D) by a random projection, matched to `existing` (V, D) statistics."""
    codebook = codebook.detach().float().cpu()
    projection = torch.randn(codebook.shape[1], existing.shape[1], generator=generator)  # (d_vq, D)
    projected = codebook @ projection  # (K, D)
    standard = (projected - projected.mean(0)) / projected.std(0).clamp_min(1e-6)
    existing = existing.float()
    return existing.mean(0) + existing.std(0) * standard


def parameter_count(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def add_latent_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, codebook_size: int,
                          init: str = "mean", codebook: torch.Tensor | None = None,
                          max_vocab_size: int | None = None, seed: int = 0) -> LatentVocab:
    """Check room, add `<boLatent>`, `<eoLatent>`, `<latent_z>` and give the model their rows."""
    check_latent_room(model, tokenizer, codebook_size, max_vocab_size)
    vocab = add_latent_tokens(tokenizer, codebook_size)
    extend_vocabulary(model, vocab, init, codebook, seed=seed)
    return vocab
