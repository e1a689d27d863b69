"""Coconut: stage sequences and their labels (the reference's rule), the step schedule, the KV-cached
multi-pass forward against a naive recomputation, batched generation, saved models, interventions on the
thoughts."""

from __future__ import annotations

import json

import pytest
import stage2_toy
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.data.schema import Example
from token_assorted.data.tokenizer import load_tokenizer
from token_assorted.evaluation.evaluate import evaluate_dir
from token_assorted.generation.config import EvalConfig, GenerationConfig
from token_assorted.generation.thoughts import generate_thoughts, intervention, noise_direction
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.methods.coconut import (
    CoconutForward,
    StageSchedule,
    add_thought_tokens,
    collate_stage,
    encode_steps,
    stage_sequence,
    think,
)
from token_assorted.lm.model_dir import load_model_dir
from token_assorted.lm.models import build_scratch_model
from token_assorted.lm.train import train_lm

stage2_toy.register()
TASK = stage2_toy.ToyTask()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def tokenizer(data):
    tok = load_tokenizer(data["tokenizer"])
    add_thought_tokens(tok)
    return tok


def config(data, out, **overrides) -> TrainConfig:
    # 8 steps per epoch: CoT for 8 steps, stages 1-3 for 6 steps each, then stage 4 (every step of the
    # toy's up to 4 steps replaced, 3 thoughts: the final phase) from step 26, within the last epoch
    base = dict(task="toy", data=str(data["train"]), out=str(out), strategy="coconut",
                tokenizer=str(data["tokenizer"]), epochs=4, batch_size=8, lr=3e-3, progress=False,
                coconut_epochs_per_stage=0.75, coconut_cot_epochs=1, coconut_stages=3)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A toy Coconut model trained through its curriculum (CoT, stages 1-3, then every step replaced)."""
    out = tmp_path_factory.mktemp("coconut") / "model"
    return train_lm(config(data, out, valid=str(data["valid"]), validation=GenerationConfig(limit=4)))


# --------------------------------------------------------------------------- sequences
def test_stage_s_sequence_replaces_exactly_the_first_s_steps(tokenizer):
    vocab = add_thought_tokens(tokenizer)
    example = Example("reverse c a b", ["take b", "take a", "take c"], "b a c")
    encoded = encode_steps(tokenizer, TASK, example)
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    schedule = StageSchedule(thoughts_per_step=2, stages=2, epochs_per_stage=1, cot_epochs=1)
    for stage in range(4):
        sequence = stage_sequence(encoded, stage, schedule, vocab)
        replaced = 3 if stage == 3 else stage  # after the last stage every step goes
        expected_rest = [vocab.end_id, *ids("\n".join(example.steps[replaced:])), *encoded.solution_ids]
        assert sequence.head == encoded.prompt_ids + [vocab.begin_id]
        assert sequence.n_thoughts == 2 * min(stage, 2)
        assert sequence.rest == expected_rest
        assert sequence.labels == [-100] + expected_rest[1:]  # the remaining text carries the loss, not <eot>
        assert sequence.token_ids(vocab) == (encoded.prompt_ids + [vocab.begin_id]
                                            + [vocab.first_code_id] * sequence.n_thoughts + expected_rest)
    # stage 0 is plain CoT between empty markers
    assert stage_sequence(encoded, 0, schedule, vocab).rest[1:-len(encoded.solution_ids)] == encoded.trace_ids


def test_a_stage_beyond_the_example_s_steps_removes_them_all_and_keeps_the_stage_s_count(tokenizer):
    vocab = add_thought_tokens(tokenizer)
    short = encode_steps(tokenizer, TASK, Example("reverse a b", ["take b", "take a"], "b a"))
    sequence = stage_sequence(short, 3, StageSchedule(1, 4, 1, 0), vocab)
    assert sequence.n_thoughts == 3 and sequence.rest == [vocab.end_id, *short.solution_ids]


def test_label_mask_is_the_reference_s_rule(tokenizer):
    """dataset.py:286-298 (get_cot_latent_dataset): labels = [-100] × (question + thoughts + 2 markers),
    then the tokens themselves; the same rule, restated, on a hand-made example at every stage."""
    vocab = add_thought_tokens(tokenizer)
    example = Example("reverse c a b", ["take b", "take a", "take c"], "b a c")
    encoded = encode_steps(tokenizer, TASK, example)
    schedule = StageSchedule(thoughts_per_step=2, stages=2, epochs_per_stage=1, cot_epochs=1)
    for stage in range(4):
        sequence = stage_sequence(encoded, stage, schedule, vocab)
        tokens = sequence.token_ids(vocab)
        question, latents = len(encoded.prompt_ids), sequence.n_thoughts
        reference = [-100] * (question + latents + 2) + tokens[question + latents + 2:]
        assert sequence.all_labels() == reference
        assert len(sequence.all_labels()) == len(tokens)
        assert tokens[question] == vocab.begin_id and tokens[question + latents + 1] == vocab.end_id
    # by hand, stage 1 (2 thoughts for "take b"): only "take a", "take c" and the solution carry loss
    sequence = stage_sequence(encoded, 1, schedule, vocab)
    supervised = [t for t, label in zip(sequence.token_ids(vocab), sequence.all_labels()) if label != -100]
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert supervised == ids("take a\ntake c") + encoded.solution_ids


def test_schedule_stages_phases_and_the_final_phase():
    # in steps: 3 steps of CoT, then stages of 4 steps (epochs of 4 steps: 0.75 and 1 epoch)
    schedule = StageSchedule(thoughts_per_step=1, stages=2, epochs_per_stage=1, cot_epochs=0.75, steps_per_epoch=4,
                             longest=3)
    stages = [schedule.stage(b) for b in range(16)]
    assert stages == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4]
    assert schedule.final_stage == 3  # traces of 3 steps: stage 2 still writes the third as text
    assert [schedule.phase(b) for b in range(16)][-2:] == [3, 3]
    assert [schedule.thoughts(s) for s in stages][-6:] == [2, 2, 2, 2, 2, 2]
    short = StageSchedule(1, 2, 1, 1, steps_per_epoch=4, longest=2)
    assert short.final_stage == 2  # stage 2 replaces every step of a 2-step trace already
    with pytest.raises(ConfigError, match="coconut_thoughts_per_step"):
        StageSchedule(0, 2, 1, 1)


# --------------------------------------------------------------------------- the forward
def _naive_thoughts_and_loss(lm, sequence, n_thoughts):
    """One row, no cache, no padding: each thought from a full forward over everything before it."""
    embed = lm.get_input_embeddings()
    inputs = embed(torch.tensor([sequence.head]))  # (1, A, D)
    thoughts = []
    for _ in range(n_thoughts):
        last = lm(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1]  # (1, D)
        thoughts.append(last[0])
        inputs = torch.cat([inputs, last[:, None]], dim=1)
    inputs = torch.cat([inputs, embed(torch.tensor([sequence.rest]))], dim=1)
    logits = lm(inputs_embeds=inputs).logits[0]  # (T, V)
    start = len(sequence.head) + n_thoughts - 1  # the position whose prediction is <eot>
    predicted = logits[start:start + len(sequence.rest)]
    loss_sum = F.cross_entropy(predicted, torch.tensor(sequence.labels), reduction="sum")  # -100 skipped
    return thoughts, loss_sum, sum(label != -100 for label in sequence.labels)


@pytest.mark.parametrize("preset", ["scratch-tiny", "scratch-gpt2-tiny"])  # rotary (Llama) and learned positions (GPT-2)
def test_a_thought_is_the_previous_last_hidden_state_and_the_cached_loss_is_the_naive_one(tokenizer, preset):
    vocab = add_thought_tokens(tokenizer)
    lm = build_scratch_model(preset, tokenizer, 128, seed=0)
    lm.resize_token_embeddings(len(tokenizer))
    schedule = StageSchedule(thoughts_per_step=2, stages=2, epochs_per_stage=1, cot_epochs=0)
    examples = [Example("reverse c a b d", ["take d", "take b", "take a", "take c"], "d b a c"),
                Example("reverse a b", ["take b", "take a"], "b a")]  # prompts of different lengths
    sequences = [stage_sequence(encode_steps(tokenizer, TASK, ex), 2, schedule, vocab) for ex in examples]
    batch = collate_stage(sequences, tokenizer.pad_token_id)
    assert batch["head_mask"][1, 0] == 0  # the shorter prompt is left-padded: <bot> in one column
    state = think(lm, batch["head_ids"], batch["head_mask"], 4)
    loss = CoconutForward(lm)(**batch)
    total, count = 0.0, 0
    for row, sequence in enumerate(sequences):
        thoughts, loss_sum, n = _naive_thoughts_and_loss(lm, sequence, 4)
        for k in range(4):
            torch.testing.assert_close(state.thoughts[k][row], thoughts[k], rtol=1e-4, atol=1e-5)
        total, count = total + loss_sum, count + n
    torch.testing.assert_close(loss, total / count, rtol=1e-4, atol=1e-5)
    # gradients flow through the chain of thoughts as through the naive recomputation
    grads = torch.autograd.grad(loss, [lm.get_input_embeddings().weight])[0]
    naive = torch.autograd.grad(total / count, [lm.get_input_embeddings().weight])[0]
    torch.testing.assert_close(grads, naive, rtol=1e-3, atol=1e-6)


def test_thoughts_carry_gradient_to_the_prompt(tokenizer):
    # With every step replaced the loss can reach the prompt's positions only through the thoughts' chain.
    vocab = add_thought_tokens(tokenizer)
    lm = build_scratch_model("scratch-tiny", tokenizer, 64, seed=1)
    lm.resize_token_embeddings(len(tokenizer))
    sequence = stage_sequence(encode_steps(tokenizer, TASK, Example("reverse a b", ["take b", "take a"], "b a")),
                              2, StageSchedule(1, 2, 1, 0), vocab)
    batch = collate_stage([sequence], tokenizer.pad_token_id)
    state = think(lm, batch["head_ids"], batch["head_mask"], 2)
    (state.thoughts[-1].sum()).backward()
    assert lm.get_input_embeddings().weight.grad[batch["head_ids"][0, 1]].abs().sum() > 0


# --------------------------------------------------------------------------- training and answering
def test_training_follows_the_curriculum_and_saves_a_plain_hf_dir(trained):
    meta = json.loads((trained / "token_assorted.json").read_text())
    assert meta["strategy"] == "coconut"
    record = meta["coconut"]
    assert (record["stages"], record["thoughts_per_step"], record["thoughts"], record["stage"]) == (3, 1, 3, 4)
    assert meta["best_epoch"] == 4  # only the final phase's epochs may be kept
    assert meta["checkpoint"] == {"epoch": 4, "stage": 4, "final_stage": True}
    assert [h["stage"] for h in meta["history"]] == [0, 2, 3, 4]
    # a fresh optimizer at every epoch (run.py:312-319) and every stage change (steps 14, 20, 26)
    assert [h.get("optimizer_resets", 0) for h in meta["history"]] == [0, 2, 2, 2]
    latent = [h["valid_avg_latent_tokens"] for h in meta["history"]]
    assert latent[0] >= 2 and latent[3] >= 5  # validation answers at the stage it trained: <bot> n <eot>
    assert meta["train_seconds_per_step"] > 0
    model = AutoModelForCausalLM.from_pretrained(str(trained))  # plain transformers loads it
    tok = load_tokenizer(trained)
    assert tok.convert_tokens_to_ids("<bot>") == record["begin_id"] < model.config.vocab_size


def test_batched_generation_equals_one_question_at_a_time(trained, data):
    loaded = load_model_dir(trained, "cpu")
    vocab = add_thought_tokens(loaded.tokenizer)
    questions = TASK.load(data["valid"])
    prompts = [[loaded.tokenizer.bos_token_id] + loaded.tokenizer(TASK.prompt_text(ex), add_special_tokens=False)
               .input_ids for ex in questions]
    run = lambda size: generate_thoughts(loaded.model, loaded.tokenizer, prompts,  # noqa: E731
                                         EvalConfig(batch_size=size, max_new_tokens=12, progress=False),
                                         n_thoughts=3, vocab=vocab).ids
    batched, single = run(8), run(1)
    assert batched == single
    assert all(ids[:5] == [vocab.begin_id] + [vocab.first_code_id] * 3 + [vocab.end_id] for ids in batched)
    assert len({len(p) for p in prompts}) > 1  # the batch really was padded


def test_eval_counts_thoughts_as_latent_positions_and_interventions_change_them(trained, data, tmp_path, capsys):
    assert main(["eval", "--model", str(trained), "--data", str(data["valid"]), "--out", str(tmp_path / "a.json"),
                 "--max-new-tokens", "12"]) == 0
    plain = json.loads((tmp_path / "a.json").read_text())
    assert plain["latent_span_share"] == 1.0
    lines = (tmp_path / "a.predictions.jsonl").read_text().splitlines()
    for line in lines:  # <bot>, 3 thoughts, <eot> are generated positions, counted as latent
        prediction = json.loads(line)
        assert prediction["generated"].startswith("<bot> <thought> <thought> <thought> <eot>")
        markers = sum(prediction["generated"].split().count(t) for t in ("<bot>", "<thought>", "<eot>"))
        assert prediction["n_latent_tokens"] == markers >= 5  # (a barely trained model may write more)
    outputs = {}
    for mode in ("none", "noise", "zero"):
        out = tmp_path / f"{mode}.json"
        assert main(["eval", "--model", str(trained), "--data", str(data["valid"]), "--out", str(out),
                     "--max-new-tokens", "12", "--intervene", mode]) == 0
        outputs[mode] = [json.loads(line)["generated"] for line in
                         out.with_name(f"{mode}.predictions.jsonl").read_text().splitlines()]
    assert outputs["none"] == [json.loads(line)["generated"] for line in lines]  # none is plain eval
    assert outputs["noise"] != outputs["none"] and outputs["zero"] != outputs["none"]
    capsys.readouterr()
    assert main(["eval", "--model", str(trained), "--data", str(data["valid"]), "--out", str(tmp_path / "b.json"),
                 "--intervene", "random"]) == 2
    assert "noise, zero" in capsys.readouterr().err


def test_noise_has_the_asked_norm_and_does_not_depend_on_the_batch():
    thought = torch.randn(3, 16)
    noisy = intervention("noise", [7, 2, 5], seed=1, scale=4.0)(thought, 0)
    torch.testing.assert_close((noisy - thought).norm(dim=-1), 4.0 * thought.norm(dim=-1))
    alone = intervention("noise", [2], seed=1, scale=4.0)(thought[1:2], 0)
    torch.testing.assert_close(alone[0], noisy[1])  # question 2's noise, whatever its batch
    assert not torch.equal(noise_direction(1, 2, 0, 16), noise_direction(1, 2, 1, 16))  # per thought
    assert torch.equal(intervention("zero", [0])(thought, 0), torch.zeros_like(thought))


def test_only_coconut_models_take_thought_interventions(data, tmp_path, capsys):
    out = train_lm(config(data, tmp_path / "cot", strategy="cot", epochs=1))
    assert main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "r.json"),
                 "--intervene", "noise"]) == 2
    assert "only a Coconut model" in capsys.readouterr().err


def test_evaluate_dir_answers_with_the_recorded_thoughts(trained, data):
    result = evaluate_dir(trained, TASK.load(data["valid"]), EvalConfig(max_new_tokens=12, progress=False))
    assert result.avg_latent_tokens >= 5 and result.n == 8
    assert all(p.generated.startswith("<bot> <thought> <thought> <thought> <eot>") for p in result.predictions)


def test_bad_coconut_settings_are_one_line_errors(data, tmp_path, capsys):
    code = main(["train", "--task", "toy", "--strategy", "coconut", "--data", str(data["train"]),
                 "--tokenizer", str(data["tokenizer"]), "--out", str(tmp_path / "x"), "--coconut-stages", "0"])
    assert code == 2 and "coconut_stages" in capsys.readouterr().err


def test_the_dial_gives_k_steps_of_thoughts_up_to_the_trained_stages(trained, data, tmp_path, capsys):
    for k, span in [(0, "<bot> <eot>"), (2, "<bot> <thought> <thought> <eot>")]:
        out = tmp_path / f"k{k}.json"
        assert main(["eval", "--model", str(trained), "--data", str(data["valid"]), "--out", str(out),
                     "--max-new-tokens", "12", "--latent-chunks", str(k)]) == 0
        lines = out.with_name(f"k{k}.predictions.jsonl").read_text().splitlines()
        assert all(json.loads(line)["generated"].startswith(span + " ") for line in lines)
        assert json.loads(out.read_text())["latent_chunks"] == k
    capsys.readouterr()
    assert main(["eval", "--model", str(trained), "--data", str(data["valid"]), "--out", str(tmp_path / "x.json"),
                 "--latent-chunks", "4"]) == 2
    assert "at most 3 stages" in capsys.readouterr().err


def test_lora_trains_coconut_and_saves_a_merged_model(data, tmp_path):
    from token_assorted.lm.lora import LoraSettings

    out = train_lm(config(data, tmp_path / "lora", epochs=1, coconut_cot_epochs=0, coconut_stages=1,
                          coconut_epochs_per_stage=0.5, lora=LoraSettings(r=4)))
    assert not any(name.endswith(".lora_A.weight") for name in load_file_keys(out))  # merged on save
    result = evaluate_dir(out, TASK.load(data["valid"]), EvalConfig(max_new_tokens=6, progress=False))
    assert all(p.generated.startswith("<bot> <thought> <eot>") for p in result.predictions)


def load_file_keys(model_dir):
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("task", ["prosqa", "prontoqa", "keys-maze"])
@pytest.mark.parametrize("strategy", ["coconut", "icot"])
def test_every_generated_task_trains_and_answers(task, strategy, tmp_path):
    """A few steps on each task's generated data: its steps, traces and verifier work with both methods."""
    from token_assorted.data.schema import save_examples
    from token_assorted.data.tasks import get_task

    examples = get_task(task).generate(12, 0)
    save_examples(tmp_path / "train.jsonl", examples[:8])
    save_examples(tmp_path / "test.jsonl", examples[8:])
    out = train_lm(TrainConfig(task=task, data=str(tmp_path / "train.jsonl"), out=str(tmp_path / "m"),
                               strategy=strategy, epochs=1, batch_size=4, max_length=2048, progress=False,
                               coconut_stages=1, coconut_cot_epochs=0, coconut_epochs_per_stage=0.5,
                               icot_final_epochs=1))
    result = evaluate_dir(out, examples[8:], EvalConfig(max_new_tokens=4, progress=False))
    assert result.n == 4
    span = "<bot> <thought> <eot>" if strategy == "coconut" else ""
    assert all(p.generated.startswith(span) for p in result.predictions)


def test_explain_refuses_a_coconut_model_in_one_line(trained, capsys):
    assert main(["explain", "--model", str(trained), "--question", "reverse a b", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "continuous vectors" in err and len(err.strip().splitlines()) == 1
