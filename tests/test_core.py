"""The core plumbing: atomic writes, strict record reading, the schema, typed configs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from token_assorted.core.config import from_mapping
from token_assorted.core.errors import ConfigError, DataError
from token_assorted.core.io import atomic_open, atomic_write_text, read_records
from token_assorted.data.latent_tokens import add_latent_tokens
from token_assorted.data.schema import Example, load_examples, save_examples
from token_assorted.data.tokenizer import build_word_tokenizer


def test_atomic_write_leaves_previous_file_when_interrupted(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind


def test_json_list_and_jsonl_load_the_same(tmp_path):
    records = [{"question": "q1", "steps": ["a"], "answer": "x"}, {"question": "q2", "steps": ["b"], "answer": "y"}]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert load_examples(tmp_path / "a.json") == load_examples(tmp_path / "b.jsonl")


def test_json_list_error_names_the_records_line(tmp_path):
    text = '[\n {"question": "q", "steps": ["s"], "answer": "a"},\n {"question": "q", "steps": [], "answer": "a"}\n]'
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(DataError, match=r"d.json, line 3, field 'steps'"):
        load_examples(tmp_path / "d.json")


@pytest.mark.parametrize("line, field", [
    ('{"question": "q", "steps": ["s"]}', "answer"),
    ('{"question": 3, "steps": ["s"], "answer": "a"}', "question"),
    ('{"question": "q", "steps": "s", "answer": "a"}', "steps"),
    ('{"question": "q", "steps": [""], "answer": "a"}', "steps"),
])
def test_bad_record_names_line_and_field(tmp_path, line, field):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "steps": ["s"], "answer": "a"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert info.value.line == 2 and info.value.field == field and "d.jsonl" in str(info.value)


def test_malformed_empty_and_binary_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "steps": ["s"], "answer": "a"}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_records(tmp_path / "bin.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")


def test_unicode_line_separators_inside_strings_do_not_split_records(tmp_path):
    # GSM8K train has an unescaped U+2028 in a question; str.splitlines() broke the record there.
    records = [{"question": "a\u2028b\u0085c\u2029d\x1ce", "steps": ["s\u2028t"], "answer": "1"},
               {"question": "q2", "steps": ["x"], "answer": "2"}]
    path = tmp_path / "d.jsonl"
    save_examples(path, [Example(**r) for r in records])
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, as ensure_ascii=False does
    assert [(n, r) for n, r in read_records(path)] == [(1, records[0]), (2, records[1])]
    (tmp_path / "crlf.jsonl").write_bytes(b'{"a": 1}\r\n{"a": 2}\r\n')
    assert read_records(tmp_path / "crlf.jsonl") == [(1, {"a": 1}), (2, {"a": 2})]


def test_save_then_load_round_trips_metadata(tmp_path):
    example = Example("q?", ["s1", "s2"], "a", {"root": 1, "edges": [[0, 1]]})
    save_examples(tmp_path / "x.jsonl", [example])
    assert load_examples(tmp_path / "x.jsonl") == [example]


@dataclass
class _Inner:
    width: int = 8


@dataclass
class _Config:
    name: str = "x"
    rate: float = 0.1
    sizes: list[int] = field(default_factory=list)
    inner: _Inner = field(default_factory=_Inner)
    limit: int | None = None


def test_typed_config_accepts_valid_and_rejects_unknown_or_mistyped():
    config = from_mapping(_Config, {"rate": 1, "sizes": [1, 2], "inner": {"width": 4}, "limit": None})
    assert config.rate == 1.0 and config.inner.width == 4
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        from_mapping(_Config, {"colour": "red"}, "preset.yaml")
    with pytest.raises(ConfigError, match="inner.width"):
        from_mapping(_Config, {"inner": {"width": "wide"}})
    with pytest.raises(ConfigError, match="expected int"):
        from_mapping(_Config, {"limit": True})


def test_latent_vocabulary_is_contiguous_and_idempotent():
    tokenizer = build_word_tokenizer(["Tom is a terpus ."])
    base = len(tokenizer)
    vocab = add_latent_tokens(tokenizer, 8)
    assert len(tokenizer) == base + 10
    assert tokenizer.convert_ids_to_tokens(vocab.code_to_id(7)) == "<latent_7>"
    assert vocab.id_to_code(vocab.code_to_id(3)) == 3 and vocab.id_to_code(vocab.begin_id) is None
    assert add_latent_tokens(tokenizer, 8) == vocab and len(tokenizer) == base + 10
