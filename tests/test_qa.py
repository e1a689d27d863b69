"""The generic task `qa` and its data sources: JSONL, parquet, CSV, saved `datasets` folders, the Hub.

Records in the user's own field names, steps as a list or one text, answers compared
exactly, numerically or as one of the record's options; bad data ends in one line naming
the file, the line or row, and the field, with exit 2 and no output written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from own_data import qa_records, write_jsonl

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError, DataError
from token_assorted.data.sources import fingerprint, read_table
from token_assorted.data.tasks import get_task
from token_assorted.data.tasks.qa import QATask

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()  # the test's own parquet writes
FIELDS = {"question": "problem", "steps": "solution", "answer": "final_answer"}
FLAGS = ["--task", "qa", "--fields", "question=problem,steps=solution,answer=final_answer"]


def numeric_task(**options) -> QATask:
    return get_task("qa", fields=FIELDS, answer_match="numeric", **options)


def one(task: QATask, record: dict):
    """One record read by `task` (errors would name a file called "record")."""
    return task.from_record(record, lambda message, where, field: DataError("record", message, field=field))


def write_parquet(path: Path, records: list[dict]) -> Path:
    datasets.Dataset.from_list(records).to_parquet(str(path))
    return path


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk", "disk-split"])
def test_every_source_gives_the_same_examples(tmp_path, kind):
    records = qa_records(6)
    if kind == "jsonl":
        source = str(write_jsonl(tmp_path / "d.jsonl", records))
    elif kind == "json":
        source = str(tmp_path / "d.json")
        Path(source).write_text(json.dumps(records, indent=1))
    elif kind == "parquet":
        source = str(write_parquet(tmp_path / "d.parquet", records))
    elif kind == "csv":
        source = str(tmp_path / "d.csv")
        datasets.Dataset.from_list(records).to_csv(source, index=False)
    elif kind == "disk":
        source = str(tmp_path / "saved")
        datasets.Dataset.from_list(records).save_to_disk(source)
    else:
        datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:2]),
                              "test": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dd"))
        source = f"{tmp_path / 'dd'}:test"
    examples = numeric_task().load(source)
    assert [e.question for e in examples] == [r["problem"] for r in records]
    assert [e.answer for e in examples] == [str(r["final_answer"]) for r in records]  # numbers become text
    assert examples[0].steps == records[0]["solution"].splitlines()
    assert examples[0].meta == {"source": "synthetic"}  # fields that are not mapped ride along


def test_steps_split_by_lines_or_sentences_and_lists_kept(tmp_path):
    record = {"q": "How many?", "s": "One. Then two!\nSo three? Yes.", "a": "3"}
    path = write_jsonl(tmp_path / "d.jsonl", [record, {**record, "s": ["a", " ", "b"]}])
    fields = {"question": "q", "steps": "s", "answer": "a"}
    by_lines = get_task("qa", fields=fields).load(path)
    by_sentences = get_task("qa", fields=fields, step_split="sentences").load(path)
    assert by_lines[0].steps == ["One. Then two!", "So three? Yes."]
    assert by_sentences[0].steps == ["One.", "Then two!", "So three?", "Yes."]
    assert by_lines[1].steps == by_sentences[1].steps == ["a", "b"]  # a list is used as it is


def test_a_saved_data_set_with_several_splits_needs_one_named(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(qa_records(2)),
                          "test": datasets.Dataset.from_list(qa_records(2))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="several splits; name one as SOURCE:SPLIT with SPLIT one of train, test"):
        read_table(tmp_path / "dd")
    with pytest.raises(DataError, match="no split 'valid'"):
        read_table(f"{tmp_path / 'dd'}:valid")


def test_a_hub_name_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        read_table("hf:openai/gsm8k@main:test")
    message = str(info.value)
    assert message.startswith("hf:openai/gsm8k@main:test: cannot load from the Hugging Face Hub")
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_fingerprint_follows_the_content(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(3))
    first = fingerprint(path)
    write_jsonl(path, qa_records(3, seed=1))
    assert fingerprint(path) != first
    datasets.Dataset.from_list(qa_records(3)).save_to_disk(str(tmp_path / "saved"))
    assert fingerprint(tmp_path / "saved") == fingerprint(tmp_path / "saved")


# --------------------------------------------------------------------------- answers
def test_exact_match_normalises_case_spaces_and_a_final_stop():
    task = get_task("qa")
    example = one(task, {"question": "Capital?", "steps": ["It is Paris."], "answer": "Paris"})
    assert task.verify(example, "It is Paris.\n###  paris .").correct
    assert not task.verify(example, "### Lyon").correct
    assert not task.verify(example, "Paris").correct  # no solution marker, no answer


def test_numeric_match_uses_the_math_equivalence():
    task = numeric_task()
    example = one(task, {"problem": "?", "solution": "s", "final_answer": 1000})
    for written in ("### 1,000", "### 1000.0", "### $1000", "### 1000 pens"):
        assert task.verify(example, written).correct, written
    assert not task.verify(example, "### 1001").correct


def test_choice_match_takes_a_letter_or_the_text(tmp_path):
    record = {"question": "Which is larger?", "steps": ["5 > 3"], "answer": "B", "options": ["3", "5"]}
    task = get_task("qa", fields={"choices": "options"}, answer_match="choice")
    example = task.load(write_jsonl(tmp_path / "c.jsonl", [record]))[0]
    assert example.answer == "5" and example.question.endswith("Options: (A) 3 (B) 5")
    assert task.prompt_text(example) == "Which is larger?\nOptions: (A) 3 (B) 5\n"
    for written, correct in (("### B", True), ("### (B)", True), ("### 5", True), ("### A", False),
                             ("### 3", False), ("### 7", False)):
        assert task.verify(example, written).correct is correct, written
    # Written back under the user's names and read again: the same example (options not appended twice).
    again = task.load(write_jsonl(tmp_path / "again.jsonl", [task.to_record(example)]))[0]
    assert again == example


def test_task_options_are_checked_and_only_qa_takes_them():
    with pytest.raises(ConfigError, match="task 'prosqa' takes no task options"):
        get_task("prosqa", answer_match="numeric")
    with pytest.raises(ConfigError, match="answer_match: 'fuzzy' is not one of exact, numeric, choice"):
        get_task("qa", answer_match="fuzzy")
    with pytest.raises(ConfigError, match="fields: unknown field"):
        get_task("qa", fields={"solution": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        get_task("qa", bogus=1)
    assert get_task("qa", fields=FIELDS).options()["fields"] == FIELDS


# --------------------------------------------------------------------------- bad data: one line, exit 2
def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()  # what writing the test's files printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, the start of the message naming file, line or row, and field)."""
    good = [{**r, "final_answer": str(r["final_answer"])} for r in qa_records(3)]  # one Arrow type per column
    missing = [good[0], {k: v for k, v in good[1].items() if k != "final_answer"}]
    words = [good[0], good[1], {**good[2], "final_answer": "many"}]
    (tmp_path / "unreadable.parquet").write_bytes(b"PAR1 this is not parquet")
    empty = datasets.Dataset.from_dict({"problem": [], "solution": [], "final_answer": []})
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(good), "test": empty}).save_to_disk(str(tmp_path / "dd"))
    return {
        "missing-field-jsonl": (str(write_jsonl(tmp_path / "m.jsonl", missing)), "line 2, field 'final_answer': missing field"),
        "missing-field-parquet": (str(write_parquet(tmp_path / "m.parquet", missing)),
                                  "row 2, field 'final_answer': missing field"),
        "not-numeric-jsonl": (str(write_jsonl(tmp_path / "w.jsonl", words)),
                              "line 3, field 'final_answer': not a number: 'many'"),
        "not-numeric-parquet": (str(write_parquet(tmp_path / "w.parquet", words)),
                                "row 3, field 'final_answer': not a number: 'many'"),
        "empty-split": (str(tmp_path / "empty.parquet"), "no records (the split is empty)"),
        "empty-split-saved": (f"{tmp_path / 'dd'}:test", "no records (the split is empty)"),
        "empty-jsonl": (str(_touch(tmp_path / "empty.jsonl")), "file is empty"),
        "unreadable-parquet": (str(tmp_path / "unreadable.parquet"), "cannot read as parquet"),
    }


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.mark.parametrize("case", ["missing-field-jsonl", "missing-field-parquet", "not-numeric-jsonl",
                                  "not-numeric-parquet", "empty-split", "empty-split-saved", "empty-jsonl",
                                  "unreadable-parquet"])
