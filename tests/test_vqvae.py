"""Stage 1: the VQ-VAE model, its training loop, its saved directory and its CLI.

Everything runs on 8 hand-made three-step syllogisms with a tiny model, so the whole file
takes seconds on one CPU thread. The syllogisms are ProsQA-shaped, so the `prosqa` task
renders and loads them (no task of our own to register).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from launch import torchrun
from safetensors.torch import load_file

from token_assorted.cli import main
from token_assorted.core.errors import CheckpointError, ConfigError
from token_assorted.data.encoding import encode_example
from token_assorted.data.schema import Example, save_examples
from token_assorted.data.tasks import get_task
from token_assorted.data.tasks.base import normalize_text
from token_assorted.data.tokenizer import build_word_tokenizer
from token_assorted.vqvae import (
    VQVAE,
    VQVAEConfig,
    VQVAETrainConfig,
    decode_codes,
    encode_examples,
    evaluate_reconstruction,
    load_vqvae,
    split_trace,
    train_vqvae,
)
from token_assorted.vqvae.chunks import chunk_examples, collate
from token_assorted.vqvae.codes import codebook_of, encode_codes_file, from_codes_file, from_vqvae
from token_assorted.vqvae.decoding import greedy_tokens
from token_assorted.vqvae.mixture import (
    chunk_side,
    copy_head,
    copy_keys,
    log_probs,
    logits,
    predict,
    slots_of,
    target_log_probs,
)
from token_assorted.vqvae.quantizer import nearest_codes
from token_assorted.vqvae.search import token_log_likelihoods

NAMES = ["Tom", "Ann", "Rex", "Max", "Sam", "Eve", "Bob", "Zoe"]
WORDS = ["wumpus", "yimpus", "lempus", "gerpus", "rorpus", "timpus", "kerpus", "bompus", "felpus"]
TASK = get_task("prosqa")


def toy_examples(n: int = 8) -> list[Example]:
    """Three-step syllogisms: the trace follows from the prompt, as in ProsQA."""
    examples = []
    for i in range(n):
        name, a, b, c = NAMES[i % 8], WORDS[i % 9], WORDS[(i + 3) % 9], WORDS[(i + 5) % 9]
        steps = [f"{name} is a {a}.", f"Every {a} is a {b}.", f"Every {b} is a {c}."]
        examples.append(Example(f"Every {b} is a {c}. {name} is a {a}. Every {a} is a {b}. Is {name} a {c}?",
                                steps, "Yes"))
    return examples


TINY = dict(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, prompt_layers=1, codebook_dim=8,
            max_prompt_len=64)


def tiny_config(data: Path, out: Path, **overrides) -> VQVAETrainConfig:
    options = dict(task="prosqa", data=str(data), valid=str(data), out=str(out), chunk_size=4, compression=4,
                   codebook_size=8, steps=250, batch_size=8, lr=5e-3, warmup_steps=10, valid_every=50,
                   dead_code_threshold=0.1, progress=False, **TINY)
    options.update(overrides)
    return VQVAETrainConfig(**options)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    save_examples(path, toy_examples())
    return path


@pytest.fixture(scope="module")
def trained(toy_file, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return train_vqvae(tiny_config(toy_file, tmp_path_factory.mktemp("vq") / "run"))


def tiny_model(**overrides) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**dict(vocab_size=40, pad_id=0, chunk_size=4, compression=2, codebook_size=8,
                                       dead_code_threshold=0.5), **TINY, **overrides}))


def random_batch(batch: int = 3, chunks: int = 2, chunk_size: int = 4):
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(4, 40, (batch, 6), generator=generator)
    pad = torch.zeros_like(prompt, dtype=torch.bool)
    pad[0, 4:] = True
    chunk_ids = torch.randint(4, 40, (batch, chunks, chunk_size), generator=generator)
    present = torch.ones(batch, chunks, dtype=torch.bool)
    present[1, 1] = False  # example 1 has one chunk: the second slot is batch padding
    return prompt, pad, chunk_ids, present


# --- chunks and shapes -----------------------------------------------------------------
def test_split_trace_pads_the_trailing_partial_chunk():
    assert split_trace([5, 6, 7, 8, 9], 4, 0) == [[5, 6, 7, 8], [9, 0, 0, 0]]
    assert split_trace([5, 6, 7, 8], 4, 0) == [[5, 6, 7, 8]]
    assert split_trace([], 4, 0) == []


def test_collate_marks_batch_padding():
    tokenizer = build_word_tokenizer(["a b c d e f g h i j"])
    examples = [Example("a b", ["c d e f g"], "h"), Example("a", ["c"], "h")]
    batch = collate(chunk_examples(tokenizer, TASK, examples, 4), tokenizer.pad_token_id, 64)
    assert batch.chunk_ids.shape == (2, 2, 4)
    assert batch.chunk_present.tolist() == [[True, True], [True, False]]
    assert batch.targets.shape == (3, 4)
    assert batch.prompt_pad.tolist()[1][-1] is True


@pytest.mark.parametrize("autoregressive", [False, True])
def test_forward_shapes(autoregressive):
    model = tiny_model(autoregressive=autoregressive)
    prompt, pad, chunk_ids, present = random_batch()
    output = model(prompt, pad, chunk_ids, present)
    n_real = int(present.sum())
    assert output.predictions.shape == (n_real, 4)
    assert output.codes.shape == (n_real, 2)  # L/r = 2 latents per chunk
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    model.eval()
    assert model.codes_of(prompt, pad, chunk_ids, present).shape == (n_real, 2)
    assert model.tokens_of(prompt, pad, output.codes, present).shape == (n_real, 4)


# --- the copy head -----------------------------------------------------------------------
def decoder_states(model: VQVAE, prompt, pad, chunk_ids, present):
    """Teacher-forced decoder states of a batch, and the prompt memory they read."""
    memory = model.encode_prompt(prompt, pad)
    quantized = nearest_codes(model.quantizer, model.encode(chunk_ids, memory, pad)[present])[0]
    grid = torch.zeros(*present.shape, model.config.latents_per_chunk, model.config.d_model)
    grid[present] = quantized
    return model.decode(grid, memory, pad, chunk_ids), memory


def test_copy_head_gives_a_distribution_summing_to_one():
    model = tiny_model()
    batch = random_batch()
    hidden, memory = decoder_states(model, *batch)
    probabilities = log_probs(model, hidden, memory, batch[1], batch[0]).exp()  # (B, N, L, V)
    assert torch.allclose(probabilities.sum(-1), torch.ones(probabilities.shape[:3]), atol=1e-5)
    output = model(*batch)
    output.loss.backward()  # ids absent from the prompt have log 0 = -inf; their gradient must not be NaN
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.copy_gate.weight.grad.abs().sum() > 0 and model.copy_key.weight.grad.abs().sum() > 0


def test_copy_head_puts_the_copied_mass_on_the_prompt_tokens():
    model = tiny_model().eval()
    prompt = torch.tensor([[7, 7, 9, 11, 3]])  # 7 twice; the last position (3) is padding
    pad = torch.tensor([[False, False, False, False, True]])
    memory = model.encode_prompt(prompt, pad)
    hidden = torch.randn(1, 2, 4, 32)  # (B, N, L, D) any decoder states
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(-60.0)  # p_gen ~ 0: copy only
        copied = log_probs(model, hidden, memory, pad, prompt).exp()  # (1, 2, 4, V)
        model.copy_gate.bias.fill_(60.0)  # p_gen ~ 1: vocabulary head only
        generated = log_probs(model, hidden, memory, pad, prompt)
    assert torch.allclose(copied[..., [7, 9, 11]].sum(-1), torch.ones(1, 2, 4), atol=1e-5)
    assert copied[..., 3].max() < 1e-6 and copied[..., 20].max() < 1e-6  # padding and absent ids get nothing
    assert copied[..., 7].min() > 0  # both positions of id 7 add to its mass
    assert torch.allclose(generated, torch.log_softmax(logits(model, hidden), -1), atol=1e-4)


def test_gradients_reach_encoder_through_straight_through():
    model = tiny_model()
    model(*random_batch())  # first pass initialises the codebook by k-means
    output = model(*random_batch())
    output.recon_loss.backward()  # reconstruction only: the encoder gets it through q only via the STE
    for name, parameter in model.encoder.named_parameters():
        if "linear2.weight" in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.latent_queries.grad.abs().sum() > 0


# --- training, saving, loading ---------------------------------------------------------
def test_tiny_model_overfits_eight_examples(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["token_accuracy"] == 1.0
    assert metrics["exact_chunk_accuracy"] == 1.0
    assert 0 < metrics["codebook_usage"] <= 1
    assert metrics["compression_rate"] == pytest.approx(metrics["trace_tokens"] / metrics["latent_tokens"])
    log = [json.loads(line) for line in (trained / "logs" / "log.jsonl").read_text().splitlines()]
    assert {"train", "valid"} <= {record["split"] for record in log}
    assert any(path.name.startswith("events.") for path in (trained / "logs").iterdir())  # TensorBoard
    info = json.loads((trained / "config.json").read_text())
    assert info["task"] == "prosqa" and info["model"]["codebook_size"] == 8 and info["tokenizer_fingerprint"]


def test_save_load_gives_identical_codes_and_decodes_the_trace(trained, toy_file, tmp_path):
    examples = toy_examples()
    first, second = load_vqvae(trained), load_vqvae(trained)
    codes = encode_examples(first, TASK, examples, batch_size=3)
    assert codes == encode_examples(second, TASK, examples, batch_size=8)
    assert all(len(c) == -(-len(encode_example(first.tokenizer, TASK, e).trace_ids) // 4) for c, e in
               zip(codes, examples))
    # Stage 2 reads codes from a file of their own, or computes them in memory: never into the VQ-VAE's folder.
    files = sorted(trained.rglob("*"))
    encode_codes_file(first, TASK, toy_file, tmp_path / "codes.json")
    latents = from_codes_file(tmp_path / "codes.json", len(examples), toy_file)
    assert latents.codes == codes == from_vqvae(trained, TASK, examples).codes
    assert torch.equal(latents.codebook, codebook_of(first.model, 8))
    assert latents.vqvae == str(trained) and latents.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert sorted(trained.rglob("*")) == files
    with pytest.raises(ConfigError, match="data files differ"):  # the codes of another file
        from_codes_file(tmp_path / "codes.json", len(examples), tmp_path / "codes.json")
    prompt = encode_example(first.tokenizer, TASK, examples[2]).prompt_ids
    decoded = decode_codes(first, prompt, codes[2])
    assert normalize_text(decoded) == normalize_text(" ".join(examples[2].steps))
    assert evaluate_reconstruction(first, TASK, examples)["token_accuracy"] == 1.0


def test_mismatched_checkpoint_is_refused(trained, toy_file, tmp_path):
    with pytest.raises(CheckpointError, match="codebook size K=8"):
        load_vqvae(trained, codebook_size=64)
    with pytest.raises(CheckpointError, match="chunk size L=4"):
        load_vqvae(trained, chunk_size=16)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        load_vqvae(trained, tokenizer=build_word_tokenizer(["completely different words"]))
    with pytest.raises(CheckpointError, match="codebook_size=8"):
        train_vqvae(tiny_config(toy_file, trained, codebook_size=16, resume=True))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_vqvae(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    with pytest.raises(CheckpointError, match="pickle"):
        load_vqvae(tmp_path)


def test_a_config_naming_removed_options_loads_only_with_their_kept_values(trained, toy_file, tmp_path):
    # Runs saved before the options were removed name them: with the values the code still
    # computes they load (and resume), with any other value they are refused.
    old = tmp_path / "old"
    shutil.copytree(trained, old, ignore=shutil.ignore_patterns("codes", "logs"))
    info = json.loads((old / "config.json").read_text())
    kept = {"tie_embeddings": True, "copy_head": True, "word_dropout": 0.0, "rotation_trick": False,
            "prefix_rank": 0}
    (old / "config.json").write_text(json.dumps({**info, "model": {**info["model"], **kept},
                                                 "train": {**info["train"], **kept}}))
    assert encode_examples(load_vqvae(old), TASK, toy_examples()) == encode_examples(load_vqvae(trained), TASK,
                                                                                      toy_examples())
    train_vqvae(tiny_config(toy_file, old, resume=True))  # already finished: nothing differs
    for name, value in (("word_dropout", 0.3), ("copy_head", False), ("prefix_rank", 8)):
        (old / "config.json").write_text(json.dumps({**info, "model": {**info["model"], name: value},
                                                     "train": {**info["train"], name: value}}))
        with pytest.raises(CheckpointError, match=f"{name}={value!r}"):
            load_vqvae(old)
        with pytest.raises(CheckpointError, match=f"{name}={value!r}"):
            train_vqvae(tiny_config(toy_file, old, resume=True))


def test_fresh_run_refuses_an_existing_directory(trained, toy_file):
    with pytest.raises(ConfigError, match="--resume"):
        train_vqvae(tiny_config(toy_file, trained))


def test_resume_gives_the_same_final_weights(toy_file, tmp_path):
    short = dict(steps=14, valid_every=5, dead_code_threshold=1.0)  # high threshold: codes get replaced (RNG)
    whole = train_vqvae(tiny_config(toy_file, tmp_path / "whole", **short))
    parted = tmp_path / "parted"
    train_vqvae(tiny_config(toy_file, parted, stop_at=7, **short))
    assert json.loads((parted / "state" / "latest.json").read_text())["dir"] == "step-00000007"
    assert not (parted / "metrics.json").exists()
    train_vqvae(tiny_config(toy_file, parted, resume=True, **short))
    expected, got = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    steps = [r["step"] for r in map(json.loads, (parted / "logs" / "log.jsonl").read_text().splitlines())
             if r["split"] == "valid"]
    assert steps == [5, 10, 14]


# --- command line ----------------------------------------------------------------------
def test_cli_train_encode_decode_round_trip(toy_file, tmp_path, capsys):
    out = tmp_path / "cli"
    options = tmp_path / "options.yaml"
    options.write_text("d_model: 32\nheads: 2\nencoder_layers: 1\ndecoder_layers: 1\ncodebook_dim: 8\n"
                       "max_prompt_len: 64\nwarmup_steps: 10\ndead_code_threshold: 0.1\n")
    code = main(["vqvae", "train", "--task", "prosqa", "--data", str(toy_file), "--valid", str(toy_file),
                 "--out", str(out), "--config", str(options), "--chunk-size", "4", "--compression", "4",
                 "--codebook-size", "8", "--steps", "250", "--batch-size", "8", "--lr", "5e-3",
                 "--valid-every", "125", "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["train"]["d_model"] == 32
    codes_file = tmp_path / "codes.json"
    assert main(["vqvae", "encode", "--vqvae", str(out), "--data", str(toy_file), "--task", "prosqa",
                 "--out", str(codes_file)]) == 0
    record = json.loads(codes_file.read_text())
    assert len(record["codes"]) == 8 and record["skipped"] == [] and record["codebook_size"] == 8
    tokenizer = load_vqvae(out).tokenizer
    assert all(len(c) == -(-len(encode_example(tokenizer, TASK, e).trace_ids) // 4)  # one code per chunk of 4
               for c, e in zip(record["codes"], toy_examples()))
    capsys.readouterr()
    example = toy_examples()[5]
    assert main(["vqvae", "decode", "--vqvae", str(out), "--prompt", example.question,
                 "--codes", ",".join(map(str, record["codes"][5]))]) == 0
    assert normalize_text(capsys.readouterr().out) == normalize_text(" ".join(example.steps))
    assert main(["vqvae", "decode", "--vqvae", str(out), "--prompt", "x", "--codes", "99"]) == 2


def test_cli_reports_user_errors_in_one_line(toy_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("codebook_sise: 8\n")
    assert main(["vqvae", "train", "--config", str(bad), "--data", str(toy_file), "--out", str(tmp_path / "o")]) == 2
    assert "codebook_sise" in capsys.readouterr().err
    assert main(["vqvae", "train", "--data", str(toy_file), "--out", str(tmp_path / "o"),
                 "--local-context", "-1"]) == 2
    assert "local_context" in capsys.readouterr().err
    assert main(["vqvae", "decode", "--vqvae", str(tmp_path), "--prompt", "x", "--codes", "1"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


# --- the autoregressive decoder --------------------------------------------------------
def test_autoregressive_decoder_is_causal_within_a_chunk():
    model = tiny_model(autoregressive=True).eval()
    prompt, pad, chunk_ids, _ = random_batch()
    memory = model.encode_prompt(prompt, pad)
    quantized = torch.randn(3, 2, 2, 32)
    changed = chunk_ids.clone()
    changed[:, :, 2] = 5  # a different token at position 2
    before, after = model.decode(quantized, memory, pad, chunk_ids), model.decode(quantized, memory, pad, changed)
    assert torch.allclose(before[:, :, :3], after[:, :, :3], atol=1e-6)  # positions 0..2 never see token 2
    assert not torch.allclose(before[:, :, 3], after[:, :, 3])  # position 3 does


@pytest.fixture(scope="module")
def ar_trained(toy_file, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vq_ar") / "ar"
    return train_vqvae(tiny_config(toy_file, out, autoregressive=True, steps=300))


def test_autoregressive_model_overfits_and_decodes_greedily(ar_trained):
    out = ar_trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["token_accuracy"] == 1.0  # measured with greedy decoding, not teacher forcing
    loaded = load_vqvae(out)
    example = toy_examples()[4]
    codes = encode_examples(loaded, TASK, [example])[0]
    prompt = encode_example(loaded.tokenizer, TASK, example).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes)) == normalize_text(" ".join(example.steps))


def test_cli_evaluate_writes_the_metrics(ar_trained, toy_file, tmp_path, capsys):
    metrics_file = tmp_path / "m.json"
    assert main(["vqvae", "evaluate", "--vqvae", str(ar_trained), "--data", str(toy_file),
                 "--out", str(metrics_file)]) == 0
    written = json.loads(metrics_file.read_text())
    assert written["chunks"] > 0 and written["search_rerank"] == 0
    assert written["token_accuracy"] == evaluate_reconstruction(load_vqvae(ar_trained), TASK,
                                                                toy_examples())["token_accuracy"] == 1.0
    assert json.loads(capsys.readouterr().out)["token_accuracy"] == 1.0


def reference_greedy(model: VQVAE, quantized, memory, pad, prompt) -> torch.Tensor:
    """Greedy decoding the slow way: the whole teacher-forced decoder once per position."""
    tokens = torch.full((*quantized.shape[:2], model.config.chunk_size), model.config.pad_id)
    for position in range(model.config.chunk_size):
        hidden = model.decode(quantized, memory, pad, tokens)[:, :, position:position + 1]
        prefix = model.prefix_of(tokens[:, :, :position + 1])
        prefix = prefix[:, :, position:] if prefix is not None else None
        tokens[:, :, position] = predict(model, hidden, memory, pad, prompt, prefix)[:, :, 0]
    return tokens


@pytest.mark.parametrize("copy_prefix,compression", [(False, 2), (True, 4)])
def test_step_by_step_greedy_decoding_equals_one_decoder_pass_per_position(copy_prefix, compression):
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=copy_prefix, compression=compression,
                       decoder_layers=2).eval()
    prompt, pad, _, _ = random_batch()  # example 0's prompt is padded
    latents = model.config.latents_per_chunk
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        quantized = torch.randn(3, 2, latents, 32)
        index = torch.arange(2).expand(3, 2)
        greedy = greedy_tokens(model, quantized, index, memory, pad, prompt)  # (B, N, L)
        assert torch.equal(greedy, reference_greedy(model, quantized, memory, pad, prompt))
        assert len(greedy.unique()) > 3  # the codes make it write different tokens
        # Teacher-forced on its own output, the decoder agrees with every token it wrote.
        hidden = model.decode(quantized, memory, pad, greedy)
        assert torch.equal(predict(model, hidden, memory, pad, prompt, model.prefix_of(greedy)), greedy)


def test_local_context_lets_a_prompt_position_read_the_tokens_before_it():
    prompt, pad, _, _ = random_batch()
    changed = prompt.clone()
    changed[:, 1] = 3  # a different token at position 1
    for k, reads_it in ((0, False), (2, True)):
        model = tiny_model(prompt_layers=0, local_context=k).eval()  # no attention: position i sees its input only
        before, after = model.encode_prompt(prompt, pad), model.encode_prompt(changed, pad)
        assert torch.allclose(before[:, 0], after[:, 0])  # nothing reads ahead
        assert torch.allclose(before[:, 4:], after[:, 4:])  # beyond k = 2 tokens back
        assert torch.allclose(before[:, 3], after[:, 3]) != reads_it  # two tokens back: read only with k = 2


def test_autoregressive_decoder_with_local_context_is_still_causal():
    model = tiny_model(autoregressive=True, local_context=2).eval()
    prompt, pad, chunk_ids, _ = random_batch()
    memory = model.encode_prompt(prompt, pad)
    quantized = torch.randn(3, 2, 2, 32)
    changed = chunk_ids.clone()
    changed[:, :, 1] = 5
    before, after = model.decode(quantized, memory, pad, chunk_ids), model.decode(quantized, memory, pad, changed)
    assert torch.allclose(before[:, :, :2], after[:, :, :2], atol=1e-6)
    assert not torch.allclose(before[:, :, 2], after[:, :, 2])
    longer = tiny_model(autoregressive=True, local_context=6).eval()  # k beyond the chunk and the prompt
    assert longer.decode(quantized, longer.encode_prompt(prompt, pad), pad, chunk_ids).shape == (3, 2, 4, 32)


# --- the output vocabulary ----------------------------------------------------------------
def output_vocab_model(**overrides) -> tuple[VQVAE, tuple]:
    """A tiny model whose head scores only the batch's chunk ids; some prompt ids lie outside them."""
    batch = random_batch()
    ids = sorted(set(batch[2][batch[3]].flatten().tolist()) | {0})
    model = tiny_model(output_vocab_size=len(ids), **overrides)
    model.set_output_vocab(ids)
    assert set(batch[0][~batch[1]].tolist()) - set(ids), "the test needs prompt ids outside the vocabulary"
    return model, batch


