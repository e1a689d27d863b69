"""The math (GSM8K) path on a pretrained model, end to end, on a tiny random Llama.

`token-assorted run` with user-supplied GSM8K files and a local HF model dir: load ->
latent vocabulary -> VQ-VAE over the model's own tokenizer (chat template on) -> Sol-Only,
CoT, Token Assorted and the three ablations, a few steps each -> generation -> scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_pretrained import build_chat_tokenizer, gsm8k_records, save_tiny_llama, write_jsonl

from token_assorted.cli import main
from token_assorted.core.errors import TokenAssortedError
from token_assorted.core.io import read_json
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import tokenizer_fingerprint
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.pretrained import load_pretrained_lm
from token_assorted.lm.train import train_lm
from token_assorted.pipeline.preset import BASE_METHODS, PLACEHOLDER, PipelineConfig, load_preset, vqvae_config
from token_assorted.pipeline.stages import file_splits

PAPER_M = [0, 72, 128, 160, 192, 224, 256]


def tiny_math_preset(model_dir: Path) -> dict:
    """The `math` preset's shape at test scale (small K and L so short traces have chunks)."""
    return {
        "task": "gsm8k", "description": "test",
        "data": {"train": 0, "valid": 4, "test": 6},
        "vqvae": {"tokenizer": str(model_dir), "chat_template": True, "chunk_size": 8, "compression": 8,
                  "codebook_size": 16, "steps": 4, "batch_size": 8, "warmup": 1, "valid_every": 4,
                  "d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "prompt_layers": 1,
                  "codebook_dim": 8, "output_vocab": "data", "progress": False},
        "train": {"model": str(model_dir), "chat_template": True, "m_values": [0, 8, 16, 72], "epochs": 1,
                  "max_steps": 2, "batch_size": 4, "lr": 0.001, "progress": False,
                  "validation": {"batch_size": 4, "limit": 2, "max_new_tokens": 8}},
        # two steps: the curriculum's final stage is its first (no chunk replaced) so that it may keep a model
        "method_overrides": {"curriculum": {"curriculum_max_chunks": 0}},
        "methods": list(BASE_METHODS), "eval": {"batch_size": 6, "max_new_tokens": 24}, "probes": {"dial_max": 1},
        "explain_samples": 1, "threads": 1, "parallel": 1,
    }


@pytest.fixture(scope="module")
def math_run(tmp_path_factory) -> dict:
    """One `token-assorted run` of the whole math path (shared by the tests below)."""
    root = tmp_path_factory.mktemp("math")
    records = gsm8k_records(30)
    model_dir = save_tiny_llama(root / "tiny-llama", records)
    train = write_jsonl(root / "train.jsonl", records[:24])
    test = write_jsonl(root / "test.jsonl", records[24:])
    preset = root / "math-tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny_math_preset(model_dir)))
    out = root / "out"
    code = main(["run", "--preset", str(preset), "--train", str(train), "--test", str(test), "--out", str(out),
                 "--strategies", "all"])
    return {"code": code, "out": out, "model_dir": model_dir, "root": root, "train": train}


def test_run_finishes_and_scores_every_method(math_run):
    assert math_run["code"] == 0
    results = read_json(math_run["out"] / "results.json")
    names = {m["name"] for m in results["methods"]}
    assert names == {"Sol-Only", "CoT", "Token Assorted", "All-Replace", "Curriculum-Replace", "Poisson-Replace",
                     "TA-Pause"}
    for method in results["methods"]:
        assert method["n"] == 6 and 0.0 <= method["accuracy"] <= 1.0
        assert 0 < method["avg_generated_tokens"] <= 24
    # Every model that writes codes is probed; the preset caps the dial at K = 1, and one epoch of
    # the curriculum (stage 0) never replaced a chunk.
    probed = {m["name"]: [p["k"] for p in m["dial"]] for m in results["methods"] if "dial" in m}
    assert probed == {"Token Assorted": [0, 1], "All-Replace": [0, 1], "Curriculum-Replace": [0],
                      "Poisson-Replace": [0, 1]}
    assert (math_run["out"] / "report.md").is_file()


def test_data_comes_from_the_given_files(math_run):
    data = math_run["out"] / "data"
    counts = {split: len((data / f"{split}.jsonl").read_text().splitlines()) for split in ("train", "valid", "test")}
    assert counts == {"train": 20, "valid": 4, "test": 6}  # valid held out from the end of the 24 train records
    first = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    assert first["steps"][0].startswith("Tom has") and "<<" not in first["steps"][0]  # annotations dropped


def test_vqvae_uses_the_models_tokenizer_and_chat_template(math_run):
    info = read_json(math_run["out"] / "vqvae" / "config.json")
    _, tokenizer = load_pretrained_lm(math_run["model_dir"])
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert info["chat_template"] is True