def test_bad_data_is_one_line_naming_file_row_and_field(tmp_path, capsys, case):
    source, expected = bad_sources(tmp_path)[case]
    err = _one_line_error(capsys, ["data", "stats", source, *FLAGS, "--answer-match", "numeric"])
    assert err.startswith(f"token-assorted data: error: {source}") and expected in err, err


@pytest.mark.parametrize("case", ["missing-field-parquet", "not-numeric-jsonl", "unreadable-parquet"])
def test_bad_data_writes_nothing(tmp_path, capsys, case):
    source, expected = bad_sources(tmp_path)[case]
    good = str(write_jsonl(tmp_path / "good.jsonl", qa_records(8)))
    out = tmp_path / "out"
    # vqvae train, train and run each stop at the bad file with the same line, and leave no output.
    commands = {
        "vqvae": ["vqvae", "train", "--data", source, "--out", str(out / "vqvae"), "--steps", "1",
                  *FLAGS, "--answer-match", "numeric"],
        "train": ["train", "--data", good, "--valid", source, "--out", str(out / "model"), "--strategy", "cot",
                  *FLAGS, "--answer-match", "numeric"],
        "run": ["run", "--preset", "tiny", "--train", good, "--test", source, "--out", str(out / "run"),
                *FLAGS, "--answer-match", "numeric"],
    }
    for name, argv in commands.items():
        err = _one_line_error(capsys, argv)
        assert expected in err, (name, err)
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], written


def test_task_options_as_preset_keys_are_checked_when_the_preset_is_read(tmp_path):
    from token_assorted.pipeline.preset import load_preset

    config = load_preset("tiny", {"task": "qa", "data.options": {}, "data.task_options.answer_match": "numeric",
                                  "data.task_options.fields": FIELDS})
    assert config.data.task_options == {"answer_match": "numeric", "fields": FIELDS}
    with pytest.raises(ConfigError, match="answer_match: 'fuzzy' is not one of"):
        load_preset("tiny", {"task": "qa", "data.options": {}, "data.task_options.answer_match": "fuzzy"})
