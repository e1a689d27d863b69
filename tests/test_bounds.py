"""Issue 34: sizes bounded before any work, inputs' faults named in one line, nothing silently wrong.

Every size a user types (seeds, a generator's spread and grid, a generation budget, a number of
codes, YAML that aliases expand) has an upper bound checked before work starts; traces longer than
a model takes are skipped and counted; what a preset names is checked before the first stage;
evaluation generates greedily from the weights whatever generation_config.json says; a task/data
mismatch and a codes file of another tokenizer are refused; YAML 1.2 numbers are numbers; failures
print one line (argparse's, a background thread's).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from token_assorted.cli import main

from conftest import VQ_TINY, one_line, tiny_lm_argv, toy_train

# "Billion laughs": 10^9 values from 90 aliases, as the lines of a mapping.
BOMB = ["a: &a [" + ", ".join(["x"] * 10) + "]"] + [f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]"
                                                    for prev, name in zip("abcdefgh", "bcdefghi")]


# --- sizes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["run", "--preset", "tiny", "--seeds", "100000000"], ["seeds", "[1, 100]"]),
    (["data", "generate", "prosqa", "--n", "1", "--nodes-sd", "1e9"], ["--nodes-sd", "55"]),
    (["data", "generate", "keys-maze", "--n", "1", "--width", "100000"], ["at most 256"]),
    (["eval", "--max-new-tokens", "1000000000"], ["max_new_tokens", "[1, 32768]"]),
    (["explain", "--question", "x", "--max-new-tokens", "0"], ["--max-new-tokens", "[1, 32768]"]),
    (["explain", "--predictions", "p.jsonl", "--limit", "-1"], ["--limit", "at least 1"]),
])
def test_sizes_are_bounded_before_any_work(argv, names, tiny_lm, pronto, tmp_path, capsys):
    argv = [*argv, "--out", str(tmp_path / "out")] if argv[0] in ("run", "data", "eval") else argv
    if argv[0] in ("eval", "explain"):
        argv[1:1] = ["--model", str(tiny_lm)] + (["--data", str(pronto)] if argv[0] == "eval" else [])
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusal, one line too
        code = stop.code
    one_line(capsys, code, *names)
    assert not (tmp_path / "out").exists()


def test_decoding_more_codes_than_a_trace_holds_is_refused_before_decoding(tiny_vqvae, capsys, monkeypatch):
    import token_assorted.vqvae as vqvae

    monkeypatch.setattr(vqvae, "decode_codes", lambda *a: pytest.fail("decoded 20,000 codes"))
    code = main(["vqvae", "decode", "--vqvae", str(tiny_vqvae), "--prompt", "x", "--codes", ",".join(["1"] * 20000)])
    one_line(capsys, code, "--codes", "at most 4096 codes")


@pytest.mark.parametrize("where", ["description", "train.lr", "--set"])
def test_a_yaml_alias_bomb_is_refused_before_it_is_built(where, tmp_path, capsys):
    preset, extra = tmp_path / "bomb.yaml", []
    if where == "description":
        preset.write_text("task: prosqa\ndescription:\n" + "".join(f"  {line}\n" for line in BOMB))
    elif where == "train.lr":
        preset.write_text("task: prosqa\ntrain:\n  lr:\n" + "".join(f"    {line}\n" for line in BOMB))
    else:
        preset.write_text("task: prosqa\n")
        extra = ["--set", "description={" + ", ".join(BOMB) + "}"]
    code = main(["run", "--preset", str(preset), "--out", str(tmp_path / "out"), *extra])
    line = one_line(capsys, code, "aliases")
    assert len(line) < 400 and not (tmp_path / "out").exists()


def test_a_recursive_alias_is_refused(tmp_path, capsys):
    (tmp_path / "loop.yaml").write_text("task: prosqa\ndescription: &a [*a]\n")
    one_line(capsys, main(["run", "--preset", str(tmp_path / "loop.yaml")]), "recursive")


@pytest.fixture(scope="module")
def with_long(pronto, tmp_path_factory) -> Path:
    """The tiny data plus one example whose trace has 5,000 steps."""
    records = [json.loads(line) for line in pronto.read_text().splitlines()]
    path = tmp_path_factory.mktemp("long") / "with_long.jsonl"
    long = {**records[0], "steps": records[0]["steps"][:1] * 5000}
    path.write_text("".join(json.dumps(r) + "\n" for r in [long, *records]))
    return path


def test_eval_skips_examples_longer_than_the_model_takes(with_long, tiny_lm, tmp_path, capsys, monkeypatch):
    import token_assorted.generation.scoring as evaluate

    budgets = []
    real = evaluate.generate_ids
    monkeypatch.setattr(evaluate, "generate_ids", lambda m, t, p, config, **k: budgets.append(config.max_new_tokens)
                        or real(m, t, p, config, **k))
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_lm), "--data", str(with_long), "--out", str(out)]) == 0
    assert "skipped 1 examples longer than the model takes" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["n"] == 8 and result["skipped_too_long"] == 1 and max(budgets) < 100, budgets


def test_vqvae_evaluate_skips_traces_longer_than_it_takes(with_long, tiny_vqvae, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["vqvae", "evaluate", "--vqvae", str(tiny_vqvae), "--data", str(with_long), "--out", str(out)]) == 0
    assert "skipped 1 examples whose trace is longer than max_trace_len=8192" in capsys.readouterr().err
    assert json.loads(out.read_text())["skipped_too_long"] == 1


# --- input at fault: one line, exit 2 --------------------------------------------------------------
def test_a_tokenizer_whose_ids_have_gaps_fails_in_one_line(pronto, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w for line in pronto.read_text().splitlines() for w in json.dumps(json.loads(line)).split()}
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, **{w: 10 + 2 * i for i, w in enumerate(sorted(words))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                            eos_token="<eos>").save_pretrained(tmp_path / "gappy")
    code = main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(tmp_path / "vq"),
                 "--tokenizer", str(tmp_path / "gappy"), *VQ_TINY])
    one_line(capsys, code, "gappy", "ids have gaps")


@pytest.mark.parametrize("setting, names", [
    ("train=3", ["--set train=3", "expected a mapping"]),
    ("method_overrides=3", ["method_overrides", "expected a mapping"]),
    ("method_overrides={cot: 3}", ["method_overrides.cot", "expected a mapping"]),
    ("data.options.nodes=six", ["data.options.nodes", "expected a number"]),
])
def test_sections_of_the_wrong_type_are_input_errors(setting, names, tmp_path, capsys):
    one_line(capsys, main(["run", "--preset", "tiny", "--set", setting, "--out", str(tmp_path / "o")]), *names)


def test_a_garbage_gguf_and_a_device_as_data_are_input_errors(pronto, tmp_path, capsys):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file" * 100)
    code = main(["train", "--task", "prontoqa", "--strategy", "cot", "--data", str(pronto), "--model",
                 str(tmp_path / "model.gguf"), "--out", str(tmp_path / "o"), "--no-progress"])
    one_line(capsys, code, "model.gguf", "not a GGUF file")
    if Path("/dev/zero").is_char_device():
        one_line(capsys, main(["data", "stats", "/dev/zero"]), "/dev/zero", "not a file")


def test_a_field_mapped_twice_is_refused(pronto, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["data", "stats", str(pronto), "--task", "qa", "--fields", "question=a,question=b"])
    one_line(capsys, stop.value.code, "question is mapped twice")


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--lr", "fast"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "usage:" not in err and "--lr" in err, err


# --- checked before the first stage ----------------------------------------------------------------
@pytest.mark.parametrize("extra, names", [
    (["--set", "train.model=nosuch"], ["--set train.model=nosuch", "no such model"]),
    (["--set", "vqvae.device=tpu"], ["vqvae.device", "unknown device 'tpu'"]),
    (["--set", "vqvae.tokenizer=/missing"], ["vqvae.tokenizer", "/missing"]),
    (["--set", "train.lora={target_modules: [nope]}"], ["train.lora", "'nope' is not a module of scratch-tiny"]),
    (["--model", "/nonexistent"], ["--model /nonexistent", "no such model"]),
])
def test_what_a_preset_names_is_checked_before_the_first_stage(extra, names, tmp_path, capsys):
    out = tmp_path / "out"
    one_line(capsys, main(["run", "--preset", "tiny", "--out", str(out), *extra]), *names)
    assert not out.exists()


# --- not silently wrong ------------------------------------------------------------------------------
def test_eval_is_greedy_on_the_weights_whatever_generation_config_json_says(tiny_lm, pronto, tmp_path, capsys):
    plain = tmp_path / "plain.json"
    assert main(["eval", "--model", str(tiny_lm), "--data", str(pronto), "--out", str(plain),
                 "--max-new-tokens", "6"]) == 0
    first = [json.loads(line)["generated_ids"] for line in plain.with_name("plain.predictions.jsonl").open()]
    shipped = tmp_path / "model"
    shutil.copytree(tiny_lm, shipped, ignore=shutil.ignore_patterns("state", "logs", ".token-assorted-*"))
    settings = json.loads((shipped / "generation_config.json").read_text())
    settings.update(repetition_penalty=50.0, suppress_tokens=sorted({ids[0] for ids in first}))
    (shipped / "generation_config.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert main(["eval", "--model", str(shipped), "--data", str(pronto), "--out", str(tmp_path / "s.json"),
                 "--max-new-tokens", "6"]) == 0
    assert "repetition_penalty=50.0" in capsys.readouterr().err
    again = [json.loads(line)["generated_ids"] for line in (tmp_path / "s.predictions.jsonl").open()]
    assert again == first  # the file's settings would suppress every first token written above


def test_eval_refuses_data_of_another_task(tiny_lm, tiny_vqvae, tmp_path, capsys):
    maze = tmp_path / "maze.jsonl"
    assert main(["data", "generate", "keys-maze", "--n", "2", "--out", str(maze)]) == 0
    one_line(capsys, main(["eval", "--model", str(tiny_lm), "--data", str(maze), "--out", str(tmp_path / "r.json")]),
             "maze.jsonl", "keys-maze record, not a prontoqa one")
    one_line(capsys, main(["vqvae", "encode", "--vqvae", str(tiny_vqvae), "--data", str(maze), "--out",
                           str(tmp_path / "c.json")]), "keys-maze record")


@pytest.mark.parametrize("recorded", ["fingerprint", "its VQ-VAE's"])
def test_a_codes_file_naming_another_tokenizer_is_refused(recorded, toy, tiny_vqvae, pronto, tmp_path, capsys):
    codes = tmp_path / "codes.json"
    assert main(["vqvae", "encode", "--vqvae", str(tiny_vqvae), "--data", str(pronto), "--out", str(codes)]) == 0
    record = json.loads(codes.read_text())
    record["tokenizer"] = os.path.relpath(toy["tokenizer"], tmp_path)  # the toy task's word list
    if recorded != "fingerprint":
        record.pop("tokenizer_fingerprint")  # a file written before the record: the VQ-VAE's is used
    codes.write_text(json.dumps(record))
    code = main(["train", "--task", "prontoqa", "--data", str(pronto), "--codes", str(codes), "--out",
                 str(tmp_path / "lm"), "--epochs", "1", "--batch-size", "4", "--no-progress"])
    one_line(capsys, code, "codes.json", "'tokenizer'", "not the one its codes were computed with")


def test_latent_tokens_count_when_the_metadata_lost_their_record(tiny_lm, tmp_path):
    from token_assorted.lm.model_dir import load_model_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_lm, model, ignore=shutil.ignore_patterns("state", "logs"))
    meta = json.loads((model / "token_assorted.json").read_text())
    expected = meta.pop("latent_vocab")
    (model / "token_assorted.json").write_text(json.dumps(meta))
    vocab = load_model_dir(model, "cpu").latent_vocab
    assert vocab is not None and vocab.to_dict() == expected and vocab.codebook_size == 8


# --- numbers as people write them --------------------------------------------------------------------
def test_yaml_1_2_numbers_are_numbers(toy, tmp_path):
    from token_assorted.core.config import from_mapping, load_yaml
    from token_assorted.pipeline.preset import load_preset
    from token_assorted.lm.config import TrainConfig

    assert load_preset("tiny", {"train.lr": 3e-4}).train["lr"] == 3e-4
    from token_assorted.core.config import parse_overrides

    assert parse_overrides(["train.lr=3e-4", "data.train=1e3"]) == {"train.lr": 3e-4, "data.train": 1000.0}
    assert load_preset("tiny", parse_overrides(["data.train=1e3"])).data.train == 1000
    (tmp_path / "c.yaml").write_text("lr: 1e-4\nweight_decay: 1.0e2\nepochs: 2\n")
    config = from_mapping(TrainConfig, load_yaml(tmp_path / "c.yaml"), "c.yaml")
    assert (config.lr, config.weight_decay) == (1e-4, 100.0)
    assert main(toy_train(toy, tmp_path / "lm", "--config", str(tmp_path / "c.yaml"), "--epochs", "1")) == 0


# --- quiet ----------------------------------------------------------------------------------------------
def test_a_full_disk_under_tensorboard_is_one_line(toy, tmp_path, capsys, monkeypatch):
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    monkeypatch.delenv("TOKEN_ASSORTED_DEBUG", raising=False)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's own, not pytest's
    code = main(toy_train(toy, tmp_path / "lm", "--log-every", "1", "--epochs", "2"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "No space left on device" in err and len(err.splitlines()) == 1, err


def test_a_long_prompt_gives_no_transformers_reminder(tiny_lm, pronto):
    import logging

    class Kept(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    records: list[str] = []
    logger = logging.getLogger("transformers.generation.stopping_criteria")
    logger.addHandler(handler := Kept())
    try:
        question = json.loads(pronto.read_text().splitlines()[0])["question"]
        words = question.split()
        long = " ".join((words * (600 // len(words) + 1))[:500])  # about 650 tokens: past the 512 positions
        assert main(["explain", "--model", str(tiny_lm), "--question", long, "--max-new-tokens", "30"]) == 0
    finally:
        logger.removeHandler(handler)
    assert not any("friendly reminder" in message for message in records), records


# --- the new-user probe of issue 34 (RELIABILITY.md, "Probe of issue 34") -----------------------------
@pytest.mark.parametrize("argv, names", [
    (["data", "generate", "prosqa", "--n", "1000000000", "--out", "x.jsonl"], ["--n", "[1, 10000000]"]),
    (["train", "--task", "prontoqa", "--data", "d.jsonl", "--model", "gpt2-tiny", "--max-length", "100000000"],
     ["max_length", "[2, 131072]"]),
    (["vqvae", "train", "--task", "prontoqa", "--data", "d.jsonl", "--out", "vq", "--codebook-size", "100000000"],
     ["codebook_size", "[2, 65536]"]),
    (["run", "--preset", "tiny", "--set", "train.lora={r: 0}"], ["--set train.lora", ": train.lora: r must be"]),
    (["run", "--preset", "/dev/zero"], ["/dev/zero", "character device"]),
    (["train", "--task", "prontoqa", "--data", "d.jsonl", "--out", "/dev/null"], ["/dev/null", "not a folder"]),
])
def test_what_the_probe_found_is_refused_in_one_line(argv, names, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[1:2] == ["--preset"] and not Path("/dev/zero").exists() or argv[-1] == "/dev/null" and \
            not Path("/dev/null").is_char_device():
        pytest.skip("needs /dev/zero and /dev/null")
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    line = one_line(capsys, code, *names)
    assert "train.train." not in line and list(tmp_path.iterdir()) == []


def test_a_data_file_given_as_a_pipe_is_read_once(pronto, capsys):
    read, write = os.pipe()
    os.write(write, pronto.read_bytes())  # 8 short records fit in the pipe's buffer
    os.close(write)
    try:
        assert main(["data", "stats", f"/dev/fd/{read}"]) == 0  # the task is inferred, then the file is read
    finally:
        os.close(read)
    assert json.loads(capsys.readouterr().out)["count"] == 8


def test_eval_into_a_folder_that_does_not_exist_yet(tiny_lm, pronto, tmp_path):
    out = tmp_path / "new" / "folder" / "r.json"
    assert main(["eval", "--model", str(tiny_lm), "--data", str(pronto), "--out", str(out), "--max-new-tokens",
                 "2"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json", "r.predictions.jsonl"]  # no lock left


def test_decoding_no_codes_is_refused(tiny_vqvae, capsys):
    one_line(capsys, main(["vqvae", "decode", "--vqvae", str(tiny_vqvae), "--prompt", "x", "--codes", " , "]),
             "no codes given")
