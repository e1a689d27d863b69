"""Limits checked before work starts; long examples dropped before a model sees them.

Issue 29, items 5, 6, 7, 8 and 12: numeric options must be finite and in range, and a
non-finite loss stops training with the last good checkpoint kept; every limit a preset or
`--set` gives is checked before the first stage runs, naming the file (or the `--set`) and
the key; the VQ-VAE's d_model must divide by its heads; examples too long for the LM or the
VQ-VAE are dropped and counted before anything encodes them; `data generate` refuses
impossible sizes at once, refuses negative seeds and shows progress.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from token_assorted.cli import main

from conftest import VQ_SHAPE, one_line, toy_train


@pytest.fixture(scope="module")
def with_long(pronto, tmp_path_factory) -> Path:
    """The tiny data plus one example whose trace has 5,000 steps (about 25,000 tokens)."""
    records = [json.loads(line) for line in pronto.read_text().splitlines()]
    long = {**records[0], "steps": records[0]["steps"][:1] * 5000}
    path = tmp_path_factory.mktemp("long") / "with_long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [long, *records]))
    return path


# --- 5. numeric options and non-finite losses ----------------------------------------------------
@pytest.mark.parametrize("flag, value, names", [
    ("--lr", "nan", ["lr", "finite"]), ("--lr", "inf", ["lr", "finite"]), ("--lr", "-1", ["lr", "(0, 1]"]),
    ("--lr", "0", ["lr", "(0, 1]"]), ("--lr", "1e38", ["lr", "(0, 1]"]), ("--epochs", "-1", ["epochs", ">= 1"]),
    ("--warmup", "-0.5", ["warmup"]),
    ("--poisson-p", "nan", ["poisson_p"]), ("--max-length", "0", ["max_length"]),
    ("--seed", "-5", ["seed", ">= 0"]), ("--save-every", "-1", ["save_every"]),
])
def test_train_refuses_options_out_of_range_up_front(flag, value, names, toy, tmp_path, capsys):
    code = main(toy_train(toy, tmp_path / "o", flag, value))
    one_line(capsys, code, *names)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, names", [
    ("--lr", "nan", ["lr", "finite"]), ("--lr", "inf", ["lr", "finite"]), ("--lr", "5", ["lr", "(0, 1]"]),
    ("--heads", "3", ["d_model", "heads=3"]), ("--chunk-size", "5", ["chunk_size", "compression"]),
    ("--dropout", "1.5", ["dropout"]), ("--encoder-layers", "0", ["encoder_layers"]),
    ("--max-trace-len", "0", ["max_trace_len"]),
])
def test_vqvae_train_refuses_options_out_of_range_up_front(flag, value, names, pronto, tmp_path, capsys):
    argv = ["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(tmp_path / "vq"),
            "--steps", "2", *VQ_SHAPE]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    if flag == "--heads":
        argv[argv.index("--d-model") + 1] = "32"  # the case: 32 / 3 is not whole
    code = main(argv)
    one_line(capsys, code, *names)
    assert not (tmp_path / "vq").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_state(toy, tmp_path, capsys, monkeypatch):
    import torch

    from token_assorted.training.fit import Fit

    real_step, calls = Fit.train_step, {"n": 0}

    def poisoned_after_three(self):
        loss = real_step(self)
        calls["n"] += 1
        if calls["n"] == 3:  # the weights of step 3 turn to NaN; step 4's loss is NaN
            with torch.no_grad():
                next(self.module.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Fit, "train_step", poisoned_after_three)
    out = tmp_path / "o"
    code = main(toy_train(toy, out, "--batch-size", "4", "--save-every", "2", "--epochs", "2"))
    one_line(capsys, code, "diverged at step 4", "the loss is nan", "state of step 2")
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000002"
    assert not (out / "model.safetensors").exists()  # no NaN model saved as the result


def test_vqvae_weights_that_are_no_longer_finite_are_never_saved(pronto, tmp_path, capsys, monkeypatch):
    import torch

    from token_assorted.training.fit import Fit

    real_step = Fit.train_step

    def poisoned(self):
        loss = real_step(self)
        if self.step == 3:  # the fourth step's update turns the weights to inf: its loss was still finite
            with torch.no_grad():
                next(self.stage.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(Fit, "train_step", poisoned)
    out = tmp_path / "vq"
    code = main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out), "--steps", "4",
                 "--valid-every", "2", "--log-every", "4", *VQ_SHAPE])
    one_line(capsys, code, "diverged at step 4", "no longer finite", "state of step 2")
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000002"  # the last good state


# --- 6. presets: everything checked before the first stage ------------------------------------------
@pytest.mark.parametrize("text", ["", "# nothing but a comment\n\n"])
def test_an_empty_preset_is_refused(text, tmp_path, capsys):
    preset = tmp_path / "empty.yaml"
    preset.write_text(text)
    code = main(["run", "--preset", str(preset), "--out", str(tmp_path / "r")])
    one_line(capsys, code, "empty.yaml", "empty preset")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("yaml_text, names", [
    ("train:\n  epochs: -1\n", ["train.epochs: must be >= 1, got -1"]),
    ("vqvae:\n  codebook_size: 0\n", ["vqvae.codebook_size: must be in [2, 65536], got 0"]),
    ("data:\n  train: 0\n", ["data.train: must be >= 1"]),
    ("vqvae:\n  chunk_size: 6\n  compression: 4\n", ["vqvae.chunk_size", "compression r=4"]),
    ("vqvae:\n  d_model: 32\n  heads: 3\n", ["vqvae.d_model", "heads=3"]),
    ("train:\n  lr: .nan\n", ["train.lr: must be a finite number"]),
    ("train:\n  batch_size: 6\n  grad_accum: 4\n", ["train.batch_size", "grad_accum=4"]),
    ("method_overrides:\n  cot:\n    poisson_p: 2\n", ["method_overrides.cot.poisson_p"]),
    ("eval:\n  batch_size: 0\n", ["eval.batch_size: must be >= 1"]),
    ("seeds: 0\n", ["seeds: must be in [1, 100]"]), ("parallel: 0\n", ["parallel: must be >= 1"]),
    ("data:\n  seed: -5\n", ["data.seed: must be >= 0"]),
])
def test_preset_limits_are_checked_before_any_stage_runs(yaml_text, names, tmp_path, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("task: prontoqa\n" + yaml_text)
    code = main(["run", "--preset", str(preset), "--out", str(tmp_path / "r")])
    one_line(capsys, code, "bad.yaml: ", *names)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("item, names", [
    ("train.epoch=3", ["--set train.epoch=3: train: unknown key(s) epoch"]),
    ("train.epochs=0", ["--set train.epochs=0: train.epochs: must be >= 1"]),
    ("vqvae.compression=3", ["--set vqvae.compression=3: vqvae.chunk_size"]),
    ("data.train=0", ["--set data.train=0: data.train"]),
])
def test_errors_of_set_blame_the_set_option_not_the_preset(item, names, tmp_path, capsys):
    code = main(["run", "--preset", "tiny", "--set", "train.epochs=2", "--set", item, "--out", str(tmp_path / "r")])
    line = one_line(capsys, code, *names)
    assert "tiny.yaml" not in line
    assert not (tmp_path / "r").exists()


def test_an_error_of_the_preset_itself_still_blames_the_preset(tmp_path, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("task: prontoqa\ntrain:\n  epoch: 3\n")
    code = main(["run", "--preset", str(preset), "--set", "seeds=1", "--out", str(tmp_path / "r")])
    one_line(capsys, code, "bad.yaml: train: unknown key(s) epoch")


# --- 8. long examples are dropped before any model sees them --------------------------------------------
@pytest.fixture
def encoded_traces(monkeypatch) -> list[int]:
    """The longest trace (in tokens) of every set of examples the VQ-VAE's encoder is given."""
    import token_assorted.vqvae.store as store

    seen: list[int] = []
    real = store.encode_chunked

    def recording(loaded, items, batch_size=64, skip=None):
        seen.append(max((item.trace_length for i, item in enumerate(items) if not (skip and skip[i])), default=0))
        return real(loaded, items, batch_size, skip)

    monkeypatch.setattr(store, "encode_chunked", recording)
    return seen


