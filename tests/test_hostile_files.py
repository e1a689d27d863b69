"""Files that lie: model folders, metadata, resume pointers, tokenizers and data records.

Issue 29, items 3, 4, 9, 10, 11 and 13: a model folder is loaded only if its weights are
exactly those of its config.json and its latent metadata is its tokenizer's; the resume
pointer leads only into the run's own state folder, and a swapped VQ-VAE is named; remote
code and files linked from outside the folder are refused; readers refuse what json and
YAML would accept silently (duplicated keys, NaN) or crash on (deep nesting, huge numbers);
task records are checked at load time; text shown on a terminal is escaped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from token_assorted.cli import main

from conftest import VQ_TINY, one_line, tiny_lm_argv

GOOD = {"question": "True or false: Sam is hot.", "steps": ["Sam is a cat.", "Cats are hot."], "answer": "True"}


def train_vqvae(pronto: Path, out: Path, codebook_size: int = 8) -> Path:
    assert main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out), *VQ_TINY,
                 "--codebook-size", str(codebook_size)]) == 0
    return out


def model_copy(tiny_lm: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_lm, copy, ignore=shutil.ignore_patterns("state", "logs"))
    return copy


def edit_json(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def eval_argv(model: Path, data: Path, tmp_path: Path) -> list[str]:
    return ["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "r.json"), "--limit", "1",
            "--max-new-tokens", "2"]


# --- 3. weights that do not match config.json ---------------------------------------------
CONFIG_EDITS = {
    "a third layer": ({"num_hidden_layers": 3}, ["config.json", "model.layers.2."]),
    "another architecture": ({"model_type": "gpt2"}, ["model.safetensors", "unexpected weight"]),
    "another vocabulary": ({"vocab_size": 500}, ["model.safetensors", "vocab_size", "500"]),
    "an unknown model_type": ({"model_type": "nosuch"}, ["config.json", "nosuch"]),
}


@pytest.mark.parametrize("edit", list(CONFIG_EDITS))
def test_eval_refuses_weights_that_are_not_those_of_config_json(edit, tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    changes, names = CONFIG_EDITS[edit]
    edit_json(model / "config.json", **changes)
    code = main(eval_argv(model, pronto, tmp_path))
    one_line(capsys, code, *names)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("text, names", [("{not json", ["config.json", "line 1", "malformed JSON"]),
                                         ("[1, 2]", ["config.json", "JSON object"])])
def test_eval_refuses_a_config_json_that_is_not_a_json_object(text, names, tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    (model / "config.json").write_text(text)
    code = main(eval_argv(model, pronto, tmp_path))
    one_line(capsys, code, *names)


def test_train_refuses_a_base_model_whose_weights_are_not_its_configs(tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    edit_json(model / "config.json", num_hidden_layers=3)
    code = main(["train", "--task", "prontoqa", "--strategy", "cot", "--data", str(pronto), "--model", str(model),
                 "--out", str(tmp_path / "o"), "--epochs", "1", "--no-progress"])
    one_line(capsys, code, "model.layers.2.")


# --- 4. latent metadata that is not the tokenizer's ------------------------------------------
@pytest.mark.parametrize("vocab, names", [
    ({"first_code_id": 5}, ["token_assorted.json", "latent_vocab", "first_code_id"]),
    ({"codebook_size": 4}, ["token_assorted.json", "codebook_size 4", "8 latent tokens"]),
    ({"begin_id": "x"}, ["token_assorted.json", "non-negative integers"]),
])
def test_eval_refuses_latent_metadata_that_is_not_the_tokenizers(vocab, names, tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    meta = json.loads((model / "token_assorted.json").read_text())
    meta["latent_vocab"].update(vocab)
    (model / "token_assorted.json").write_text(json.dumps(meta))
    code = main(eval_argv(model, pronto, tmp_path))
    one_line(capsys, code, *names)


# --- 11. tokenizers: remote code and links out of the folder ---------------------------------
def test_auto_map_in_tokenizer_config_is_one_line_and_never_run(tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    marker = tmp_path / "ran"
    (model / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    edit_json(model / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil_tokenizer.Evil", None]})
    code = main(eval_argv(model, pronto, tmp_path))
    one_line(capsys, code, "tokenizer_config.json", "auto_map")
    assert not marker.exists()


def test_a_tokenizer_file_linked_from_outside_the_folder_is_refused(tiny_lm, pronto, tmp_path, capsys):
    model = model_copy(tiny_lm, tmp_path)
    outside = tmp_path / "secret.json"
    shutil.move(model / "tokenizer.json", outside)
    os.symlink(outside, model / "tokenizer.json")
    code = main(eval_argv(model, pronto, tmp_path))
    one_line(capsys, code, "tokenizer.json", "outside the model folder")


def test_links_inside_the_folder_are_fine(tiny_lm, tmp_path):
    from token_assorted.data.tokenizer import load_tokenizer

    model = model_copy(tiny_lm, tmp_path)
    shutil.move(model / "tokenizer.json", model / "real-tokenizer.json")
    os.symlink("real-tokenizer.json", model / "tokenizer.json")
    assert len(load_tokenizer(model)) > 0


# --- 10. the resume pointer and a swapped VQ-VAE --------------------------------------------
@pytest.mark.parametrize("pointer, names", [
    ({"dir": "../../elsewhere/step-00000002"}, ["latest.json", "step-NNNNNNNN"]),
    ([1, 2], ["latest.json", "step-NNNNNNNN"]),
    ({"dir": "step-00000099"}, ["latest.json", "missing"]),
])
def test_the_resume_pointer_must_name_a_step_folder_of_this_run(pointer, names, tiny_lm, pronto, tiny_vqvae, tmp_path,
                                                                 capsys):
    out = tmp_path / "lm"
    shutil.copytree(tiny_lm, out)
    (out / "state" / "latest.json").write_text(json.dumps(pointer))
    code = main(tiny_lm_argv(pronto, tiny_vqvae, out, "--resume"))
    one_line(capsys, code, *names)


def test_a_step_folder_that_links_outside_the_state_is_refused(tiny_lm, pronto, tiny_vqvae, tmp_path, capsys):
    out = tmp_path / "lm"
    shutil.copytree(tiny_lm, out)
    step = json.loads((out / "state" / "latest.json").read_text())["dir"]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "state" / step, elsewhere)
    os.symlink(elsewhere, out / "state" / step)
    code = main(tiny_lm_argv(pronto, tiny_vqvae, out, "--resume"))  # a link is not a file we wrote (issue 34)
    one_line(capsys, code, str(out), f"state/{step}", "did not write")
    code = main(tiny_lm_argv(pronto, tiny_vqvae, out, "--resume", "--force"))
    one_line(capsys, code, "latest.json", "outside")


def test_a_vqvae_of_another_codebook_swapped_in_before_resume_is_named(tiny_lm, pronto, tiny_vqvae, tmp_path, capsys):
    out, swapped = tmp_path / "lm", tmp_path / "vq"
    shutil.copytree(tiny_lm, out)
    train_vqvae(pronto, swapped, codebook_size=16)
    capsys.readouterr()
    # The saved run names the swapped folder, as if the new VQ-VAE had replaced the old one at its path.
    step = json.loads((out / "state" / "latest.json").read_text())["dir"]
    trainer = json.loads((out / "state" / step / "trainer.json").read_text())
    trainer["config"].update(vqvae=str(swapped), abspaths={**trainer["config"]["abspaths"], "vqvae": str(swapped)})
    (out / "state" / step / "trainer.json").write_text(json.dumps(trainer))
    code = main(tiny_lm_argv(pronto, swapped, out, "--resume"))
    one_line(capsys, code, "--resume", "codebook_size 8 -> 16")
    # A state saved before the layout was recorded: the weights' shapes name the change.
    trainer.pop("latents")
    (out / "state" / step / "trainer.json").write_text(json.dumps(trainer))
    code = main(tiny_lm_argv(pronto, swapped, out, "--resume"))
    one_line(capsys, code, "model.safetensors", "has shape", "this run implies")


# --- 9 and 13. readers ---------------------------------------------------------------------------
HOSTILE_JSON = {
    "nested 100,000 deep": (json.dumps(GOOD) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", ["line 2", "nested"]),
    "nested, in a JSON list": ("[\n" + json.dumps(GOOD) + ",\n" + "[" * 100_000 + "]" * 100_000 + "\n]\n",
                               ["line 3", "nested"]),
    "a 5,000-digit integer": ('{"question": "q", "steps": ["s"], "answer": "a", "n": ' + "9" * 5000 + "}\n",
                              ["line 1", "4300 digits"]),
    "a duplicated key": ('{"question": "q", "steps": ["s"], "answer": "a", "answer": "b"}\n',
                         ["line 1", "duplicate key 'answer'"]),
    "NaN": ('{"question": "q", "steps": ["s"], "answer": "a", "score": NaN}\n', ["line 1", "NaN"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
@pytest.mark.parametrize("command", ["data stats", "vqvae encode"])
def test_hostile_json_is_one_line_naming_the_file_and_line(command, case, tiny_vqvae, tmp_path, capsys):
    text, names = HOSTILE_JSON[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    argv = {"data stats": ["data", "stats", str(path), "--task", "prontoqa"],
            "vqvae encode": ["vqvae", "encode", "--vqvae", str(tiny_vqvae), "--data", str(path),
                             "--out", str(tmp_path / "codes.jsonl")]}[command]
    code = main(argv)
    one_line(capsys, code, "bad.jsonl", *names)


def test_duplicated_keys_in_config_files_are_refused(pronto, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\nepochs: 100\n")
    code = main(["train", "--config", str(config), "--task", "prontoqa", "--strategy", "cot", "--data", str(pronto),
                 "--out", str(tmp_path / "o")])
    one_line(capsys, code, "train.yaml", "duplicate key 'epochs'")
    codes = tmp_path / "codes.json"
    codes.write_text('{"chunk_size": 4, "chunk_size": 2, "latents_per_chunk": 1, "codebook_size": 8, "codes": []}')
    code = main(["train", "--task", "prontoqa", "--data", str(pronto), "--codes", str(codes),
                 "--out", str(tmp_path / "o")])
    one_line(capsys, code, "codes.json", "duplicate key 'chunk_size'")


def prosqa_record() -> dict:
    from token_assorted.data.tasks import get_task

    return get_task("prosqa").generate(1, 0, nodes=10, min_steps=1, max_steps=3)[0].to_dict()


PROSQA_DAMAGE = {
    "root NaN": ('"root": NaN', None, ["line 1", "NaN"]),
    "an edge to a missing node": (None, {"edges": [[0, 99]]}, ["line 1", "field 'edges'", "99"]),
    "a root beyond the nodes": (None, {"root": 50}, ["field 'root'", "50"]),
    "a boolean target": (None, {"target": True}, ["field 'target'"]),
    "edges that are not pairs": (None, {"edges": [[0, 1, 2]]}, ["field 'edges'"]),
    "a missing neg_target": (None, {"neg_target": None}, ["field 'neg_target'"]),
}


@pytest.mark.parametrize("damage", list(PROSQA_DAMAGE))
@pytest.mark.parametrize("command", ["data stats", "train"])
def test_damaged_prosqa_graphs_are_refused_at_load_time(command, damage, tmp_path, capsys):
    raw, changes, names = PROSQA_DAMAGE[damage]
    record = prosqa_record()
    if changes and changes.get("neg_target", 0) is None:
        record.pop("neg_target")
        changes = None
    text = json.dumps({**record, **(changes or {})})
    if raw:
        text = text.replace(f'"root": {record["root"]}', raw)
    path = tmp_path / "prosqa.jsonl"
    path.write_text(text + "\n")
    argv = {"data stats": ["data", "stats", str(path)],
            "train": ["train", "--task", "prosqa", "--strategy", "cot", "--data", str(path), "--out",
                      str(tmp_path / "o"), "--no-progress"]}[command]
    code = main(argv)
    one_line(capsys, code, "prosqa.jsonl", *names)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change, field", [({"start": [9, 0]}, "start"), ({"walls": [[0, -1]]}, "walls"),
                                           ({"width": 10**9}, "width")])
def test_maze_cells_outside_the_grid_are_refused(change, field, tmp_path, capsys):
    from token_assorted.data.tasks import get_task

    record = get_task("keys-maze").generate(1, 0)[0].to_dict()
    path = tmp_path / "maze.jsonl"
    path.write_text(json.dumps({**record, **change}) + "\n")
    code = main(["data", "stats", str(path)])
    one_line(capsys, code, "maze.jsonl", f"field '{field}'")


# --- 13. the terminal ------------------------------------------------------------------------------
def test_explain_escapes_control_characters_of_the_question(tiny_lm, capsys):
    capsys.readouterr()
    assert main(["explain", "--model", str(tiny_lm), "--question", "Is Sam \x1b[31mred\x1b[0m?\u202e", "--max-new-tokens",
                 "2"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[31mred" in out and "\\u202e" in out