@pytest.mark.parametrize("restricted", [True, False])
def test_loss_and_predictions_agree_with_the_whole_distribution(restricted):
    model, batch = output_vocab_model() if restricted else (tiny_model(), random_batch())
    prompt, pad, chunk_ids, present = batch
    hidden, memory = decoder_states(model, *batch)
    with torch.no_grad():
        whole = log_probs(model, hidden, memory, pad, prompt)  # (B, N, L, V)
        targets = chunk_ids[present]
        picked = target_log_probs(model, hidden, memory, pad, prompt, targets, present)
        assert torch.allclose(picked, whole[present].gather(-1, targets[..., None])[..., 0], atol=1e-5)
        assert torch.equal(predict(model, hidden, memory, pad, prompt), whole.argmax(-1))
        # Copying only: the best token is a prompt token, even one outside the output vocabulary.
        model.copy_gate.bias.fill_(-60.0)
        whole = log_probs(model, hidden, memory, pad, prompt)
        predicted = predict(model, hidden, memory, pad, prompt)
        assert torch.equal(predicted, whole.argmax(-1))
        if restricted:
            assert (slots_of(model, predicted) < 0).any()


def test_an_output_vocabulary_of_every_id_changes_nothing():
    batch = random_batch()
    a = tiny_model()(*batch)  # the seed is set before each model is built, so k-means init matches too
    everything = tiny_model(output_vocab_size=40)
    everything.set_output_vocab(range(40))
    b = everything(*batch)
    assert torch.allclose(a.recon_loss, b.recon_loss) and torch.equal(a.predictions, b.predictions)


