"""Training at scale, on the CPU: the layout-free loss, FSDP2, memory levers, the codes file, the GPUs of `run`."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from token_assorted.lora import merged_state


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
