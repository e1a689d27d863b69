"""What every curriculum shares (issue 37): only models of the final stage are kept, the optimizer is
reset where the reference resets it, the learning-rate schedules; and Coconut's pause-as-thought control."""

from __future__ import annotations

import json
import math

import pytest
import stage2_toy
import torch

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.data.latent_tokens import PAUSE
from token_assorted.data.schema import Example
from token_assorted.data.tokenizer import load_tokenizer
from token_assorted.evaluation.evaluate import evaluate_dir
from token_assorted.generation.config import EvalConfig, GenerationConfig
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.methods import method_for
from token_assorted.lm.methods.coconut import StageSchedule, add_thought_tokens, encode_steps, stage_sequence
from token_assorted.lm.methods.coconut_pause import CoconutPause
from token_assorted.lm.train import final_phase_cosine, train_lm
from token_assorted.pipeline.preset import preset_names

stage2_toy.register()
TASK = stage2_toy.ToyTask()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"))


def config(data, out, strategy, **overrides) -> TrainConfig:
    base = dict(task="toy", data=str(data["train"]), valid=str(data["valid"]), out=str(out), strategy=strategy,
                tokenizer=str(data["tokenizer"]), epochs=4, batch_size=16, lr=3e-3, progress=False,
                validation=GenerationConfig(limit=4))
    if strategy == "curriculum":
        base.update(codes=str(data["codes"]), tokenizer=None)
    return TrainConfig(**{**base, **overrides})


CURRICULA = {  # 4 epochs of 4 steps; each reaches its final stage in the last epoch or two
    "curriculum": {"curriculum_epochs": 1, "epochs": 5},  # up to 3 chunks of L=4: stage 3 from epoch 4
    "coconut": {"coconut_cot_epochs": 1, "coconut_epochs_per_stage": 0.5, "coconut_stages": 3},
    "coconut-pause": {"coconut_cot_epochs": 1, "coconut_epochs_per_stage": 0.5, "coconut_stages": 3},
    "icot": {"icot_tokens_per_epoch": 2, "icot_remove_all_beyond": 6},
}


@pytest.mark.parametrize("strategy", sorted(CURRICULA))
def test_a_curriculum_never_keeps_a_model_of_an_earlier_stage(data, tmp_path, strategy):
    # Validation says the first epoch is the best: only a final-stage epoch may be kept nonetheless.
    scores = iter([0.9, 0.1, 0.2, 0.3, 0.4])
    out = train_lm(config(data, tmp_path / "m", strategy, **CURRICULA[strategy]),
                   validate=lambda model, run, cfg, acc: next(scores))
    meta = json.loads((out / "token_assorted.json").read_text())
    finals = [h["final_stage"] for h in meta["history"]]
    assert finals[0] is False and finals[-1] is True
    kept = meta["checkpoint"]
    assert kept["final_stage"] is True and finals[kept["epoch"] - 1] is True
    assert kept["epoch"] == meta["best_epoch"] == len(finals)  # the best of the final-stage epochs
    assert kept["stage"] == meta["history"][-1]["stage"] is not None


def test_one_phase_methods_record_their_checkpoint_without_a_stage(data, tmp_path):
    out = train_lm(config(data, tmp_path / "cot", "cot", epochs=2))
    meta = json.loads((out / "token_assorted.json").read_text())
    assert meta["checkpoint"]["stage"] is None and meta["checkpoint"]["final_stage"] is True
    assert "stage" not in meta["history"][0] and "optimizer_resets" not in meta["history"][1]


def test_curriculum_replace_resets_the_optimizer_at_each_stage_change(data, tmp_path):
    out = train_lm(config(data, tmp_path / "m", "curriculum", curriculum_epochs=2, curriculum_max_chunks=1,
                          epochs=4))
    meta = json.loads((out / "token_assorted.json").read_text())
    assert [h["stage"] for h in meta["history"]] == [0, 0, 1, 1]
    assert [h.get("optimizer_resets", 0) for h in meta["history"]] == [0, 0, 1, 0]
    assert meta["checkpoint"]["epoch"] in (3, 4)


def test_a_schedule_that_never_reaches_its_final_stage_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="curriculum.*never reached.*curriculum_epochs"):
        train_lm(config(data, tmp_path / "a", "curriculum", epochs=1))
    with pytest.raises(ConfigError, match="coconut.*never reached.*coconut_stages"):
        train_lm(config(data, tmp_path / "b", "coconut", epochs=2, coconut_stages=3))


# --------------------------------------------------------------------------- learning-rate schedules
def _run(data, tmp_path, strategy, **overrides):
    """The saved model's metadata and the learning rate of each optimizer step."""
    out = train_lm(config(data, tmp_path / strategy, strategy, log_every=1, valid=None, **overrides))
    lines = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    meta = json.loads((out / "token_assorted.json").read_text())
    return meta, [line["lr"] for line in lines if line["split"] == "train"]


def test_a_one_phase_method_warms_up_and_decays_over_the_whole_run(data, tmp_path):
    meta, rates = _run(data, tmp_path, "cot", warmup=2)  # the rate after each of 16 steps
    assert meta["lr_schedule"] == "cosine"
    assert rates[:2] == [1.5e-3, 3e-3] and rates[-1] == 0.0
    assert all(a > b for a, b in zip(rates[1:], rates[2:]))  # decays from the first step after warm-up