def test_a_target_the_decoder_cannot_write_gets_a_finite_capped_loss():
    model, (prompt, pad, chunk_ids, present) = output_vocab_model()
    absent = min(set(range(40)) - set(model.output_ids.tolist()) - set(prompt.flatten().tolist()))
    chunk_ids = chunk_ids.clone()
    chunk_ids[0, 0, 0] = absent  # an id neither the head nor the copy head can write
    assert slots_of(model, chunk_ids[0, 0, :1]).item() == -1
    hidden, memory = decoder_states(model, prompt, pad, chunk_ids, present)
    picked = target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present)
    assert picked[0, 0].item() == -30.0 and (picked[0, 1:] > -30).all()  # capped at the floor
    output = model(prompt, pad, chunk_ids, present)
    assert torch.isfinite(output.recon_loss)
    output.recon_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_output_vocabulary_of_the_wrong_size_is_refused():
    model = tiny_model(output_vocab_size=5)
    with pytest.raises(ValueError, match="output_vocab_size=5"):
        model.set_output_vocab([1, 2, 3])
    with pytest.raises(ValueError, match="output_vocab_size"):
        VQVAEConfig(vocab_size=10, pad_id=0, output_vocab_size=11)


def test_data_output_vocab_is_the_trace_ids_and_survives_save_load_and_resume(toy_file, tmp_path):
    short = dict(steps=12, valid_every=6, output_vocab="data")
    whole = train_vqvae(tiny_config(toy_file, tmp_path / "whole", **short))
    loaded = load_vqvae(whole)
    items = chunk_examples(loaded.tokenizer, TASK, TASK.load(str(toy_file)), 4)
    expected = sorted({t for item in items for chunk in item.chunks for t in chunk} | {loaded.config.pad_id})
    assert loaded.model.output_ids.tolist() == expected
    assert loaded.config.output_vocab_size == len(expected) < len(loaded.tokenizer)
    parted = tmp_path / "parted"
    train_vqvae(tiny_config(toy_file, parted, stop_at=6, **short))
    train_vqvae(tiny_config(toy_file, parted, resume=True, **short))
    expected_weights, got = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    assert all(torch.equal(expected_weights[k], got[k]) for k in expected_weights)
    with pytest.raises(CheckpointError, match="output_vocab"):
        train_vqvae(tiny_config(toy_file, parted, resume=True, **{**short, "output_vocab": "all"}))
    with pytest.raises(ConfigError, match="output_vocab"):
        train_vqvae(tiny_config(toy_file, tmp_path / "bad", output_vocab="trace"))


