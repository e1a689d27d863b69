"""The experiment report: results.json, report.md, tokens_vs_accuracy.png and latency_dial.png.

results.json has one fixed schema (checked by `validate_results`):
`{"task", "preset", "methods": [{"name", "accuracy", "avg_generated_tokens",
"avg_latent_tokens", "seconds_per_example", "n", "seeds", "accuracy_std"}],
"vqvae": {"reconstruction_token_accuracy", "codebook_usage"}}` plus a free-form
"details" section. Figures over seeds are means; `accuracy_std` is the sample standard
deviation across seeds (0 for one seed). A method whose model writes latent codes also has
the optional probe fields (`probes.py`): `interventions` {mode: accuracy}, `latent_reliance`
(accuracy with its own codes − with random codes) and `dial` [{"k", "accuracy",
"avg_generated_tokens", "avg_latent_tokens"}], k an integer or "all". `answer_rules` {rule: n}
says which rule checked how many of the method's answers (the task's `answer_rule_of`: exact
match, plan feasibility, numeric, math-verify, ...); report.md prints it under the table. Every
method of a run has `checkpoint` {"epoch", "stage", "final_stage"}: the kept model's epoch
(1-based), its curriculum stage (null for a method without stages) and whether that is the
method's final stage; with several seeds epoch and stage are lists in seed order and final_stage
holds for all of them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.environment import describe
from ..core.errors import DataError
from ..core.io import atomic_open, atomic_write_json, atomic_write_text
from .checkpoints import check_checkpoint, checkpoint_section
from .claims import PAUSE_NAME, ClaimThresholds, check_claims, claims_section

METHOD_FIELDS: dict[str, type] = {
    "name": str, "accuracy": float, "avg_generated_tokens": float, "avg_latent_tokens": float,
    "seconds_per_example": float, "n": int, "seeds": int, "accuracy_std": float,
}
OPTIONAL_METHOD_FIELDS: dict[str, type] = {"interventions": dict, "latent_reliance": float, "dial": list,
                                            "answer_rules": dict, "checkpoint": dict}
DIAL_POINT_FIELDS = ("k", "accuracy", "avg_generated_tokens", "avg_latent_tokens")
# interventions.INTERVENTIONS and THOUGHT_INTERVENTIONS (Coconut's), without importing torch
INTERVENTION_MODES = ("none", "random", "shuffle", "constant", "noise", "zero")
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
                  details: dict[str, Any] | None = None,
                  extras: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """results.json; `extras` adds the optional probe fields to the method of that name."""
    extras = extras or {}
    results = {"task": task, "preset": preset, "methods": [{**asdict(m), **extras.get(m.name, {})} for m in methods],
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
        if not isinstance(method, dict) or not set(METHOD_FIELDS) <= set(method) <= {*METHOD_FIELDS,
                                                                                     *OPTIONAL_METHOD_FIELDS}:
            raise DataError(source, f"keys must be exactly {list(METHOD_FIELDS)}, plus optionally "
                                    f"{list(OPTIONAL_METHOD_FIELDS)}", field=where)
        for key, kind in {**METHOD_FIELDS, **OPTIONAL_METHOD_FIELDS}.items():
            if key in method:
                _check_type(source, f"{where}.{key}", method[key], kind)
        _check_probe_fields(source, where, method)
        for rule, count in method.get("answer_rules", {}).items():
            _check_type(source, f"{where}.answer_rules.{rule}", count, int)
        if "checkpoint" in method:
            check_checkpoint(source, f"{where}.checkpoint", method["checkpoint"])
    if set(data["vqvae"]) != set(VQVAE_FIELDS):
        raise DataError(source, f"keys must be exactly {list(VQVAE_FIELDS)}", field="vqvae")
    for key in VQVAE_FIELDS:
        _check_type(source, f"vqvae.{key}", data["vqvae"][key], float)


def _check_probe_fields(source: str, where: str, method: dict[str, Any]) -> None:
    """The insides of the optional `interventions` and `dial` fields."""
    for mode, accuracy in method.get("interventions", {}).items():
        if mode not in INTERVENTION_MODES:
            raise DataError(source, f"unknown intervention {mode!r}; expected one of {list(INTERVENTION_MODES)}",
                            field=f"{where}.interventions")
        _check_type(source, f"{where}.interventions.{mode}", accuracy, float)
    for index, point in enumerate(method.get("dial", [])):
        at = f"{where}.dial[{index}]"
        if not isinstance(point, dict) or set(point) != set(DIAL_POINT_FIELDS):
            raise DataError(source, f"keys must be exactly {list(DIAL_POINT_FIELDS)}", field=at)
        k = point["k"]
        if k != "all" and not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
            raise DataError(source, f"expected an integer >= 0 or 'all', got {k!r}", field=f"{at}.k")
        for key in DIAL_POINT_FIELDS[1:]:
            _check_type(source, f"{at}.{key}", point[key], float)


def _summaries(results: dict[str, Any]) -> list[MethodSummary]:
    """The table rows of results.json (the optional probe fields left out)."""
    return [MethodSummary(**{key: m[key] for key in METHOD_FIELDS}) for m in results["methods"]]


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


# --------------------------------------------------------------------------- probes of the latent tokens
DIAL_PLOT = "latency_dial.png"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def reliance_section(results: dict[str, Any]) -> list[str]:
    """"Do the latent tokens carry the reasoning?": interventions, reliance and the pause control."""
    probed = [m for m in results["methods"] if "interventions" in m and "noise" not in m["interventions"]]
    pause = next((m for m in results["methods"] if m["name"] == PAUSE_NAME), None)
    if not probed and pause is None:
        return thought_section(results)
    lines = ["## Do the latent tokens carry the reasoning?", "",
             "Each latent code a model writes is replaced as it is written, and generation goes on from the "
             "replacement: *random* a uniform code, *shuffle* the code another question wrote at the same "
             "position, *constant* one fixed code. Latent reliance = accuracy as trained − accuracy with "
             "random codes. TA-Pause is trained like Token Assorted (the same m draws and positions), with a "
             "content-free `<pause>` token in place of every code.", "",
             "| method | as trained (%) | random (%) | shuffle (%) | constant (%) | reliance (points) |",
             "|---|---|---|---|---|---|"]
    for m in probed + ([pause] if pause else []):
        modes = m.get("interventions", {})
        reliance = m.get("latent_reliance")
        lines.append(f"| {m['name']} | {_pct(m['accuracy'])} | " + " | ".join(
            _pct(modes.get(mode)) for mode in ("random", "shuffle", "constant"))
            + f" | {'–' if reliance is None else f'{100 * reliance:+.1f}'} |")
    main = next((m for m in probed if m["name"] == "Token Assorted"), probed[0] if probed else None)
    return lines + ["", verdict(main, pause), ""] + thought_section(results)


def thought_section(results: dict[str, Any]) -> list[str]:
    """Coconut's probes: its continuous thoughts drowned in noise, or zeroed, as they are fed back."""
    probed = [m for m in results["methods"] if "noise" in m.get("interventions", {})]
    if not probed:
        return []
    lines = ["### Continuous thoughts (Coconut)", "",
             "Every thought is changed before it is fed back: *noise* adds a random direction of "
             "`probes.noise_scale` (default 4, as Cui et al. 2026) times the thought's own norm, *zero* feeds "
             "the zero vector. Latent reliance = accuracy as trained − with noise.", "",
             "| method | as trained (%) | noise (%) | zero (%) | reliance (points) |", "|---|---|---|---|---|"]
    for m in probed:
        modes, reliance = m["interventions"], m.get("latent_reliance")
        lines.append(f"| {m['name']} | {_pct(m['accuracy'])} | {_pct(modes.get('noise'))} | "
                     f"{_pct(modes.get('zero'))} | {'–' if reliance is None else f'{100 * reliance:+.1f}'} |")
    return lines + [""]


