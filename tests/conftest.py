"""Shared test set-up: offline, single-threaded, and the optional reference data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A bug inside a command keeps its traceback in tests (the CLI prints one line without this).
os.environ.setdefault("TOKEN_ASSORTED_DEBUG", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKEN_ASSORTED_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """A file of the reference data beside the checkout; skip the test when it is absent."""
    path = SHARED / "data" / relative
    if not path.is_file():
        pytest.skip(f"reference data not available: {path}")
    return path


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    # Tests run on 2 shared cores; one intra-op thread keeps them predictable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


# --------------------------------------------------------------------------- shared tiny artefacts
# Used by the reliability tests (test_bad_input, test_interruptions, test_limits, test_system_errors, test_hostile_files,
# test_outputs, test_bounds): one definition each, instead of a copy per file.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# A VQ-VAE of a few thousand weights: its shape (VQ_SHAPE), and two training steps on top (VQ_TINY; a
# later --steps or --codebook-size in an argv wins).
VQ_SHAPE = ["--chunk-size", "4", "--compression", "2", "--codebook-size", "8", "--batch-size", "4",
            "--warmup", "1", "--d-model", "16", "--heads", "2", "--encoder-layers", "1", "--decoder-layers", "1",
            "--codebook-dim", "4", "--max-prompt-len", "64", "--device", "cpu", "--no-progress"]
VQ_TINY = ["--steps", "2", "--valid-every", "2", *VQ_SHAPE]
# The interruption tests' VQ-VAE (test_bad_input, test_interruptions): a prompt encoder layer and dead-code
# replacement at every step, so that a resumed run must restore the replacement's random state too.
VQ_OPTIONS = ["--chunk-size", "4", "--compression", "2", "--codebook-size", "8", "--batch-size", "4",
              "--warmup", "2", "--d-model", "16", "--heads", "2", "--encoder-layers", "1",
              "--decoder-layers", "1", "--prompt-layers", "1", "--codebook-dim", "4", "--max-prompt-len", "64",
              "--dead-code-threshold", "1.0", "--device", "cpu", "--no-progress"]


def one_line(capsys, code: int, *names: str, exit_code: int = 2) -> str:
    """The command failed with `exit_code` and one error line on stderr (no traceback) naming `names`."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == exit_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def toy_train(toy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """`train` argv of a one-epoch Token Assorted run on the toy task's codes file."""
    return ["train", "--task", "toy", "--strategy", "token-assorted", "--data", str(toy["train"]), "--codes",
            str(toy["codes"]), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress", *extra]


def tiny_lm_argv(pronto: Path, vqvae: Path, out: Path, *extra: str) -> list[str]:
    """`train` argv of a one-epoch Token Assorted LM on the ProntoQA file and the tiny VQ-VAE."""
    return ["train", "--task", "prontoqa", "--strategy", "token-assorted", "--data", str(pronto), "--vqvae",
            str(vqvae), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress", *extra]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """The stage-2 toy task's train/valid files and codes file (tests/stage2_toy.py)."""
    import stage2_toy

    stage2_toy.register()
    return stage2_toy.write_data(tmp_path_factory.mktemp("toy"), n_train=16, n_valid=4)


@pytest.fixture(scope="module")
def pronto(tmp_path_factory) -> Path:
    """Eight one-hop ProntoQA examples without distractors."""
    from token_assorted.cli import main

    path = tmp_path_factory.mktemp("data") / "pronto.jsonl"
    assert main(["data", "generate", "prontoqa", "--n", "8", "--hops", "1", "--no-distractors",
                 "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def tiny_vqvae(pronto, tmp_path_factory) -> Path:
    """A VQ-VAE (K=8, L=4, r=2) trained for two steps on `pronto`."""
    from token_assorted.cli import main

    out = tmp_path_factory.mktemp("vq") / "vq"
    assert main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(out), *VQ_TINY]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_lm(pronto, tiny_vqvae, tmp_path_factory) -> Path:
    """A Token Assorted LM trained for one epoch on `pronto` with `tiny_vqvae`."""
    from token_assorted.cli import main

    out = tmp_path_factory.mktemp("lm") / "lm"
    assert main(tiny_lm_argv(pronto, tiny_vqvae, out)) == 0
    return out


@pytest.fixture(scope="module")
def artefacts(pronto, tmp_path_factory) -> dict[str, Path]:
    """The ProntoQA file, a VQ-VAE of VQ_OPTIONS trained 4 steps on it and a one-epoch LM on that."""
    import torch

    from token_assorted.cli import main

    vqvae = tmp_path_factory.mktemp("vq") / "vq"
    torch.set_num_threads(1)
    assert main(["vqvae", "train", "--task", "prontoqa", "--data", str(pronto), "--out", str(vqvae),
                 "--steps", "4", "--valid-every", "2", *VQ_OPTIONS]) == 0
    lm = tmp_path_factory.mktemp("lm") / "lm"
    assert main(tiny_lm_argv(pronto, vqvae, lm)) == 0
    return {"pronto": pronto, "vqvae": vqvae, "lm": lm}
