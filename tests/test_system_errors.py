"""The operating system's refusals, output folders a user owns, and what reaches the terminal.

Issue 29, items 1, 2 and 13: a full disk or a read-only `--out` is one line naming the path
and the cause (exit 2) with the old files intact; a non-empty `--out` that is not ours is
refused unless `--force`; a second `run` into a folder is refused while the first holds its
lock; any other failure is one "internal error" line (exit 1), never a traceback; new
files get the usual mode; control characters are escaped when printed.

The full-disk and read-only cases mount a small tmpfs when running as root (and skip
otherwise); the same failures are also simulated in-process so they are always covered.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from token_assorted.cli import main

TESTS = Path(__file__).resolve().parent

from conftest import VQ_TINY, one_line, toy_train  # noqa: E402


# --- a small file system of our own ----------------------------------------------------------
@contextlib.contextmanager
def tmpfs(where: Path, size_kb: int, read_only: bool = False):
    """A tmpfs of `size_kb` mounted at `where` (root only; the test is skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the in-process simulations cover the case)")
    where.mkdir()
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill `disk` until at most `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(free - leave, 0))


FULL_DISK = {
    "data generate": lambda o, d: ["data", "generate", "prontoqa", "--n", "1000", "--out", str(o / "new.jsonl")],
    "vqvae train": lambda o, d: ["vqvae", "train", "--task", "prontoqa", "--data", str(d), "--out",
                                 str(o / "vq"), *VQ_TINY],
    "train": lambda o, d: ["train", "--task", "prontoqa", "--strategy", "cot", "--data", str(d),
                           "--out", str(o / "lm"), "--epochs", "1", "--batch-size", "8", "--no-progress"],
    "run": lambda o, d: ["run", "--preset", "tiny", "--out", str(o / "run")],
}


@pytest.mark.parametrize("leave", [0, 48 * 1024], ids=["full", "nearly-full"])
@pytest.mark.parametrize("command", list(FULL_DISK))
def test_a_full_disk_is_one_line_naming_the_path_and_old_files_survive(command, leave, pronto, tmp_path,
                                                                       capsys):
    with tmpfs(tmp_path / "disk", 1024) as disk:
        (disk / "old.json").write_text('{"mine": true}')
        fill(disk, leave)
        code = main(FULL_DISK[command](disk, pronto))
        line = one_line(capsys, code, str(disk), "No space left on device")
        assert (disk / "old.json").read_text() == '{"mine": true}', line
        assert not [p for p in disk.rglob(".*.tmp") if p.is_file()], sorted(disk.rglob("*"))  # no half-written file


@pytest.mark.parametrize("command", ["data generate", "vqvae train", "train"])
def test_a_read_only_out_is_one_line_naming_the_path(command, pronto, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", 64, read_only=True) as disk:
        code = main(FULL_DISK[command](disk, pronto))
        one_line(capsys, code, str(disk), "Read-only file system")


def test_a_folder_without_write_permission_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the tmpfs tests cover this)")
        code = main(["data", "generate", "prontoqa", "--n", "2", "--out", str(locked / "x.jsonl")])
        one_line(capsys, code, "x.jsonl", "Permission denied")
    finally:
        locked.chmod(0o755)


def test_a_simulated_full_disk_keeps_the_old_file_and_names_it(tmp_path, capsys, monkeypatch):
    import token_assorted.core.io as io_module

    target = tmp_path / "data.jsonl"
    target.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_module.os, "fsync", no_space)
    code = main(["data", "generate", "prontoqa", "--n", "4", "--out", str(target)])
    one_line(capsys, code, str(target), "No space left on device")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]


def test_library_write_errors_become_write_errors_naming_the_path(tmp_path):
    from safetensors import SafetensorError

    from token_assorted.core.errors import WriteError
    from token_assorted.core.io import writing

    target = tmp_path / "model.safetensors"
    with pytest.raises(WriteError, match="model.safetensors: cannot write: No space left on device"):
        with writing(target):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(WriteError, match="Read-only file system"):
        with writing(target):
            raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                               "Read-only file system")
    with pytest.raises(KeyError):  # anything else is not a write failure and passes through
        with writing(target):
            raise KeyError("x")


def test_an_os_error_without_a_file_name_names_the_output(toy, tmp_path, capsys, monkeypatch):
    import token_assorted.lm.train as train_module

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a log file's write raises it

    monkeypatch.setattr(train_module, "train_lm", disk_full)
    code = main(toy_train(toy, tmp_path / "lm"))
    one_line(capsys, code, str(tmp_path / "lm"), "cannot write", "No space left on device")


def test_a_bug_is_one_internal_error_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import token_assorted.commands.data as data_command

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(data_command, "run_stats", broken)
    monkeypatch.delenv("TOKEN_ASSORTED_DEBUG", raising=False)
    code = main(["data", "stats", str(tmp_path / "x.jsonl")])
    line = one_line(capsys, code, "internal error: ZeroDivisionError: division by zero", "TOKEN_ASSORTED_DEBUG=1",
                    exit_code=1)
    assert "bug" in line
    monkeypatch.setenv("TOKEN_ASSORTED_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):  # the traceback, for whoever fixes it
        main(["data", "stats", str(tmp_path / "x.jsonl")])


# --- output folders a user owns -------------------------------------------------------------
def test_run_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "results"}')
    (out / "notes.txt").write_text("do not touch")
    code = main(["run", "--preset", "tiny", "--out", str(out)])
    one_line(capsys, code, str(out), "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]
    assert (out / "results.json").read_text() == '{"my": "results"}'


@pytest.mark.parametrize("command", ["train", "vqvae train"])
def test_train_and_vqvae_train_refuse_a_folder_that_is_not_theirs(command, toy, pronto, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "model"}')
    argv = toy_train(toy, out) if command == "train" else \
        ["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out), *VQ_TINY]
    code = main(argv)
    one_line(capsys, code, str(out), "not empty", "--force")
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == '{"my": "model"}'


def test_force_writes_into_a_foreign_folder_and_marks_it_as_a_run(tmp_path, capsys, monkeypatch):
    import token_assorted.pipeline.run as pipeline
    from token_assorted.core.outdir import marker_path

    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, out, preset: calls.append((out, preset)))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", "--preset", "tiny", "--out", str(out), "--force"]) == 0
    assert calls == [(out, "tiny")]
    assert json.loads(marker_path(out, "run").read_text())["preset"] == "tiny"
    assert (out / "notes.txt").read_text() == "mine"
    # Marked as ours now, but notes.txt is still the user's (issue 34): refused again without --force.
    capsys.readouterr()
    one_line(capsys, main(["run", "--preset", "tiny", "--out", str(out)]), "notes.txt", "did not write", "--force")
    assert main(["run", "--preset", "tiny", "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_is_ours_only_by_its_marker(tmp_path):
    """Issue 34: files that look like ours (a stage's .complete.json, a state pointer, a VQ-VAE config) do
    not make a folder ours; a marker does, when written with the record of our files."""
    from token_assorted.core.errors import OutputDirError
    from token_assorted.core.outdir import claim, marker_path, release

    looks = {"run": ("data/.complete.json", "{}"), "train": ("state/latest.json", '{"dir": "step-00000001"}'),
             "vqvae": ("config.json", '{"format": "token-assorted-vqvae/1"}')}
    for kind, (name, text) in looks.items():
        folder = tmp_path / kind
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
        with pytest.raises(OutputDirError, match="not a token-assorted folder"):
            claim(folder, kind)
    # A marker written before the record existed: its files cannot be told from the user's.
    (tmp_path / "run" / marker_path(tmp_path, "run").name).write_text('{"kind": "run"}')
    with pytest.raises(OutputDirError, match="kept no record"):
        claim(tmp_path / "run", "run")
    claim(tmp_path / "run", "run", force=True)
    release(tmp_path / "run")
    with pytest.raises(OutputDirError, match="did not write .data/.complete.json"):
        claim(tmp_path / "run", "run")  # forced once, still not ours
    with pytest.raises(OutputDirError, match="token-assorted run folder"):
        claim(tmp_path / "run", "train")  # ours, but another kind


LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from token_assorted.core.outdir import claim, run_lock
claim({out!r}, "run")
with run_lock({out!r}):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_lives(tmp_path, capsys):
    from token_assorted.core.outdir import run_lock

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(repo=str(TESTS.parent), out=str(out))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["run", "--preset", "tiny", "--out", str(out)])
        one_line(capsys, code, str(out), "another token-assorted command", f"pid {holder.pid}")
        assert not (out / "data").exists()
    finally:
        holder.kill()  # SIGKILL: the lock dies with its process
        holder.wait(timeout=30)
    deadline = time.time() + 10
    while True:
        try:
            with run_lock(out):
                break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def test_bad_input_leaves_no_output_folder_behind(pronto, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    out = tmp_path / "vq"
    code = main(["vqvae", "train", "--task", "prontoqa", "--data", str(bad), "--out", str(out), *VQ_TINY])
    one_line(capsys, code, "bad.jsonl")
    assert not out.exists()


# --- file modes and the terminal -------------------------------------------------------------
def test_atomic_writes_get_the_usual_mode_and_keep_a_replaced_files_mode(tmp_path):
    from token_assorted.core.io import atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640  # 0o666 & ~umask, not 0o600
    finally:
        os.umask(previous)
    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    atomic_write_text(private, '{"x": 1}')
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_control_characters_in_error_messages_are_escaped(tmp_path, capsys):
    name = tmp_path / "evil\x1b[2J\x1b]0;owned\x07.jsonl"
    code = main(["data", "stats", str(name)])
    line = one_line(capsys, code, "not found")
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b[2J" in line
