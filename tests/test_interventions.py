"""Interventions on the latent codes and the latency dial, on a tiny model whose answer copies its code.

The model is trained in the test (a few seconds): question i writes `<boLatent> <latent_i>
<eoLatent>`, and after ANY code j it answers ANSWERS[j]. So the answer shows which code was
fed back, and every mode's effect can be predicted exactly.
"""

from __future__ import annotations

import json

import pytest
import stage2_toy
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.data.encoding import encode_example
from token_assorted.data.latent_tokens import ChunkLayout, add_latent_tokens
from token_assorted.data.schema import Example, save_examples
from token_assorted.data.tokenizer import build_word_tokenizer
from token_assorted.generation.config import EvalConfig
from token_assorted.generation.generate import generate_ids
from token_assorted.generation.interventions import (
    cyclic_permutation,
    parse_latent_chunks,
    random_code,
    span_codes,
)
from token_assorted.generation.scoring import evaluate
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.train import train_lm

ANSWERS = ["alpha", "bravo", "charlie", "delta"]
# Question i's reference trace has i + 1 words: 1, 1, 2, 2 chunks of L = 2 (for the dial's "all").
EXAMPLES = [Example(f"copy q{i} ?", [" ".join(["step"] * (i + 1))], ANSWERS[i]) for i in range(4)]
K = 4


def _sequences(tokenizer, vocab):
    """Question i with every code j: loss on the code only when j == i, on the answer always."""
    task = stage2_toy.ToyTask()
    rows = []
    for i, example in enumerate(EXAMPLES):
        prompt = encode_example(tokenizer, task, example).prompt_ids
        for j in range(K):
            solution = encode_example(tokenizer, task, EXAMPLES[j]).solution_ids
            target = [vocab.begin_id, vocab.code_to_id(j), vocab.end_id] + solution
            labels = list(target) if i == j else [target[0], -100] + target[2:]
            rows.append((prompt + target, [-100] * len(prompt) + labels))
    return rows


@pytest.fixture(scope="module")
def copier():
    torch.manual_seed(0)
    texts = [e.question + " " + " ".join(e.steps) + " ### " + e.answer for e in EXAMPLES]
    tokenizer = build_word_tokenizer(texts)
    vocab = add_latent_tokens(tokenizer, K)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    rows = _sequences(tokenizer, vocab)
    width = max(len(ids) for ids, _ in rows)  # every sequence has the same length; pad to be safe
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r, _ in rows])  # (16, T)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])  # (16, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, tokenizer, vocab


def run(copier, **options):
    model, tokenizer, vocab = copier
    layout = ChunkLayout(chunk_size=2, latents_per_chunk=options.pop("per", 1), vocab=vocab)
    config = EvalConfig(batch_size=options.pop("batch_size", 4), max_new_tokens=12, progress=False, **options)
    return evaluate(model, tokenizer, stage2_toy.ToyTask(), EXAMPLES, config, vocab, layout=layout)


def codes_and_answers(result, vocab, tokenizer):
    ids = [tokenizer(p.generated, add_special_tokens=False).input_ids for p in result.predictions]
    return [span_codes(i, vocab) for i in ids], [p.parsed for p in result.predictions]


def test_the_model_copies_its_code_into_the_answer(copier):
    model, tokenizer, vocab = copier
    result = run(copier)
    codes, answers = codes_and_answers(result, vocab, tokenizer)
    assert codes == [[0], [1], [2], [3]] and answers == ANSWERS and result.accuracy == 1.0


def test_none_is_bit_identical_to_plain_evaluation(copier):
    model, tokenizer, vocab = copier
    plain, none = run(copier), run(copier, intervene="none")
    assert [p.generated for p in none.predictions] == [p.generated for p in plain.predictions]
    assert [(p.correct, p.n_tokens, p.n_latent_tokens) for p in none.predictions] == \
        [(p.correct, p.n_tokens, p.n_latent_tokens) for p in plain.predictions]
    assert none.accuracy == plain.accuracy and none.avg_generated_tokens == plain.avg_generated_tokens


def test_constant_feeds_back_one_code_and_the_answer_follows_it(copier):
    model, tokenizer, vocab = copier
    result = run(copier, intervene="constant", constant_code=2)
    codes, answers = codes_and_answers(result, vocab, tokenizer)
    assert codes == [[2]] * 4 and answers == ["charlie"] * 4 and result.accuracy == 0.25


def test_random_codes_are_seeded_per_question_and_fed_back(copier):
    model, tokenizer, vocab = copier
    for seed in (0, 1):
        expected = [random_code(seed, i, 0, K) for i in range(4)]
        result = run(copier, intervene="random", intervene_seed=seed, batch_size=3)
        codes, answers = codes_and_answers(result, vocab, tokenizer)
        assert codes == [[z] for z in expected] and answers == [ANSWERS[z] for z in expected]
        assert result.accuracy == sum(z == i for i, z in enumerate(expected)) / 4
    assert [random_code(0, i, 0, K) for i in range(8)] != [random_code(1, i, 0, K) for i in range(8)]


def test_shuffle_hands_each_question_another_questions_codes(copier):
    model, tokenizer, vocab = copier
    partner = cyclic_permutation(4, 0)
    assert sorted(partner) == [0, 1, 2, 3] and all(partner[i] != i for i in range(4))
    result = run(copier, intervene="shuffle")
    codes, answers = codes_and_answers(result, vocab, tokenizer)
    assert codes == [[partner[i]] for i in range(4)]  # the unperturbed run wrote code i for question i
    assert answers == [ANSWERS[partner[i]] for i in range(4)] and result.accuracy == 0.0