# --- assignment by search ----------------------------------------------------------------
SEARCH = dict(compression=4, assignment="search", search_candidates=4, search_explore=1)


def code_log_likelihoods(model: VQVAE, prompt, pad, chunk_ids, present) -> torch.Tensor:
    """(K, C): every real chunk's teacher-forced log likelihood under each code, one code at a time."""
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        rows = []
        for code in range(model.config.codebook_size):
            grid = model.quantizer.get_output_from_indices(torch.full(present.shape, code))[:, :, None]
            hidden = model.decode(grid, memory, pad, chunk_ids)
            prefix = model.prefix_of(chunk_ids)
            rows.append(target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present,
                                         prefix).sum(-1))
    return torch.stack(rows)


def spread_search_model(**overrides) -> VQVAE:
    model = tiny_model(**SEARCH, **overrides).eval()
    with torch.no_grad():
        model.quantizer.codebook.mul_(3)  # spread the codes so that not every chunk prefers the same one
    return model


@pytest.mark.parametrize("autoregressive,copy_prefix", [(False, False), (True, False), (True, True)])
def test_search_gives_each_chunk_the_code_its_decoding_fits_best(autoregressive, copy_prefix):
    model = spread_search_model(autoregressive=autoregressive, local_context=1, copy_prefix=copy_prefix)
    prompt, pad, chunk_ids, present = batch = random_batch()
    likelihoods = code_log_likelihoods(model, *batch)  # (K, C)
    codes = model.codes_of(*batch)[:, 0]
    assert torch.equal(codes, likelihoods.argmax(0))
    assert len(set(codes.tolist())) > 1
    assert torch.equal(model(*batch).codes[:, 0], codes)
    # The batched scoring of all K codes gives what one code at a time gives.
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        owner, index = present.nonzero().unbind(1)
        side = chunk_side(model, memory[owner], pad[owner], prompt[owner], chunk_ids[present])
        batched = token_log_likelihoods(model, chunk_ids[present], index, model.memory_kv(memory, pad).select(owner),
                                        side).sum(-1)  # (C, K)
    assert torch.allclose(batched.T, likelihoods, atol=1e-4)


