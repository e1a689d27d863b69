"""Bad input to every command: malformed files, unknown names, too-long sequences, mismatched
checkpoints, tokenizers and codebooks.

Each must end in one line on stderr naming the file (and line or field), exit code 2, no
traceback and no output file. The tiny VQ-VAE and LM (conftest's `artefacts`) train in a second
or two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from token_assorted.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import stage2_toy
from conftest import VQ_OPTIONS, one_line

GOOD = {"question": "True or false: Sam is hot.", "steps": ["Sam is a cat.", "Cats are hot."], "answer": "True"}
BAD_FILES = {
    # name: (content, what the message must name besides the file)
    "malformed-json": (json.dumps(GOOD) + "\n" + '{"question": "q", "steps": [\n', ["line 2"]),
    "missing-field": (json.dumps({"question": "q", "steps": ["s"]}) + "\n", ["line 1", "'answer'"]),
    "wrong-type": (json.dumps({**GOOD, "steps": "Sam is a cat."}) + "\n", ["line 1", "'steps'"]),
    "empty-trace": (json.dumps({**GOOD, "steps": ["", "  "]}) + "\n", ["line 1", "'steps'"]),
    "empty-file": ("", []),
    "non-utf8": (b'{"question": "caf\xe9"}\n', ["UTF-8"]),
    "not-an-object": ("[1, 2, 3]\n", ["expected a JSON object"]),
}


def write_bad(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    content, names = BAD_FILES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path, names


# --- 1. bad input, command by command ------------------------------------------------------
COMMANDS = {
    "data stats": lambda f, a, o: ["data", "stats", str(f), "--task", "prontoqa"],
    "vqvae train": lambda f, a, o: ["vqvae", "train", "--task", "prontoqa", "--data", str(f), "--out", str(o),
                                    "--steps", "2", *VQ_OPTIONS],
    "vqvae encode": lambda f, a, o: ["vqvae", "encode", "--vqvae", str(a["vqvae"]), "--data", str(f),
                                     "--out", str(o)],
    "train": lambda f, a, o: ["train", "--task", "prontoqa", "--strategy", "cot", "--data", str(f),
                              "--out", str(o), "--epochs", "1", "--no-progress"],
    "train --valid": lambda f, a, o: ["train", "--task", "prontoqa", "--strategy", "cot", "--data",
                                      str(a["pronto"]), "--valid", str(f), "--out", str(o), "--epochs", "1",
                                      "--no-progress"],
    "vqvae train --valid": lambda f, a, o: ["vqvae", "train", "--task", "prontoqa", "--data", str(a["pronto"]),
                                            "--valid", str(f), "--out", str(o), "--steps", "2", *VQ_OPTIONS],
    "eval": lambda f, a, o: ["eval", "--model", str(a["lm"]), "--data", str(f), "--out", str(o)],
    "explain": lambda f, a, o: ["explain", "--model", str(a["lm"]), "--predictions", str(f)],
    "run --train": lambda f, a, o: ["run", "--preset", "tiny", "--task", "gsm8k", "--train", str(f),
                                    "--test", str(f), "--out", str(o)],
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_data_file_is_one_line_naming_file_and_place(command, bad, artefacts, tmp_path, capsys):
    if command == "explain" and bad == "empty-trace":
        pytest.skip("a predictions file has no trace field")
    if command == "run --train" and bad in ("empty-trace",):
        pytest.skip("gsm8k allows answer-only examples (empty traces are sol-only data)")
    path, names = write_bad(tmp_path, bad)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(COMMANDS[command](path, artefacts, out))
    if command == "explain" and bad in ("missing-field", "wrong-type"):
        names = ["line 1"]  # predictions files have their own fields
    if command == "run --train" and bad in ("missing-field", "wrong-type"):
        names = ["line 1"]  # gsm8k reads several formats; its message names the line
    one_line(capsys, code, path.name, *names)
    assert not out.exists() or not any(p.is_file() and p.suffix in (".json", ".jsonl", ".safetensors")
                                       for p in out.rglob("*")), sorted(out.rglob("*"))


def test_missing_data_file_is_named(artefacts, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    for command in ("data stats", "vqvae train", "train", "eval"):
        code = main(COMMANDS[command](missing, artefacts, tmp_path / "out"))
        one_line(capsys, code, "nope.jsonl", "not found")


@pytest.mark.parametrize("argv, names", [
    (["data", "generate", "nosuch", "--n", "1", "--out", "x.jsonl"], ["nosuch", "prosqa"]),
    (["data", "stats", "{pronto}", "--task", "nosuch"], ["nosuch"]),
    (["vqvae", "train", "--task", "nosuch", "--data", "{pronto}", "--out", "{tmp}/o"], ["nosuch"]),
    (["train", "--task", "nosuch", "--strategy", "cot", "--data", "{pronto}", "--out", "{tmp}/o"], ["nosuch"]),
    (["train", "--task", "prontoqa", "--strategy", "nosuch", "--data", "{pronto}", "--out", "{tmp}/o"],
     ["nosuch", "token-assorted"]),
    (["train", "--task", "prontoqa", "--strategy", "cot", "--model", "nosuch", "--data", "{pronto}", "--out", "{tmp}/o"], ["nosuch"]),
    (["eval", "--model", "{lm}", "--task", "nosuch", "--data", "{pronto}", "--out", "{tmp}/r.json"], ["nosuch"]),
    (["run", "--preset", "nosuch", "--out", "{tmp}/r"], ["nosuch", "tiny"]),
    (["run", "--preset", "tiny", "--task", "nosuch", "--out", "{tmp}/r"], ["nosuch"]),
    (["run", "--preset", "tiny", "--strategies", "nosuch", "--out", "{tmp}/r"], ["nosuch"]),
    (["run", "--preset", "tiny", "--set", "train.nosuch=1", "--out", "{tmp}/r"], ["nosuch"]),
    (["run", "--preset", "tiny", "--set", "train.epochs=many", "--out", "{tmp}/r"], ["epochs"]),
])
def test_unknown_names_are_one_line_errors(argv, names, artefacts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {"pronto": artefacts["pronto"], "lm": artefacts["lm"], "tmp": tmp_path}
    code = main([arg.format(**values) for arg in argv])
    one_line(capsys, code, *names)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.jsonl").exists()


def test_run_checks_every_option_before_any_stage_runs(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["run", "--preset", "tiny", "--set", "train.epochs=many", "--out", str(out)])
    one_line(capsys, code, "epochs")
    assert not (out / "vqvae").exists()


@pytest.mark.parametrize("command", ["vqvae", "train", "run"])
@pytest.mark.parametrize("content, names", [
    ("nosuch_key: 1\n", ["nosuch_key"]),
    ("steps: [1, 2\n", ["line"]),
    ("- a list\n", ["mapping"]),
    ("lr: fast\n", ["lr"]),
])
def test_bad_config_files_are_one_line_errors(command, content, names, artefacts, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    if command == "run" and content.startswith("lr"):
        content = "seeds: many\n"
        names = ["seeds"]
    config.write_text(content)
    argv = {"vqvae": ["vqvae", "train", "--config", str(config), "--task", "prontoqa",
                      "--data", str(artefacts["pronto"]), "--out", str(tmp_path / "o")],
            "train": ["train", "--config", str(config), "--task", "prontoqa", "--strategy", "cot",
                      "--data", str(artefacts["pronto"]), "--out", str(tmp_path / "o")],
            "run": ["run", "--preset", str(config), "--out", str(tmp_path / "o")]}[command]
    code = main(argv)
    one_line(capsys, code, "bad.yaml", *names)
    assert not (tmp_path / "o").exists()


# --- sequences longer than the model's context --------------------------------------------
def test_training_data_longer_than_the_context_is_refused(artefacts, tmp_path, capsys):
    code = main(["train", "--task", "prontoqa", "--strategy", "cot", "--data", str(artefacts["pronto"]),
                 "--out", str(tmp_path / "o"), "--max-length", "8", "--no-progress"])
    one_line(capsys, code, "max_length=8")


def test_eval_prompt_longer_than_the_context_does_not_crash(artefacts, tmp_path, capsys):
    # A learned-position model (gpt2-tiny, 512 positions) asked about a 700-word question.
    model = tmp_path / "gpt2"
    assert main(["train", "--task", "prontoqa", "--strategy", "cot", "--model", "scratch-gpt2-tiny", "--data",
                 str(artefacts["pronto"]), "--out", str(model), "--epochs", "1", "--batch-size", "8",
                 "--no-progress"]) == 0
    long = tmp_path / "long.jsonl"
    question = " ".join(["Sam is a cat."] * 175) + " True or false: Sam is hot."
    long.write_text(json.dumps({**GOOD, "question": question}) + "\n")
    out = tmp_path / "r.json"
    capsys.readouterr()
    code = main(["eval", "--model", str(model), "--data", str(long), "--out", str(out), "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:  # refusing is fine, as one line naming the limit
        assert "context" in err or "position" in err or "long" in err, err
        assert not out.exists()
    else:
        assert code == 0 and out.exists()


# --- checkpoint / tokenizer / codebook mismatches ------------------------------------------
def _codes_file(tmp_path: Path, toy: dict[str, Path], offsets: list[int] | None = None, **changes) -> Path:
    record = stage2_toy.read_codes_record(toy["codes"])
    record.update(changes)
    path = toy["codes"].parent / f"codes-{len(list(toy['codes'].parent.glob('codes-*')))}.safetensors"
    return stage2_toy.write_codes_record(path, record, offsets)


def _train_toy(toy, out: Path, codes: Path, *extra: str) -> list[str]:
    return ["train", "--task", "toy", "--strategy", "token-assorted", "--data", str(toy["train"]), "--codes",
            str(codes), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress", *extra]


@pytest.mark.parametrize("change, names", [
    ({"codebook_size": 4}, ["codebook", "K=4"]),  # codes up to 15 in a K=4 codebook
    ({"chunk_size": 2}, ["L=2"]),  # codes computed with L=4 read as L=2
    ({"codes": [[0]] * 3}, ["codes"]),  # not one list per training example
])
def test_codes_that_do_not_match_the_model_are_refused(toy, tmp_path, capsys, change, names):
    codes = _codes_file(tmp_path, toy, **change)
    code = main(_train_toy(toy, tmp_path / "o", codes))
    one_line(capsys, code, *names)
    assert not (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.parametrize("change", [{"chunk_size": "four"}, {"codes": [[-1]] * 16}, {"codebook": [[float("nan")]]},
                                    {"offsets": [0] * 15 + [5, 1]}])
def test_wrongly_typed_codes_file_is_a_data_error(toy, tmp_path, capsys, change):
    codes = _codes_file(tmp_path, toy, **change)
    code = main(_train_toy(toy, tmp_path / "o", codes))
    one_line(capsys, code, codes.name)


def test_vqvae_of_another_task_is_refused(artefacts, tmp_path, capsys):
    code = main(["train", "--task", "prosqa", "--strategy", "token-assorted", "--data", str(artefacts["pronto"]),
                 "--vqvae", str(artefacts["vqvae"]), "--out", str(tmp_path / "o"), "--no-progress"])
    one_line(capsys, code, "prontoqa", "prosqa")


def test_vqvae_of_another_tokenizer_is_refused(artefacts, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from token_assorted.data.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["an entirely different vocabulary ### Yes"])
    model = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) + 16, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=128)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    code = main(["train", "--task", "prontoqa", "--strategy", "token-assorted", "--data", str(artefacts["pronto"]),
                 "--vqvae", str(artefacts["vqvae"]), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    one_line(capsys, code, "tokenizer")


@pytest.mark.parametrize("flag, value", [("--codebook-size", "16"), ("--chunk-size", "8")])
def test_vqvae_resume_with_another_shape_is_refused(artefacts, tmp_path, capsys, flag, value):
    out = tmp_path / "vq"
    base = ["vqvae", "train", "--task", "prontoqa", "--data", str(artefacts["pronto"]), "--out", str(out),
            "--steps", "4", "--valid-every", "2", "--stop-at", "2", *VQ_OPTIONS]
    assert main(base) == 0
    argv = base + ["--resume"]
    argv[argv.index(flag) + 1] = value
    code = main(argv)
    one_line(capsys, code, str(out), flag[2:].replace("-", "_"))


def test_decode_codes_outside_the_codebook_are_refused(artefacts, capsys):
    code = main(["vqvae", "decode", "--vqvae", str(artefacts["vqvae"]), "--prompt", "x", "--codes", "1,8"])
    one_line(capsys, code, "0..7")
    code = main(["vqvae", "decode", "--vqvae", str(artefacts["vqvae"]), "--prompt", "x", "--codes", "1"])
    one_line(capsys, code, "whole number of chunks")


def test_explain_with_a_vqvae_of_another_codebook_is_refused(artefacts, tmp_path, capsys):
    other = tmp_path / "vq16"
    argv = ["vqvae", "train", "--task", "prontoqa", "--data", str(artefacts["pronto"]), "--out", str(other),
            "--steps", "2", "--valid-every", "2", *VQ_OPTIONS]
    argv[argv.index("--codebook-size") + 1] = "16"
    assert main(argv) == 0
    capsys.readouterr()
    code = main(["explain", "--model", str(artefacts["lm"]), "--vqvae", str(other), "--question",
                 "True or false: Sam is hot.", "--max-new-tokens", "4"])
    one_line(capsys, code, "vq16")


