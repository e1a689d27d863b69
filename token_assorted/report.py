"""The experiment report: results.json, report.md and tokens_vs_accuracy.png.

results.json has one fixed schema (checked by `validate_results`):
`{"task", "preset", "methods": [{"name", "accuracy", "avg_generated_tokens",
"avg_latent_tokens", "seconds_per_example", "n", "seeds", "accuracy_std"}],
"vqvae": {"reconstruction_token_accuracy", "codebook_usage"}}` plus a free-form
"details" section. Figures over seeds are means; `accuracy_std` is the sample standard
deviation across seeds (0 for one seed).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .environment import describe
from .errors import DataError
from .io import atomic_open, atomic_write_json, atomic_write_text

METHOD_FIELDS: dict[str, type] = {
    "name": str, "accuracy": float, "avg_generated_tokens": float, "avg_latent_tokens": float,
    "seconds_per_example": float, "n": int, "seeds": int, "accuracy_std": float,
}
VQVAE_FIELDS = ("reconstruction_token_accuracy", "codebook_usage")
TOP_FIELDS: dict[str, type] = {"task": str, "preset": str, "methods": list, "vqvae": dict}


@dataclass
class MethodSummary:
    """One row of the results table: a method's figures averaged over seeds."""

    name: str
    accuracy: float
    avg_generated_tokens: float
    avg_latent_tokens: float
    seconds_per_example: float
    n: int
    seeds: int
    accuracy_std: float


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_method(name: str, runs: Sequence[Any]) -> MethodSummary:
    """Mean figures of one method over its seeds (`runs`: EvalResult-like objects)."""
    if not runs:
        raise ValueError(f"method {name!r} has no evaluation runs")
    mean = lambda attr: statistics.fmean(float(getattr(r, attr)) for r in runs)  # noqa: E731
    return MethodSummary(name=name, accuracy=mean("accuracy"), avg_generated_tokens=mean("avg_generated_tokens"),
                         avg_latent_tokens=mean("avg_latent_tokens"),
                         seconds_per_example=mean("seconds_per_example"), n=int(runs[0].n), seeds=len(runs),
                         accuracy_std=_std([r.accuracy for r in runs]))


