"""The main job, `token-assorted run`: data -> tokenizer -> VQ-VAE -> codes -> one LM per method -> eval -> report.

Every method's LM has the same architecture and sees the same training examples; all are
scored on the same held-out test split. Each stage writes into its own folder of the output
dir and is cached by a hash of what it reads (`stages.py`, which lists the folders); a preset
(`preset.py`) is checked in full, every stage's config built, before the first stage runs.

    OUT/results.json, report.md, tokens_vs_accuracy.png, latency_dial.png   (report.py)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.devices import is_main_process, launched
from ..core.environment import environment
from ..core.io import read_json
from ..core.outdir import adopt
from ..evaluation.checkpoints import kept_checkpoint
from ..evaluation.claims import check_claims, claims_lines
from ..evaluation.probes import summarize
from ..lm.methods import METHODS, display_name
from ..lm.model_dir import MODEL_META
from .preset import PipelineConfig, check_data_files, check_models
from .stages import (
    StageResult,
    codes_stage,
    data_stage,
    eval_stage,
    method_dir_name,
    probe_stage,
    tokenizer_stage,
    train_stage,
    vqvae_stage,
)


# --------------------------------------------------------------------------- the job
@dataclass
class RunOutcome:
    out: Path
    results: dict[str, Any]
    timings: dict[str, float]  # wall seconds per stage (as computed, cached or not)


def run_pipeline(config: PipelineConfig, out: str | Path, preset_name: str = "custom",
                 log: Callable[[str], None] = print) -> RunOutcome:
    """Run (or resume) the whole experiment into `out`; return the results.json content."""
    import torch

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if not is_main_process():
        log = _quiet  # one voice: the main process's
    check_data_files(config, preset_name)
    check_models(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # the others write only inside folders the main process recorded as ours
        adopt(out)  # every file the stages write is recorded as ours (outdir.py); `run` claimed the folder first
    started = time.perf_counter()
    data = data_stage(config, out, log)
    tokenizer = tokenizer_stage(config, out, data, log)
    # Trained even for baselines only: they get the latent rows too, so every model has the same size.
    vqvae = vqvae_stage(config, out, data, tokenizer, log)
    codes = codes_stage(config, out, data, vqvae, log)
    timings = {stage: result.seconds for stage, result in
               (("data", data), ("tokenizer", tokenizer), ("vqvae", vqvae), ("codes", codes))}
    jobs = [(method, seed_index) for method in config.methods for seed_index in range(config.seeds)]
    models = _train_all(config, out, jobs, data, codes, log)
    runs: dict[str, list[dict[str, Any]]] = {}
    probes: dict[str, list[dict[str, Any]]] = {}
    # Evaluations run one at a time after all training, so their timings are comparable.
    for (method, seed_index), model in zip(jobs, models):
        name = method_dir_name(method, seed_index)
        timings[f"train {name}"] = model.seconds
        evaluation, summary = eval_stage(config, out, name, model, data, log)
        timings[f"eval {name}"] = evaluation.seconds
        runs.setdefault(method, []).append(summary)
        if METHODS[method].codes or method == "coconut":  # do its latent tokens (or thoughts) carry the reasoning?
            stage, probed = probe_stage(config, out, name, model, data, summary, log)
            timings[f"probes {name}"] = stage.seconds
            probes.setdefault(method, []).append(probed)
    if not is_main_process():  # under torchrun the main process evaluated and reports
        return RunOutcome(out, {}, timings)
    results = _write_report(config, out, preset_name, runs, vqvae, timings, log, probes)
    log(f"total wall time this run: {time.perf_counter() - started:.1f} s; report: {out / 'report.md'}")
    return RunOutcome(out, results, timings)


def _quiet(line: str) -> None:
    """The log of a process other than the main one under torchrun."""


def _train_job(config: PipelineConfig, out: Path, method: str, seed_index: int, data: StageResult,
               codes: StageResult) -> StageResult:
    """One training in a worker process: one intra-op thread, no progress bar (lines only)."""
    import torch

    torch.set_num_threads(1)
    adopt(out)  # a fresh interpreter: record this worker's files in the run's manifest too
    config = dataclasses.replace(config, train={**config.train, "progress": False})
    return train_stage(config, out, method, seed_index, data, codes, print)


def _worker_start(gpus: Any = None) -> None:
    """A training worker's set-up: its GPU, before it touches CUDA (one per worker, taken from the
    `gpus` queue), and tqdm's lock a thread lock, not a multiprocessing one. A worker ended by
    SIGTERM (the run interrupted) cannot release a multiprocessing semaphore, and the resource
    tracker then warns about "leaked semaphore objects" after the run's one-line message."""
    import os
    import threading

    from tqdm import tqdm

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    tqdm.set_lock(threading.RLock())


def _train_all(config: PipelineConfig, out: Path, jobs: list[tuple[str, int]], data: StageResult,
               codes: StageResult, log: Callable[[str], None]) -> list[StageResult]:
    """Train every (method, seed); with `parallel` > 1, in that many worker processes at once.

    On a machine with N > 1 GPUs every GPU trains: one worker per GPU (at least N workers, each
    pinned to its GPU), methods in parallel. Under torchrun each model trains on every process
    instead, one after the other.
    """
    gpus = _gpu_count() if not launched() else 0
    workers = worker_count(config.parallel, gpus, len(jobs))
    if launched() or workers <= 1:
        return [train_stage(config, out, m, k, data, codes, log) for m, k in jobs]
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    log(f"training {len(jobs)} models in {workers} processes" + (f" on {gpus} GPUs" if gpus > 1 else ""))
    queue = None
    if gpus > 1:  # worker w takes GPU w mod N; more workers than GPUs share them in turn
        queue = context.Queue()  # handed to each worker as it starts
        for worker in range(workers):
            queue.put(worker % gpus)
    # spawn: a fresh interpreter per worker (no forked torch thread pools or tokenizer locks).
    # Leaving the `with` block terminates the workers, also when the run is interrupted or
    # killed with SIGTERM (the CLI turns it into KeyboardInterrupt): no training is left
    # running without its parent, and each resumes from its last checkpoint on the next run.
    with context.Pool(workers, initializer=_worker_start, initargs=(queue,)) as pool:
        pending = [pool.apply_async(_train_job, (config, out, m, k, data, codes)) for m, k in jobs]
        results = [result.get() for result in pending]
        # Let the workers exit on their own: terminating them (what leaving the block does)
        # leaves their semaphores to the resource tracker, which warns about a "leak".
        pool.close()
        pool.join()
        return results


