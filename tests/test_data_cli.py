"""`token-assorted data generate|stats` through the CLI entry, including every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_assorted.cli import main


def generate(tmp_path: Path, task: str, seed: int, *options: str, name: str = "out.jsonl") -> Path:
    out = tmp_path / name
    assert main(["data", "generate", task, "--n", "15", "--seed", str(seed), "--out", str(out), *options]) == 0
    return out


@pytest.mark.parametrize("task,options", [("prontoqa", ["--hops", "3", "--no-distractors"]),
                                          ("prosqa", ["--nodes", "10", "--max-steps", "3", "--min-steps", "2"]),
                                          ("prosqa", [])])
def test_generate_is_deterministic_per_seed(tmp_path: Path, task: str, options: list[str]) -> None:
    first = generate(tmp_path, task, 3, *options, name="a.jsonl").read_bytes()
    assert first == generate(tmp_path, task, 3, *options, name="b.jsonl").read_bytes()
    assert first != generate(tmp_path, task, 4, *options, name="c.jsonl").read_bytes()
    assert len(first.splitlines()) == 15
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_generate_passes_task_options(tmp_path: Path) -> None:
    records = [json.loads(line) for line in generate(tmp_path, "prontoqa", 0, "--hops", "2").read_text().splitlines()]
    assert {len(r["steps"]) for r in records} == {3}
    records = [json.loads(line) for line in
               generate(tmp_path, "prosqa", 0, "--nodes", "8", "--nodes-sd", "0").read_text().splitlines()]
    assert {len(r["idx_to_symbol"]) for r in records} == {8}


def test_generate_keys_maze_when_available(tmp_path: Path) -> None:
    from token_assorted.data.tasks import Task, get_task

    try:
        task = get_task("keys-maze")
    except ImportError:
        pytest.skip("keys-maze task not available")
    if type(task).generate is Task.generate:
        pytest.skip("keys-maze has no generator")
    out = tmp_path / "maze.jsonl"
    assert main(["data", "generate", "keys-maze", "--n", "2", "--seed", "0", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize("task,key", [("prontoqa", "answer_distribution"), ("prosqa", "edges_mean")])
def test_stats_infers_the_task_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture, task: str,
                                               key: str) -> None:
    out = generate(tmp_path, task, 0)
    capsys.readouterr()
    assert main(["data", "stats", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == task and summary["count"] == 15 and key in summary
    assert sum(summary["steps_histogram"].values()) == 15
    assert summary["question_words_mean"] > summary["answer_words_mean"] > 0


def test_unknown_task_and_unknown_option_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "generate", "nope", "--n", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "generate", "prosqa", "--n", "1", "--out", str(tmp_path / "x"), "--bogus", "1"])
    assert exit_info.value.code == 2
    assert main(["data", "generate", "prontoqa", "--n", "1", "--out", str(tmp_path / "x"), "--hops", "9"]) == 2
    assert "hops" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "x"), "--task", "nope"]) == 2


def test_generate_without_a_task_or_generator_lists_the_tasks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "generate"]) == 2
    assert "no task given" in (err := capsys.readouterr().err) and "prontoqa, prosqa, keys-maze" in err
    assert main(["data", "generate", "gsm8k", "--n", "1", "--out", str(tmp_path / "x")]) == 2
    assert "'gsm8k' has no generator" in capsys.readouterr().err and not (tmp_path / "x").exists()
    for argv, shown in ((["--help"], "TASK"), (["prosqa", "--help"], "--nodes")):
        with pytest.raises(SystemExit) as exit_info:
            main(["data", "generate", *argv])
        assert exit_info.value.code == 0 and shown in capsys.readouterr().out


GOOD = {"question": "Every a is a b. Is Tom a lempus or scrompus?", "steps": ["Tom is a lempus."],
        "answer": "Tom is a lempus."}


@pytest.mark.parametrize("lines,line,field,message", [
    ([json.dumps(GOOD), "{not json"], 2, None, "malformed JSON"),
    ([json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "answer"})], 2, "answer", "missing"),
    ([json.dumps({**GOOD, "steps": "Tom is a lempus."})], 1, "steps", "list of strings"),
    ([json.dumps(GOOD), json.dumps({**GOOD, "answer": 3})], 2, "answer", "non-empty string"),
    ([json.dumps(GOOD), json.dumps(GOOD), json.dumps({**GOOD, "steps": []})], 3, "steps", "empty reasoning trace"),
])
@pytest.mark.parametrize("task_flag", [[], ["--task", "prosqa"]])
def test_stats_on_bad_records_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        lines: list[str], line: int, field: str | None,
                                                        message: str, task_flag: list[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["data", "stats", str(path), *task_flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and f"line {line}" in err and message in err
    if field is not None:
        assert f"field '{field}'" in err


def test_stats_on_non_utf8_and_unrecognised_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"question": "caf\xe9"}\n'.encode("latin-1"))
    assert main(["data", "stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 2" in err and "UTF-8" in err

    path = tmp_path / "math.jsonl"  # a numeric answer with steps: the gsm8k task claims it
    path.write_text(json.dumps({"question": "What is 2+2?", "steps": ["2+2=4"], "answer": "4"}) + "\n")
    assert main(["data", "stats", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "gsm8k"
    path = tmp_path / "other.jsonl"  # no task recognises it: the message asks for --task
    path.write_text(json.dumps({"question": "Who?", "steps": ["a step"], "answer": "nobody"}) + "\n")
    assert main(["data", "stats", str(path)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err
