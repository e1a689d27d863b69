"""Stage-2 training: loss falls, output dir loads in plain transformers, exact resume, DDP."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import stage2_toy
import torch
from safetensors.torch import load_file

from token_assorted.cli import main
from token_assorted.core.errors import ConfigError
from token_assorted.generation.config import GenerationConfig
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.train import train_lm
from token_assorted.training.order import epoch_order, group_by_length, micro_indices

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
stage2_toy.register()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"))


def config(data, out, **overrides) -> TrainConfig:
    base = dict(task="toy", data=str(data["train"]), out=str(out), strategy="token-assorted",
                codes=str(data["codes"]), epochs=2, batch_size=8, lr=3e-3, progress=False)
    return TrainConfig(**{**base, **overrides})


def meta(out: Path) -> dict:
    return json.loads((out / "token_assorted.json").read_text())


def test_micro_batches_cover_each_step_once_whatever_the_process_count():
    order = epoch_order(10, 16, seed=0, epoch=0)
    assert sorted(order[:10]) == list(range(10)) and order == epoch_order(10, 16, 0, 0)
    assert order != epoch_order(10, 16, 0, 1)  # a new order every epoch
    for world, accum in [(1, 1), (2, 1), (2, 2), (1, 4)]:
        micro = 8 // (world * accum)
        parts = [i for a in range(accum) for r in range(world)
                 for i in micro_indices(order, 1, 8, micro, a, r, world)]
        assert parts == order[8:16]


def test_group_by_length_keeps_every_example_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.choice([10, 12, 60, 100]) + rng.randrange(5) for _ in range(400)]
    order = epoch_order(400, 400, seed=0, epoch=0)
    grouped = group_by_length(order, lengths, batch_size=8, seed=0, epoch=0, window=10)
    assert sorted(grouped) == sorted(order)

    def padded(o):  # tokens a right-padded batch holds, summed over the batches
        return sum(8 * max(lengths[i] for i in o[b:b + 8]) for b in range(0, len(o), 8))
    assert padded(grouped) < 0.8 * padded(order)
    assert grouped == group_by_length(order, lengths, 8, seed=0, epoch=0, window=10)  # resumable
    assert grouped != group_by_length(order, lengths, 8, seed=0, epoch=1, window=10)
    # batches are shuffled, not sorted: the longest batch is not always last
    widths = [max(lengths[i] for i in grouped[b:b + 8]) for b in range(0, 400, 8)]
    assert widths != sorted(widths)


def test_loss_falls_and_output_dir_is_complete(data, tmp_path):
    out = train_lm(config(data, tmp_path / "run", epochs=6, valid=str(data["valid"]),
                          validation=GenerationConfig(limit=4), group_by_length=True))
    record = meta(out)
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[-1] < 0.7 * losses[0]
    assert all("valid_accuracy" in h for h in record["history"])
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5, 6]  # every epoch, not up to the best
    # the learning curve holds answer lengths too (tokens are half of the comparison)
    assert all(0 < h["valid_avg_generated_tokens"] and 0 <= h["valid_avg_latent_tokens"]
               <= h["valid_avg_generated_tokens"] for h in record["history"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert record["strategy"] == "token-assorted" and record["task"] == "toy"
    assert (record["codebook_size"], record["chunk_size"], record["latents_per_chunk"]) == (16, 4, 1)
    assert record["latent_vocab"]["codebook_size"] == 16
    assert record["config"]["lr"] == 3e-3
    weights = load_file(out / "model.safetensors")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] is not None and generation["pad_token_id"] is not None
    assert list((out / "logs").iterdir())  # TensorBoard events


def test_plain_transformers_loads_and_generates_latent_tokens(data, tmp_path):
    out = train_lm(config(data, tmp_path / "run", epochs=1))
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        ids = tok("reverse a b <boLatent> <latent_3>", return_tensors="pt").input_ids
        assert tok.convert_tokens_to_ids("<latent_3>") in ids[0].tolist(), ids
        assert tok.convert_tokens_to_ids("<latent_3>") < model.config.vocab_size
        gen = model.generate(ids, max_new_tokens=5, do_sample=False)
        assert gen.shape[1] > ids.shape[1]
        assert not any(name.startswith("token_assorted") for name in sys.modules)
        print("OK", gen[0].tolist())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


def test_cot_without_vqvae_builds_its_tokenizer(data, tmp_path):
    out = train_lm(config(data, tmp_path / "run", strategy="cot", codes=None, epochs=1))
    record = meta(out)
    assert record["latent_vocab"] is None and record["strategy"] == "cot"


def test_refuses_to_overwrite_a_run_and_checks_resume(data, tmp_path):
    cfg = config(data, tmp_path / "run", epochs=1)
    train_lm(cfg)
    with pytest.raises(ConfigError):
        train_lm(cfg)
    with pytest.raises(ConfigError):
        train_lm(config(data, tmp_path / "run", epochs=1, seed=5, resume=True))


def test_cli_train_and_user_errors(data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--task", "toy", "--strategy", "poisson", "--data", str(data["train"]),
                 "--codes", str(data["codes"]), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--no-progress"])
    assert code == 0 and meta(out)["strategy"] == "poisson"
    code = main(["train", "--task", "toy", "--strategy", "all-replace", "--data", str(data["train"]),
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "--vqvae" in capsys.readouterr().err


RUNNER = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import stage2_toy; stage2_toy.register()
from token_assorted.lm.train import TrainConfig, train_lm
cfg = TrainConfig(task="toy", data={train!r}, codes={codes!r}, out=sys.argv[1], strategy={strategy!r},
                  epochs=4, batch_size=4, lr=3e-3, save_every=3, progress=False, resume=sys.argv[2] == "1",
                  **{options!r})
train_lm(cfg)
"""
# The other methods' schedules change within the run, so the kill and the resume cross optimizer
# resets: Coconut's CoT epoch, stages 1-3 of 12 steps and the final stage from step 52 (a fresh
# optimizer at every epoch too); iCoT one more token every 8 steps, the whole trace from step 56.
RESUMED = {"token-assorted": {},
           "coconut": {"coconut_cot_epochs": 1, "coconut_epochs_per_stage": 0.75, "coconut_stages": 3},
           "icot": {"icot_tokens_per_epoch": 2, "icot_remove_all_beyond": 7}}