def worker_count(parallel: int, gpus: int, jobs: int) -> int:
    """Training processes at once: `parallel`, at least one per GPU, at most one per job."""
    return min(max(parallel, gpus), jobs)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _write_report(config: PipelineConfig, out: Path, preset_name: str, runs: dict[str, list[dict[str, Any]]],
                  vqvae: StageResult | None, timings: dict[str, float], log: Callable[[str], None],
                  probes: dict[str, list[dict[str, Any]]]) -> dict:
    from types import SimpleNamespace

    from ..evaluation.report import build_results, summarize_method, vqvae_summary, write_report

    methods = [summarize_method(display_name(m), [SimpleNamespace(**r) for r in rs])
               for m, rs in runs.items()]
    vq_metrics = read_json(vqvae.path / "metrics.json") if vqvae and (vqvae.path / "metrics.json").is_file() \
        else {}
    details = {"methods": {m: {"strategy": m, "runs": [_run_details(r) for r in rs],
                               **({"probes": probes[m]} if m in probes else {})} for m, rs in runs.items()},
               "vqvae_metrics": vq_metrics, "timings_seconds": timings, "environment": environment()}
    extras: dict[str, dict[str, Any]] = {display_name(m): {"checkpoint": kept_checkpoint([_model_meta(r) for r in rs])}
                                         for m, rs in runs.items()}
    for m, per_seed in probes.items():
        extras[display_name(m)].update(summarize(per_seed))
    for m, rs in runs.items():  # which rule checked the answers (an eval cached before it was recorded: none)
        if isinstance(rs[0].get("answer_rules"), dict):
            extras[display_name(m)]["answer_rules"] = rs[0]["answer_rules"]
    results = build_results(config.task, preset_name, methods, vqvae_summary(vq_metrics), details, extras)
    checks = check_claims(results["methods"], config.claims)
    results.setdefault("details", {})["claims"] = [dataclasses.asdict(c) for c in checks]
    samples = _explained_samples(config, out, vqvae, log)
    write_report(out, results, dataclasses.asdict(config), samples, timings, _learning_curves(out, runs))
    for m in methods:
        log(f"  {m.name:<20} accuracy {100 * m.accuracy:5.1f}%  tokens {m.avg_generated_tokens:6.1f} "
            f"(latent {m.avg_latent_tokens:.1f})")
    log("the paper's claim on this run (report.md, \"The paper's claim on this run\"):")
    for line in claims_lines(checks):
        log(line)
    return results


def _learning_curves(out: Path, runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each trained model's per-epoch history (token_assorted.json), by model directory name."""
    curves = {}
    for method, summaries in runs.items():
        for seed_index in range(len(summaries)):
            name = method_dir_name(method, seed_index)
            meta = out / "models" / name / MODEL_META
            if meta.is_file():
                curves[name] = read_json(meta).get("history", [])
    return curves


def _run_details(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("accuracy", "avg_generated_tokens", "avg_latent_tokens", "avg_text_tokens", "latent_span_share",
            "seconds_per_example", "tokens_per_second", "sampled_accuracy", "details", "model")
    meta = _model_meta(summary)  # the training cost and the kept checkpoint, beside the model
    return {**{k: summary.get(k) for k in keep}, "train_seconds_per_step": meta.get("train_seconds_per_step"),
            "checkpoint": meta.get("checkpoint")}


def _model_meta(summary: dict[str, Any]) -> dict[str, Any]:
    path = Path(str(summary.get("model"))) / MODEL_META
    return read_json(path) if path.is_file() else {}


def _explained_samples(config: PipelineConfig, out: Path, vqvae: StageResult | None,
                       log: Callable[[str], None]) -> list[str]:
    """A few test predictions of the Token Assorted model with their latent spans decoded."""
    method = next((m for m in ("token-assorted", *config.methods) if m in config.methods
                   and METHODS[m].codes), None)
    if method is None or config.explain_samples <= 0:
        return []
    from ..evaluation.explain import Explainer, render

    try:
        explainer = Explainer(out / "models" / method, vqvae.path if vqvae else None, config.task)
        pairs = explainer.predictions(out / "eval" / method / "results.predictions.jsonl", None)
    except Exception as exc:  # the report must not fail because a sample cannot be explained
        log(f"  (no explained samples: {exc})")
        return []
    with_latent = [p for p in pairs if any(s.kind == "latent" for s in p[1].segments)] or pairs
    texts = []
    for record, explanation in with_latent[: config.explain_samples]:
        verdict = "correct" if record.get("correct") else "wrong"
        texts.append(f"[{display_name(method)}, {verdict}] question: {explanation.question}\n"
                     f"raw:       {explanation.raw}\nexplained: {render(explanation)}\n"
                     f"reference answer: {record.get('answer')}")
    return texts
