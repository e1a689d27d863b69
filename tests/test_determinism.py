"""Determinism on CPU: the same seed gives bit-identical data, VQ-VAE codes and LM weights.

Each check runs the same thing twice and compares exactly (`==` on bytes, `torch.equal`
on tensors); a different seed must change the result, so a check cannot pass by
ignoring its input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from token_assorted.cli import main
from token_assorted.data.tasks import TASK_NAMES, get_task

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import stage2_toy  # noqa: E402

GENERATORS = [name for name in TASK_NAMES if name not in ("gsm8k", "qa")]  # loaded, never generated
SMALL = {"prontoqa": ["--hops", "2"], "prosqa": [], "keys-maze": []}


def _generate(tmp_path: Path, name: str, seed: int, tag: str) -> bytes:
    out = tmp_path / f"{name}-{seed}-{tag}.jsonl"
    assert main(["data", "generate", name, "--n", "6", "--seed", str(seed), "--out", str(out),
                 *SMALL.get(name, [])]) == 0
    return out.read_bytes()


@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_writes_the_same_bytes_for_the_same_seed(tmp_path, name):
    first, again = _generate(tmp_path, name, 3, "a"), _generate(tmp_path, name, 3, "b")
    assert first == again and first
    assert _generate(tmp_path, name, 4, "c") != first


def test_generators_cover_every_task_with_a_generator():
    for name in TASK_NAMES:
        try:
            get_task(name).generate(1, 0)
        except NotImplementedError:
            assert name not in GENERATORS
        else:
            assert name in GENERATORS


# --- stage 1 --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pronto_file(tmp_path_factory) -> Path:
    # Short traces keep the VQ-VAE runs to a second or two.
    path = tmp_path_factory.mktemp("data") / "pronto.jsonl"
    assert main(["data", "generate", "prontoqa", "--n", "8", "--seed", "0", "--hops", "1",
                 "--no-distractors", "--out", str(path)]) == 0
    return path


def _train_vqvae(data: Path, out: Path, seed: int) -> Path:
    from token_assorted.vqvae import VQVAETrainConfig, train_vqvae

    config = VQVAETrainConfig(task="prontoqa", data=str(data), out=str(out), chunk_size=4, compression=2,
                              codebook_size=8, steps=8, batch_size=4, warmup=2, valid_every=4, seed=seed,
                              d_model=16, heads=2, encoder_layers=1, decoder_layers=1, prompt_layers=1,
                              codebook_dim=4, max_prompt_len=64, dead_code_threshold=1.0, progress=False,
                              device="cpu")
    return train_vqvae(config)


def _codes(directory: Path, data: Path) -> list[list[int]]:
    from token_assorted.vqvae import encode_examples, load_vqvae

    task = get_task("prontoqa")
    return encode_examples(load_vqvae(directory), task, task.load(data))


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _any_weight_differs(a: Path, b: Path) -> bool:
    first, second = load_file(a), load_file(b)
    return any(not torch.equal(first[name], second[name]) for name in first)


def test_vqvae_same_seed_gives_identical_weights_and_codes(pronto_file, tmp_path):
    torch.set_num_threads(1)
    one = _train_vqvae(pronto_file, tmp_path / "one", seed=7)
    two = _train_vqvae(pronto_file, tmp_path / "two", seed=7)
    _assert_same_weights(one / "model.safetensors", two / "model.safetensors")
    codes = _codes(one, pronto_file)
    assert codes == _codes(two, pronto_file) and any(codes)
    other = _train_vqvae(pronto_file, tmp_path / "other", seed=8)
    assert _any_weight_differs(one / "model.safetensors", other / "model.safetensors")


# --- stage 2 --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    stage2_toy.register()
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"), n_train=16, n_valid=4)


def _train_lm(toy: dict[str, Path], out: Path, seed: int) -> Path:
    from token_assorted.lm.config import TrainConfig
    from token_assorted.lm.train import train_lm

    # token-assorted mixing draws m per example from the seed: the random path is exercised.
    config = TrainConfig(task="toy", data=str(toy["train"]), codes=str(toy["codes"]), out=str(out),
                         strategy="token-assorted", epochs=2, batch_size=8, lr=3e-3, seed=seed, progress=False)
    return train_lm(config)


def test_short_training_run_same_seed_gives_identical_weights(toy, tmp_path):
    torch.set_num_threads(1)
    one = _train_lm(toy, tmp_path / "one", seed=11)
    two = _train_lm(toy, tmp_path / "two", seed=11)
    _assert_same_weights(one / "model.safetensors", two / "model.safetensors")
    other = _train_lm(toy, tmp_path / "other", seed=12)
    assert _any_weight_differs(one / "model.safetensors", other / "model.safetensors")
