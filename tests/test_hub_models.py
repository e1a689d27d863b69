"""Models by Hub id, from a throwaway Hugging Face cache, and the weight layouts the Hub ships.

The models are tiny random ones written as the official repositories are laid out
(`hub_cache.py`): `openai-community/gpt2` stores `h.0.attn.c_attn.weight` (no `transformer.`
prefix) and no `lm_head.weight`; transformers loads that, so must we. The cache is a temporary
folder in huggingface_hub's own layout, named by HF_HUB_CACHE; HF_HUB_OFFLINE=1 throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_cache import REVISION, fill_cache, save_official_gpt2, save_official_llama
from safetensors.torch import load_file, save_file

from token_assorted.cli import main
from token_assorted.core import model_source
from token_assorted.core.errors import CheckpointError
from token_assorted.core.weights import check_model_folder
from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import resolve_tokenizer
from token_assorted.lm.pretrained import load_pretrained_lm

TEXTS = ["Tom is a wumpus. Every wumpus is a lempus. Is Tom a lempus or a gorpus? Tom is a lempus."] * 8
OTHER = "f" * 40  # a second commit of the same repository


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {"gpt2": save_official_gpt2(root / "gpt2", TEXTS, width=48),
            "gpt2-narrow": save_official_gpt2(root / "gpt2-narrow", TEXTS, width=32, seed=1),
            "llama": save_official_llama(root / "llama", TEXTS)}


@pytest.fixture
def cache(folders, tmp_path, monkeypatch) -> Path:
    """An HF cache holding openai-community/gpt2 (main, and commit OTHER) and meta-llama/Llama-3.2-1B."""
    cache = tmp_path / "hf-cache"
    fill_cache(cache, "openai-community/gpt2", folders["gpt2"])
    fill_cache(cache, "openai-community/gpt2", folders["gpt2-narrow"], revision=OTHER, ref=None)
    fill_cache(cache, "meta-llama/Llama-3.2-1B", folders["llama"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for file in folder.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


# --------------------------------------------------------------------------- the official layouts
def test_the_official_gpt2_layout_loads_with_its_own_weights(folders):
    check_model_folder(folders["gpt2"])  # was: "unexpected weight 'h.0.attn.c_attn.weight' (26 unexpected in all)"
    model, tokenizer = load_pretrained_lm(folders["gpt2"])
    stored = load_file(str(folders["gpt2"] / "model.safetensors"))
    assert all(torch.equal(model.state_dict()["transformer." + name], tensor) for name, tensor in stored.items()
               if not name.endswith("attn.bias"))  # the mask buffers: ignored by transformers, as by us
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # the absent head is the tie
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == tokenizer.eos_token


def test_prefixed_and_tied_layouts_load_too(folders, tmp_path):
    prefixed = _copy(folders["gpt2"], tmp_path / "prefixed")
    stored = load_file(str(prefixed / "model.safetensors"))
    save_file({"transformer." + k: v for k, v in stored.items()} | {"lm_head.weight": stored["wte.weight"].clone()},
              str(prefixed / "model.safetensors"), metadata={"format": "pt"})
    check_model_folder(prefixed)
    check_model_folder(folders["llama"])  # model.-prefixed, tied head stored once


def test_a_layout_transformers_converts_on_load_is_accepted(tmp_path):
    # Mixtral saves its experts one by one (block_sparse_moe.experts.0.w1 ...); transformers merges
    # them into mlp.experts.gate_up_proj when it loads, so the names differ from the model's.
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=64, num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1)
    MixtralForCausalLM(config).save_pretrained(str(tmp_path))
    check_model_folder(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: {k: v for k, v in s.items() if k != "h.1.mlp.c_fc.weight"}, "lack 'transformer.h.1.mlp.c_fc.weight'"),
    (lambda s: {**s, "h.0.attn.extra": torch.zeros(2)}, "unexpected weight 'h.0.attn.extra'"),
    (lambda s: {**s, "transformer.h.0.ln_1.weight": s["h.0.ln_1.weight"].clone()}, "stored 2 times"),
    (lambda s: {**s, "h.0.ln_1.weight": torch.zeros(7)}, "'h.0.ln_1.weight' has shape \\[7\\]"),
])
def test_what_transformers_would_not_load_faithfully_is_still_refused(folders, tmp_path, edit, message):
    folder = _copy(folders["gpt2"], tmp_path / "edited")
    save_file(edit(load_file(str(folder / "model.safetensors"))), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=message):
        check_model_folder(folder)


# --------------------------------------------------------------------------- Hub ids
def test_a_cached_id_resolves_offline_and_revision_is_honoured(cache):
    assert model_source.resolve_hub_model("openai-community/gpt2") == \
        cache / "models--openai-community--gpt2" / "snapshots" / REVISION
    assert load_pretrained_lm("openai-community/gpt2")[0].config.n_embd == 48
    assert load_pretrained_lm(f"openai-community/gpt2@{OTHER}")[0].config.n_embd == 32
    model, tokenizer = load_pretrained_lm("meta-llama/Llama-3.2-1B")
    assert model.config.model_type == "llama" and tokenizer.eos_token == "<|end_of_text|>"
    assert len(resolve_tokenizer("openai-community/gpt2")) == model.config.vocab_size - 1  # a tokenizer alone


@pytest.mark.parametrize("spec", ["openai-community/gpt3", "openai-community/gpt2@v9"])
def test_an_unavailable_id_fails_in_one_line_saying_how_to_get_it(cache, spec, capsys, tmp_path):
    with pytest.raises(CheckpointError) as raised:
        load_pretrained_lm(spec)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{spec}: ")
    assert all(part in message for part in ("HF_HUB_OFFLINE=0", "hf download openai-community/gpt", "local model folder"))
    assert ("--revision v9" in message) == spec.endswith("@v9")
    data = tmp_path / "train.jsonl"
    save_examples(data, get_task("prosqa").generate(2, 0, nodes=5, min_steps=2, max_steps=2))
    code = main(["train", "--task", "prosqa", "--strategy", "cot", "--model", spec, "--data", str(data),
                 "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and spec in err


def test_downloads_ask_only_for_safe_files(monkeypatch, tmp_path):
    calls = []

    def refuse(repo, **options):
        calls.append((repo, options))
        raise OSError("Connection refused")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    with pytest.raises(CheckpointError, match="meta-llama/Llama-3.2-1B@v1: .*cannot be downloaded.*Connection refused"):
        model_source.resolve_hub_model("meta-llama/Llama-3.2-1B@v1")
    (repo, options), = calls
    assert repo == "meta-llama/Llama-3.2-1B" and options["revision"] == "v1" and not options["local_files_only"]
    assert not any(p.endswith((".bin", ".pt", ".pth", ".py", "*")) for p in options["allow_patterns"])
    assert options["ignore_patterns"] == ["*/*"]  # original/consolidated.00.pth and the like


def test_a_cached_snapshot_gets_every_check_of_a_folder(cache):
    snapshot = cache / "models--openai-community--gpt2" / "snapshots" / REVISION
    config = snapshot / "config.json"
    data = json.loads(config.read_text())
    config.unlink()  # a link into blobs/: replaced by a file, as an edited cache would be
    config.write_text(json.dumps({**data, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(CheckpointError, match="custom code"):
        load_pretrained_lm("openai-community/gpt2")


def test_local_paths_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert model_source.parse_hub_id("org/name") is None  # an existing folder wins
    assert model_source.parse_hub_id("org/other@main") == ("org/other", "main")
    assert not any(map(model_source.is_hub_id, ["runs/x/models/cot", "./a/b", "/abs/path", "m.gguf", "gpt2"]))
