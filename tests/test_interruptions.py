"""Interrupted and killed runs, and how outputs are written.

Training killed with SIGKILL, stopped with Ctrl-C, or interrupted while writing a checkpoint must
resume to the same weights as a run that was never interrupted; every file is written atomically
(or staged and renamed), and a write that fails leaves the old file. The tiny VQ-VAE and LM
(conftest's `artefacts`) train in a second or two.
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

from conftest import VQ_OPTIONS, one_line


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
