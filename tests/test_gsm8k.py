"""GSM8K / iCoT / Coconut / MATH-style loading, error messages, and answer verification."""

from __future__ import annotations

import json

import pytest
from conftest import shared_file

from token_assorted.core.errors import DataError
from token_assorted.core.io import read_records
from token_assorted.data.tasks.gsm8k import GSM8K, solution_steps

TASK = GSM8K()
ORIGINAL = {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
            "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                      "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"}


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_original_format_drops_annotations_by_default(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ORIGINAL, {**ORIGINAL, "answer": "So 1,000 - 0 = 1,000\n#### 1,000"}])
    first, second = TASK.load(path)
    assert first.steps == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips altogether."]
    assert first.answer == "72" and first.question == ORIGINAL["question"]
    assert second.answer == "1000"  # thousands separator dropped from the gold answer
    kept = GSM8K(keep_annotations=True).load(path)[0]
    assert kept.steps[0] == "Natalia sold 48/2 = <<48/2=24>>24 clips in May."


def test_icot_text_format(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("Natalia sold 48 clips...||<<48/2=24>> <<48+24=72>> #### 72\n\n"
                    "Weng earns $12 an hour...||<<12/60=0.2>> <<0.2*50=10>> #### 10\n")
    first, second = TASK.load(path)
    assert first.steps == ["<<48/2=24>>", "<<48+24=72>>"] and first.answer == "72"
    assert second.question == "Weng earns $12 an hour..." and second.answer == "10"
    path.write_text("Clive opens a box.\u2028How many?||<<6*2=12>> #### 12\r\n", encoding="utf-8")
    (only,) = TASK.load(path)  # a U+2028 in the question does not end the line
    assert only.question == "Clive opens a box.\u2028How many?" and only.answer == "12"


def test_coconut_json_format(tmp_path):
    records = [{"question": "q?", "steps": ["<<48/2=24>>", "<<48+24=72>>"], "answer": "72"},
               {"question": "r?", "steps": [], "answer": "5"}]  # GSM8K-Aug has a few step-less items
    path = tmp_path / "gsm_valid.json"
    path.write_text(json.dumps(records, indent=1))
    loaded = TASK.load(path)
    assert [e.steps for e in loaded] == [records[0]["steps"], []] and loaded[0].answer == "72"
    assert all(TASK.looks_like(r) for r in records)


def test_math_style_records(tmp_path):
    records = [
        {"problem": "Simplify.", "solution": "We have $x = \\frac{1}{2}$.\nSo $\\boxed{\\frac{1}{\\sqrt{2}}}$.",
         "level": "Level 2", "type": "Algebra"},
        {"query": "What is 2+3?", "response": "First, 2 + 3 = 5. So the total is 5.\nThe answer is: 5",
         "type": "GSM_Rephrased"},
        {"query": "Compute 6*7.", "response": "Multiply 6 by 7. We get $\\boxed{42}$."},
        {"problem": "Find y.", "solution": "y is two.", "answer": "2"},
    ]
    boxed, stated, dart, given = TASK.load(write_jsonl(tmp_path / "math.jsonl", records))
    assert boxed.answer == "\\frac{1}{\\sqrt{2}}" and len(boxed.steps) == 2
    assert boxed.meta == {"level": "Level 2", "type": "Algebra"}
    assert stated.answer == "5" and stated.steps == ["First, 2 + 3 = 5. So the total is 5."]
    assert dart.answer == "42" and dart.steps == ["Multiply 6 by 7.", "We get $\\boxed{42}$."]
    assert given.answer == "2"
    assert all(TASK.looks_like(r) for r in records[:3])


def test_solution_steps_split_paragraphs_into_sentences_but_not_decimals():
    assert solution_steps("It is 3.5 m. Then 2 more. Total 5.5.") == ["It is 3.5 m.", "Then 2 more.", "Total 5.5."]
    assert solution_steps("line one.\n\nline two") == ["line one.", "line two"]


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "no marker here"}\n', r"x.jsonl, line 1, field 'answer': no '####"),
    ('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q", "answer": "a\\n####  "}\n',
     r"line 2, field 'answer': empty answer"),
    ('{"question": "", "answer": "#### 1"}\n', r"line 1, field 'question'"),
    ('{"problem": "p", "solution": "no answer at all"}\n', r"line 1, field 'solution': no final answer"),
    ('{"foo": 1}\n', r"line 1: unrecognised math record"),
])
def test_errors_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        TASK.load(path)


def test_icot_errors_name_the_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("q||<<1+1=2>> #### 2\nno separator on this line\n")
    with pytest.raises(DataError, match=r"t.txt, line 2, field 'question'"):
        TASK.load(path)
    path.write_text("q||<<1+1=2>> #### 2\nq2||<<1+1=2>> 2\n")
    with pytest.raises(DataError, match=r"t.txt, line 2, field 'answer'"):
        TASK.load(path)


def test_verify_reads_the_final_answer(tmp_path):
    example = TASK.load(write_jsonl(tmp_path / "a.jsonl", [ORIGINAL]))[0]
    assert TASK.verify(example, TASK.trace_text(example) + TASK.solution_text(example)).correct
    assert TASK.verify(example, "48/2 = 24, 48+24 = 72\n### 72.0").correct
    assert TASK.verify(example, "So she sold $\\boxed{72}$ clips").correct
    wrong = TASK.verify(example, "48/2 = 24\n### 71")
    assert not wrong.correct and wrong.predicted == "71"
    assert not TASK.verify(example, "I do not know").correct
    last = TASK.verify(example, "### 72 ### 73")  # the last marker wins
    assert not last.correct and last.predicted == "73"


def test_official_gsm8k_test_split_verifies_against_itself():
    path = shared_file("gsm8k/test.jsonl")
    examples = TASK.load(path)
    assert len(examples) == 1319
    for example, (_, record) in zip(examples, read_records(path)):
        assert TASK.verify(example, record["answer"]).correct, record["answer"]
        assert TASK.verify(example, TASK.trace_text(example) + TASK.solution_text(example)).correct
        assert "<<" not in TASK.trace_text(example)


def test_math_style_tables_load_and_are_checked_by_math_verify(tmp_path):
    """MATH-500's schema (problem, solution, answer) from a parquet file, as `hf:` tables are read."""
    datasets = pytest.importorskip("datasets")
    rows = [{"problem": "Find $\\sin 60^\\circ$.", "solution": "It is $\\boxed{\\frac{\\sqrt{3}}{2}}$.",
             "answer": "\\frac{\\sqrt{3}}{2}", "level": 2},
            {"problem": "Solve $x + 1 = 3$.", "solution": "So $x = \\boxed{2}$.", "answer": "2", "level": 1}]
    path = tmp_path / "math500.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    math, number = TASK.load(path)
    assert (math.answer, number.answer) == ("\\frac{\\sqrt{3}}{2}", "2")
    assert [TASK.answer_rule_of(e) for e in (math, number)] == ["math-verify", "numeric"]
    assert TASK.verify(math, "### \\frac{\\sqrt3}{2}").correct and not TASK.verify(math, "### \\sqrt{3}").correct
    with pytest.raises(DataError, match=r"math500.parquet, row 1"):
        datasets.Dataset.from_list([{"problem": "p", "solution": "no answer here"}]).to_parquet(str(path))
        TASK.load(path)