def test_train_drops_long_examples_before_the_vqvae_encodes_them(with_long, tiny_vqvae, encoded_traces, tmp_path,
                                                                 capsys):
    started = time.perf_counter()
    assert main(["train", "--task", "prontoqa", "--strategy", "token-assorted", "--data", str(with_long),
                 "--vqvae", str(tiny_vqvae), "--out", str(tmp_path / "lm"), "--epochs", "1", "--batch-size", "4",
                 "--no-progress"]) == 0
    assert "skipped 1 training examples longer than max_length=512" in capsys.readouterr().out
    assert encoded_traces and 0 < max(encoded_traces) <= 512  # the long trace has about 25,000 tokens
    assert time.perf_counter() - started < 120


def test_vqvae_encode_drops_long_traces_first_and_counts_them(with_long, tiny_vqvae, encoded_traces, tmp_path, capsys):
    out = tmp_path / "codes.json"
    assert main(["vqvae", "encode", "--vqvae", str(tiny_vqvae), "--data", str(with_long), "--out", str(out)]) == 0
    assert "1 skipped: trace longer than 8192 tokens" in capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["skipped"] == [0] and record["codes"][0] == [] and all(record["codes"][1:9])
    assert encoded_traces and 0 < max(encoded_traces) <= 8192


def test_vqvae_train_drops_long_traces_and_counts_them(with_long, tmp_path, capsys, monkeypatch):
    import token_assorted.vqvae.train as vq_train

    longest = []
    real_new_model = vq_train._new_model
    monkeypatch.setattr(vq_train, "_new_model", lambda config, tokenizer, items: (
        longest.append(max(i.trace_length for i in items)), real_new_model(config, tokenizer, items))[1])
    assert main(["vqvae", "train", "--task", "prontoqa", "--data", str(with_long), "--out", str(tmp_path / "vq"),
                 "--steps", "2", "--valid-every", "2", *VQ_SHAPE]) == 0
    assert "skipped 1 training examples whose trace is longer than max_trace_len=8192" in capsys.readouterr().err
    assert longest and longest[0] < 8192