def verdict(method: dict[str, Any] | None, pause: dict[str, Any] | None) -> str:
    """What the interventions say, in one plain sentence (with the noise of n questions)."""
    if method is None or "random" not in method.get("interventions", {}):
        return f"TA-Pause: {_pct(pause['accuracy'])} % with content-free latent tokens." if pause else ""
    trained, randomised = method["accuracy"], method["interventions"]["random"]
    # Two standard errors of a difference of two accuracies on n questions (taken as unpaired: the
    # two runs answer the same questions, so this usually overstates the noise a little).
    n = max(1, method["n"] * method["seeds"])
    noise = 2 * math.sqrt((trained * (1 - trained) + randomised * (1 - randomised)) / n)
    reliance = method["latent_reliance"]
    if reliance > noise:
        meaning = "more than noise: the model relies on what its codes say"
    elif reliance < -noise:
        meaning = "the model does better with random codes than with its own"
    else:
        meaning = "within noise: here the content of the codes the model writes hardly matters to its answers"
    text = (f"Random codes take {method['name']} from {_pct(trained)} % to {_pct(randomised)} % "
            f"({100 * reliance:+.1f} points, two standard errors ±{100 * noise:.1f}), {meaning}.")
    if pause is not None and method["name"] == "Token Assorted":  # pause mirrors Token Assorted only
        text += (f" Pause tokens in the same slots give {_pct(pause['accuracy'])} %, so the codes' content is "
                 f"worth {100 * (trained - pause['accuracy']):+.1f} points over empty slots.")
    return text


def dial_section(results: dict[str, Any]) -> list[str]:
    """The latency dial of every probed model: accuracy and answer length for K = 0 … max chunks."""
    dialled = [m for m in results["methods"] if m.get("dial")]
    if not dialled:
        return []
    lines = ["## Latency dial", "",
             "The answer is forced to open with exactly K chunks of latent codes (the model's own greedy "
             "choice among the codes), then text only: K = 0 is text-only CoT from the same model, `all` as "
             "many chunks as each question's reference trace has. Coconut gets K steps' worth of continuous "
             "thoughts (K × c) instead: K = 0 goes from `<bot><eot>` straight to text.", ""]
    for m in dialled:
        lines += [f"{m['name']}:", "", "| K | accuracy (%) | avg generated tokens | avg latent tokens |",
                  "|---|---|---|---|"]
        lines += [f"| {p['k']} | {_pct(p['accuracy'])} | {p['avg_generated_tokens']:.1f} | "
                  f"{p['avg_latent_tokens']:.1f} |" for p in m["dial"]]
        lines.append("")
    return lines + [f"![accuracy against generated tokens along the dial]({DIAL_PLOT})", ""]


