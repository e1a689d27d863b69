"""Untrusted files: weights only from safetensors, configs only through safe parsers.

Each hostile file here would create a marker file if anything unpickled or imported it;
every test checks the command refused it in one line (exit 2) and the marker is absent.
The source scan proves no code path uses an unsafe loader in the first place.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from token_assorted.cli import main
from token_assorted.core.config import load_yaml
from token_assorted.core.errors import CheckpointError, ConfigError
from token_assorted.core.safety import refuse_pickle, refuse_pickle_dir, sniff_format

PACKAGE = Path(__file__).resolve().parents[1] / "token_assorted"


class Payload:
    """Unpickling this creates `target`: proof that a file was executed."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def raw_pickle(target: Path) -> bytes:
    return pickle.dumps(Payload(target), protocol=2)


def torch_zip(path: Path, target: Path) -> None:
    torch.save({"state": Payload(target)}, path)  # the zip container torch.save writes


def assert_refused(capsys, code: int, *names: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err


# --- the source never uses an unsafe loader ---------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def test_package_source_has_no_unsafe_loader():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE.parent)
        if re.search(r"trust_remote_code\s*=\s*True", text):
            problems.append(f"{where}: trust_remote_code=True")
        if re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle|joblib|marshal|shelve)\b", text, re.M):
            problems.append(f"{where}: imports a pickle module")
        for call, name in _calls(ast.parse(text)):
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                problems.append(f"{where}:{call.lineno}: {name}")
            if name.endswith("pickle.load") or name.endswith("pickle.loads"):
                problems.append(f"{where}:{call.lineno}: {name}")
            if name == "torch.load":
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith("numpy.load") or name == "np.load":
                value = _keyword(call, "allow_pickle")
                if isinstance(value, ast.Constant) and value.value is True:
                    problems.append(f"{where}:{call.lineno}: np.load(allow_pickle=True)")
            if name.endswith("from_pretrained"):
                value = _keyword(call, "trust_remote_code")
                if isinstance(value, ast.Constant) and value.value is True:
                    problems.append(f"{where}:{call.lineno}: from_pretrained(trust_remote_code=True)")
    assert not problems, "\n".join(problems)


def test_every_from_pretrained_call_forbids_remote_code():
    # Stricter than "never True": each call says trust_remote_code=False explicitly, so a
    # transformers default change cannot turn remote code on.
    loose = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call, name in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith("Auto") and name.endswith(".from_pretrained"):
                value = _keyword(call, "trust_remote_code")
                spread = any(k.arg is None for k in call.keywords)  # **options may carry it
                if not (isinstance(value, ast.Constant) and value.value is False) and not spread:
                    loose.append(f"{path.name}:{call.lineno}: {name}")
    assert not loose, "\n".join(loose)


# --- safety.refuse_pickle ---------------------------------------------------------------
def test_sniff_format_tells_safetensors_from_pickles(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2, 3)}, good)
    zipped = tmp_path / "zipped.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    assert sniff_format(good.read_bytes()[:9]) == "safetensors"
    assert sniff_format(zipped.read_bytes()[:9]) == "zip"
    assert sniff_format(raw_pickle(tmp_path / "m")[:9]) == "pickle"
    assert sniff_format(pickle.dumps([1, 2], protocol=0)[:9]) == "pickle"
    assert sniff_format(b"hello world") == "unknown"
    refuse_pickle(good)  # accepted
    assert refuse_pickle_dir(tmp_path) == [good]