# --- 12. data generate --------------------------------------------------------------------------------
@pytest.mark.parametrize("nodes", ["100000", "1000", "56"])
def test_prosqa_sizes_beyond_the_lexicon_are_refused_at_once(nodes, tmp_path, capsys):
    started = time.perf_counter()
    code = main(["data", "generate", "prosqa", "--n", "10", "--nodes", nodes, "--out", str(tmp_path / "x.jsonl")])
    one_line(capsys, code, "lexicon", "55 nodes")
    assert time.perf_counter() - started < 2.0
    assert not (tmp_path / "x.jsonl").exists()


def test_prosqa_graphs_the_lexicon_cannot_name_are_drawn_again(tmp_path):
    # Near the lexicon's size some drawn graphs have more concepts than it holds: they are redrawn,
    # like graphs without a question, instead of ending the generation with an error.
    assert main(["data", "generate", "prosqa", "--n", "20", "--nodes", "38", "--seed", "3",
                 "--out", str(tmp_path / "x.jsonl")]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 20


def test_a_negative_seed_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "generate", "prosqa", "--n", "2", "--seed", "-5", "--out", str(tmp_path / "x.jsonl")])
    assert exit_info.value.code == 2
    assert "--seed" in capsys.readouterr().err


@pytest.mark.parametrize("task, options", [("prosqa", ["--nodes", "10", "--min-steps", "1"]),
                                           ("prontoqa", ["--hops", "1"]), ("keys-maze", [])])
def test_generators_show_progress_on_stderr(task, options, tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recorder:
        def __init__(self, iterable=None, **kwargs):
            self.iterable, self.kwargs = iterable, kwargs
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    assert main(["data", "generate", task, "--n", "3", *options, "--out", str(tmp_path / "x.jsonl")]) == 0
    assert [bar.kwargs["file"] for bar in bars] == [sys.stderr]
    assert task in bars[0].kwargs["desc"]
    assert bars[0].kwargs.get("total") == 3 or len(bars[0].iterable) == 3
