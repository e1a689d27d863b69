"""The pipeline's stages, one folder of the output dir each, cached by a hash of what they read.

    data       OUT/data/{train,valid,test}.jsonl   the task's generator, or the user's files
    tokenizer  OUT/tokenizer/                      the shared text tokenizer (the data's words, or a model's)
    vqvae      OUT/vqvae/                          stage 1 (vqvae.train_vqvae) on that tokenizer
    codes      OUT/codes/train.json                the training traces' codes (a codes file, vqvae/codes.py)
    train      OUT/models/<method>[-seed<k>]/      stage 2 (train.train_lm) on the codes file
    eval       OUT/eval/<method>[-seed<k>]/        the test split's results and predictions
    probes     OUT/probes/<method>[-seed<k>]/      interventions and the latency dial (probes.py)

`run_stage(path, key, build)` runs `build(path)` unless `path/.complete.json` holds the same
`key`, a hash of the stage's settings and of the stages it reads (`config_hash`): a rerun
reuses finished stages, an edited preset recomputes only what it changes. A stage writes into
its own folder only, and a folder counts only once its marker is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_json, atomic_write_jsonl, read_json
from ..data.schema import Example
from ..data.tasks import Task, get_task
from .preset import PipelineConfig, eval_config, tokenizer_spec, train_config, train_settings, vqvae_config

MARKER = ".complete.json"
STARTED = ".stage.json"  # the hash of a stage begun and not finished: a rerun continues it
Log = Callable[[str], None]


# --------------------------------------------------------------------------- the cache
def config_hash(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    path: Path
    hash: str
    seconds: float  # wall time of the run that produced it
    cached: bool


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except Exception:  # missing or damaged: the stage is simply not done
        return None
    return data if isinstance(data, dict) else None


def _read_marker(path: Path) -> dict[str, Any] | None:
    return _read_json_object(path / MARKER)


def run_stage(path: Path, key: str, build: Callable[..., Any], name: str, log: Log = print,
              resumable: bool = False) -> StageResult:
    """Run `build(path)` unless `path` holds a completion marker with hash `key`.

    A stage that was started with the same `key` and not finished (a run interrupted or killed)
    is continued: a `resumable` stage (training) gets `build(path, resume=True)` when it saved a
    resume state, and resumes from it. Otherwise the folder's files of ours (outdir.py's record)
    are removed first, so no file of an older run survives; a file we did not write is never
    deleted: the stage is refused while one is there.
    """
    from ..core.outdir import adopt, is_ours, release

    own = is_ours(path) is None  # outside a claimed folder (a library call): the stage records its own files
    if own:
        path.mkdir(parents=True, exist_ok=True)
        adopt(path)
    try:
        return _run_stage(path, key, build, name, log, resumable)
    finally:
        if own:
            release(path)


def _run_stage(path: Path, key: str, build: Callable[..., Any], name: str, log: Log, resumable: bool) -> StageResult:
    marker = _read_marker(path)
    if marker is not None and marker.get("hash") == key:
        log(f"[{name}] cached (took {marker.get('seconds', 0):.0f} s): {path}")
        return StageResult(path, key, float(marker.get("seconds", 0.0)), True)
    started = _read_json_object(path / STARTED)
    resume = (resumable and marker is None and started is not None and started.get("hash") == key
              and (path / "state" / "latest.json").is_file())
    if not resume:
        _clear(path, name)
        path.mkdir(parents=True, exist_ok=True)
        if resumable:  # what a rerun continues from (the other stages are simply computed again)
            atomic_write_json(path / STARTED, {"hash": key, "started": time.time()})
    log(f"[{name}] {'resuming' if resume else 'running'} -> {path}")
    begun = time.perf_counter()
    build(path, resume=resume) if resumable else build(path)
    seconds = time.perf_counter() - begun
    atomic_write_json(path / MARKER, {"hash": key, "seconds": seconds, "finished": time.time()})
    log(f"[{name}] done in {seconds:.1f} s")
    return StageResult(path, key, seconds, False)


def hub_revisions(specs: list[str]) -> list[str]:
    """The commit each Hub id among `specs` resolves to now: a moved branch recomputes the stages that
    read it (nothing for other specs, so other runs keep their cache keys)."""
    from ..core.model_source import hub_revision, is_hub_id, resolve_hub_model

    return [f"{spec}={hub_revision(resolve_hub_model(spec))}" for spec in specs if is_hub_id(spec)]


def _clear(path: Path, name: str) -> None:
    """Remove the files of ours in a stale or unfinished stage folder; refuse when a user's file is there."""
    from ..core.errors import OutputDirError
    from ..core.outdir import not_ours, remove_ours

    left = [entry for entry in not_ours(path) if not Path(entry).name.startswith(".token-assorted")]
    if not left:
        remove_ours(path)
    else:
        shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
        raise OutputDirError(f"[{name}] {path}: must be computed again, but holds files token-assorted did not write "
                             f"({shown}); they are never deleted: move them out of {path} and run again")