@pytest.mark.parametrize("kind", ["raw", "zip", "junk", "torn-header"])
def test_refuse_pickle_rejects_everything_but_safetensors(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.safetensors"
    if kind == "raw":
        path.write_bytes(raw_pickle(marker))
    elif kind == "zip":
        torch_zip(path, marker)
    elif kind == "junk":
        path.write_bytes(b"\x00" * 3)
    else:
        path.write_bytes((20).to_bytes(8, "little") + b"{not json at all....")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        refuse_pickle(path)
    assert not marker.exists()


def test_refuse_pickle_dir_names_the_pickle_it_found(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(raw_pickle(tmp_path / "MARKER"))
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        refuse_pickle_dir(tmp_path)


# --- hostile files handed to the commands ------------------------------------------------
@pytest.fixture()
def lm_dir(tmp_path) -> Path:
    """A valid 1-layer Llama model dir with a word tokenizer (untrained: loading is all we test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from token_assorted.data.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["Is Tom a cat ? Tom is a cat . ### Yes"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    directory = tmp_path / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "token_assorted.json").write_text(json.dumps({"task": "prosqa"}))
    return directory


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "Is Tom a cat ?", "steps": ["Tom is a cat ."], "answer": "Yes"}) + "\n")
    return path


def test_eval_refuses_a_pickle_named_model_safetensors(lm_dir, data_file, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    (lm_dir / "model.safetensors").write_bytes(raw_pickle(marker))
    out = tmp_path / "results.json"
    code = main(["eval", "--model", str(lm_dir), "--data", str(data_file), "--out", str(out)])
    assert not marker.exists()
    assert not out.exists()
    assert_refused(capsys, code, "model.safetensors")


def test_eval_refuses_a_pickle_named_model_safetensors_without_running_it(lm_dir, data_file, tmp_path):
    # Whatever the message, the pickle is never executed (transformers reads it as safetensors).
    marker = tmp_path / "MARKER"
    (lm_dir / "model.safetensors").write_bytes(raw_pickle(marker))
    try:
        code = main(["eval", "--model", str(lm_dir), "--data", str(data_file), "--out", str(tmp_path / "r.json")])
    except Exception:  # noqa: BLE001 - BUG-1 makes this a traceback; running the payload is what matters
        code = 1
    assert code != 0
    assert not marker.exists()


def test_eval_refuses_a_pytorch_model_bin(lm_dir, data_file, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    (lm_dir / "model.safetensors").unlink()
    (lm_dir / "pytorch_model.bin").write_bytes(raw_pickle(marker))
    code = main(["eval", "--model", str(lm_dir), "--data", str(data_file), "--out", str(tmp_path / "r.json")])
    assert_refused(capsys, code, str(lm_dir))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw", "zip"])
def test_train_refuses_a_pickle_as_the_base_model(lm_dir, data_file, tmp_path, capsys, kind):
    marker = tmp_path / "MARKER"
    (lm_dir / "model.safetensors").unlink()
    if kind == "raw":
        (lm_dir / "pytorch_model.bin").write_bytes(raw_pickle(marker))
    else:
        torch_zip(lm_dir / "pytorch_model.bin", marker)
    code = main(["train", "--task", "prosqa", "--strategy", "cot", "--data", str(data_file),
                 "--model", str(lm_dir), "--out", str(tmp_path / "out"), "--epochs", "1", "--no-progress"])
    assert_refused(capsys, code, "pytorch_model.bin")
    assert not marker.exists()


def test_train_refuses_a_pickle_named_model_safetensors_as_the_base_model(lm_dir, data_file, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    (lm_dir / "model.safetensors").write_bytes(raw_pickle(marker))
    try:
        code = main(["train", "--task", "prosqa", "--strategy", "cot", "--data", str(data_file),
                     "--model", str(lm_dir), "--out", str(tmp_path / "out"), "--epochs", "1", "--no-progress"])
    finally:
        assert not marker.exists()
    assert_refused(capsys, code, "model.safetensors")


@pytest.mark.parametrize("kind", ["raw", "zip"])
def test_vqvae_commands_refuse_a_pickle_checkpoint(tmp_path, data_file, capsys, kind):
    marker = tmp_path / "MARKER"
    directory = tmp_path / "vq"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"format": "token-assorted-vqvae/1", "model": {}}))
    if kind == "raw":
        (directory / "model.safetensors").write_bytes(raw_pickle(marker))
    else:
        torch_zip(directory / "model.safetensors", marker)
    code = main(["vqvae", "decode", "--vqvae", str(directory), "--prompt", "x", "--codes", "1"])
    assert_refused(capsys, code, "model.safetensors", "pickle")
    out = tmp_path / "codes.jsonl"
    code = main(["vqvae", "encode", "--vqvae", str(directory), "--data", str(data_file), "--out", str(out)])
    assert_refused(capsys, code, "model.safetensors")
    assert not marker.exists() and not out.exists()


def test_remote_code_in_a_model_dir_is_never_imported(lm_dir, data_file, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    (lm_dir / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((lm_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilModel"}
    config["model_type"] = "evil"
    (lm_dir / "config.json").write_text(json.dumps(config))
    code = main(["eval", "--model", str(lm_dir), "--data", str(data_file), "--out", str(tmp_path / "r.json")])
    assert_refused(capsys, code, str(lm_dir))
    code = main(["train", "--task", "prosqa", "--strategy", "cot", "--data", str(data_file),
                 "--model", str(lm_dir), "--out", str(tmp_path / "out"), "--epochs", "1", "--no-progress"])
    assert_refused(capsys, code, str(lm_dir))
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path, data_file, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"epochs: !!python/object/apply:builtins.open [{str(marker)!r}, 'w']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_yaml(evil)
    code = main(["train", "--config", str(evil), "--task", "prosqa", "--data", str(data_file),
                 "--out", str(tmp_path / "o")])
    assert_refused(capsys, code, "evil.yaml")
    code = main(["vqvae", "train", "--config", str(evil), "--task", "prosqa", "--data", str(data_file),
                 "--out", str(tmp_path / "v")])
    assert_refused(capsys, code, "evil.yaml")
    code = main(["run", "--preset", str(evil), "--out", str(tmp_path / "r")])
    assert_refused(capsys, code, "evil.yaml")
    assert not marker.exists()


# --- resume state is ours, but a swapped file is still never unpickled -------------------
def test_vqvae_resume_refuses_a_swapped_trainer_state(tmp_path, data_file, capsys):
    from token_assorted.vqvae import VQVAETrainConfig, train_vqvae

    marker = tmp_path / "MARKER"
    options = dict(task="prosqa", data=str(data_file), out=str(tmp_path / "vq"), chunk_size=4, compression=4,
                   codebook_size=4, steps=4, batch_size=1, warmup=1, valid_every=2, d_model=16, heads=2,
                   encoder_layers=1, decoder_layers=1, prompt_layers=1, codebook_dim=4, max_prompt_len=32,
                   progress=False, device="cpu")
    train_vqvae(VQVAETrainConfig(**options, stop_at=2))
    state = tmp_path / "vq" / "state"
    torch_zip(state / json.loads((state / "latest.json").read_text())["dir"] / "optimizer.pt", marker)
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        train_vqvae(VQVAETrainConfig(**options, resume=True))
    assert not marker.exists()


def test_lm_resume_refuses_a_swapped_optimizer_state(tmp_path, data_file, capsys):
    marker = tmp_path / "MARKER"
    out = tmp_path / "lm"
    args = ["train", "--task", "prosqa", "--strategy", "cot", "--data", str(data_file), "--out", str(out),
            "--epochs", "2", "--batch-size", "1", "--max-steps", "1", "--save-every", "1", "--no-progress"]
    assert main(args) == 0
    states = sorted((out / "state").glob("step-*"))
    assert states, "no resume state written"
    torch_zip(states[-1] / "optimizer.pt", marker)
    capsys.readouterr()
    try:
        code = main(args + ["--resume"])
    finally:
        assert not marker.exists()
    assert_refused(capsys, code, "optimizer.pt")


def test_lm_resume_never_runs_a_swapped_optimizer_state(tmp_path, data_file):
    marker = tmp_path / "MARKER"
    out = tmp_path / "lm"
    args = ["train", "--task", "prosqa", "--strategy", "cot", "--data", str(data_file), "--out", str(out),
            "--epochs", "2", "--batch-size", "1", "--max-steps", "1", "--save-every", "1", "--no-progress"]
    assert main(args) == 0
    for state in (out / "state").glob("step-*"):
        torch_zip(state / "optimizer.pt", marker)
    try:
        code = main(args + ["--resume"])
    except Exception:  # noqa: BLE001 - only running the payload matters here (BUG-2, fixed, made it a traceback)
        code = 1
    assert code != 0
    assert not marker.exists()
