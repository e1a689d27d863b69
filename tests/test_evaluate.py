"""Evaluation end to end on a tiny LM that memorised a few mixed traces in the test."""

from __future__ import annotations

import json

import pytest
import torch
from stage2_toy import ToyTask
from transformers import LlamaConfig, LlamaForCausalLM

from token_assorted.core.errors import ConfigError
from token_assorted.data.encoding import encode_example
from token_assorted.data.latent_tokens import add_latent_tokens
from token_assorted.data.schema import Example
from token_assorted.data.tokenizer import build_word_tokenizer
from token_assorted.evaluation.evaluate import evaluate_dir, predictions_path, save_result
from token_assorted.generation.config import EvalConfig
from token_assorted.generation.scoring import evaluate, text_ids
from token_assorted.lm.model_dir import load_model_dir

EXAMPLES = [
    Example("Is Tom a wumpus or a yumpus ?", ["Tom is a wumpus ."], "Tom is a wumpus ."),
    Example("Is Ann a zumpus or a rempus ?", ["Ann is a rempus ."], "Ann is a rempus ."),
    Example("Is Bob a tumpus or a lempus ?", ["Bob is a lempus ."], "Bob is a lempus ."),
    Example("Is Eve a dumpus or a gorpus ?", ["Eve is a dumpus ."], "Eve is a dumpus ."),
]
# Example i's trace is replaced by LATENT_CODES[i] (None: kept as text), as in stage 2.
LATENT_CODES = [None, [1, 2], None, [3]]


def _sequences(tokenizer, vocab) -> list[tuple[list[int], list[int]]]:
    task = ToyTask()
    out = []
    for example, codes in zip(EXAMPLES, LATENT_CODES):
        enc = encode_example(tokenizer, task, example)
        trace = enc.trace_ids if codes is None else (
            [vocab.begin_id] + [vocab.code_to_id(c) for c in codes] + [vocab.end_id])
        out.append((enc.prompt_ids, trace + enc.solution_ids))
    return out


@pytest.fixture(scope="module")
def tiny():
    """A 1-layer Llama trained to reproduce the four sequences exactly (a few seconds)."""
    torch.manual_seed(0)
    texts = [e.question + " " + " ".join(e.steps) + " ### " + e.answer for e in EXAMPLES]
    tokenizer = build_word_tokenizer(texts)
    vocab = add_latent_tokens(tokenizer, 4)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    sequences = _sequences(tokenizer, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = 0.0
        for prompt, target in sequences:
            ids = torch.tensor([prompt + target])  # (1, T)
            labels = torch.tensor([[-100] * len(prompt) + target])  # (1, T)
            loss = loss + model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, tokenizer, vocab, sequences


def test_memorised_model_scores_perfectly_and_counts_tokens(tiny):
    model, tokenizer, vocab, sequences = tiny
    result = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(batch_size=3, max_new_tokens=20,
                                                                        progress=False), vocab)
    assert result.n == 4
    assert result.accuracy == 1.0
    expected_lengths = [len(target) for _, target in sequences]
    assert [p.n_tokens for p in result.predictions] == expected_lengths
    assert result.avg_generated_tokens == pytest.approx(sum(expected_lengths) / 4)
    # latent spans: [boLatent, 1, 2, eoLatent] and [boLatent, 3, eoLatent]
    assert [p.n_latent_tokens for p in result.predictions] == [0, 4, 0, 3]
    assert result.avg_latent_tokens == pytest.approx(7 / 4)
    assert result.avg_text_tokens == pytest.approx(result.avg_generated_tokens - 7 / 4)
    assert result.latent_span_share == 0.5
    assert [p.used_latent for p in result.predictions] == [False, True, False, True]
    assert result.seconds_per_example > 0 and result.tokens_per_second > 0


def test_latent_tokens_stay_out_of_the_parsed_answer(tiny):
    model, tokenizer, vocab, _ = tiny
    result = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(max_new_tokens=20, progress=False),
                      vocab)
    with_latent = result.predictions[1]
    assert "<latent_1>" in with_latent.generated and "<boLatent>" in with_latent.generated
    assert with_latent.parsed is not None and "latent" not in with_latent.parsed.lower()
    assert "<eos>" not in with_latent.generated
    ids = [vocab.begin_id, vocab.code_to_id(0), vocab.end_id, tokenizer.eos_token_id, 5]
    assert text_ids(ids, tokenizer, vocab) == [5]