@pytest.mark.parametrize("chunks, per", [(0, 1), (1, 1), (2, 1), (1, 2)])
def test_the_dial_forces_exactly_k_chunks_then_text_only(copier, chunks, per):
    model, tokenizer, vocab = copier
    result = run(copier, latent_chunks=chunks, per=per)
    for prediction in result.predictions:
        ids = tokenizer(prediction.generated, add_special_tokens=False).input_ids
        n = chunks * per
        if n == 0:
            assert not any(vocab.is_latent(t) for t in ids)
            continue
        assert ids[0] == vocab.begin_id and ids[n + 1] == vocab.end_id
        assert all(vocab.id_to_code(t) is not None for t in ids[1:n + 1])
        assert not any(vocab.is_latent(t) for t in ids[n + 2:])
        assert prediction.n_latent_tokens == n + 2


def test_the_dial_all_forces_each_reference_traces_chunks(copier):
    model, tokenizer, vocab = copier
    result = run(copier, latent_chunks="all")
    assert [p.n_latent_tokens - 2 for p in result.predictions] == [1, 1, 2, 2]  # traces of 1, 2, 3, 4 words


def test_interventions_work_under_the_dial(copier):
    model, tokenizer, vocab = copier
    result = run(copier, latent_chunks=2, intervene="constant", constant_code=1)
    codes, _ = codes_and_answers(result, vocab, tokenizer)
    assert codes == [[1, 1]] * 4


def test_processors_leave_plain_generation_untouched(copier):
    model, tokenizer, vocab = copier
    prompts = [encode_example(tokenizer, stage2_toy.ToyTask(), e).prompt_ids for e in EXAMPLES]
    config = EvalConfig(max_new_tokens=12, progress=False)
    from transformers import LogitsProcessorList
    assert generate_ids(model, tokenizer, prompts, config).ids == \
        generate_ids(model, tokenizer, prompts, config, processors=lambda rows: LogitsProcessorList()).ids


def test_bad_probe_settings_are_config_errors(copier):
    model, tokenizer, vocab = copier
    cases = [({"intervene": "gaussian"}, "unknown mode"), ({"intervene": "random", "samples": 2}, "greedy only"),
             ({"intervene": "noise"}, "only a Coconut model"),  # noise and zero are for continuous thoughts
             ({"latent_chunks": -1}, "integer >= 0"), ({"latent_chunks": "some"}, "integer >= 0"),
             ({"intervene": "constant", "constant_code": K}, "outside the codebook"),
             ({"intervene": "random", "intervene_seed": -1}, "seed")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            run(copier, **options)
    with pytest.raises(ConfigError, match="no latent vocabulary"):
        evaluate(model, tokenizer, stage2_toy.ToyTask(), EXAMPLES, EvalConfig(intervene="random", progress=False))
    assert parse_latent_chunks("3") == 3 and parse_latent_chunks("all") == "all"


# --------------------------------------------------------------------------- a trained model dir and the CLI
@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    stage2_toy.register()
    root = tmp_path_factory.mktemp("toy")
    data = stage2_toy.write_data(root)
    out = train_lm(TrainConfig(task="toy", data=str(data["train"]), out=str(root / "model"), codes=str(data["codes"]),
                               m_values=[0, 4], epochs=1, batch_size=16, lr=3e-3, progress=False))
    return out, data


def test_training_records_the_most_chunks_it_replaced(toy_model):
    out, data = toy_model
    meta = json.loads((out / "token_assorted.json").read_text())
    # m in {0, 4} tokens with L = 4: at most the first chunk of any trace.
    assert meta["max_latent_chunks"] == 1 and meta["pause_id"] is None
    # A model dir without the record (an older layout) is refused by the dial in one line.
    from token_assorted.core.errors import CheckpointError
    from token_assorted.lm.model_dir import load_model_dir, recorded_max_chunks
    loaded = load_model_dir(out, "cpu")
    loaded.meta.pop("max_latent_chunks")
    with pytest.raises(CheckpointError, match="older token-assorted"):
        recorded_max_chunks(loaded)


def _eval(out, data, tmp_path, *extra):
    return main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "r.json"),
                 "--device", "cpu", *extra])


@pytest.mark.parametrize("extra, names", [
    (["--latent-chunks", "2"], ["--latent-chunks 2", "at most 1 latent chunk per", "max_latent_chunks"]),
    (["--latent-chunks", "lots"], ["--latent-chunks", "lots"]),
    (["--intervene", "noise"], ["--intervene", "noise", "random"]),
    (["--intervene", "random", "--samples", "3"], ["greedy only"]),
])
def test_cli_refuses_bad_probes_in_one_line(toy_model, tmp_path, capsys, extra, names):
    out, data = toy_model
    code = _eval(out, data, tmp_path, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(name in err for name in names), err
    assert not (tmp_path / "r.json").exists()


def test_cli_runs_each_probe_and_records_it(toy_model, tmp_path, capsys):
    out, data = toy_model
    assert _eval(out, data, tmp_path, "--intervene", "constant", "--constant-code", "3") == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["intervene"] == "constant" and "intervene constant" in capsys.readouterr().out
    assert _eval(out, data, tmp_path, "--latent-chunks", "0") == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["latent_chunks"] == 0 and record["avg_latent_tokens"] == 0.0


def test_the_cli_dial_forces_one_chunk_on_a_trained_model(toy_model, tmp_path):
    out, data = toy_model
    save_examples(tmp_path / "one.jsonl", stage2_toy.ToyTask().generate(3, 5))
    assert main(["eval", "--model", str(out), "--data", str(tmp_path / "one.jsonl"), "--out",
                 str(tmp_path / "r.json"), "--device", "cpu", "--latent-chunks", "1"]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["avg_latent_tokens"] == 3.0  # <boLatent>, one code (one per chunk), <eoLatent>
