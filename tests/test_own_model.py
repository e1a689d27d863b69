"""Your own model: local GPT-2 and Llama-style folders, trained in full or with LoRA (peft).

Each model is random, 2 layers and 64 wide, with its own small tokenizer, built on the spot.
The trained directory must stay a plain Hugging Face folder that `AutoModelForCausalLM`
loads (with LoRA: adapters merged, no peft needed), with the latent rows trained, and a
LoRA run killed mid-training must resume to the weights of a run that never stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from own_data import qa_records, save_tiny_gpt2, save_tiny_llama, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from token_assorted.cli import main
from token_assorted.generation.config import GenerationConfig
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.lora import LoraSettings
from token_assorted.lm.train import LMStage, train_lm

peft = pytest.importorskip("peft")
QA = {"task": "qa", "task_options": {"fields": {"question": "problem", "steps": "solution", "answer": "final_answer"},
                                     "answer_match": "numeric"}}
BUILDERS = {"gpt2": save_tiny_gpt2, "llama": save_tiny_llama}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A 50-row data set, one GPT-2 and one Llama folder, and a tiny VQ-VAE over each tokenizer."""
    root = tmp_path_factory.mktemp("own")
    records = qa_records(50)
    files = {"train": write_jsonl(root / "train.jsonl", records[:40]), "test": write_jsonl(root / "test.jsonl", records[40:])}
    found = {"root": root, **files}
    for name, build in BUILDERS.items():
        model = build(root / name, records)
        vqvae = root / f"vqvae-{name}"
        assert main(["vqvae", "train", "--task", "qa", "--fields", "question=problem,steps=solution,answer=final_answer",
                     "--answer-match", "numeric", "--data", str(files["train"]), "--out", str(vqvae),
                     "--tokenizer", str(model), "--chunk-size", "8", "--compression", "4", "--codebook-size", "8",
                     "--steps", "2", "--batch-size", "8", "--warmup", "1", "--valid-every", "2", "--d-model", "32",
                     "--heads", "2", "--encoder-layers", "1", "--decoder-layers", "1", "--prompt-layers", "1",
                     "--codebook-dim", "8", "--no-progress"]) == 0
        found[name], found[f"vqvae-{name}"] = model, vqvae
    return found


def config(world: dict, arch: str, out: Path, **overrides) -> TrainConfig:
    base = dict(**QA, data=str(world["train"]), out=str(out), strategy="token-assorted", vqvae=str(world[f"vqvae-{arch}"]),
                model=str(world[arch]), epochs=1, batch_size=8, lr=3e-3, progress=False, validation=GenerationConfig(max_new_tokens=8))
    return TrainConfig(**{**base, **overrides})


def plain_load(directory: Path):
    """The saved folder as a user loads it, with transformers alone."""
    return AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=False)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_own_model_trains_and_stays_a_plain_folder(world, tmp_path, arch):
    out = train_lm(config(world, arch, tmp_path / "m"))
    model = plain_load(out)
    meta = json.loads((out / "token_assorted.json").read_text())
    vocab = meta["latent_vocab"]
    assert model.get_input_embeddings().weight.shape[0] > vocab["first_code_id"] + vocab["codebook_size"] - 1
    assert meta["task_options"] == {**QA["task_options"], "step_split": "lines"}
    if arch == "gpt2":  # tied embeddings stay tied; the pad token is eos (GPT-2 has none)
        saved = load_file(str(out / "model.safetensors"))  # loading re-ties them: check what was written
        assert model.config.tie_word_embeddings
        assert "lm_head.weight" not in saved or torch.equal(saved["lm_head.weight"], saved["transformer.wte.weight"])
        assert json.loads((out / "generation_config.json").read_text())["pad_token_id"] == model.config.eos_token_id
    # eval of the saved model reads the qa options it recorded: no task flags again.
    assert main(["eval", "--model", str(out), "--data", str(world["test"]), "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "8"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["task"] == "qa"


def test_gpt2_examples_past_its_positions_are_skipped_not_crashed(world, tmp_path):
    long = {**qa_records(1)[0], "solution": "\n".join(["Ann counts her pens again and again."] * 40)}
    data = write_jsonl(tmp_path / "long.jsonl", [long] + qa_records(8))
    out = train_lm(config(world, "gpt2", tmp_path / "m", data=str(data), strategy="cot", vqvae=None))
    assert json.loads((out / "token_assorted.json").read_text())["skipped_too_long"] == 1  # 256 positions


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_trains_adapters_and_latent_rows_and_merges_on_export(world, tmp_path, arch):
    base = plain_load(world[arch])
    out = train_lm(config(world, arch, tmp_path / "m", lora=LoraSettings(r=4, alpha=8)))
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "token_adapter" in k for k in weights), list(weights)[:5]
    assert not (out / "adapter_config.json").exists()
    model = plain_load(out)
    vocab = json.loads((out / "token_assorted.json").read_text())["latent_vocab"]
    rows = base.get_input_embeddings().weight.shape[0]
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding[:rows], base.get_input_embeddings().weight)  # old rows frozen (not a LoRA target)
    latent = embedding[vocab["first_code_id"]:vocab["first_code_id"] + vocab["codebook_size"]]
    assert latent.std(0).mean() > 0  # rows of their own, initialised and trained
    changed = [name for name, p in model.named_parameters() if name in dict(base.named_parameters())
               and p.shape == dict(base.named_parameters())[name].shape
               and not torch.equal(p, dict(base.named_parameters())[name])]
    assert any("attn" in name for name in changed), changed  # the merged adapters moved attention weights
    if arch == "llama":  # an untied output layer: its latent rows were trained too
        head = model.get_output_embeddings().weight
        assert torch.equal(head[:rows], base.get_output_embeddings().weight)


def test_lora_model_loads_without_peft(world, tmp_path):
    out = train_lm(config(world, "gpt2", tmp_path / "m", lora=LoraSettings(r=4)))
    code = ("import sys; sys.modules['peft'] = None\n"  # importing peft now fails
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); print(type(m).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "GPT2LMHeadModel" in result.stdout, result.stderr[-500:]


def test_lora_resume_after_a_kill_gives_the_same_weights(world, tmp_path, monkeypatch):
    settings = dict(lora=LoraSettings(r=4, alpha=8), epochs=2, batch_size=8, save_every=2)
    whole = train_lm(config(world, "llama", tmp_path / "whole", **settings))

    real_end = LMStage.end_step

    def die_at_step_7(self, fit, step, loss):  # a kill: no state saved after step 6
        if step == 7:
            raise SystemExit("killed")
        return real_end(self, fit, step, loss)

    monkeypatch.setattr(LMStage, "end_step", die_at_step_7)
    with pytest.raises(SystemExit):
        train_lm(config(world, "llama", tmp_path / "killed", **settings))
    monkeypatch.setattr(LMStage, "end_step", real_end)
    resumed = train_lm(config(world, "llama", tmp_path / "killed", **settings, resume=True))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name


def test_lora_options_are_checked(world, tmp_path, capsys):
    assert main(["train", *("--task qa --fields question=problem,steps=solution,answer=final_answer".split()),
                 "--data", str(world["train"]), "--out", str(tmp_path / "m"), "--strategy", "cot",
                 "--model", str(world["gpt2"]), "--lora-r", "0"]) == 2
    assert "train.lora: r must be >= 1" in capsys.readouterr().err
    with pytest.raises(Exception, match="train.lora"):
        train_lm(config(world, "gpt2", tmp_path / "n", strategy="cot", vqvae=None,
                        lora=LoraSettings(target_modules=["no_such_module"])))
