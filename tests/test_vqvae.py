"""Stage 1: training the VQ-VAE, its saved directory and its command line.

Everything runs on 8 hand-made three-step syllogisms with a tiny model (vqvae_toys.py), so the
whole file takes seconds per test on one CPU thread. The parts of the model, one at a time:
test_vqvae_parts.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from launch import torchrun
from safetensors.torch import load_file
from vqvae_toys import SEARCH, TASK, tiny_config, tiny_model, toy_examples

from token_assorted.cli import main
from token_assorted.data.encoding import encode_example
from token_assorted.core.errors import CheckpointError, ConfigError
from token_assorted.vqvae.codes import (
    codebook_of,
    encode_codes_file,
    from_codes_file,
    from_vqvae,
)
from token_assorted.data.schema import Example, save_examples
from token_assorted.data.tasks.base import normalize_text
from token_assorted.data.tokenizer import build_word_tokenizer
from token_assorted.vqvae import (
    VQVAEConfig,
    decode_codes,
    encode_examples,
    evaluate_reconstruction,
    load_vqvae,
    split_trace,
    train_vqvae,
)
from token_assorted.vqvae.chunks import chunk_examples, collate


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    save_examples(path, toy_examples())
    return path


@pytest.fixture(scope="module")
def trained(toy_file, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return train_vqvae(tiny_config(toy_file, tmp_path_factory.mktemp("vq") / "run"))


# --- chunks ---------------------------------------------------------------------------------
def test_split_trace_pads_the_trailing_partial_chunk():
    assert split_trace([5, 6, 7, 8, 9], 4, 0) == [[5, 6, 7, 8], [9, 0, 0, 0]]
    assert split_trace([5, 6, 7, 8], 4, 0) == [[5, 6, 7, 8]]
    assert split_trace([], 4, 0) == []


def test_collate_marks_batch_padding():
    tokenizer = build_word_tokenizer(["a b c d e f g h i j"])
    examples = [Example("a b", ["c d e f g"], "h"), Example("a", ["c"], "h")]
    batch = collate(chunk_examples(tokenizer, TASK, examples, 4), tokenizer.pad_token_id, 64)
    assert batch.chunk_ids.shape == (2, 2, 4)
    assert batch.chunk_present.tolist() == [[True, True], [True, False]]
    assert batch.targets.shape == (3, 4)
    assert batch.prompt_pad.tolist()[1][-1] is True


# --- training, saving, loading ----------------------------------------------------------------
def test_tiny_model_overfits_eight_examples(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["token_accuracy"] == 1.0
    assert metrics["exact_chunk_accuracy"] == 1.0
    assert 0 < metrics["codebook_usage"] <= 1
    assert metrics["compression_rate"] == pytest.approx(metrics["trace_tokens"] / metrics["latent_tokens"])
    log = [json.loads(line) for line in (trained / "logs" / "log.jsonl").read_text().splitlines()]
    assert {"train", "valid"} <= {record["split"] for record in log}
    assert any(path.name.startswith("events.") for path in (trained / "logs").iterdir())  # TensorBoard
    info = json.loads((trained / "config.json").read_text())
    assert info["task"] == "prosqa" and info["model"]["codebook_size"] == 8 and info["tokenizer_fingerprint"]


def test_save_load_gives_identical_codes_and_decodes_the_trace(trained, toy_file, tmp_path):
    examples = toy_examples()
    first, second = load_vqvae(trained), load_vqvae(trained)
    codes = encode_examples(first, TASK, examples, batch_size=3)
    assert codes == encode_examples(second, TASK, examples, batch_size=8)
    assert all(len(c) == -(-len(encode_example(first.tokenizer, TASK, e).trace_ids) // 4) for c, e in
               zip(codes, examples))
    # Stage 2 reads codes from a file of their own, or computes them in memory: never into the VQ-VAE's folder.
    files = sorted(trained.rglob("*"))
    encode_codes_file(first, TASK, toy_file, tmp_path / "codes.json")
    latents = from_codes_file(tmp_path / "codes.json", len(examples), toy_file)
    assert latents.codes == codes == from_vqvae(trained, TASK, examples).codes
    assert torch.equal(latents.codebook, codebook_of(first.model, 8))
    assert latents.vqvae == str(trained) and latents.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert sorted(trained.rglob("*")) == files
    with pytest.raises(ConfigError, match="data files differ"):  # the codes of another file
        from_codes_file(tmp_path / "codes.json", len(examples), tmp_path / "codes.json")
    prompt = encode_example(first.tokenizer, TASK, examples[2]).prompt_ids
    decoded = decode_codes(first, prompt, codes[2])
    assert normalize_text(decoded) == normalize_text(" ".join(examples[2].steps))
    assert evaluate_reconstruction(first, TASK, examples)["token_accuracy"] == 1.0


def test_mismatched_checkpoint_is_refused(trained, toy_file, tmp_path):
    with pytest.raises(CheckpointError, match="codebook size K=8"):
        load_vqvae(trained, codebook_size=64)
    with pytest.raises(CheckpointError, match="chunk size L=4"):
        load_vqvae(trained, chunk_size=16)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        load_vqvae(trained, tokenizer=build_word_tokenizer(["completely different words"]))
    with pytest.raises(CheckpointError, match="codebook_size=8"):
        train_vqvae(tiny_config(toy_file, trained, codebook_size=16, resume=True))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_vqvae(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    with pytest.raises(CheckpointError, match="pickle"):
        load_vqvae(tmp_path)


def test_a_folder_of_an_older_format_is_refused_in_one_line(trained, toy_file, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(trained, old, ignore=shutil.ignore_patterns("logs"))
    info = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**info, "format": "token-assorted-vqvae/1"}))
    refusal = f"{old}: a VQ-VAE saved by an older token-assorted (format token-assorted-vqvae/1; this one reads "
    with pytest.raises(CheckpointError, match="retrain it") as caught:
        load_vqvae(old)
    assert str(caught.value).startswith(refusal)
    with pytest.raises(CheckpointError, match="older token-assorted"):
        train_vqvae(tiny_config(toy_file, old, resume=True))
    assert main(["vqvae", "decode", "--vqvae", str(old), "--prompt", "x", "--codes", "1"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line
    (old / "config.json").write_text(json.dumps({key: value for key, value in info.items() if key != "vocab"}))
    with pytest.raises(CheckpointError, match="not a token-assorted VQ-VAE config"):
        load_vqvae(old)


def test_fresh_run_refuses_an_existing_directory(trained, toy_file):
    with pytest.raises(ConfigError, match="--resume"):
        train_vqvae(tiny_config(toy_file, trained))


def test_resume_gives_the_same_final_weights(toy_file, tmp_path):
    short = dict(steps=14, valid_every=5, dead_code_threshold=1.0)  # high threshold: codes get replaced (RNG)
    whole = train_vqvae(tiny_config(toy_file, tmp_path / "whole", **short))
    parted = tmp_path / "parted"
    train_vqvae(tiny_config(toy_file, parted, stop_at=7, **short))
    assert json.loads((parted / "state" / "latest.json").read_text())["dir"] == "step-00000007"
    assert not (parted / "metrics.json").exists()
    train_vqvae(tiny_config(toy_file, parted, resume=True, **short))
    expected, got = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    steps = [r["step"] for r in map(json.loads, (parted / "logs" / "log.jsonl").read_text().splitlines())
             if r["split"] == "valid"]
    assert steps == [5, 10, 14]


# --- command line -------------------------------------------------------------------------------
def test_cli_train_encode_decode_round_trip(toy_file, tmp_path, capsys):
    out = tmp_path / "cli"
    options = tmp_path / "options.yaml"
    options.write_text("d_model: 32\nheads: 2\nencoder_layers: 1\ndecoder_layers: 1\ncodebook_dim: 8\n"
                       "max_prompt_len: 64\nwarmup: 10\ndead_code_threshold: 0.1\n")
    code = main(["vqvae", "train", "--task", "prosqa", "--data", str(toy_file), "--valid", str(toy_file),
                 "--out", str(out), "--config", str(options), "--chunk-size", "4", "--compression", "4",
                 "--codebook-size", "8", "--steps", "250", "--batch-size", "8", "--lr", "5e-3",
                 "--valid-every", "125", "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["train"]["d_model"] == 32
    codes_file = tmp_path / "codes.json"
    assert main(["vqvae", "encode", "--vqvae", str(out), "--data", str(toy_file), "--task", "prosqa",
                 "--out", str(codes_file)]) == 0
    record = json.loads(codes_file.read_text())
    assert len(record["codes"]) == 8 and record["skipped"] == [] and record["codebook_size"] == 8
    tokenizer = load_vqvae(out).tokenizer
    assert all(len(c) == -(-len(encode_example(tokenizer, TASK, e).trace_ids) // 4)  # one code per chunk of 4
               for c, e in zip(record["codes"], toy_examples()))
    capsys.readouterr()
    example = toy_examples()[5]
    assert main(["vqvae", "decode", "--vqvae", str(out), "--prompt", example.question,
                 "--codes", ",".join(map(str, record["codes"][5]))]) == 0
    assert normalize_text(capsys.readouterr().out) == normalize_text(" ".join(example.steps))
    assert main(["vqvae", "decode", "--vqvae", str(out), "--prompt", "x", "--codes", "99"]) == 2


def test_cli_reports_user_errors_in_one_line(toy_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("codebook_sise: 8\n")
    assert main(["vqvae", "train", "--config", str(bad), "--data", str(toy_file), "--out", str(tmp_path / "o")]) == 2
    assert "codebook_sise" in capsys.readouterr().err
    assert main(["vqvae", "train", "--data", str(toy_file), "--out", str(tmp_path / "o"),
                 "--local-context", "-1"]) == 2
    assert "local_context" in capsys.readouterr().err
    assert main(["vqvae", "decode", "--vqvae", str(tmp_path), "--prompt", "x", "--codes", "1"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


# --- the autoregressive decoder ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ar_trained(toy_file, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vq_ar") / "ar"
    return train_vqvae(tiny_config(toy_file, out, autoregressive=True, steps=300))


def test_autoregressive_model_overfits_and_decodes_greedily(ar_trained):
    out = ar_trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["token_accuracy"] == 1.0  # measured with greedy decoding, not teacher forcing
    loaded = load_vqvae(out)
    example = toy_examples()[4]
    codes = encode_examples(loaded, TASK, [example])[0]
    prompt = encode_example(loaded.tokenizer, TASK, example).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes)) == normalize_text(" ".join(example.steps))


def test_cli_evaluate_writes_the_metrics(ar_trained, toy_file, tmp_path, capsys):
    metrics_file = tmp_path / "m.json"
    assert main(["vqvae", "evaluate", "--vqvae", str(ar_trained), "--data", str(toy_file),
                 "--out", str(metrics_file)]) == 0
    written = json.loads(metrics_file.read_text())
    assert written["chunks"] > 0 and written["search_rerank"] == 0
    assert written["token_accuracy"] == evaluate_reconstruction(load_vqvae(ar_trained), TASK,
                                                                toy_examples())["token_accuracy"] == 1.0
    assert json.loads(capsys.readouterr().out)["token_accuracy"] == 1.0


# --- options of the parts, trained and saved -----------------------------------------------------
def test_data_output_vocab_is_the_trace_ids_and_survives_save_load_and_resume(toy_file, tmp_path):
    short = dict(steps=12, valid_every=6, output_vocab="data")
    whole = train_vqvae(tiny_config(toy_file, tmp_path / "whole", **short))
    loaded = load_vqvae(whole)
    items = chunk_examples(loaded.tokenizer, TASK, TASK.load(str(toy_file)), 4)
    expected = sorted({t for item in items for chunk in item.chunks for t in chunk} | {loaded.model.vocab.pad_id})
    assert loaded.model.tokens.output_ids.tolist() == expected
    assert loaded.model.vocab.output_size == len(expected) < len(loaded.tokenizer)
    parted = tmp_path / "parted"
    train_vqvae(tiny_config(toy_file, parted, stop_at=6, **short))
    train_vqvae(tiny_config(toy_file, parted, resume=True, **short))
    expected_weights, got = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    assert all(torch.equal(expected_weights[k], got[k]) for k in expected_weights)
    with pytest.raises(CheckpointError, match="output_vocab"):
        train_vqvae(tiny_config(toy_file, parted, resume=True, **{**short, "output_vocab": "all"}))
    with pytest.raises(ConfigError, match="output_vocab"):
        train_vqvae(tiny_config(toy_file, tmp_path / "bad", output_vocab="trace"))


def test_search_options_are_checked(toy_file, tmp_path):
    with pytest.raises(ValueError, match="one latent per chunk"):
        tiny_model(assignment="search")  # the tiny model has r = 2: two latents per chunk
    with pytest.raises(ValueError, match="search_explore"):
        tiny_model(**{**SEARCH, "search_candidates": 9})  # more candidates than K = 8
    with pytest.raises(ConfigError, match="one latent per chunk"):
        train_vqvae(tiny_config(toy_file, tmp_path / "a", assignment="search", compression=2))
    with pytest.raises(ConfigError, match="assignment: must be one of"):
        train_vqvae(tiny_config(toy_file, tmp_path / "b", assignment="closest"))


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ["nearest", "search"])
def test_two_processes_train_one_vqvae(toy_file, tmp_path, assignment):
    # Each process takes half of every batch; the codebook (the library's EMA statistics, the
    # search's usage counts and re-seeded codes) stays one across them.
    out = tmp_path / "ddp"
    options = ["--steps", "120", "--valid-every", "60", "--batch-size", "8", "--grad-accum", "2"]
    search = ["--assignment", "search", "--search-candidates", "4", "--search-explore", "1",
              "--dead-code-threshold", "1.0"] if assignment == "search" else []
    result = torchrun(tmp_path, ["vqvae", "train", "--task", "prosqa", "--data", str(toy_file), "--out", str(out),
                                 "--chunk-size", "4", "--compression", "4", "--codebook-size", "8", "--lr", "5e-3",
                                 "--warmup", "10", "--no-progress", "--d-model", "32", "--heads", "2",
                                 "--encoder-layers", "1", "--decoder-layers", "1", "--codebook-dim", "8",
                                 "--max-prompt-len", "64", *options, *search])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("VQ-VAE saved in") == 1  # the main process reports, once
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000120"
    assert json.loads((out / "metrics.json").read_text())["token_accuracy"] > 0.6


def test_search_model_trains_saves_and_encodes_as_it_decodes(toy_file, tmp_path):
    out = train_vqvae(tiny_config(toy_file, tmp_path / "run", assignment="search", search_candidates=4,
                                  search_explore=1, steps=150))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["token_accuracy"] > 0.9
    loaded = load_vqvae(out)
    assert loaded.config.assignment == "search"
    # Stage 2 initialises the latent rows from the vectors the decoder reads.
    assert torch.equal(codebook_of(loaded.model, 8), loaded.model.quantizer.codebook.detach())
    examples = toy_examples()
    codes = encode_examples(loaded, TASK, examples, batch_size=3)
    assert codes == encode_examples(load_vqvae(out), TASK, examples, batch_size=8)
    prompt = encode_example(loaded.tokenizer, TASK, examples[1]).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes[1])) == normalize_text(" ".join(examples[1].steps))
    with pytest.raises(CheckpointError, match="assignment='search'"):
        train_vqvae(tiny_config(toy_file, out, resume=True))


def test_copy_prefix_options_are_checked(toy_file, tmp_path):
    with pytest.raises(ValueError, match="copy_prefix"):
        VQVAEConfig(copy_prefix=True, autoregressive=False)
    with pytest.raises(ConfigError, match="copy_prefix"):
        train_vqvae(tiny_config(toy_file, tmp_path / "run", copy_prefix=True))


def test_copy_prefix_model_trains_decodes_greedily_and_resumes_only_with_it(toy_file, tmp_path):
    out = train_vqvae(tiny_config(toy_file, tmp_path / "run", autoregressive=True, local_context=1,
                                  copy_prefix=True, steps=300))
    assert json.loads((out / "metrics.json").read_text())["token_accuracy"] == 1.0  # greedy decoding
    loaded = load_vqvae(out)
    assert loaded.config.copy_prefix
    example = toy_examples()[2]
    codes = encode_examples(loaded, TASK, [example])[0]
    prompt = encode_example(loaded.tokenizer, TASK, example).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes)) == normalize_text(" ".join(example.steps))
    with pytest.raises(CheckpointError, match="copy_prefix=True"):
        train_vqvae(tiny_config(toy_file, out, autoregressive=True, local_context=1, resume=True))


def test_search_rerank_is_checked_and_overrides_a_saved_vqvae(toy_file, tmp_path):
    with pytest.raises(ValueError, match="search_rerank"):
        tiny_model(search_rerank=4)  # the nearest-vector quantizer has nothing to re-rank
    with pytest.raises(ValueError, match="search_rerank"):
        tiny_model(**SEARCH, search_rerank=9)  # more than K = 8
    out = train_vqvae(tiny_config(toy_file, tmp_path / "s", **SEARCH, autoregressive=True, steps=20))
    assert load_vqvae(out).config.search_rerank == 0
    assert load_vqvae(out, search_rerank=3).model.config.search_rerank == 3
    codes = [encode_examples(load_vqvae(out, search_rerank=rerank), TASK, toy_examples()) for rerank in (0, 3)]
    assert [len(c) for c in codes[0]] == [len(c) for c in codes[1]]  # the same chunks, maybe other codes
    with pytest.raises(ConfigError, match="search_rerank"):
        load_vqvae(out, search_rerank=99)
