"""The README's "Your own data and model" commands, run exactly as written there.

The first bash block of that section is the single source: every `token-assorted` line of
it runs here, in a folder holding what the README assumes — `my_data/train.parquet` and
`my_data/test.jsonl` (a 50-row data set in the user's own field names) and `my_model/` (a
tiny random GPT-2 folder with its own tokenizer).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from own_data import qa_records, save_tiny_gpt2, write_jsonl

from token_assorted.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
datasets = pytest.importorskip("datasets")
pytest.importorskip("peft")


def readme_commands() -> list[list[str]]:
    """The `token-assorted` command lines of the section's first ```bash block."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own data and model", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("token-assorted ")]


def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["data", "run", "eval", "explain"]
    records = qa_records(50)
    (tmp_path / "my_data").mkdir()
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(records[:40]).to_parquet(str(tmp_path / "my_data" / "train.parquet"))
    write_jsonl(tmp_path / "my_data" / "test.jsonl", records[40:])
    save_tiny_gpt2(tmp_path / "my_model", records)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert main(argv) == 0, argv
    results = json.loads(Path("runs/mine/results.json").read_text())
    assert results["task"] == "qa" and [m["name"] for m in results["methods"]] == ["Sol-Only", "CoT", "Token Assorted"]
    meta = json.loads(Path("runs/mine/models/token-assorted/token_assorted.json").read_text())
    assert meta["model"] == "my_model" and meta["config"]["lora"]["r"] == 8
    assert meta["task_options"]["fields"]["answer"] == "final_answer"
    assert json.loads(Path("runs/mine/test.json").read_text())["n"] == 10