def plot_latency_dial(results: dict[str, Any], path: str | Path) -> None:
    """One model's dial as a curve (Token Assorted when it has one), every method's own answer a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dialled = [m for m in results["methods"] if m.get("dial")]
    curve = next((m for m in dialled if m["name"] == "Token Assorted"), dialled[0])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [p["avg_generated_tokens"] for p in curve["dial"]]
    ys = [100 * p["accuracy"] for p in curve["dial"]]
    forced = "K steps of thoughts" if curve["name"] == "Coconut" else "K latent chunks forced"
    ax.plot(xs, ys, "-o", color="black", label=f"{curve['name']}, {forced}")
    for point, x, y in zip(curve["dial"], xs, ys):
        ax.annotate(f"K={point['k']}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    for m in results["methods"]:  # as trained: each model chooses its own mix
        ax.plot(m["avg_generated_tokens"], 100 * m["accuracy"], "s", label=f"{m['name']} (as trained)")
    ax.set_xlabel("average generated tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"latency dial: {results['task']} ({results['preset']})")
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def training_cost_section(results: dict[str, Any]) -> list[str]:
    """Seconds per optimizer step of each method, against CoT's in the same run (Coconut's thoughts
    take one forward pass each)."""
    runs = results.get("details", {}).get("methods", {})
    costs = {name: [r["train_seconds_per_step"] for r in method.get("runs", []) if r.get("train_seconds_per_step")]
             for name, method in runs.items()}
    costs = {name: statistics.fmean(values) for name, values in costs.items() if values}
    if not costs:
        return []
    lines = ["## Training cost", "", "Wall seconds per optimizer step (forward, backward, update; no validation), "
             "mean over seeds. Methods trained at once in parallel processes share the CPU cores.", "",
             "| method | s / step | × CoT |", "|---|---|---|"]
    for name, seconds in costs.items():
        ratio = f"{seconds / costs['cot']:.2f}" if costs.get("cot") else "–"
        lines.append(f"| {name} | {seconds:.3f} | {ratio} |")
    return lines + [""]


def render_markdown(results: dict[str, Any], settings: dict[str, Any], samples: Sequence[str],
                    timings: dict[str, float] | None = None,
                    curves: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """report.md: the table, the VQ-VAE figures, learning curves, the settings and explained
    sample traces."""
    methods = _summaries(results)
    vq = results["vqvae"]
    lines = [f"# Token Assorted on {results['task']} (preset `{results['preset']}`)", "",
             "Greedy decoding; accuracy is exact match of the parsed solution, verified by the task. "
             "Generated tokens count everything after the prompt up to and including eos; latent tokens "
             "include the two delimiters.", "", markdown_table(methods), "", *answer_rules_lines(results),
             f"VQ-VAE: reconstruction token accuracy {100 * vq['reconstruction_token_accuracy']:.1f} %, "
             f"codebook usage {100 * vq['codebook_usage']:.1f} %.", "",
             "![accuracy vs generated tokens](tokens_vs_accuracy.png)", ""]
    claims = settings.get("claims")
    if claims is not None:  # the pipeline's thresholds (a run's settings always hold them)
        lines += claims_section(check_claims(results["methods"], ClaimThresholds(**claims)))
    lines += reliance_section(results) + dial_section(results) + training_cost_section(results)
    if curves and any(curves.values()):
        lines += ["## Learning curves", "",
                  "Greedy accuracy on the valid split after each epoch / average generated tokens there "
                  "(the best epoch is the model evaluated above).", "", learning_curve_table(curves), ""]
    lines += checkpoint_section(results)
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


def answer_rules_lines(results: dict[str, Any]) -> list[str]:
    """"Answers checked by: numeric 1,319 (of 1,319)", from the methods' `answer_rules` (none: no line)."""
    rules: dict[str, int] = {}
    for method in results["methods"]:
        for rule, count in method.get("answer_rules", {}).items():
            rules[rule] = max(rules.get(rule, 0), count)  # every method answers the same test split
    if not rules:
        return []
    total = sum(rules.values())
    return ["Answers checked by: " + "; ".join(f"{rule}: {count:,} of {total:,}" for rule, count in rules.items())
            + ".", ""]


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
    methods = _summaries(results)
    plot_tokens_vs_accuracy(methods, paths["plot"], f"{results['task']} ({results['preset']})")
    if any("dial" in m for m in results["methods"]):
        paths["dial"] = out_dir / DIAL_PLOT
        plot_latency_dial(results, paths["dial"])
    atomic_write_text(paths["report"], render_markdown(results, settings, samples, timings, curves))
    return paths
