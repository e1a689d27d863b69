"""Reliability of every command: bad input, mismatched checkpoints, interrupted and killed runs.

Bad input must end in one line on stderr naming the file (and line or field), exit code 2,
no traceback and no output file. Training killed with SIGKILL, stopped with Ctrl-C, or
interrupted while writing a checkpoint must resume to the same weights as a run that was
never interrupted. The tiny VQ-VAE and LM used here train in a second or two.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from token_assorted.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import one_line  # noqa: E402

VQ_OPTIONS = ["--chunk-size", "4", "--compression", "2", "--codebook-size", "8", "--batch-size", "4",
              "--warmup", "2", "--d-model", "16", "--heads", "2", "--encoder-layers", "1",
              "--decoder-layers", "1", "--prompt-layers", "1", "--codebook-dim", "4", "--max-prompt-len", "64",
              "--dead-code-threshold", "1.0", "--device", "cpu", "--no-progress"]

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


# --- shared tiny artefacts ----------------------------------------------------------------
@pytest.fixture(scope="module")
def vqvae_dir(pronto, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vq") / "vq"
    torch.set_num_threads(1)
    assert main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out),
                 "--steps", "4", "--valid-every", "2", *VQ_OPTIONS]) == 0
    return out


@pytest.fixture(scope="module")
def lm_dir(pronto, vqvae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "lm"
    assert main(["train", "--task", "prontoqa", "--strategy", "token-assorted", "--data", str(pronto),
                 "--vqvae", str(vqvae_dir), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--no-progress"]) == 0
    return out


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


@pytest.fixture(scope="module")
def artefacts(pronto, vqvae_dir, lm_dir) -> dict[str, Path]:
    return {"pronto": pronto, "vqvae": vqvae_dir, "lm": lm_dir}


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
def _codes_file(tmp_path: Path, toy: dict[str, Path], **changes) -> Path:
    record = json.loads(toy["codes"].read_text())
    record.update(changes)
    path = toy["codes"].parent / f"codes-{len(list(toy['codes'].parent.glob('codes-*')))}.json"
    path.write_text(json.dumps(record))
    return path


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


@pytest.mark.parametrize("change", [{"chunk_size": "four"}, {"codes": [["a"]] * 16}, {"codebook": [[1], [1, 2]]}])
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


# --- 2. interrupted checkpoint writes --------------------------------------------------------
def _vq_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["vqvae", "train", "--task", "prontoqa", "--data", str(data), "--out", str(out), "--steps", "12",
            "--valid-every", "4", *VQ_OPTIONS, *extra]


def _same_weights(a: Path, b: Path, exact: bool = True) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name in first:
        if exact:
            assert torch.equal(first[name], second[name]), name
        else:
            torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)


def test_vqvae_crash_while_saving_keeps_the_previous_state_resumable(artefacts, tmp_path, monkeypatch, capsys):
    import token_assorted.training.checkpoint as checkpoint

    straight = tmp_path / "straight"
    assert main(_vq_argv(artefacts["pronto"], straight)) == 0
    out = tmp_path / "crashed"
    real_save = checkpoint.torch.save
    calls = {"n": 0}

    def crash_on_second_state(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the step-8 state (3 torch.save files each): its weights are already written
            raise OSError("disk full (simulated)")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", crash_on_second_state)
    assert main(_vq_argv(artefacts["pronto"], out)) == 2  # one line naming the failure, no traceback
    assert "simulated" in capsys.readouterr().err
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000004"
    assert main(_vq_argv(artefacts["pronto"], out, "--resume")) == 0
    _same_weights(straight / "model.safetensors", out / "model.safetensors")


def test_vqvae_crash_before_the_state_is_written_resumes_exactly(artefacts, tmp_path, monkeypatch, capsys):
    # A crash inside the first file of a save (the weights' atomic write) must leave the
    # previous state whole: no temp file left, resume reproduces the uninterrupted run.
    import token_assorted.training.checkpoint as checkpoint

    straight = tmp_path / "straight"
    assert main(_vq_argv(artefacts["pronto"], straight)) == 0
    out = tmp_path / "crashed"
    real_save_model = checkpoint.save_model
    calls = {"n": 0}

    def crash(model, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real_save_model(model, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", crash)
    assert main(_vq_argv(artefacts["pronto"], out)) == 2
    assert "simulated" in capsys.readouterr().err
    monkeypatch.setattr(checkpoint, "save_model", real_save_model)
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000004"
    assert not list(out.rglob("*.tmp"))
    assert main(_vq_argv(artefacts["pronto"], out, "--resume")) == 0
    _same_weights(straight / "model.safetensors", out / "model.safetensors")


def _lm_config(toy, out: Path, **overrides):
    from token_assorted.lm.config import TrainConfig

    base = dict(task="toy", data=str(toy["train"]), codes=str(toy["codes"]), out=str(out),
                strategy="token-assorted", epochs=3, batch_size=4, lr=3e-3, save_every=2, seed=3, progress=False)
    return TrainConfig(**{**base, **overrides})


def test_lm_crash_while_saving_keeps_the_previous_state_resumable(toy, tmp_path, monkeypatch):
    import token_assorted.lm.train as train_module
    import token_assorted.training.checkpoint as checkpoint
    from token_assorted.lm.train import train_lm

    straight = train_lm(_lm_config(toy, tmp_path / "straight"))
    out = tmp_path / "crashed"
    real_save = checkpoint.torch.save
    calls = {"n": 0}

    def crash_mid_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 2nd state (3 torch.save files each): optimizer written, scheduler not
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", crash_mid_save)
    with pytest.raises(OSError, match="simulated"):  # raised before the file's write: not a WriteError
        train_module.train_lm(_lm_config(toy, out))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    pointer = json.loads((out / "state" / "latest.json").read_text())
    assert pointer["dir"] == "step-00000002"  # the torn step-4 directory is not pointed at
    train_lm(_lm_config(toy, out, resume=True))
    _same_weights(straight / "model.safetensors", out / "model.safetensors")


# --- killed and interrupted runs (subprocesses) ------------------------------------------------
RUNNER = """
import signal, sys, torch
# A suite started in the background by a shell inherits SIGINT as ignored, and Python keeps
# it that way; restore Ctrl-C's usual meaning so these tests do not depend on the launcher.
signal.signal(signal.SIGINT, signal.default_int_handler)
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import stage2_toy; stage2_toy.register()
from token_assorted.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _runner(tmp_path: Path) -> Path:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER.format(tests=str(TESTS)))
    return path


