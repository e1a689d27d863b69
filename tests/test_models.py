"""Building and loading the stage-2 LM, and initialising its latent rows."""

from __future__ import annotations

import pytest
import torch

from token_assorted.core.errors import CheckpointError, ConfigError
from token_assorted.data.latent_tokens import add_latent_tokens
from token_assorted.data.tokenizer import build_word_tokenizer
from token_assorted.lm.models import PRESETS, build_scratch_model, extend_vocabulary, scratch_config
from token_assorted.lm.pretrained import load_pretrained_lm

TEXTS = ["alice is a wumpus .", "every wumpus is a yumpus .", "### yes no"]


@pytest.fixture
def tokenizer():
    return build_word_tokenizer(TEXTS)


@pytest.mark.parametrize("name", ["scratch-tiny", "scratch-gpt2-tiny"])
def test_scratch_presets_build_and_run(name, tokenizer):
    model = build_scratch_model(name, tokenizer, max_length=64, seed=0)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), PRESETS[name].d_model)
    ids = torch.tensor([tokenizer("alice is a wumpus .").input_ids])  # (1, T)
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    again = build_scratch_model(name, tokenizer, max_length=64, seed=0)
    assert torch.equal(model.get_input_embeddings().weight, again.get_input_embeddings().weight)


def test_gpt2_preset_is_gpt2_size(tokenizer):
    config = scratch_config(PRESETS["scratch-gpt2"], tokenizer, max_length=1024)
    assert (config.n_layer, config.n_embd, config.n_head) == (12, 768, 12)


def test_unknown_preset_is_a_config_error(tokenizer):
    with pytest.raises(ConfigError):
        build_scratch_model("huge", tokenizer, 64)


@pytest.mark.parametrize("old, new", [("gpt2", "scratch-gpt2"), ("tiny", "scratch-tiny")])
def test_former_preset_names_say_what_they_are_called_now(tokenizer, old, new):
    # `gpt2` was a random-init preset, which read as OpenAI's GPT-2: it names neither now.
    with pytest.raises(ConfigError, match=f"use {new}" + (".*openai-community/gpt2" if old == "gpt2" else "")):
        build_scratch_model(old, tokenizer, 64)


def test_mean_init_puts_new_rows_at_the_mean(tokenizer):
    model = build_scratch_model("scratch-tiny", tokenizer, 64)
    old = model.get_input_embeddings().weight.detach().clone()
    vocab = add_latent_tokens(tokenizer, 8)
    extend_vocabulary(model, vocab, "mean", seed=0)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == old.shape[0] + 10
    assert torch.equal(weight[:old.shape[0]], old)  # old rows untouched
    new = weight[old.shape[0]:]
    assert torch.allclose(new.mean(0), old.mean(0), atol=0.05 * old.std().item())
    assert new.std(0).mean() < 0.1 * old.std(0).mean()  # small noise around the mean
    assert not torch.equal(new[0], new[1])


def test_codebook_init_keeps_codebook_geometry(tokenizer):
    model = build_scratch_model("scratch-tiny", tokenizer, 64)
    old = model.get_input_embeddings().weight.detach().clone()
    vocab = add_latent_tokens(tokenizer, 16)
    codebook = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))  # (K, d_vq)
    extend_vocabulary(model, vocab, "codebook", codebook=codebook, seed=0)
    rows = model.get_input_embeddings().weight[vocab.first_code_id:vocab.first_code_id + 16].detach()
    # Statistics match the old rows; pairwise distances follow the codebook's.
    assert abs(rows.std().item() - old.std().item()) < 0.3 * old.std().item()
    d_code = torch.pdist(codebook)
    d_rows = torch.pdist(rows)
    corr = torch.corrcoef(torch.stack([d_code, d_rows]))[0, 1]
    assert corr > 0.5
    with pytest.raises(ConfigError):
        extend_vocabulary(model, vocab, "codebook")  # no codebook given


def test_untied_head_gets_new_rows(tokenizer):
    model = build_scratch_model("scratch-gpt2-tiny", tokenizer, 64)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    vocab = add_latent_tokens(tokenizer, 4)
    extend_vocabulary(model, vocab, "mean")
    assert model.lm_head.weight.shape[0] == len(tokenizer)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_padded_embedding_reuses_rows(tokenizer):
    model = build_scratch_model("scratch-tiny", tokenizer, 64)
    model.resize_token_embeddings(len(tokenizer) + 20, mean_resizing=False)  # padded like many LMs
    vocab = add_latent_tokens(tokenizer, 4)
    extend_vocabulary(model, vocab, "mean")
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 14  # no growth needed


def test_load_pretrained_directory(tmp_path, tokenizer):
    model = build_scratch_model("scratch-tiny", tokenizer, 64)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_pretrained_lm(tmp_path)
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(CheckpointError):
        load_pretrained_lm(tmp_path / "missing")