def vqvae_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The two VQ-VAE figures of the schema from a stage-1 metrics.json (names vary a little)."""
    flat = dict(metrics)
    for nested in ("valid", "validation", "eval"):
        if isinstance(metrics.get(nested), dict):
            flat.update(metrics[nested])
    aliases = {"reconstruction_token_accuracy": ("reconstruction_token_accuracy", "token_accuracy",
                                                  "recon_token_accuracy", "valid_token_accuracy"),
               "codebook_usage": ("codebook_usage", "usage", "codebook_utilization", "valid_codebook_usage")}
    out = {}
    for key, names in aliases.items():
        value = next((flat[n] for n in names if isinstance(flat.get(n), (int, float))), float("nan"))
        out[key] = float(value)
    return out


def build_results(task: str, preset: str, methods: Sequence[MethodSummary], vqvae: dict[str, float],
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    results = {"task": task, "preset": preset, "methods": [asdict(m) for m in methods],
               "vqvae": {k: float(vqvae[k]) for k in VQVAE_FIELDS}}
    if details:
        results["details"] = details
    validate_results(results)
    return results


def validate_results(data: Any, source: str = "results.json") -> None:
    """Raise DataError unless `data` follows the results.json schema exactly."""
    if not isinstance(data, dict):
        raise DataError(source, "expected a JSON object")
    extra = set(data) - set(TOP_FIELDS) - {"details"}
    if extra:
        raise DataError(source, f"unexpected top-level keys {sorted(extra)} (put them under 'details')")
    for key, kind in TOP_FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise DataError(source, f"missing or not a {kind.__name__}", field=key)
    for index, method in enumerate(data["methods"]):
        where = f"methods[{index}]"
        if not isinstance(method, dict) or set(method) != set(METHOD_FIELDS):
            raise DataError(source, f"keys must be exactly {list(METHOD_FIELDS)}", field=where)
        for key, kind in METHOD_FIELDS.items():
            _check_type(source, f"{where}.{key}", method[key], kind)
    if set(data["vqvae"]) != set(VQVAE_FIELDS):
        raise DataError(source, f"keys must be exactly {list(VQVAE_FIELDS)}", field="vqvae")
    for key in VQVAE_FIELDS:
        _check_type(source, f"vqvae.{key}", data["vqvae"][key], float)


def _check_type(source: str, where: str, value: Any, kind: type) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise DataError(source, f"expected {kind.__name__}, got {value!r}", field=where)


# --------------------------------------------------------------------------- plot and markdown
def plot_tokens_vs_accuracy(methods: Sequence[MethodSummary], path: str | Path, title: str = "") -> None:
    """One point per method: accuracy against average generated tokens (error bars over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in methods:
        yerr = 100 * method.accuracy_std if method.seeds > 1 else None
        ax.errorbar(method.avg_generated_tokens, 100 * method.accuracy, yerr=yerr, fmt="o", capsize=4,
                    label=method.name)
        ax.annotate(method.name, (method.avg_generated_tokens, 100 * method.accuracy),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("average generated tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def markdown_table(methods: Sequence[MethodSummary]) -> str:
    rows = ["| method | accuracy (%) | avg generated tokens | avg latent tokens | s / example | n | seeds |",
            "|---|---|---|---|---|---|---|"]
    for m in methods:
        accuracy = f"{100 * m.accuracy:.1f}" + (f" ± {100 * m.accuracy_std:.1f}" if m.seeds > 1 else "")
        rows.append(f"| {m.name} | {accuracy} | {m.avg_generated_tokens:.1f} | {m.avg_latent_tokens:.1f} | "
                    f"{m.seconds_per_example:.4f} | {m.n} | {m.seeds} |")
    return "\n".join(rows)


def learning_curve_table(curves: dict[str, list[dict[str, Any]]]) -> str:
    """Valid accuracy (and answer length, where recorded) after each epoch, one column per model."""
    epochs = max((len(history) for history in curves.values()), default=0)
    rows = ["| epoch | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for epoch in range(epochs):
        cells = []
        for history in curves.values():
            record = history[epoch] if epoch < len(history) else {}
            cell = f"{100 * record['valid_accuracy']:.1f} %" if "valid_accuracy" in record else "–"
            if "valid_avg_generated_tokens" in record:
                cell += f" / {record['valid_avg_generated_tokens']:.1f}"
            cells.append(cell)
        rows.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_markdown(results: dict[str, Any], settings: dict[str, Any], samples: Sequence[str],
                    timings: dict[str, float] | None = None,
                    curves: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """report.md: the table, the VQ-VAE figures, learning curves, the settings and explained
    sample traces."""
    methods = [MethodSummary(**m) for m in results["methods"]]
    vq = results["vqvae"]
    lines = [f"# Token Assorted on {results['task']} (preset `{results['preset']}`)", "",
             "Greedy decoding; accuracy is exact match of the parsed solution, verified by the task. "
             "Generated tokens count everything after the prompt up to and including eos; latent tokens "
             "include the two delimiters.", "", markdown_table(methods), "",
             f"VQ-VAE: reconstruction token accuracy {100 * vq['reconstruction_token_accuracy']:.1f} %, "
             f"codebook usage {100 * vq['codebook_usage']:.1f} %.", "",
             "![accuracy vs generated tokens](tokens_vs_accuracy.png)", ""]
    if curves and any(curves.values()):
        lines += ["## Learning curves", "",
                  "Greedy accuracy on the valid split after each epoch / average generated tokens there "
                  "(the best epoch is the model evaluated above).", "", learning_curve_table(curves), ""]
    if timings:
        lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
        lines.append("")
    environment = results.get("details", {}).get("environment")
    if environment:
        lines += ["## Environment", "", describe(environment), ""]
    lines += ["## Settings", "", "```yaml", _yaml(settings).rstrip(), "```", ""]
    if samples:
        lines += ["## Sample traces (latent spans decoded by the VQ-VAE)", ""]
        for sample in samples:
            lines += ["```text", sample.rstrip(), "```", ""]
    return "\n".join(lines)


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_report(out_dir: str | Path, results: dict[str, Any], settings: dict[str, Any],
                 samples: Sequence[str] = (), timings: dict[str, float] | None = None,
                 curves: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Path]:
    """Write results.json, report.md and tokens_vs_accuracy.png into `out_dir`."""
    out_dir = Path(out_dir)
    validate_results(results)
    paths = {"results": out_dir / "results.json", "report": out_dir / "report.md",
             "plot": out_dir / "tokens_vs_accuracy.png"}
    atomic_write_json(paths["results"], results)
    methods = [MethodSummary(**m) for m in results["methods"]]
    plot_tokens_vs_accuracy(methods, paths["plot"], f"{results['task']} ({results['preset']})")
    atomic_write_text(paths["report"], render_markdown(results, settings, samples, timings, curves))
    return paths
