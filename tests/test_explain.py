"""Explaining latent tokens: spans are found, decoded by the VQ-VAE and marked visibly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from token_assorted.cli import main
from token_assorted.data.latent_tokens import LatentVocab, add_latent_tokens
from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import build_word_tokenizer, load_tokenizer
from token_assorted.evaluation.explain import Explainer, explain_ids, render, split_spans

VOCAB = LatentVocab(codebook_size=4, begin_id=10, end_id=11, first_code_id=12)  # codes 12..15


def test_split_spans_separates_text_and_latent_runs():
    ids = [1, 2, 10, 12, 13, 11, 3, 4]
    assert split_spans(ids, VOCAB) == [("text", [1, 2]), ("latent", [10, 12, 13, 11]), ("text", [3, 4])]
    # An unclosed span ends at the first text token; a bare code still opens a span.
    assert split_spans([10, 14, 5], VOCAB) == [("latent", [10, 14]), ("text", [5])]
    assert split_spans([15, 11, 6], VOCAB) == [("latent", [15, 11]), ("text", [6])]
    assert split_spans([], VOCAB) == []


def test_explain_marks_each_span_with_its_decoded_text():
    tokenizer = build_word_tokenizer(["Tom is a wumpus . ### Tom"])
    vocab = add_latent_tokens(tokenizer, 4)
    seen = []

    def decoder(prompt_ids, codes):
        seen.append((list(prompt_ids), list(codes)))
        return "Tom is a wumpus ."

    text_ids = tokenizer("### Tom", add_special_tokens=False).input_ids
    ids = [vocab.begin_id, vocab.code_to_id(3), vocab.code_to_id(1), vocab.end_id, *text_ids,
           tokenizer.eos_token_id]
    explanation = explain_ids("Is Tom a wumpus?", [7, 8], ids, tokenizer, vocab, decoder)
    assert seen == [([7, 8], [3, 1])]
    shown = render(explanation)
    assert shown == '[latent: <latent_3><latent_1> ≈ "Tom is a wumpus ."] ### Tom'
    assert "<latent_3>" in explanation.raw and "<eos>" not in explanation.raw
    assert explanation.to_dict()["spans"] == [{"codes": [3, 1], "decoded": "Tom is a wumpus ."}]
    assert "no VQ-VAE" in render(explain_ids("q", [], ids, tokenizer, vocab, None))


@pytest.fixture(scope="module")
def vqvae_and_model(tmp_path_factory):
    """A few-step VQ-VAE on generated ProsQA and a random LM over its tokenizer plus latents."""
    from token_assorted.data.schema import save_examples
    from token_assorted.vqvae import VQVAETrainConfig, load_vqvae, train_vqvae

    root = tmp_path_factory.mktemp("explain")
    task = get_task("prosqa")
    examples = task.generate(24, seed=3, nodes=6, nodes_sd=0.5, min_steps=2, max_steps=2)
    save_examples(root / "train.jsonl", examples)
    vq_dir = root / "vqvae"
    train_vqvae(VQVAETrainConfig(task="prosqa", data=str(root / "train.jsonl"), out=str(vq_dir), chunk_size=8,
                                 compression=4, codebook_size=8, steps=4, batch_size=8, warmup=1,
                                 valid_every=4, d_model=32, heads=2, encoder_layers=1, decoder_layers=1,
                                 codebook_dim=8, progress=False))
    loaded = load_vqvae(vq_dir)
    tokenizer = loaded.tokenizer
    vocab = add_latent_tokens(tokenizer, 8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "token_assorted.json").write_text(json.dumps(
        {"task": "prosqa", "strategy": "token-assorted", "vqvae": str(vq_dir), "latent_vocab": vocab.to_dict(),
         "chat_template": False}))
    return loaded, model_dir, examples


def test_explain_decodes_a_known_code_sequence_with_the_vqvae(vqvae_and_model):
    from token_assorted.data.encoding import encode_prompt
    from token_assorted.vqvae import decode_codes, encode_examples

    loaded, model_dir, examples = vqvae_and_model
    task = get_task("prosqa")
    codes = encode_examples(loaded, task, examples[:1])[0]  # the VQ-VAE's own codes of a trace
    expected = decode_codes(loaded, encode_prompt(loaded.tokenizer, task, examples[0]), codes)
    assert isinstance(expected, str)  # (a 4-step VQ-VAE may still decode mostly to pads)
    explainer = Explainer(model_dir)  # finds the VQ-VAE through token_assorted.json
    assert explainer.decoder is not None
    generated = "<boLatent>" + "".join(f"<latent_{c}>" for c in codes) + "<eoLatent> ### " + examples[0].answer
    explanation = explainer.generated_text(examples[0].question, generated)
    latent = [s for s in explanation.segments if s.kind == "latent"]
    assert len(latent) == 1 and latent[0].codes == codes and latent[0].decoded == expected
    assert f'≈ "{expected}"]' in render(explanation)


def test_explain_cli_on_a_question_and_on_predictions(vqvae_and_model, tmp_path, capsys):
    _, model_dir, examples = vqvae_and_model
    assert main(["explain", "--model", str(model_dir), "--question", examples[0].question,
                 "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "raw:" in out and "explained:" in out
    preds = tmp_path / "p.predictions.jsonl"
    generated = "<boLatent><latent_2><latent_5><eoLatent> ### x"
    ids = load_tokenizer(model_dir)(generated, add_special_tokens=False)["input_ids"]
    line = {"index": 0, "question": examples[0].question, "correct": False, "generated": generated}
    preds.write_text(json.dumps({**line, "generated_ids": ids}) + "\n")
    assert main(["explain", "--model", str(model_dir), "--predictions", str(preds), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["spans"][0]["codes"] == [2, 5] and record["spans"][0]["decoded"] is not None
    preds.write_text(json.dumps(line) + "\n")  # no token ids: not a predictions file of this version's eval
    assert main(["explain", "--model", str(model_dir), "--predictions", str(preds)]) == 2
    assert "generated_ids" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"index": 0}) + "\n")
    assert main(["explain", "--model", str(model_dir), "--predictions", str(bad)]) == 2


def test_explain_reads_the_token_ids_of_a_predictions_file(vqvae_and_model, tmp_path, capsys):
    # The ids, not the text: a text that tokenizes otherwise (here: other codes) does not count.
    _, model_dir, examples = vqvae_and_model
    vocab = Explainer(model_dir).loaded.latent_vocab
    ids = [vocab.begin_id, vocab.code_to_id(2), vocab.code_to_id(5), vocab.end_id]
    preds = tmp_path / "p.predictions.jsonl"
    record = {"index": 0, "question": examples[0].question, "correct": False,
              "generated": "<boLatent><latent_7><eoLatent>", "generated_ids": ids}
    preds.write_text(json.dumps(record) + "\n")
    assert main(["explain", "--model", str(model_dir), "--predictions", str(preds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["spans"][0]["codes"] == [2, 5]
    preds.write_text(json.dumps({**record, "generated_ids": [1, "x"]}) + "\n")
    assert main(["explain", "--model", str(model_dir), "--predictions", str(preds)]) == 2
    assert "generated_ids" in capsys.readouterr().err


def test_eval_and_explain_refuse_a_missing_gpu_in_one_line(vqvae_and_model, tmp_path, capsys, monkeypatch):
    _, model_dir, examples = vqvae_and_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "d.jsonl"
    save_examples(data, examples[:1])
    assert main(["eval", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "r.json"),
                 "--device", "cuda"]) == 2
    assert main(["explain", "--model", str(model_dir), "--question", "q", "--device", "cuda:0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 2 and all("no CUDA GPU" in line for line in errors)
    assert not (tmp_path / "r.json").exists()