def _task(config: PipelineConfig) -> Task:
    return get_task(config.task, **config.data.task_options)


# --------------------------------------------------------------------------- data
def generate_splits(config: PipelineConfig) -> dict[str, list[Example]]:
    """Train / valid / test from the task generator; held-out questions are unseen in train."""
    task = get_task(config.task)
    sizes = {"train": config.data.train, "valid": config.data.valid, "test": config.data.test}
    splits: dict[str, list[Example]] = {}
    seen: set[str] = set()
    for offset, (split, n) in enumerate(sizes.items()):
        kept: list[Example] = []
        attempt = 0
        while len(kept) < n:
            # Each split (and each top-up) has its own seed; duplicates of earlier splits are dropped.
            seed = config.data.seed * 1000 + offset * 100 + attempt
            fresh = task.generate(max(n - len(kept), 16) if attempt else n, seed, **config.data.options)
            kept += [ex for ex in fresh if ex.question not in seen]
            attempt += 1
            if attempt > 20:
                raise ConfigError(f"cannot generate {n} distinct {split} questions with these options")
        splits[split] = kept[:n]
        seen |= {ex.question for ex in splits[split]}
    return splits


def file_splits(config: PipelineConfig) -> dict[str, list[Example]]:
    """Train / valid / test read from `data.files` (tasks whose data cannot be generated)."""
    task, files, sizes = _task(config), config.data.files, config.data
    train = task.load(files["train"])
    test = task.load(files["test"])
    if files.get("valid"):
        valid = task.load(files["valid"])
    else:
        # Held out from the END of train, so capping train below never overlaps it.
        n_valid = min(sizes.valid, max(len(train) - 1, 0))
        train, valid = train[:len(train) - n_valid], train[len(train) - n_valid:]
    cap = {"train": sizes.train, "valid": sizes.valid, "test": sizes.test}
    return {name: examples[:cap[name] or None]
            for name, examples in (("train", train), ("valid", valid), ("test", test))}


def data_stage(config: PipelineConfig, out: Path, log: Log) -> StageResult:
    from ..data.sources import fingerprint

    task = _task(config)

    def build(path: Path) -> None:
        splits = file_splits(config) if config.data.files else generate_splits(config)
        for split, examples in splits.items():
            # [qa] records under the data's own field names, so the configured task reads them back
            atomic_write_jsonl(path / f"{split}.jsonl", (task.to_record(example) for example in examples))
            log(f"  {split}: {len(examples)} examples")

    settings = dataclasses.asdict(config.data)
    # Content hashes of the data files: an edited file recomputes the stages that read it.
    files = {split: fingerprint(path) for split, path in sorted(config.data.files.items()) if path}
    return run_stage(out / "data", config_hash("data", config.task, settings, files), build, "data", log)


# --------------------------------------------------------------------------- stage 1
def tokenizer_stage(config: PipelineConfig, out: Path, data: StageResult, log: Log) -> StageResult:
    """The text tokenizer every later stage reads: the training data's words, or a pretrained model's."""
    from ..core.outdir import save_pretrained_into
    from ..data.tokenizer import task_tokenizer

    spec = tokenizer_spec(config)

    def build(path: Path) -> None:
        task = _task(config)
        tokenizer = task_tokenizer(spec, task, task.load(data.path / "train.jsonl"))
        save_pretrained_into(tokenizer, path)
        log(f"  {len(tokenizer)} tokens ({spec})")

    key = config_hash("tokenizer", spec, data.hash, *hub_revisions([spec]))
    return run_stage(out / "tokenizer", key, build, "tokenizer", log)


