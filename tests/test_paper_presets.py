"""The paper's presets end to end on the CPU, their models taken by Hub id from a throwaway cache.

`run --preset prosqa-gpt2 --model openai-community/gpt2` and `run --preset math-llama` (whose
model is meta-llama/Llama-3.2-1B) go through every stage with tiny random models written in
the official layouts (`hub_cache.py`) and cached under those ids, HF_HUB_OFFLINE=1, and sizes
shrunk with --set: the saved model is a plain Hugging Face folder of the cached model (its
width, its tokenizer), not of any preset. Also: every shipped preset is checked before a stage
runs, and listed with what it runs in `run --help` and the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_cache import fill_cache, save_official_gpt2, save_official_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from token_assorted.cli import build_parser, main
from token_assorted.core.io import read_json
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import tokenizer_fingerprint
from token_assorted.pipeline.preset import load_preset, preset_names

README = Path(__file__).resolve().parents[1] / "README.md"
# What makes a run seconds long: a few examples, two VQ-VAE steps of a narrow VQ-VAE, one epoch,
# one method, the probes' cheapest intervention and no dial.
SHRINK = ["data.valid=4", "data.test=4", "vqvae.steps=2", "vqvae.valid_every=2", "vqvae.batch_size=8",
          "vqvae.d_model=32", "vqvae.heads=2", "vqvae.encoder_layers=1", "vqvae.decoder_layers=1",
          "vqvae.prompt_layers=1", "train.epochs=1", "train.batch_size=8", "train.validation.batch_size=4",
          "methods=[token-assorted]", "eval.batch_size=4", "probes.interventions=[constant]", "probes.dial=false",
          "explain_samples=0", "threads=1"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _texts(task: str, n: int) -> list[str]:
    t = get_task(task)
    return [t.prompt_text(e) + t.trace_text(e) + t.solution_text(e) for e in t.generate(n, 99)]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_prosqa_gpt2_runs_every_stage_on_the_cached_gpt2(hub, tmp_path):
    official = save_official_gpt2(tmp_path / "gpt2", _texts("prosqa", 30), width=40)
    fill_cache(hub, "openai-community/gpt2", official)
    out = tmp_path / "run"
    code = main(["run", "--preset", "prosqa-gpt2", "--model", "openai-community/gpt2", "--out", str(out),
                 *_sets("data.train=16", "vqvae.search_candidates=2", "vqvae.search_explore=1",
                        "vqvae.encode_candidates=2", "vqvae.search_rerank=2", *SHRINK)])
    assert code == 0
    model_dir = out / "models" / "token-assorted"
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["n_embd"], config["n_layer"]) == ("gpt2", 40, 2)  # the cached model's
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))  # a plain HF folder
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) > json.loads(
        (official / "config.json").read_text())["vocab_size"]  # GPT-2's vocabulary, plus the latent tokens
    # Both stages read GPT-2's own tokenizer.
    gpt2 = AutoTokenizer.from_pretrained(str(official))
    assert read_json(out / "vqvae" / "config.json")["tokenizer_fingerprint"] == tokenizer_fingerprint(gpt2)
    results = read_json(out / "results.json")
    assert results["methods"][0]["answer_rules"] == {"exact match (the right option named, the wrong one not)": 4}
    assert "Answers checked by" in (out / "report.md").read_text()


def _metamath(n: int) -> list[dict]:
    """MetaMathQA-format records (query, response ending "The answer is: X"), some with LaTeX answers."""
    records = []
    for i in range(n):
        a, b = 2 + i % 7, 3 + i % 5
        if i % 2:
            records.append({"query": f"What is {a} plus {b}?", "type": "GSM_Rephrased",
                            "response": f"We add {a} and {b}.\n{a} + {b} = {a + b}.\nThe answer is: {a + b}"})
        else:
            records.append({"query": f"Simplify $\\sqrt{{{a * a * b}}}$.", "type": "MATH_AnsAug",
                            "response": f"Take out the square {a * a}.\nWe get ${a}\\sqrt{{{b}}}$.\n"
                                        f"The answer is: {a}\\sqrt{{{b}}}"})
    return records


def test_math_llama_runs_every_stage_on_the_cached_llama(hub, tmp_path):
    records = _metamath(24)
    official = save_official_llama(tmp_path / "llama", [r["query"] + "\n" + r["response"] for r in records], width=40)
    fill_cache(hub, "meta-llama/Llama-3.2-1B", official)
    train, test = tmp_path / "metamath.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:20]))
    test.write_text("".join(json.dumps(r) + "\n" for r in records[20:]))
    out = tmp_path / "run"
    code = main(["run", "--preset", "math-llama", "--train", str(train), "--test", str(test), "--out", str(out),
                 *_sets("data.train=16", "vqvae.chunk_size=8", "vqvae.compression=8", "vqvae.codebook_size=16",
                        "train.validation.max_new_tokens=16", "eval.max_new_tokens=16", *SHRINK)])
    assert code == 0
    config = json.loads((out / "models" / "token-assorted" / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"]) == ("llama", 40)
    AutoModelForCausalLM.from_pretrained(str(out / "models" / "token-assorted"))
    results = read_json(out / "results.json")
    assert results["methods"][0]["answer_rules"] == {"numeric": 2, "math-verify": 2}
    assert "math-verify" in (out / "report.md").read_text()


def test_every_preset_is_checked_and_listed():
    helps = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    readme = README.read_text(encoding="utf-8")
    for name in preset_names():
        config = load_preset(name)  # every stage's config built and checked, as before a run
        assert config.description
        assert f"`{name}`" in readme, name
        assert name in helps, name


def test_an_unavailable_model_fails_before_the_first_stage(hub, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--preset", "prosqa-gpt2", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "openai-community/gpt2: " in err and "HF_HUB_OFFLINE=0" in err
    assert not (out / "data").exists()