@pytest.mark.parametrize("encode_candidates", [0, 6])  # all K codes; the encoder's 6 likeliest, in two rounds
def test_batched_search_gives_the_codes_of_one_example_at_a_time(encode_candidates):
    # Encoding scores many examples' chunks at once; the other examples (their prompt lengths,
    # their number of chunks, the batch padding) must change no chunk's code.
    model = spread_search_model(autoregressive=True, local_context=1, copy_prefix=True, search_rerank=3,
                                encode_candidates=encode_candidates)
    generator = torch.Generator().manual_seed(2)
    examples = [(torch.randint(4, 40, (length,), generator=generator),
                 torch.randint(4, 40, (n_chunks, 4), generator=generator))
                for length, n_chunks in ((6, 1), (9, 3), (4, 2), (7, 1))]
    alone = torch.cat([model.codes_of(prompt[None], torch.zeros(1, len(prompt), dtype=torch.bool), chunks[None],
                                      torch.ones(1, len(chunks), dtype=torch.bool)) for prompt, chunks in examples])
    prompt_ids, prompt_pad = torch.zeros(4, 9, dtype=torch.long), torch.ones(4, 9, dtype=torch.bool)
    chunk_ids, present = torch.zeros(4, 3, 4, dtype=torch.long), torch.zeros(4, 3, dtype=torch.bool)
    for row, (prompt, chunks) in enumerate(examples):
        prompt_ids[row, :len(prompt)], prompt_pad[row, :len(prompt)] = prompt, False
        chunk_ids[row, :len(chunks)], present[row, :len(chunks)] = chunks, True
    together = model.codes_of(prompt_ids, prompt_pad, chunk_ids, present)
    assert torch.equal(together, alone)
    assert len(set(together.flatten().tolist())) > 2