def vqvae_stage(config: PipelineConfig, out: Path, data: StageResult, tokenizer: StageResult,
                log: Log) -> StageResult:
    from ..vqvae import train_vqvae

    def build(path: Path, resume: bool = False) -> None:
        stage = vqvae_config(config, data.path, tokenizer.path, path, "preset.vqvae")
        train_vqvae(dataclasses.replace(stage, resume=resume))

    settings = {key: value for key, value in config.vqvae.items() if key != "tokenizer"}  # the tokenizer stage's
    key = config_hash("vqvae", settings, data.hash, tokenizer.hash)
    return run_stage(out / "vqvae", key, build, "vqvae", log, resumable=True)


def codes_stage(config: PipelineConfig, out: Path, data: StageResult, vqvae: StageResult, log: Log) -> StageResult:
    """The codes of every training trace, a codes file that stage 2 reads (the VQ-VAE's folder stays as it was)."""
    from ..vqvae import load_vqvae
    from ..vqvae.codes import encode_codes_file

    def build(path: Path) -> None:
        summary = encode_codes_file(load_vqvae(vqvae.path), _task(config), data.path / "train.jsonl",
                                    path / "train.json")
        log(f"  {summary}")

    return run_stage(out / "codes", config_hash("codes", vqvae.hash, data.hash), build, "codes", log)


# --------------------------------------------------------------------------- stage 2 and evaluation
def method_dir_name(method: str, seed_index: int) -> str:
    return method if seed_index == 0 else f"{method}-seed{seed_index}"


def train_stage(config: PipelineConfig, out: Path, method: str, seed_index: int, data: StageResult,
                codes: StageResult, log: Log) -> StageResult:
    from ..lm.train import train_lm

    def build(path: Path, resume: bool = False) -> None:
        stage = train_config(config, method, seed_index, data.path, codes.path / "train.json", path,
                             f"preset.train ({method})")
        train_lm(dataclasses.replace(stage, resume=resume))

    name = method_dir_name(method, seed_index)
    settings = train_settings(config, method)
    key = config_hash("train", method, seed_index, settings, data.hash, codes.hash,
                      *hub_revisions([str(settings.get("model", ""))]))
    return run_stage(out / "models" / name, key, build, f"train {name}", log, resumable=True)


def eval_stage(config: PipelineConfig, out: Path, name: str, model: StageResult, data: StageResult,
               log: Log) -> tuple[StageResult, dict[str, Any]]:
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.evaluate import evaluate_dir, save_result
    from ..generation.scoring import default_max_new_tokens

    task = _task(config)

    def build(path: Path) -> None:
        test = task.load(data.path / "test.jsonl")
        max_new = config.eval.max_new_tokens or default_max_new_tokens(load_tokenizer(model.path), task, test[:500])
        result = evaluate_dir(model.path, test, eval_config(config, max_new), task)
        save_result(result, path / "results.json", {"model": str(model.path), "max_new_tokens": max_new})

    key = config_hash("eval", dataclasses.asdict(config.eval), model.hash, data.hash)
    stage = run_stage(out / "eval" / name, key, build, f"eval {name}", log)
    return stage, read_json(stage.path / "results.json")


def probe_stage(config: PipelineConfig, out: Path, name: str, model: StageResult, data: StageResult,
                plain: dict[str, Any], log: Log) -> tuple[StageResult, dict[str, Any]]:
    """OUT/probes/<name>/: every probe of one latent model (probes.py).

    `plain` is the model's results.json from the eval stage: its accuracy is `none`'s, and the
    probes generate with its settings (greedy).
    """
    from ..evaluation.probes import SUMMARY, run_probes

    task = _task(config)

    def build(path: Path) -> None:
        test = task.load(data.path / "test.jsonl")
        base = dataclasses.replace(eval_config(config, int(plain["max_new_tokens"])), samples=0)
        summary = run_probes(model.path, test, task, base, float(plain["accuracy"]), config.probes, path)
        atomic_write_json(path / SUMMARY, summary)

    key = config_hash("probes", dataclasses.asdict(config.probes), dataclasses.asdict(config.eval), model.hash,
                      data.hash)
    stage = run_stage(out / "probes" / name, key, build, f"probes {name}", log)
    return stage, read_json(stage.path / SUMMARY)
