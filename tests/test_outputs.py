"""Issue 34: nothing a user owns is ever lost — output folders, outputs that are inputs, locks, resume.

A folder is ours only by its marker, and holds only files we recorded writing; `--force` adds our
files beside a user's but never deletes one; an output that is an input is refused, a device or a
pipe is written in place; every writing command holds its output's lock; an interrupted `run`
continues every stage from its last checkpoint, and `train --resume` refuses any setting that
changes the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from token_assorted.cli import main

from conftest import VQ_TINY, one_line, tiny_lm_argv, toy_train


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links included) with a hash of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# --- 1. a folder is ours only if its marker says so -------------------------------------------
def test_run_refuses_a_folder_holding_a_model_of_ours_beside_a_users_files(tmp_path, capsys):
    out = tmp_path / "study"
    (out / "model").mkdir(parents=True)
    (out / "model" / ".complete.json").write_text('{"hash": "x"}')  # a finished stage's marker: looks like a run
    (out / "data").mkdir()
    (out / "data" / "survey.csv").write_text("id,answer\n1,yes\n")
    (out / "report.md").write_text("my own report")
    before = digest(out)
    one_line(capsys, main(["run", "--preset", "tiny", "--out", str(out)]), "not a token-assorted folder",
             "--force")
    assert digest(out) == before  # survey.csv kept, report.md not overwritten


def test_train_refuses_a_model_folder_it_did_not_mark_and_one_it_trained(tiny_lm, pronto, tiny_vqvae, tmp_path,
                                                                        capsys):
    copied = tmp_path / "copied"  # a model folder of a run (no marker of its own)
    shutil.copytree(tiny_lm, copied, ignore=shutil.ignore_patterns(".token-assorted-*", "state", "logs"))
    before = digest(copied)
    one_line(capsys, main(tiny_lm_argv(pronto, tiny_vqvae, copied)), "not a token-assorted folder")
    assert digest(copied) == before
    ours = tmp_path / "ours"
    shutil.copytree(tiny_lm, ours)
    before = digest(ours)
    one_line(capsys, main(tiny_lm_argv(pronto, tiny_vqvae, ours)), "already holds a trained model", "--resume")
    assert digest(ours) == before


def test_a_folder_inside_one_of_ours_is_refused(tmp_path, capsys):
    from token_assorted.core.outdir import claim, release

    claim(tmp_path / "run", "run")
    release(tmp_path / "run")
    one_line(capsys, main(["run", "--preset", "tiny", "--out", str(tmp_path / "run" / "models" / "x")]),
             "lies inside the token-assorted run folder")


# --- 2. --force adds our files, never deletes a user's ----------------------------------------------
def test_a_stale_stage_is_cleared_of_our_files_only(tmp_path):
    from token_assorted.core.errors import OutputDirError
    from token_assorted.core.io import atomic_write_text
    from token_assorted.core.outdir import claim, release
    from token_assorted.pipeline.stages import run_stage

    def build(path: Path) -> None:
        atomic_write_text(path / "ours.txt", "computed")

    root = claim(tmp_path / "run", "run")
    try:
        run_stage(root / "stage", "a", build, "stage", log=lambda _: None)
        run_stage(root / "stage", "b", build, "stage", log=lambda _: None)  # stale: our files replaced
        assert (root / "stage" / "ours.txt").read_text() == "computed"
        (root / "stage" / "mine.txt").write_text("the user's")
        with pytest.raises(OutputDirError, match="mine.txt"):
            run_stage(root / "stage", "c", build, "stage", log=lambda _: None)
        assert (root / "stage" / "mine.txt").read_text() == "the user's"
        assert (root / "stage" / "ours.txt").exists()  # a refused stage deletes nothing
    finally:
        release(root)


def test_run_force_never_deletes_a_users_file(tmp_path, capsys):
    out = tmp_path / "study"
    (out / "data").mkdir(parents=True)
    (out / "data" / "survey.csv").write_text("id,answer\n")
    one_line(capsys, main(["run", "--preset", "tiny", "--out", str(out), "--force"]), "survey.csv", "never deleted")
    assert (out / "data" / "survey.csv").read_text() == "id,answer\n"


def test_vqvae_train_force_never_empties_a_users_tokenizer_folder(pronto, tmp_path, capsys):
    out = tmp_path / "vq"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "vocab-notes.txt").write_text("mine")
    code = main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out), *VQ_TINY,
                 "--force"])
    one_line(capsys, code, "vocab-notes.txt", "never deleted")
    assert (out / "tokenizer" / "vocab-notes.txt").read_text() == "mine"


# --- 3 and 4. outputs that are inputs; devices and pipes --------------------------------------------
def _copy(source: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / name)
    return folder / name


OUTPUT_IS_INPUT = {
    "eval --out DATA": lambda a, d: ["eval", "--model", str(a["lm"]), "--data", str(d), "--out", str(d)],
    "eval --out MODEL/config.json": lambda a, d: ["eval", "--model", str(a["lm"]), "--data", str(d),
                                                  "--out", str(a["lm"] / "config.json")],
    "eval --data X.predictions.jsonl --out X.json": lambda a, d: [
        "eval", "--model", str(a["lm"]), "--data", str(_copy(d, d.parent, "x.predictions.jsonl")),
        "--out", str(d.parent / "x.json")],
    "vqvae encode --out DATA": lambda a, d: ["vqvae", "encode", "--vqvae", str(a["vq"]), "--data", str(d),
                                             "--out", str(d)],
    "vqvae encode --out VQ/config.json": lambda a, d: ["vqvae", "encode", "--vqvae", str(a["vq"]), "--data", str(d),
                                                       "--out", str(a["vq"] / "config.json")],
    "vqvae evaluate --out DATA": lambda a, d: ["vqvae", "evaluate", "--vqvae", str(a["vq"]), "--data", str(d),
                                               "--out", str(d)],
    "train --out a folder holding DATA": lambda a, d: ["train", "--task", "prontoqa", "--strategy", "cot", "--data",
                                                       str(d), "--out", str(d.parent), "--force"],
    "vqvae train --out a folder holding DATA": lambda a, d: ["vqvae", "train", "--task", "prontoqa", "--data", str(d),
                                                             "--out", str(d.parent), "--force", *VQ_TINY],
    "run --out a folder holding --train": lambda a, d: ["run", "--preset", "tiny", "--task", "gsm8k", "--train",
                                                        str(d), "--test", str(d), "--out", str(d.parent), "--force"],
}


@pytest.mark.parametrize("case", list(OUTPUT_IS_INPUT))
def test_an_output_that_is_an_input_is_refused(case, tiny_lm, tiny_vqvae, pronto, tmp_path, capsys):
    data = _copy(pronto, tmp_path / "work", "data.jsonl")
    argv = OUTPUT_IS_INPUT[case]({"lm": tiny_lm, "vq": tiny_vqvae}, data)
    before = {path: digest(path) for path in (tmp_path / "work", tiny_lm, tiny_vqvae)}
    one_line(capsys, main(argv), "choose another --out")
    assert {path: digest(path) for path in before} == before


@pytest.mark.skipif(not Path("/dev/null").is_char_device(), reason="needs /dev/null")
def test_eval_writes_to_dev_null_and_to_a_pipe_in_place(tiny_lm, pronto, tmp_path, capsys):
    argv = ["eval", "--model", str(tiny_lm), "--data", str(pronto), "--max-new-tokens", "2", "--out"]
    assert main([*argv, "/dev/null"]) == 0
    assert Path("/dev/null").is_char_device() and not Path("/dev/null.predictions.jsonl").exists()
    assert "no predictions file" in capsys.readouterr().out
    pipe = tmp_path / "results.pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    assert main([*argv, str(pipe)]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and json.loads(received[0])["n"] == 8
    assert not (tmp_path / "results.pipe.predictions.jsonl").exists()


# --- 5. one lock per output, for every writing command ------------------------------------------------
LOCKED = {
    "train": lambda a, o: (toy_train(a["toy"], o), "folder"),
    "vqvae train": lambda a, o: (["vqvae", "train", "--task", "prontoqa", "--data", str(a["pronto"]), "--out", str(o),
                                  *VQ_TINY], "folder"),
    "run": lambda a, o: (["run", "--preset", "tiny", "--out", str(o)], "folder"),
    "vqvae encode": lambda a, o: (["vqvae", "encode", "--vqvae", str(a["vq"]), "--data", str(a["pronto"]),
                                   "--out", str(o)], "file"),
    "eval": lambda a, o: (["eval", "--model", str(a["lm"]), "--data", str(a["pronto"]), "--out", str(o),
                           "--max-new-tokens", "2"], "file"),
}


@pytest.mark.parametrize("command", list(LOCKED))
def test_every_writing_command_is_refused_while_another_holds_its_output(command, toy, pronto, tiny_vqvae, tiny_lm,
                                                                         tmp_path, capsys):
    from token_assorted.core.outdir import file_lock, folder_lock

    out = tmp_path / ("out" if command in ("train", "vqvae train", "run") else "out.json")
    argv, kind = LOCKED[command]({"toy": toy, "pronto": pronto, "vq": tiny_vqvae, "lm": tiny_lm}, out)
    if kind == "folder":
        out.mkdir()
    with (folder_lock(out) if kind == "folder" else file_lock(out)):  # as another process would hold it
        one_line(capsys, main(argv), "another token-assorted command", f"pid {os.getpid()}")
    assert not out.exists() or not any(p.name != ".token-assorted.lock" for p in out.iterdir())


# --- interrupts, and what a rerun does ------------------------------------------------------------------
def _interrupt_at(monkeypatch, step: int, where: str) -> None:
    """Make the training skeleton stop after `step` steps in an output folder named `where`, as Ctrl-C does."""
    import token_assorted.training.fit as training

    real = training.Fit.agree
    hit = []

    def agree(self, flag):
        if not hit and self.step == step and self.out.name == where:
            hit.append(step)
            return True
        return real(self, flag)

    monkeypatch.setattr(training.Fit, "agree", agree)


def test_an_interrupted_run_resumes_its_training_from_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    settings = ["--preset", "tiny", "--set", "methods=[token-assorted]", "--set", "train.epochs=2",
                "--set", "probes.interventions=[]", "--set", "probes.dial=false"]
    straight = tmp_path / "straight"
    assert main(["run", *settings, "--out", str(straight)]) == 0
    stopped = tmp_path / "stopped"
    _interrupt_at(monkeypatch, 3, "token-assorted")  # 48 examples, batch 16: the end of epoch 1, state saved
    capsys.readouterr()
    assert main(["run", *settings, "--out", str(stopped)]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "--resume" not in err.split("interrupted")[-1], err
    assert main(["run", *settings, "--out", str(stopped)]) == 0
    out = capsys.readouterr().out
    assert "[vqvae] cached" in out and "[train token-assorted] resuming" in out and "(step 3)" in out, out
    one, two = (load_file(folder / "models" / "token-assorted" / "model.safetensors") for folder in (straight, stopped))
    assert one.keys() == two.keys() and all((one[k] == two[k]).all() for k in one)
    assert main(["run", *settings, "--out", str(stopped), "--resume"]) == 0  # accepted: it resumes by itself


def test_the_interrupt_message_of_train_names_a_command_that_works(toy, tmp_path, capsys, monkeypatch):
    out = tmp_path / "lm"
    _interrupt_at(monkeypatch, 1, "lm")
    assert main(toy_train(toy, out, "--batch-size", "4", "--save-every", "1")) == 130
    assert "resume with the same command plus --resume" in capsys.readouterr().err
    assert main(toy_train(toy, out, "--batch-size", "4", "--save-every", "1", "--resume")) == 0


@pytest.mark.parametrize("change, free", [
    (["--lr", "0.5"], False), (["--weight-decay", "0.3"], False), (["--max-grad-norm", "0.5"], False),
    (["--warmup", "0.5"], False), (["--epochs", "3"], False), (["--group-by-length"], False),
    (["--m-values", "1"], False), (["--max-length", "100"], False),
    (["--log-every", "3"], True), (["--save-every", "1"], True), (["--progress"], True),
])
def test_train_resume_refuses_any_setting_that_changes_the_result(change, free, toy, tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(toy_train(toy, out)) == 0
    capsys.readouterr()
    code = main(toy_train(toy, out, "--resume", *change))
    if free:
        assert code == 0, capsys.readouterr().err
    else:
        one_line(capsys, code, "--resume", change[0].lstrip("-").replace("-", "_"))


def test_checkpoint_files_get_the_mode_of_every_other_output(toy, tmp_path):
    from token_assorted.core.io import new_file_mode

    out = tmp_path / "lm"
    assert main(toy_train(toy, out)) == 0
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert any("step-" in name and name.endswith("model.safetensors") for name in modes)
    assert set(modes.values()) == {new_file_mode()}, modes