def test_search_in_training_picks_among_the_candidates_and_trains_encoder_and_codebook():
    model = tiny_model(**SEARCH).train()
    batch = random_batch()
    likelihoods = code_log_likelihoods(model.eval(), *batch)
    model.train()
    torch.manual_seed(3)
    output = model(*batch)
    chosen = output.codes[:, 0]
    # Each chosen code is at least as likely as the encoder's own favourite, which is always tried.
    memory = model.encode_prompt(batch[0], batch[1])
    with torch.no_grad():
        favourite = model.quantizer.classifier(model.encode(batch[2], memory, batch[1])[:, :, 0])[batch[3]].argmax(-1)
    columns = torch.arange(len(chosen))
    assert (likelihoods[chosen, columns] >= likelihoods[favourite, columns] - 1e-5).all()
    output.loss.backward()
    assert model.quantizer.codebook.grad[chosen].abs().sum() > 0  # the decoder's gradient reaches the codes read
    assert model.quantizer.classifier.weight.grad.abs().sum() > 0  # the encoder learns to predict them
    assert model.encoder.layers[0].linear1.weight.grad.abs().sum() > 0


def test_search_reseeds_a_code_no_chunk_chooses():
    model = tiny_model(**SEARCH).train()
    codebook = model.quantizer
    before = codebook.codebook.detach().clone()
    with torch.no_grad():
        codebook.usage.fill_(1.0)
        codebook.usage[5] = 0.01  # code 5 has not been chosen for a long time
    assert codebook.record(torch.tensor([1, 1, 2])) == 1
    changed = (codebook.codebook.detach() != before).any(-1)
    assert changed.tolist() == [i == 5 for i in range(8)]
    assert codebook.usage[5] == 1.0


def test_search_options_are_checked(toy_file, tmp_path):
    with pytest.raises(ValueError, match="one latent per chunk"):
        tiny_model(assignment="search")  # the tiny model has r = 2: two latents per chunk
    with pytest.raises(ValueError, match="search_explore"):
        tiny_model(**{**SEARCH, "search_candidates": 9})  # more candidates than K = 8
    with pytest.raises(ConfigError, match="one latent per chunk"):
        train_vqvae(tiny_config(toy_file, tmp_path / "a", assignment="search", compression=2))
    with pytest.raises(ConfigError, match="assignment must be one of"):
        train_vqvae(tiny_config(toy_file, tmp_path / "b", assignment="closest"))


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ["nearest", "search"])
def test_two_processes_train_one_vqvae(toy_file, tmp_path, assignment):
    # Each process takes half of every batch; the codebook (the library's EMA statistics, the
    # search's usage counts and re-seeded codes) stays one across them.
    out = tmp_path / "ddp"
    options = ["--steps", "120", "--valid-every", "60", "--batch-size", "8", "--grad-accum", "2"]
    search = ["--assignment", "search", "--search-candidates", "4", "--search-explore", "1",
              "--dead-code-threshold", "1.0"] if assignment == "search" else []
    result = torchrun(tmp_path, ["vqvae", "train", "--task", "prosqa", "--data", str(toy_file), "--out", str(out),
                                 "--chunk-size", "4", "--compression", "4", "--codebook-size", "8", "--lr", "5e-3",
                                 "--warmup-steps", "10", "--no-progress", "--d-model", "32", "--heads", "2",
                                 "--encoder-layers", "1", "--decoder-layers", "1", "--codebook-dim", "8",
                                 "--max-prompt-len", "64", *options, *search])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("VQ-VAE saved in") == 1  # the main process reports, once
    assert json.loads((out / "state" / "latest.json").read_text())["dir"] == "step-00000120"
    assert json.loads((out / "metrics.json").read_text())["token_accuracy"] > 0.6