def _state_step(out: Path) -> int:
    """The step of the committed training state (either stage), 0 when there is none."""
    try:
        return int(json.loads((out / "state" / "latest.json").read_text())["dir"].split("-")[1])
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def _start_and_signal(argv: list[str], progress, at_least: int, sig: int, tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(_runner(tmp_path)), *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while progress() < at_least and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be interrupted; make it longer"
    process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out + err  # accelerate prints the resume hint on stdout


VQ_LONG = ("--steps", "120", "--valid-every", "10")


@pytest.mark.slow
def test_vqvae_sigkill_then_resume_gives_the_same_weights(artefacts, tmp_path):
    data = artefacts["pronto"]
    straight = tmp_path / "straight"
    assert main(_vq_argv(data, straight, *VQ_LONG)) == 0
    killed = tmp_path / "killed"
    code, _ = _start_and_signal(_vq_argv(data, killed, *VQ_LONG), lambda: _state_step(killed), 20,
                                signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    at_kill = _state_step(killed)
    assert 20 <= at_kill < 120, at_kill
    assert main(_vq_argv(data, killed, *VQ_LONG, "--resume")) == 0
    _same_weights(straight / "model.safetensors", killed / "model.safetensors")
    valid_steps = [r["step"] for r in map(json.loads, (killed / "logs" / "log.jsonl").read_text().splitlines())
                   if r["split"] == "valid"]
    assert valid_steps == list(range(10, 121, 10))  # no step lost or logged twice


@pytest.mark.slow
def test_vqvae_ctrl_c_saves_state_and_says_how_to_resume(artefacts, tmp_path):
    data = artefacts["pronto"]
    straight = tmp_path / "straight"
    assert main(_vq_argv(data, straight, *VQ_LONG)) == 0
    stopped = tmp_path / "stopped"
    code, err = _start_and_signal(_vq_argv(data, stopped, *VQ_LONG), lambda: _state_step(stopped), 10,
                                  signal.SIGINT, tmp_path)
    assert code == 130, err
    assert "--resume" in err and "Traceback" not in err, err
    assert 10 <= _state_step(stopped) < 120
    assert main(_vq_argv(data, stopped, *VQ_LONG, "--resume")) == 0
    _same_weights(straight / "model.safetensors", stopped / "model.safetensors")


def _lm_argv(toy, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "toy", "--strategy", "token-assorted", "--data", str(toy["train"]), "--codes",
            str(toy["codes"]), "--out", str(out), "--epochs", "20", "--batch-size", "4", "--lr", "3e-3",
            "--save-every", "2", "--seed", "3", "--no-progress", *extra]


@pytest.mark.slow
def test_lm_ctrl_c_saves_state_and_resumes_to_the_same_weights(toy, tmp_path):
    straight = tmp_path / "straight"
    assert main(_lm_argv(toy, straight)) == 0
    stopped = tmp_path / "stopped"
    code, err = _start_and_signal(_lm_argv(toy, stopped), lambda: _state_step(stopped), 4, signal.SIGINT, tmp_path)
    assert code == 130, err
    assert "--resume" in err and "Traceback" not in err, err
    assert 4 <= _state_step(stopped) < 80
    assert main(_lm_argv(toy, stopped, "--resume")) == 0
    _same_weights(straight / "model.safetensors", stopped / "model.safetensors", exact=False)


# --- outputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["data generate", "vqvae encode", "eval"])
def test_output_path_that_is_a_directory_is_one_line_error(command, artefacts, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    argv = {"data generate": ["data", "generate", "prontoqa", "--n", "2", "--out", str(taken)],
            "vqvae encode": ["vqvae", "encode", "--vqvae", str(artefacts["vqvae"]), "--data",
                             str(artefacts["pronto"]), "--out", str(taken)],
            "eval": ["eval", "--model", str(artefacts["lm"]), "--data", str(artefacts["pronto"]), "--out",
                     str(taken), "--limit", "1", "--max-new-tokens", "2"]}[command]
    code = main(argv)
    one_line(capsys, code, "taken", "directory")
    assert not list(tmp_path.glob(".*.tmp")) and not any(taken.iterdir())


def test_output_under_a_file_is_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["data", "generate", "prontoqa", "--n", "2", "--out", str(tmp_path / "file" / "out.jsonl")])
    one_line(capsys, code, "out.jsonl", "cannot write")


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    from token_assorted.core.io import atomic_open

    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half of the new con")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# Writes outside io.atomic_*: each is staged elsewhere and renamed, or is an append-only log.
NON_ATOMIC_ALLOWED = {
    "training/fit.py": "logs/log.jsonl is append-only; lines after the last saved state are dropped on resume",
    "core/outdir.py": "the record of our files is append-only (a line per new file, written before the file); "
                      "save_pretrained_into writes into a temporary folder, each file then renamed into place",
    "training/checkpoint.py": "files go into a fresh step directory that latest.json points at only after fsync",
    "lm/model_dir.py": "save_pretrained writes into a temp dir, each file is then renamed into place",
    "pipeline/stages.py": "a stage writes into its own folder, which counts only once its .complete.json is written",
}


def test_every_file_write_is_atomic_or_staged():

    package = REPO / "token_assorted"
    pattern = re.compile(r"open\([^)]*['\"][wax]b?['\"]|\.write_text\(|\.write_bytes\(|torch\.save\(|"
                         r"save_pretrained\(|savefig\(")
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative in ("core/io.py", "core/safety.py") or relative in NON_ATOMIC_ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "atomic_open" not in code and not code.strip().startswith(("\"", "'", "`")):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    # report.py draws into an atomic_open handle; store/state use atomic_open around torch.save.
    offenders = [o for o in offenders if not re.search(r"savefig\(handle|torch\.save\(\{", o)]
    assert not offenders, "\n".join(offenders)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_on_run_ends_its_parallel_training_workers(tmp_path):
    out = tmp_path / "run"
    argv = ["-m", "token_assorted", "run", "--preset", "tiny", "--out", str(out),
            "--set", "parallel=2", "--set", "train.epochs=300"]
    process = subprocess.Popen([sys.executable, *argv], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob("models/*/logs")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its workers trained"
    workers = _descendants(process.pid)
    assert len(workers) >= 2, workers
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert "leaked semaphore" not in err and "run the same command again" in err, err  # issue 34
    deadline = time.time() + 20
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "training workers outlived the run"