def test_a_curriculum_holds_the_peak_rate_until_its_final_phase(data, tmp_path):
    meta, rates = _run(data, tmp_path, "icot", warmup=2, **CURRICULA["icot"])
    assert meta["lr_schedule"] == "final-cosine"
    decay = next(i for i, rate in enumerate(rates) if rate < 3e-3 and i > 0)  # the first step of lower rate
    assert rates[0] == 1.5e-3 and set(rates[1:decay]) == {3e-3} and decay >= 4
    assert all(a > b for a, b in zip(rates[decay - 1:], rates[decay:])) and rates[-1] == 0.0
    final_steps = 4 * sum(epoch["final_stage"] for epoch in meta["history"])  # 4 steps per epoch
    assert len(rates) - decay <= final_steps  # the decay lies inside the final phase


def test_final_cosine_holds_the_peak_until_the_final_phase_then_decays():
    multiplier = final_phase_cosine(warmup=2, final_start=6, total=10)(torch.optim.SGD([torch.zeros(1)], lr=1.0))
    rates = []
    for _ in range(10):
        rates.append(multiplier.get_last_lr()[0])
        multiplier.optimizer.step()
        multiplier.step()
    assert rates[:6] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert rates[6] == 1.0 and all(a > b for a, b in zip(rates[6:], rates[7:]))
    assert math.isclose(rates[8], 0.5)  # halfway through the final phase


# --------------------------------------------------------------------------- coconut-pause
def test_coconut_pause_sequences_put_pause_tokens_where_the_thoughts_are(data):
    tokenizer = load_tokenizer(data["tokenizer"])
    vocab = add_thought_tokens(tokenizer, PAUSE)
    assert tokenizer.convert_ids_to_tokens(vocab.first_code_id) == PAUSE
    encoded = encode_steps(tokenizer, TASK, Example("reverse c a b", ["take b", "take a", "take c"], "b a c"))
    sequence = stage_sequence(encoded, 2, StageSchedule(1, 3, 1, 1), vocab)
    ids, labels = sequence.token_ids(vocab), sequence.all_labels()
    head = len(encoded.prompt_ids)
    assert ids[head:head + 4] == [vocab.begin_id, vocab.first_code_id, vocab.first_code_id, vocab.end_id]
    assert labels[:head + 4] == [-100] * (head + 4)  # inserted, never generated: no loss on them
    assert labels[head + 4:] == ids[head + 4:]


def test_coconut_pause_trains_in_one_pass_and_answers_after_forced_pauses(data, tmp_path, capsys):
    out = train_lm(config(data, tmp_path / "m", "coconut-pause", **CURRICULA["coconut-pause"]))
    meta = json.loads((out / "token_assorted.json").read_text())
    assert "coconut" not in meta and meta["coconut_pause"]["thoughts"] == 3
    assert meta["checkpoint"]["final_stage"] and meta["checkpoint"]["stage"] == 4
    assert isinstance(method_for(config(data, out, "coconut-pause")), CoconutPause)
    result = evaluate_dir(out, TASK.load(data["valid"]), EvalConfig(max_new_tokens=8, progress=False))
    assert all(p.generated.startswith("<bot> <pause> <pause> <pause> <eot>") for p in result.predictions)
    assert all(p.n_latent_tokens >= 5 for p in result.predictions)  # counted as Coconut's thoughts are
    assert main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "k.json"),
                 "--max-new-tokens", "8", "--latent-chunks", "1"]) == 0
    first = json.loads((tmp_path / "k.predictions.jsonl").read_text().splitlines()[0])
    assert first["generated"].startswith("<bot> <pause> <eot>")  # the dial: K steps' worth of pauses
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(data["valid"]), "--out", str(tmp_path / "n.json"),
                 "--intervene", "noise"]) == 2
    assert "no content to change" in capsys.readouterr().err


# --------------------------------------------------------------------------- the shipped presets
FULL_TRAIN = {"math-smollm2": 7373, "math-llama": 395000}  # data.train 0: GSM8K train less 100 valid; MetaMathQA


def _longest(config) -> tuple[int, int]:
    """(trace tokens, steps) of the longest trace a preset trains on: generated tasks from 20 of their own
    examples (words, twice that for a BPE tokenizer); GSM8K-style files at their worst (max_length, 99)."""
    from token_assorted.data.tasks import get_task

    if config.task == "gsm8k":
        return config.train.get("max_length", 512), 99
    task = get_task(config.task)
    examples = task.generate(20, 1, **config.data.options)
    words = max(len(task.trace_text(e).split()) for e in examples)
    scratch = str(config.train.get("model", "scratch-tiny")).startswith("scratch")
    return words * (1 if scratch else 2), max(len(e.steps) for e in examples)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_starts_each_peer_as_its_reference_and_reaches_its_final_phase(name):
    from types import SimpleNamespace

    from token_assorted.pipeline.preset import PLACEHOLDER, load_preset, train_config

    preset = load_preset(name)
    tokens, steps = _longest(preset)
    run = SimpleNamespace(encoded=[SimpleNamespace(trace_ids=[0] * tokens, step_traces=[None] * (steps + 1))])
    for strategy in ("coconut", "coconut-pause", "icot"):
        train = train_config(preset, strategy, 0, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER)
        per_epoch = math.ceil((preset.data.train or FULL_TRAIN[name]) / train.batch_size)
        total = min(train.epochs * per_epoch, train.max_steps or math.inf)
        method = method_for(train)
        method.plan(run, per_epoch, total)  # a ConfigError if the final phase is never reached
        assert method.final(total - 1) and not method.final(0), (name, strategy)
        assert method.stage(0) == 0, (name, strategy)  # Coconut from plain CoT (stage 0), iCoT from the whole trace