def test_token_assorted_model_has_latent_rows_and_predictions_are_parsed(math_run):
    model_dir = math_run["out"] / "models" / "token-assorted"
    meta = read_json(model_dir / "token_assorted.json")
    assert meta["codebook_size"] == 16 and meta["chunk_size"] == 8 and meta["chat_template"] is True
    assert meta["config"]["m_values"] == [0, 8, 16, 72]
    base = json.loads((math_run["model_dir"] / "config.json").read_text())["vocab_size"]
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] >= base + 18
    lines = (math_run["out"] / "eval" / "token-assorted" / "results.predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all("correct" in json.loads(line) for line in lines)


@pytest.mark.parametrize("strategy", ["coconut", "icot"])
def test_the_other_latent_methods_train_on_math_with_the_pretrained_model(math_run, tmp_path, strategy):
    """Coconut (two thoughts per step, as for GSM8K) and iCoT on the tiny Llama, chat template on."""
    from token_assorted.evaluation.evaluate import evaluate_dir
    from token_assorted.generation.config import EvalConfig

    out = train_lm(TrainConfig(task="gsm8k", data=str(math_run["out"] / "data" / "train.jsonl"),
                               out=str(tmp_path / strategy), strategy=strategy, vqvae=str(math_run["out"] / "vqvae"),
                               model=str(math_run["model_dir"]), chat_template=True, epochs=2, batch_size=4,
                               lr=1e-3, coconut_thoughts_per_step=2, coconut_stages=2, coconut_cot_epochs=0,
                               coconut_epochs_per_stage=0.5, icot_tokens_per_epoch=8, icot_remove_all_beyond=4,
                               progress=False))
    meta = read_json(out / "token_assorted.json")
    assert meta["codebook_size"] == 16  # the baselines' latent rows: every model has the same vocabulary
    test = get_task("gsm8k").load(math_run["out"] / "data" / "test.jsonl")
    result = evaluate_dir(out, test, EvalConfig(max_new_tokens=16, progress=False))
    assert result.n == 6
    if strategy == "coconut":
        assert meta["coconut"]["thoughts"] == 4  # stage 2 of c = 2, or every step replaced after it
        assert all(p.generated.startswith("<bot>" + "<thought>" * 4 + "<eot>") for p in result.predictions)
    else:
        assert meta["icot"]["removed_tokens"] == "all" and result.avg_latent_tokens == 0


def test_training_refuses_a_vqvae_of_another_tokenizer(math_run, tmp_path):
    other = tmp_path / "other-llama"
    save_tiny_llama(other, gsm8k_records(10, seed=5))
    assert tokenizer_fingerprint(load_pretrained_lm(other)[1]) != \
        tokenizer_fingerprint(load_pretrained_lm(math_run["model_dir"])[1])
    config = TrainConfig(task="gsm8k", data=str(math_run["out"] / "data" / "train.jsonl"), out=str(tmp_path / "m"),
                         strategy="token-assorted", vqvae=str(math_run["out"] / "vqvae"), model=str(other),
                         chat_template=True, max_steps=1, batch_size=2, progress=False)
    with pytest.raises(TokenAssortedError, match="another tokenizer"):
        train_lm(config)


def test_math_preset_has_the_paper_settings():
    config = load_preset("math-smollm2")
    assert config.task == "gsm8k"
    assert config.train["m_values"] == PAPER_M and config.train["model"] == "smollm2-135m"
    vqvae = vqvae_config(config, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER)
    assert (vqvae.codebook_size, vqvae.chunk_size, vqvae.compression) == (1024, 16, 16)
    assert config.vqvae["tokenizer"] == config.train["model"]  # codes over the LM's own tokens
    assert config.train["chat_template"] and config.vqvae["chat_template"]
    assert config.vqvae["output_vocab"] == "data"  # a 49k-id head would triple the step time
    assert set(BASE_METHODS) <= set(config.methods)


def test_gsm8k_run_without_files_explains_what_to_pass(capsys):
    assert main(["run", "--preset", "math-smollm2", "--out", "/nonexistent/never-created"]) == 2
    assert "--train FILE --test FILE" in capsys.readouterr().err


def test_missing_data_file_is_a_one_line_error(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_records(3))
    code = main(["run", "--preset", "math-smollm2", "--train", str(train), "--test", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "nope.jsonl not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_file_splits_caps_and_holds_out_valid(tmp_path):
    records = gsm8k_records(12)
    train = write_jsonl(tmp_path / "train.jsonl", records)
    test = write_jsonl(tmp_path / "test.jsonl", gsm8k_records(5, seed=1))
    config = PipelineConfig(task="gsm8k")
    config.data.files = {"train": str(train), "test": str(test)}
    config.data.train, config.data.valid, config.data.test = 5, 3, 0
    splits = file_splits(config)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [5, 3, 5]
    task = get_task("gsm8k")
    all_train = task.load(train)
    assert [e.question for e in splits["valid"]] == [e.question for e in all_train[-3:]]
    assert [e.question for e in splits["train"]] == [e.question for e in all_train[:5]]


def test_tiny_tokenizer_round_trips_math_text():
    tokenizer = build_chat_tokenizer([r["question"] + r["answer"] for r in gsm8k_records(10)])
    text = "Then 12 * 3 = 36 apples.\n### 36"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_data_dir_needs_train_and_test(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", gsm8k_records(3))
    code = main(["run", "--preset", "math-smollm2", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2 and "expected train.jsonl and test.jsonl" in capsys.readouterr().err
