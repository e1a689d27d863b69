"""Training at scale, on the CPU: the layout-free loss, FSDP2, memory levers, the codes file, the GPUs of `run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import stage2_toy
import torch
from launch import torchrun_script
from safetensors.torch import load_file
from scale_jobs import KILL_AT, random_vqvae, step_gradient, train_argv
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from token_assorted.cli import main as cli_main
from token_assorted.lm.lora import merged_state

TESTS = Path(__file__).resolve().parent


def _tiny(arch: str, tie: bool):
    torch.manual_seed(0)
    if arch == "gpt2":
        return AutoModelForCausalLM.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4,
                                                           n_positions=32, tie_word_embeddings=tie))
    return AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=1, num_attention_heads=4,
                                                        num_key_value_heads=4, tie_word_embeddings=tie))


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("gpt2", True)])
def test_lora_merged_from_a_state_dict_equals_peft_merge_without_copying_the_model(arch, tie):
    from peft import LoraConfig, get_peft_model

    model = _tiny(arch, tie)
    embedding = "transformer.wte" if arch == "gpt2" else "model.embed_tokens"
    rows = {embedding: [60, 61, 62]} | ({} if tie else {"lm_head": [60, 61, 62]})
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", fan_in_fan_out=arch == "gpt2",
                                            trainable_token_indices=rows))
    with torch.no_grad():  # adapters and rows that are not their initial zeros
        for name, parameter in peft.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    merged = merged_state(peft, peft.state_dict())
    assert all(torch.equal(before[k], v) for k, v in peft.state_dict().items())  # the trained model is unchanged
    import copy

    expected = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- two processes (gloo), one launch
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("toy")
    stage2_toy.write_data(data)
    return data


@pytest.fixture(scope="module")
def launched(toy, tmp_path_factory):
    """Every multi-process check in one torchrun launch, then the resume of the killed run in a second."""
    data = toy
    out = tmp_path_factory.mktemp("scale")
    jobs = ["stages", "encode", "grads-ddp", "grads-fsdp", "train-fsdp", "lora-fsdp", "ddp-token-assorted", "ddp-coconut",
            "ddp-icot", "killed-fsdp"]
    first = torchrun_script([str(TESTS / "scale_jobs.py"), str(data), str(out), *jobs], timeout=600)
    # The last job kills both processes (SIGKILL) right after the state of step KILL_AT is committed.
    assert (out / "killed" / "state" / "latest.json").is_file(), first.stderr[-3000:]
    assert json.loads((out / "killed" / "state" / "latest.json").read_text())["dir"] == f"step-{KILL_AT:08d}"
    assert not (out / "killed" / "model.safetensors").exists()
    second = torchrun_script([str(TESTS / "scale_jobs.py"), str(data), str(out), "resume-fsdp"])
    assert second.returncode == 0, second.stderr[-3000:]
    return data, out, first.stdout + second.stdout


def _meta(out: Path) -> dict:
    return json.loads((out / "token_assorted.json").read_text())


@pytest.mark.slow
def test_the_gradient_does_not_depend_on_accumulation_or_processes(launched, tmp_path):
    data, out, _ = launched
    whole, whole_loss = step_gradient(data, tmp_path / "a", 1)  # one process, the whole batch at once
    accum, accum_loss = step_gradient(data, tmp_path / "b", 4)  # one process, 4 micro-batches of 2
    ddp, fsdp = (load_file(str(out / f"grads-{kind}.safetensors")) for kind in ("ddp", "fsdp"))  # 2 x 2 micro-batches
    assert whole.keys() == accum.keys() and set(whole) == set(ddp) - {"loss"} == set(fsdp) - {"loss"}
    for other in (accum, ddp, fsdp):
        for name, gradient in whole.items():
            torch.testing.assert_close(other[name], gradient, rtol=1e-5, atol=1e-7)
    for loss in (accum_loss, float(ddp["loss"]), float(fsdp["loss"])):
        assert loss == pytest.approx(whole_loss, rel=1e-6)  # the step's loss is the mean over all its tokens
    # A mean per micro-batch (the loss before) weights micro-batches of few tokens like those of many: not this.
    assert any(not torch.allclose(g, g.new_zeros(())) for g in whole.values())


@pytest.mark.slow
def test_fsdp_on_two_processes_trains_like_one_and_saves_a_plain_folder(launched, tmp_path):
    data, out, stdout = launched
    assert cli_main(train_argv(data, tmp_path / "one", "--sharding", "fsdp")) == 0  # one process, same command
    two, one = _meta(out / "train"), _meta(tmp_path / "one")
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["config"]["sharding"] == "fsdp"
    assert two["history"][-1]["step"] == one["history"][-1]["step"] == 8
    assert two["history"][-1]["train_loss"] == pytest.approx(one["history"][-1]["train_loss"], rel=0.02)
    assert two["history"][-1]["valid_accuracy"] == one["history"][-1]["valid_accuracy"]  # validated over both ranks
    model = AutoModelForCausalLM.from_pretrained(str(out / "train"), trust_remote_code=False)  # plain transformers
    saved = load_file(str(out / "train" / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name])
    assert stdout.count("model saved to") >= 2  # once per run, by the main process only


@pytest.mark.slow
def test_a_fsdp_run_killed_after_a_checkpoint_resumes_to_the_same_weights(launched):
    _, out, stdout = launched
    assert f"resumed from {out / 'killed' / 'state' / f'step-{KILL_AT:08d}'}" in stdout
    straight, resumed = (load_file(str(out / name / "model.safetensors")) for name in ("train", "killed"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert _meta(out / "train")["history"] == _meta(out / "killed")["history"]
    for name in ("train", "killed"):  # older step folders pruned, every rank's shard files with them
        assert [p.name for p in (out / name / "state").glob("step-*")] == ["step-00000008"], name


@pytest.mark.slow
def test_lora_under_fsdp_merges_into_a_plain_model(launched):
    _, out, _ = launched
    saved = load_file(str(out / "lora" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "token_adapter" in k for k in saved), list(saved)[:5]
    model = AutoModelForCausalLM.from_pretrained(str(out / "lora"), trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert _meta(out / "lora")["config"]["lora"]["r"] == 4 and _meta(out / "lora")["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["token-assorted", "coconut", "icot"])
def test_two_process_ddp_on_cpu_trains_one_model(launched, strategy):
    _, out, stdout = launched
    record = _meta(out / f"ddp-{strategy}")
    assert record["history"][-1]["step"] == 64 // 8  # same optimizer steps as one process
    assert record["world_size"] == 2 and record["config"]["sharding"] == "ddp"
    assert (out / f"ddp-{strategy}" / "model.safetensors").is_file()
    if strategy == "coconut":
        assert record["coconut"]["thoughts"] == 1


# --------------------------------------------------------------------------- `run` on several GPUs and processes
def test_each_training_worker_takes_a_gpu_of_its_own(monkeypatch):
    import multiprocessing
    import os

    from token_assorted.pipeline.run import _worker_start

    queue = multiprocessing.get_context("spawn").Queue()
    for gpu in (0, 1, 2):
        queue.put(gpu)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        _worker_start(queue)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "2"]
    from token_assorted.pipeline.run import worker_count

    assert worker_count(1, 4, 6) == 4 and worker_count(1, 0, 6) == 1 and worker_count(3, 2, 2) == 2


@pytest.mark.slow
def test_under_torchrun_only_the_main_process_prepares_a_stage_folder(launched):
    _, out, _ = launched
    record = json.loads((out / "stages.json").read_text())
    # A stale folder is removed once and remade, never raced on; the main-only stage ran on rank 0 alone,
    # the distributed one on both, and each folder's marker was written once, by the main process.
    assert record == {"alone": ["0"], "everyone": ["0", "1"], "stale_gone": True, "cached_on_both": [True, True]}


@pytest.mark.slow
def test_codes_encoded_in_shares_by_two_processes_are_those_of_one(launched, tmp_path):
    from token_assorted.vqvae.codes import encode_codes_file, from_codes_file
    from token_assorted.vqvae.store import load_vqvae

    data, out, _ = launched
    one = tmp_path / "codes-1.safetensors"
    encode_codes_file(load_vqvae(random_vqvae(tmp_path / "vq", data)), stage2_toy.ToyTask(), data / "train.jsonl", one)
    n = len(stage2_toy.ToyTask().load(data / "train.jsonl"))
    single, shared = from_codes_file(one, n), from_codes_file(out / "codes-2.safetensors", n)
    assert shared.codes == single.codes and len(single.codes) == n and all(single.codes)
    assert torch.equal(shared.codebook, single.codebook)


# --------------------------------------------------------------------------- memory levers
def test_train_help_lists_the_scale_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--sharding", "--gradient-checkpointing", "--weights-dtype", "--fused-adamw", "--pad-vocab-to",
                 "--liger-kernel"):
        assert flag in text, flag


@pytest.mark.parametrize("flags, names", [(["--liger-kernel"], ["liger"]),
                                          (["--sharding", "zero3"], ["sharding", "ddp, fsdp"]),
                                          (["--strategy", "coconut", "--gradient-checkpointing"], ["coconut",
                                                                                                  "gradient_checkpointing"])])
def test_scale_options_that_cannot_run_are_refused_in_one_line(toy, tmp_path, capsys, flags, names):
    code = cli_main(train_argv(toy, tmp_path / "o", *flags))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(name in err for name in names), err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_gradient_checkpointing_gives_the_same_gradient(toy, tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    calls = {"n": 0}
    forward = modeling_llama.LlamaMLP.forward  # inside a layer (the layer's own forward is what is checkpointed)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    plain, _ = step_gradient(toy, tmp_path / "a", 1)
    once, calls["n"] = calls["n"], 0
    recomputed, _ = step_gradient(toy, tmp_path / "b", 1, gradient_checkpointing=True)
    assert calls["n"] == 2 * once  # each layer ran again in backward: checkpointing is on
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-6, atol=1e-8)


def test_bf16_weights_padded_rows_and_fused_adamw_train_and_save_in_their_dtype(toy, tmp_path):
    from transformers import GenerationConfig

    from token_assorted.data.tokenizer import load_tokenizer
    from token_assorted.generation.generate import mask_unused

    out = tmp_path / "m"
    assert cli_main(train_argv(toy, out, "--weights-dtype", "bfloat16", "--pad-vocab-to", "64", "--fused-adamw",
                               "--gradient-checkpointing")) == 0
    saved = load_file(str(out / "model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}  # saved as trained
    model = AutoModelForCausalLM.from_pretrained(str(out))  # plain transformers, its generation_config.json
    tokenizer = load_tokenizer(out)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows > len(tokenizer)
    unused = list(range(len(tokenizer), rows))
    assert GenerationConfig.from_pretrained(str(out)).suppress_tokens == unused
    with torch.no_grad():  # make the padding rows the likeliest tokens: they must still never come out
        model.get_output_embeddings().weight[unused] = 50 * model.get_output_embeddings().weight[:len(tokenizer)].abs().max()
    prompt = torch.tensor([[tokenizer.bos_token_id or 0, 5, 6]])
    generated = model.generate(prompt, max_new_tokens=4, do_sample=False, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    assert not set(generated.sequences[0, 3:].tolist()) & set(unused)
    assert all(bool(torch.isinf(scores[:, unused]).all()) for scores in generated.scores)
    logits = torch.zeros(2, rows)  # loops that pick tokens themselves (a Coconut model's) mask them too
    assert bool(torch.isinf(mask_unused(model, logits)[:, unused]).all()) and bool((logits == 0).all())