def test_search_model_trains_saves_and_encodes_as_it_decodes(toy_file, tmp_path):
    out = train_vqvae(tiny_config(toy_file, tmp_path / "run", assignment="search", search_candidates=4,
                                  search_explore=1, steps=150))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["token_accuracy"] > 0.9
    loaded = load_vqvae(out)
    assert loaded.config.assignment == "search"
    # Stage 2 initialises the latent rows from the vectors the decoder reads.
    assert torch.equal(codebook_of(loaded.model, 8), loaded.model.quantizer.codebook.detach())
    examples = toy_examples()
    codes = encode_examples(loaded, TASK, examples, batch_size=3)
    assert codes == encode_examples(load_vqvae(out), TASK, examples, batch_size=8)
    prompt = encode_example(loaded.tokenizer, TASK, examples[1]).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes[1])) == normalize_text(" ".join(examples[1].steps))
    with pytest.raises(CheckpointError, match="assignment='search'"):
        train_vqvae(tiny_config(toy_file, out, resume=True))


# --- the copy prefix (a built-in induction head) --------------------------------------------
def test_prefix_features_read_only_the_tokens_before_each_position():
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=True)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, 2] = 30
    before, after = model.prefix_features(ids), model.prefix_features(changed)
    assert torch.equal(before[0, :3], after[0, :3])  # positions 0..2 do not read token 2
    assert not torch.allclose(before[0, 3], after[0, 3]) and not torch.allclose(before[0, 4], after[0, 4])
    assert torch.equal(before[0, 0], torch.zeros(32))  # nothing precedes position 0
    # What the autoregressive decoder reads at position i, without its learned position query.
    assert torch.allclose(before[0, 1], model.token_embedding.weight[5])


def test_copy_prefix_copies_the_word_whose_predecessors_match_the_chunks():
    model = tiny_model(autoregressive=True, local_context=1, copy_prefix=True, compression=4).eval()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    pad = torch.zeros_like(prompt, dtype=torch.bool)
    chunk_ids = torch.tensor([[[6, 7, 12, 13]]])  # at position 2 the chunk has just written "6 7"
    with torch.no_grad():
        model.token_embedding.weight.normal_()  # distinct words
        model.copy_query.weight.zero_(), model.copy_key.weight.zero_()  # only the prefix pair decides
        model.prefix_query.weight.copy_(torch.eye(32) * 8), model.prefix_key.weight.copy_(torch.eye(32))
        model.copy_gate.weight.zero_(), model.copy_gate.bias.fill_(-60.0)  # copy only
        memory = model.encode_prompt(prompt, pad)
        hidden = model.decode(torch.randn(1, 1, 1, 32), memory, pad, chunk_ids)
        prefix = model.prefix_features(chunk_ids)
        copied = log_probs(model, hidden, memory, pad, prompt, prefix=prefix).exp()  # (1, 1, 4, V)
        assert copied[0, 0, 2, 8] > 0.9  # in the prompt, "6 7" precede 8
        present = torch.ones(1, 1, dtype=torch.bool)
        whole = log_probs(model, hidden, memory, pad, prompt, prefix=prefix)
        picked = target_log_probs(model, hidden, memory, pad, prompt, chunk_ids[present], present, prefix)
        assert torch.allclose(picked, whole[present].gather(-1, chunk_ids[present][..., None])[..., 0].clamp(min=-30))
        assert torch.equal(predict(model, hidden, memory, pad, prompt, prefix), whole.argmax(-1))
        with pytest.raises(ValueError, match="copy_prefix"):
            log_probs(model, hidden, memory, pad, prompt)  # the decoder side is required


def test_copy_prefix_options_are_checked(toy_file, tmp_path):
    with pytest.raises(ValueError, match="copy_prefix"):
        VQVAEConfig(vocab_size=10, pad_id=0, copy_prefix=True, autoregressive=False)
    with pytest.raises(ConfigError, match="copy_prefix"):
        train_vqvae(tiny_config(toy_file, tmp_path / "run", copy_prefix=True))


def test_copy_prefix_model_trains_decodes_greedily_and_resumes_only_with_it(toy_file, tmp_path):
    out = train_vqvae(tiny_config(toy_file, tmp_path / "run", autoregressive=True, local_context=1,
                                  copy_prefix=True, steps=300))
    assert json.loads((out / "metrics.json").read_text())["token_accuracy"] == 1.0  # greedy decoding
    loaded = load_vqvae(out)
    assert loaded.config.copy_prefix
    example = toy_examples()[2]
    codes = encode_examples(loaded, TASK, [example])[0]
    prompt = encode_example(loaded.tokenizer, TASK, example).prompt_ids
    assert normalize_text(decode_codes(loaded, prompt, codes)) == normalize_text(" ".join(example.steps))
    with pytest.raises(CheckpointError, match="copy_prefix=True"):
        train_vqvae(tiny_config(toy_file, out, autoregressive=True, local_context=1, resume=True))


