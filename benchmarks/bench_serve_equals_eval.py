"""Served answers against `token-assorted eval`'s: the same questions, the same greedy settings.

Trains a small model of the README's walkthrough (a random 2-layer, 64-wide GPT-2 folder with
its own tokenizer, `run --preset tiny --task qa` on 240 synthetic word problems, more epochs),
scores it with `token-assorted eval`, serves the saved folder with `transformers serve` on
localhost (CPU), sends every test question as a completion request (temperature 0, the same
max tokens) and compares texts, parsed answers and correctness, question by question.

    python benchmarks/bench_serve_equals_eval.py [--work DIR] [--questions 40] [--out serve.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny-model and data builders of the tests

MAX_NEW = 48


def build(work: Path, questions: int) -> Path:
    from own_data import qa_records, save_tiny_gpt2, write_jsonl

    from token_assorted.cli import main

    records = qa_records(240 + questions, seed=1)
    write_jsonl(work / "my_data" / "train.jsonl", records[:240])
    write_jsonl(work / "my_data" / "test.jsonl", records[240:])
    save_tiny_gpt2(work / "my_model", records)
    fields = "question=problem,steps=solution,answer=final_answer"
    assert main(["run", "--preset", "tiny", "--task", "qa", "--model", str(work / "my_model"),
                 "--train", str(work / "my_data" / "train.jsonl"), "--test", str(work / "my_data" / "test.jsonl"),
                 "--fields", fields, "--answer-match", "numeric", "--out", str(work / "runs"),
                 "--set", "data.train=0", "--set", "data.test=0", "--set", "train.epochs=20",
                 "--set", "vqvae.steps=200", "--set", "eval.max_new_tokens=48"]) == 0
    model = work / "runs" / "models" / "token-assorted"
    assert main(["eval", "--model", str(model), "--data", str(work / "my_data" / "test.jsonl"),
                 "--out", str(work / "eval.json"), "--max-new-tokens", str(MAX_NEW)]) == 0
    return model


def serve_all(model: Path, questions: list[str], work: Path) -> tuple[list[str], float]:
    from test_serve import Server, post

    from token_assorted.evaluation.serving import model_completion_prompt

    server = Server(model, work / "serve.log")
    try:
        server.wait()
        started, texts = time.perf_counter(), []
        for question in questions:
            body = {"model": str(model), "prompt": model_completion_prompt(model, question),
                    "max_tokens": MAX_NEW, "temperature": 0}
            texts.append(post(f"{server.base}/v1/completions", body)["choices"][0]["text"])
        return texts, time.perf_counter() - started
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-serve"), help="scratch folder")
    parser.add_argument("--questions", type=int, default=40, help="test questions")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison here (JSON)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    model = build(args.work, args.questions)
    from token_assorted.data.tasks import get_task
    from token_assorted.lm.model_dir import read_model_meta

    meta = read_model_meta(model)
    task = get_task("qa", **meta["task_options"])
    examples = task.load(args.work / "my_data" / "test.jsonl")
    evaluated = [json.loads(line) for line in (args.work / "eval.predictions.jsonl").read_text().splitlines()]
    served, seconds = serve_all(model, [e.question for e in examples], args.work)
    # The verifier reads text only, as eval's does (evaluate.text_ids drops the latent tokens).
    verdicts = [task.verify(example, re.sub(r"<(?:bo|eo)Latent>|<latent_\d+>", "", text))
                for example, text in zip(examples, served)]
    summary = {
        "questions": len(examples), "max_new_tokens": MAX_NEW,
        "same_text": sum(s == e["generated"] for s, e in zip(served, evaluated)),
        "same_parsed_answer": sum(v.predicted == e["parsed"] for v, e in zip(verdicts, evaluated)),
        "same_correctness": sum(v.correct == e["correct"] for v, e in zip(verdicts, evaluated)),
        "eval_accuracy": sum(e["correct"] for e in evaluated) / len(evaluated),
        "served_accuracy": sum(v.correct for v in verdicts) / len(verdicts),
        "answers_with_latent_tokens": sum("<boLatent>" in s for s in served),
        "served_seconds_per_question": round(seconds / len(examples), 3),
        "example": {"question": examples[0].question, "served": served[0], "eval": evaluated[0]["generated"]},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
