"""The pipeline's cached stages: each writes one folder of the output dir, marked done by a hash.

`run_stage(path, key, build)` runs `build(path)` unless `path/.complete.json` holds the same
`key`, a hash of the stage's settings and of the stages it reads (`config_hash`); so a rerun
reuses finished stages and an edited preset recomputes only what it changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json, read_json

MARKER = ".complete.json"


def config_hash(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    path: Path
    hash: str
    seconds: float  # wall time of the run that produced it
    cached: bool


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path / MARKER)
    except Exception:  # missing or damaged: the stage is simply not done
        return None
    return data if isinstance(data, dict) else None


def run_stage(path: Path, key: str, build: Callable[[Path], Any], name: str,
              log: Callable[[str], None] = print) -> StageResult:
    """Run `build(path)` unless `path` holds a completion marker with hash `key`."""
    marker = _read_marker(path)
    if marker is not None and marker.get("hash") == key:
        log(f"[{name}] cached (took {marker.get('seconds', 0):.0f} s): {path}")
        return StageResult(path, key, float(marker.get("seconds", 0.0)), True)
    if path.exists():
        # Stale or unfinished: start clean so no file of an older run survives.
        shutil.rmtree(path)
    path.mkdir(parents=True)
    log(f"[{name}] running -> {path}")
    started = time.perf_counter()
    build(path)
    seconds = time.perf_counter() - started
    atomic_write_json(path / MARKER, {"hash": key, "seconds": seconds, "finished": time.time()})
    log(f"[{name}] done in {seconds:.1f} s")
    return StageResult(path, key, seconds, False)


def eval_config(config: Any, max_new_tokens: int) -> Any:
    """The EvalConfig of the eval stage (and of the probes, which add their own fields)."""
    from .evaluate import EvalConfig

    settings = config.eval
    return EvalConfig(batch_size=settings.batch_size, max_new_tokens=max_new_tokens, samples=settings.samples,
                      top_k=settings.top_k, limit=settings.limit, mixed_precision=settings.mixed_precision)