def test_wrong_answers_and_truncation_are_scored_wrong(tiny):
    model, tokenizer, vocab, _ = tiny
    swapped = [Example(e.question, e.steps, "Nobody is a wumpus .") for e in EXAMPLES]
    result = evaluate(model, tokenizer, ToyTask(), swapped, EvalConfig(max_new_tokens=20, progress=False),
                      vocab)
    assert result.accuracy == 0.0
    # Two tokens are too few to reach the solution marker: nothing is parsed.
    short = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(max_new_tokens=2, progress=False), vocab)
    assert short.accuracy == 0.0 and all(p.parsed is None for p in short.predictions)
    assert all(p.n_tokens == 2 for p in short.predictions)


def test_batch_size_does_not_change_greedy_outputs(tiny):
    model, tokenizer, vocab, _ = tiny
    one = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(batch_size=1, max_new_tokens=20,
                                                                     progress=False), vocab)
    four = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(batch_size=4, max_new_tokens=20,
                                                                      progress=False), vocab)
    assert [p.generated for p in one.predictions] == [p.generated for p in four.predictions]


def test_samples_give_any_of_n_accuracy(tiny):
    model, tokenizer, vocab, _ = tiny
    result = evaluate(model, tokenizer, ToyTask(), EXAMPLES,
                      EvalConfig(max_new_tokens=20, samples=3, top_k=1, progress=False), vocab)
    # top-k=1 sampling is greedy, so every question is solved by some sample.
    assert result.sampled_accuracy == 1.0
    assert all(p.samples_solved for p in result.predictions)
    # Sampled from the whole vocabulary at a high temperature, the memorised answers are lost:
    # samples that were greedy after all (sampling ignored) would still solve every question.
    wild = evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(max_new_tokens=20, samples=3, top_k=len(tokenizer),
                                                                     temperature=50.0, progress=False), vocab)
    assert wild.accuracy == 1.0 and wild.sampled_accuracy < 1.0


def test_model_dir_round_trip_and_files(tiny, tmp_path):
    model, tokenizer, vocab, _ = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "token_assorted.json").write_text(json.dumps(
        {"task": "toy", "strategy": "assorted", "latent_vocab": vocab.to_dict(), "chat_template": False}))
    result = evaluate_dir(model_dir, EXAMPLES, EvalConfig(max_new_tokens=20, progress=False), task=ToyTask())
    assert result.accuracy == 1.0 and result.avg_latent_tokens == pytest.approx(7 / 4)
    out = tmp_path / "results.json"
    preds = save_result(result, out)
    assert preds == predictions_path(out) == tmp_path / "results.predictions.jsonl"
    summary = json.loads(out.read_text())
    assert summary["accuracy"] == 1.0 and "predictions" not in summary
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert {"question", "generated", "generated_ids", "parsed", "correct", "n_tokens"} <= set(rows[0])
    assert all(r["generated_ids"] == p.generated_ids and len(r["generated_ids"]) == r["n_tokens"]
               for r, p in zip(rows, result.predictions))


def test_bad_settings_are_config_errors(tiny):
    model, tokenizer, vocab, _ = tiny
    with pytest.raises(ConfigError):
        evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(batch_size=0, progress=False), vocab)
    with pytest.raises(ConfigError):
        evaluate(model, tokenizer, ToyTask(), [], EvalConfig(progress=False), vocab)
    with pytest.raises(ConfigError, match="auto, no, bf16"):
        evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(mixed_precision="fp16", progress=False), vocab)
    if not torch.cuda.is_available():  # bf16 autocast is a GPU setting: asked for on a CPU, refused
        with pytest.raises(ConfigError, match="does not support"):
            evaluate(model, tokenizer, ToyTask(), EXAMPLES, EvalConfig(mixed_precision="bf16", progress=False),
                     vocab)


def test_model_dir_goes_where_the_device_says(tiny, tmp_path, monkeypatch):
    model, tokenizer, vocab, _ = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert next(load_model_dir(tmp_path).model.parameters()).device.type == "cpu"  # auto, no GPU
    with pytest.raises(ConfigError, match="no CUDA GPU"):  # refused before any weights are read
        load_model_dir(tmp_path, "cuda")