def test_copy_keys_computed_once_give_the_same_distribution_as_per_call():
    model = tiny_model(autoregressive=True, local_context=2, copy_prefix=True, compression=4).eval()
    prompt, pad, chunk_ids, present = random_batch()
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        hidden = model.decode(torch.randn(3, 2, 1, 32), memory, pad, chunk_ids)
        prefix = model.prefix_of(chunk_ids)
        keys = copy_keys(model, memory, prompt)
        assert keys.shape == (*prompt.shape, 64)  # copy keys and copy-prefix keys side by side
        assert torch.equal(log_probs(model, hidden, memory, pad, prompt, present, prefix, keys),
                           log_probs(model, hidden, memory, pad, prompt, present, prefix))
        # One product over the concatenation is the sum of the two query/key pairs' scores.
        attention, _ = copy_head(model, hidden, memory, pad, prompt, prefix, keys)
        scores = (torch.einsum("bnsd,bpd->bnsp", model.copy_query(hidden), model.copy_key(memory))
                  + torch.einsum("bnsd,bpd->bnsp", model.prefix_query(model.prefix_norm(prefix)),
                                 model.prefix_key(model.prefix_norm(model.prefix_features(prompt))))) / 32 ** 0.5
        expected = scores.masked_fill(pad[:, None, None], float("-inf")).softmax(-1)
        assert torch.allclose(attention, expected, atol=1e-6)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_memory_projected_once_decodes_as_the_stack_does(autoregressive):
    # The search and greedy decoding read the prompt's keys and values projected once
    # (memory_kv.py); the decoder's output must be the library stack's, with the batch
    # repeated (the training search's candidates stacked) or with rows selected.
    model = tiny_model(autoregressive=autoregressive, local_context=1, decoder_layers=2).eval()
    prompt, pad, chunk_ids, _ = random_batch()  # example 0's prompt is padded
    quantized = torch.randn(3, 2, 2, 32)
    with torch.no_grad():
        memory = model.encode_prompt(prompt, pad)
        expected = model.decode(quantized, memory, pad, chunk_ids)
        memory_kv = model.memory_kv(memory, pad)
        assert torch.allclose(model.decode(quantized, memory, pad, chunk_ids, memory_kv), expected, atol=1e-6)
        repeated = model.decode(*(t.repeat(3, *[1] * (t.dim() - 1)) for t in (quantized, memory, pad, chunk_ids)),
                                memory_kv.repeat(3))
        assert torch.allclose(repeated, expected.repeat(3, 1, 1, 1), atol=1e-6)
        rows = torch.tensor([2, 0])
        selected = model.decode(quantized[rows], memory[rows], pad[rows], chunk_ids[rows], memory_kv.select(rows))
        assert torch.allclose(selected, expected[rows], atol=1e-6)
        shorter = pad.clone()
        shorter[1, 3:] = True  # example 1's last prompt tokens hidden: its chunks must change
        other = model.decode(quantized, memory, pad, chunk_ids, model.memory_kv(memory, shorter))
        assert torch.equal(other[0], expected[0]) and not torch.allclose(other[1], expected[1], atol=1e-3)


# --- re-ranking the search's codes by their decoding ---------------------------------------
def greedy_errors(model: VQVAE, prompt, pad, chunk_ids, present) -> torch.Tensor:
    """(K, C) tokens each code's greedy decoding gets wrong, for every real chunk (the slow way)."""
    memory = model.encode_prompt(prompt, pad)
    rows = []
    for code in range(model.config.codebook_size):
        grid = model.quantizer.get_output_from_indices(torch.full(present.shape, code))[:, :, None]
        decoded = reference_greedy(model, grid, memory, pad, prompt)[present]
        rows.append((decoded != chunk_ids[present]).sum(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_search_rerank_picks_among_the_likeliest_codes_the_one_decoded_best(autoregressive):
    model = spread_search_model(autoregressive=autoregressive)
    batch = random_batch()
    with torch.no_grad():
        likelihoods = code_log_likelihoods(model, *batch)  # (K, C)
        errors = greedy_errors(model, *batch)  # (K, C)
        plain = model.codes_of(*batch)[:, 0]
        columns = torch.arange(len(plain))
        for n in (3, 8):  # 8 = K: every code is decoded
            rerank = VQVAE(dataclasses.replace(model.config, search_rerank=n))
            rerank.load_state_dict(model.state_dict())
            codes = rerank.eval().codes_of(*batch)[:, 0]
            likeliest = likelihoods.topk(n, dim=0).indices  # (n, C)
            assert ((likeliest == codes).any(0)).all()  # one of the n most likely codes
            fewest = errors.gather(0, likeliest).min(0).values
            assert torch.equal(errors[codes, columns], fewest)  # ... and among them, decoded best
            assert (errors[codes, columns] <= errors[plain, columns]).all()
        assert torch.equal(errors[codes, columns], errors.min(0).values)


def test_search_rerank_leaves_training_to_the_likelihood(monkeypatch):
    import token_assorted.vqvae.search as search

    model = tiny_model(**SEARCH, autoregressive=True, search_rerank=4)
    monkeypatch.setattr(search, "greedy_tokens", lambda *args: pytest.fail("decoded in training"))
    model.train()(*random_batch()).loss.backward()  # the candidates are ranked by likelihood alone
    with pytest.raises(pytest.fail.Exception):
        model.eval().codes_of(*random_batch())


def test_search_rerank_is_checked_and_overrides_a_saved_vqvae(toy_file, tmp_path):
    with pytest.raises(ValueError, match="search_rerank"):
        tiny_model(search_rerank=4)  # the nearest-vector quantizer has nothing to re-rank
    with pytest.raises(ValueError, match="search_rerank"):
        tiny_model(**SEARCH, search_rerank=9)  # more than K = 8
    out = train_vqvae(tiny_config(toy_file, tmp_path / "s", **SEARCH, autoregressive=True, steps=20))
    assert load_vqvae(out).config.search_rerank == 0
    assert load_vqvae(out, search_rerank=3).model.config.search_rerank == 3
    codes = [encode_examples(load_vqvae(out, search_rerank=rerank), TASK, toy_examples()) for rerank in (0, 3)]
    assert [len(c) for c in codes[0]] == [len(c) for c in codes[1]]  # the same chunks, maybe other codes
    with pytest.raises(ConfigError, match="search_rerank"):
        load_vqvae(out, search_rerank=99)