RESETS = {"coconut": [0, 2, 2, 2], "icot": [1, 2, 2, 2]}  # optimizer resets in each epoch


def _runner(data, tmp_path, strategy: str = "token-assorted") -> Path:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER.format(tests=str(TESTS), train=str(data["train"]), codes=str(data["codes"]),
                                  strategy=strategy, options=RESUMED[strategy]))
    return path


def _committed_step(out: Path) -> int:
    pointer = out / "state" / "latest.json"
    if not pointer.is_file():
        return 0
    try:
        return int(json.loads(pointer.read_text())["dir"].split("-")[1])
    except (ValueError, KeyError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(RESUMED))
def test_kill_and_resume_gives_the_same_weights(data, tmp_path, strategy):
    runner = _runner(data, tmp_path, strategy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, str(runner), str(straight), "0"], check=True, env=env, timeout=300)
    total = _committed_step(straight)
    assert total == 4 * 16  # 64 examples / batch 4, 4 epochs
    process = subprocess.Popen([sys.executable, str(runner), str(killed), "0"], env=env)
    deadline = time.time() + 240
    while _committed_step(killed) < 6 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = _committed_step(killed)
    assert 6 <= at_kill < total, f"the run was not killed mid-way (step {at_kill} of {total})"
    subprocess.run([sys.executable, str(runner), str(killed), "1"], check=True, env=env, timeout=300)
    assert _committed_step(killed) == total
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert meta(straight)["history"] == meta(killed)["history"]
    if strategy != "token-assorted":  # the resets happened where they should, in both runs
        assert [h.get("optimizer_resets", 0) for h in meta(killed)["history"]] == RESETS[strategy]


# Two-process DDP of every method: tests/test_scale.py (one launch shared with the FSDP checks).


def test_a_custom_validate_may_return_accuracy_alone(data, tmp_path):
    out = train_lm(config(data, tmp_path / "run", epochs=1, valid=str(data["valid"])),
                   validate=lambda model, run, cfg, acc: 0.25)
    record = meta(out)
    assert record["history"][0]["valid_accuracy"] == 0.25 and record["best_valid_accuracy"] == 0.25


def test_pause_model_starts_as_token_assorted_with_one_more_row(data, tmp_path):
    from token_assorted.generation.scoring import count_latent, text_ids
    from token_assorted.lm.setup import setup

    assorted = setup(config(data, tmp_path / "a", m_values=[0, 4]))
    pause = setup(config(data, tmp_path / "p", strategy="pause", m_values=[0, 4]))
    vocab = pause.latent_vocab
    # <pause> comes after the latent tokens, and only a pause model has it.
    assert vocab.pause_id == vocab.first_code_id + vocab.codebook_size == len(pause.tokenizer) - 1
    assert assorted.latent_vocab.pause_id is None and "<pause>" not in assorted.tokenizer.get_vocab()
    assert pause.codes is None and pause.max_latent_chunks == assorted.max_latent_chunks == 1
    # Same initial weights: the embedding only gains the pause row.
    theirs = pause.model.state_dict()
    for name, tensor in assorted.model.state_dict().items():
        assert torch.equal(tensor, theirs[name][:tensor.shape[0]]), name
    rows = theirs["model.embed_tokens.weight"]
    assert rows.shape[0] == vocab.pause_id + 1
    assert not torch.equal(rows[vocab.pause_id], rows[vocab.begin_id])  # a row of its own, not a delimiter's
    # Same batches, with one pause token where each code was.
    a, p = assorted.method.batch(assorted, range(16), 0, 0)["input_ids"], pause.method.batch(pause, range(16), 0, 0)["input_ids"]
    is_code = (a >= vocab.first_code_id) & (a < vocab.first_code_id + vocab.codebook_size)
    assert is_code.any() and torch.equal(p, torch.where(is_code, vocab.pause_id, a))
    # At evaluation a pause token is a latent token, never text for the verifier.
    ids = [vocab.begin_id, vocab.pause_id, vocab.end_id, 7]
    assert count_latent(ids, vocab) == 3 and text_ids(ids, pause.tokenizer, vocab) == [7]
