"""The main job: presets parse, results.json follows its schema, and `run` works end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from token_assorted.cli import main
from token_assorted.core.environment import describe, environment
from token_assorted.core.errors import ConfigError, DataError, OutputDirError
from token_assorted.core.io import atomic_write_text
from token_assorted.evaluation.probes import summarize
from token_assorted.evaluation.report import (
    MethodSummary,
    build_results,
    summarize_method,
    validate_results,
    write_report,
)
from token_assorted.pipeline.preset import (
    BASE_METHODS,
    PipelineConfig,
    load_preset,
    preset_names,
    preset_path,
    train_settings,
)
from token_assorted.pipeline.stages import config_hash, generate_splits, run_stage


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_parses(name):
    config = load_preset(name)
    assert isinstance(config, PipelineConfig)
    assert set(BASE_METHODS) <= set(config.methods)


# A preset names its task and says what it is for; every other key it states must change something.
IDENTITY = ("task", "description")


def redundant_keys(mapping: dict, cls: type, prefix: str = "") -> list[str]:
    """The keys of `mapping` whose value is the default of `cls` (recursing into nested configs)."""
    defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    found = []
    for key, value in mapping.items():
        default = defaults.get(key, dataclasses.MISSING)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            found += redundant_keys(value, type(default), f"{prefix}{key}.")
        elif value == default:
            found.append(f"{prefix}{key}")
    return found


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_states_only_what_differs_from_the_defaults(name):
    from token_assorted.core.config import load_yaml
    from token_assorted.lm.config import TrainConfig
    from token_assorted.vqvae.options import VQVAETrainConfig

    mapping = load_yaml(preset_path(name))
    top = {k: v for k, v in mapping.items() if k not in (*IDENTITY, "vqvae", "train", "method_overrides")}
    found = redundant_keys(top, PipelineConfig)
    found += redundant_keys(mapping.get("vqvae", {}), VQVAETrainConfig, "vqvae.")
    found += redundant_keys(mapping.get("train", {}), TrainConfig, "train.")
    for method, section in mapping.get("method_overrides", {}).items():
        shared = {**dataclasses.asdict(TrainConfig()), **mapping.get("train", {})}
        found += [f"method_overrides.{method}.{k}" for k, v in section.items() if shared.get(k) == v]
    assert not found, f"{name}: these keys restate a default: {', '.join(found)}"


def test_shipped_presets_include_the_documented_ones():
    assert {"cpu", "tiny", "prosqa-gpt2", "prontoqa-gpt2", "maze", "math-llama", "prosqa-scratch-gpt2"} <= set(preset_names())


def test_preset_typos_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset("tiny", {"train.epochz": 3})
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset("tiny", {"vqvae.codebook": 3})
    with pytest.raises(ConfigError, match="set by the pipeline"):
        load_preset("tiny", {"train.strategy": "cot"})
    with pytest.raises(ConfigError, match="generator option"):
        load_preset("tiny", {"data.options.hops": 3})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("no-such-preset")
    with pytest.raises(ConfigError, match="eval.mixed_precision"):
        load_preset("tiny", {"eval.mixed_precision": "fp16"})
    with pytest.raises(ConfigError, match="probes.interventions: unknown mode 'noise'"):
        load_preset("tiny", {"probes.interventions": ["random", "noise"]})
    with pytest.raises(ConfigError, match="probes.constant_code 8 outside the codebook"):  # tiny: K = 8
        load_preset("tiny", {"probes.constant_code": 8})
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: prosqa\nseeds: three\n")
    with pytest.raises(ConfigError, match="seeds"):
        load_preset(bad)


def test_pause_draws_token_assorted_m_unless_it_has_its_own():
    config = load_preset("cpu")
    assert train_settings(config, "pause")["m_values"] == train_settings(config, "token-assorted")["m_values"]
    assert "m_values" not in train_settings(config, "cot")
    own = load_preset("cpu", {"method_overrides.pause": {"m_values": [99]}})
    assert train_settings(own, "pause")["m_values"] == [99]
    # Coconut-Pause follows Coconut's curriculum unless it has its own section
    assert train_settings(config, "coconut-pause") == train_settings(config, "coconut")
    own = load_preset("cpu", {"method_overrides.coconut-pause": {"coconut_stages": 1}})
    assert train_settings(own, "coconut-pause")["coconut_stages"] == 1


def test_overrides_change_the_config():
    config = load_preset("tiny", {"train.epochs": 2, "data.train": 10, "seeds": 2})
    assert config.train["epochs"] == 2 and config.data.train == 10 and config.seeds == 2


def test_held_out_questions_never_appear_in_train():
    config = load_preset("tiny", {"data.train": 200, "data.test": 50})
    splits = generate_splits(config)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [200, 8, 50]
    train = {ex.question for ex in splits["train"]}
    assert not train & {ex.question for ex in splits["test"] + splits["valid"]}


def test_stages_are_cached_by_hash(tmp_path):
    calls = []

    def build(path):
        calls.append(path)
        atomic_write_text(path / "out.txt", "x")  # recorded as ours: a changed hash may replace it

    first = run_stage(tmp_path / "s", config_hash({"a": 1}), build, "s", log=lambda _: None)
    again = run_stage(tmp_path / "s", config_hash({"a": 1}), build, "s", log=lambda _: None)
    assert len(calls) == 1 and not first.cached and again.cached
    changed = run_stage(tmp_path / "s", config_hash({"a": 2}), build, "s", log=lambda _: None)
    assert len(calls) == 2 and not changed.cached
    (tmp_path / "s" / "mine.txt").write_text("a user's file")  # never deleted: the stage is refused instead
    with pytest.raises(OutputDirError, match="mine.txt"):
        run_stage(tmp_path / "s", config_hash({"a": 3}), build, "s", log=lambda _: None)
    assert (tmp_path / "s" / "mine.txt").read_text() == "a user's file" and len(calls) == 2


# --------------------------------------------------------------------------- results schema
def _results() -> dict:
    methods = [MethodSummary("CoT", 0.9, 20.0, 0.0, 0.01, 100, 1, 0.0),
               MethodSummary("Token Assorted", 0.92, 9.5, 4.0, 0.005, 100, 1, 0.0)]
    return build_results("prosqa", "cpu", methods, {"reconstruction_token_accuracy": 0.8, "codebook_usage": 0.5},
                         {"anything": [1, 2]})


def test_results_schema_is_exact():
    results = _results()
    validate_results(results)
    assert list(results["methods"][0]) == ["name", "accuracy", "avg_generated_tokens", "avg_latent_tokens",
                                           "seconds_per_example", "n", "seeds", "accuracy_std"]
    for broken in ({**results, "extra": 1}, {k: v for k, v in results.items() if k != "vqvae"}):
        with pytest.raises(DataError):
            validate_results(broken)
    wrong_type = json.loads(json.dumps(results))
    wrong_type["methods"][0]["n"] = "100"
    with pytest.raises(DataError, match="methods"):
        validate_results(wrong_type)
    missing = json.loads(json.dumps(results))
    del missing["methods"][1]["accuracy_std"]
    with pytest.raises(DataError):
        validate_results(missing)


def test_checkpoint_records_are_checked_field_by_field():
    results = _results()
    results["methods"][0]["checkpoint"] = {"epoch": [3, 4], "stage": [2, 2], "final_stage": True}  # two seeds
    validate_results(results)
    for field, bad in (("epoch", -1), ("stage", "2"), ("final_stage", 1)):
        broken = json.loads(json.dumps(results))
        broken["methods"][0]["checkpoint"][field] = bad
        with pytest.raises(DataError, match=f"methods\\[0\\].checkpoint.{field}"):
            validate_results(broken)
    del results["methods"][0]["checkpoint"]["stage"]
    with pytest.raises(DataError, match="keys must be exactly"):
        validate_results(results)


def _probed() -> dict:
    methods = [MethodSummary("Token Assorted", 0.86, 15.0, 1.6, 0.005, 300, 1, 0.0),
               MethodSummary("TA-Pause", 0.84, 15.0, 1.6, 0.005, 300, 1, 0.0)]
    probe = {"interventions": {"none": 0.86, "random": 0.83, "shuffle": 0.85, "constant": 0.89},
             "latent_reliance": 0.03,
             "dial": [{"k": 0, "accuracy": 0.9, "avg_generated_tokens": 18.0, "avg_latent_tokens": 0.0},
                      {"k": "all", "accuracy": 0.5, "avg_generated_tokens": 11.0, "avg_latent_tokens": 4.0}]}
    return build_results("prosqa", "cpu", methods, {"reconstruction_token_accuracy": 0.8, "codebook_usage": 0.5},
                         None, {"Token Assorted": probe})


def test_probe_fields_are_optional_and_type_checked():
    results = _probed()
    validate_results(results)
    assert set(results["methods"][0]) - set(results["methods"][1]) == {"interventions", "latent_reliance", "dial"}
    broken = [("interventions", {"gaussian": 0.5}), ("interventions", {"random": "high"}), ("latent_reliance", "3"),
              ("dial", [{"k": -1, "accuracy": 0.5, "avg_generated_tokens": 1.0, "avg_latent_tokens": 0.0}]),
              ("dial", [{"k": 1, "accuracy": 0.5}]), ("dial", {"k": 1}), ("probes", {})]
    for key, value in broken:
        bad = json.loads(json.dumps(results))
        bad["methods"][0][key] = value
        with pytest.raises(DataError, match="methods"):
            validate_results(bad)


def test_report_answers_whether_the_latent_tokens_carry_the_reasoning(tmp_path):
    paths = write_report(tmp_path, _probed(), {"task": "prosqa"})
    text = paths["report"].read_text()
    assert "## Do the latent tokens carry the reasoning?" in text
    assert "| Token Assorted | 86.0 | 83.0 | 85.0 | 89.0 | +3.0 |" in text
    assert "| TA-Pause | 84.0 | – | – | – | – |" in text
    # 3 points on 300 questions is within two standard errors (about ±5.9 points): said so, not claimed.
    assert "within noise" in text and "±5.9" in text and "worth +2.0 points over empty slots" in text
    assert "| all | 50.0 | 11.0 | 4.0 |" in text and "latency_dial.png" in text
    assert paths["dial"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = write_report(tmp_path / "plain", _results(), {"task": "prosqa"})  # no probes: no section, no plot
    assert "dial" not in plain and "carry the reasoning" not in plain["report"].read_text()


def test_probe_figures_are_averaged_over_seeds():
    seeds = [{"interventions": {"none": 0.8, "random": 0.6}, "latent_reliance": 0.2,
              "dial": [{"k": 0, "accuracy": 0.5, "avg_generated_tokens": 10.0, "avg_latent_tokens": 0.0}]},
             {"interventions": {"none": 0.9, "random": 0.9}, "latent_reliance": 0.0,
              "dial": [{"k": 0, "accuracy": 0.7, "avg_generated_tokens": 12.0, "avg_latent_tokens": 0.0}]}]
    mean = summarize(seeds)
    assert mean["interventions"] == pytest.approx({"none": 0.85, "random": 0.75})
    assert mean["latent_reliance"] == pytest.approx(0.1)
    assert mean["dial"] == [{"k": 0, "accuracy": pytest.approx(0.6), "avg_generated_tokens": pytest.approx(11.0),
                             "avg_latent_tokens": 0.0}]


def test_seeds_are_averaged_with_sample_std():
    class Run:
        def __init__(self, accuracy):
            self.accuracy, self.avg_generated_tokens, self.avg_latent_tokens = accuracy, 10.0, 2.0
            self.seconds_per_example, self.n = 0.1, 50

    summary = summarize_method("CoT", [Run(0.8), Run(0.9), Run(1.0)])
    assert summary.seeds == 3 and summary.accuracy == pytest.approx(0.9)
    assert summary.accuracy_std == pytest.approx(0.1)


def test_report_files(tmp_path):
    curves = {"cot": [{"valid_accuracy": 0.5, "valid_avg_generated_tokens": 18.0}, {"valid_accuracy": 0.75}],
              "token-assorted": [{"valid_accuracy": 0.25}]}
    paths = write_report(tmp_path, _results(), {"task": "prosqa"}, ["raw: a b\nexplained: [latent: x]"],
                         {"data": 1.0}, curves)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["report"].read_text()
    assert "| Token Assorted | 92.0 |" in text and "[latent: x]" in text and "| data | 1.0 |" in text
    assert "| 1 | 50.0 % / 18.0 | 25.0 % |" in text and "| 2 | 75.0 % | – |" in text
    validate_results(json.loads(paths["results"].read_text()))


def test_environment_names_the_pinned_cpu_kernels(monkeypatch):
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    record = environment()
    assert record["kernel_variables"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert "pinned: ATEN_CPU_CAPABILITY=avx2" in describe(record)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert "pinned: none" in describe(environment())


# --------------------------------------------------------------------------- end to end
def test_run_end_to_end_with_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--strategies", "pause"]) == 0
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert [m["name"] for m in results["methods"]] == ["Sol-Only", "CoT", "Token Assorted", "TA-Pause"]
    assert results["task"] == "prosqa" and results["preset"] == "tiny"
    assert all(m["n"] == 12 and 0.0 <= m["accuracy"] <= 1.0 for m in results["methods"])
    assert not math.isnan(results["vqvae"]["codebook_usage"])
    # The stages' folders: stage 2 read the codes file and never wrote into the VQ-VAE's folder.
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "codes" / "train.safetensors").is_file()
    assert sorted(p.name for p in (out / "vqvae").iterdir()) == [
        ".complete.json", ".stage.json", "config.json", "logs", "metrics.json", "model.safetensors", "state",
        "tokenizer"]
    for method in (*BASE_METHODS, "pause"):
        assert (out / "models" / method / "config.json").is_file()
        assert (out / "eval" / method / "results.predictions.jsonl").is_file()
    report = (out / "report.md").read_text()
    assert (out / "tokens_vs_accuracy.png").is_file() and "## Settings" in report
    assert "## Learning curves" in report and "| epoch | sol-only | cot | token-assorted | pause |" in report
    environment = results["details"]["environment"]  # what produced the numbers, kernels included
    assert environment["packages"]["torch"] == torch.__version__
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"CPU kernels: {environment['cpu_capability']}" in report
    # Only the model that writes codes is probed: interventions (none = its plain accuracy) and the dial.
    assorted = results["methods"][2]
    assert set(assorted["interventions"]) == {"none", "random", "shuffle", "constant"}
    assert assorted["interventions"]["none"] == assorted["accuracy"]
    assert assorted["latent_reliance"] == assorted["accuracy"] - assorted["interventions"]["random"]
    most = json.loads((out / "models" / "token-assorted" / "token_assorted.json").read_text())["max_latent_chunks"]
    assert [p["k"] for p in assorted["dial"]][:most + 1] == list(range(most + 1))
    assert assorted["dial"][0]["avg_latent_tokens"] == 0.0  # K = 0: text only
    assert not any(key in m for m in results["methods"] if m["name"] != "Token Assorted"
                   for key in ("interventions", "dial"))
    assert "## Do the latent tokens carry the reasoning?" in report and "| TA-Pause |" in report
    assert "## Latency dial" in report and (out / "latency_dial.png").is_file()
    pause_meta = json.loads((out / "models" / "pause" / "token_assorted.json").read_text())
    assert pause_meta["pause_id"] == pause_meta["latent_vocab"]["pause_id"]
    assert pause_meta["max_latent_chunks"] == most
    # The four checks of the paper's claim: in results.json, report.md and the last lines printed.
    claims = results["details"]["claims"]
    assert len(claims) == 5 and all(c["passed"] is not None for c in claims[:4])  # every method needed was run
    assert claims[4]["information"] and claims[4]["claim"].startswith("CoT − Sol-Only")
    assert all(m["checkpoint"] == {"epoch": 1, "stage": None, "final_stage": True} for m in results["methods"])
    assert "## The paper's claim on this run" in report
    assert "the paper's claim on this run" in capsys.readouterr().out
    # A rerun reuses every stage; a changed eval setting recomputes only the evaluations and probes.
    capsys.readouterr()
    assert main(["run", "--preset", "tiny", "--out", str(out), "--strategies", "pause"]) == 0
    log = capsys.readouterr().out
    assert "running" not in log and log.count("cached") == 13  # data, tokenizer, vqvae, codes, 4 x train + eval, probes
    assert main(["run", "--preset", "tiny", "--out", str(out), "--set", "eval.max_new_tokens=8"]) == 0
    log = capsys.readouterr().out
    assert log.count("running") == 4 and "[eval cot] running" in log and "[train cot] cached" in log
    assert "[probes token-assorted] running" in log


def test_report_and_results_hold_the_four_checks_of_the_claim(tmp_path):
    paths = write_report(tmp_path, _probed(), {"task": "prosqa", "claims": {"cot_accuracy": 0.85,
                                                                            "token_ratio": 0.5, "reliance": 0.1}})
    text = paths["report"].read_text()
    assert "## The paper's claim on this run" in text
    assert "| CoT learns the task |" in text


def test_run_adds_the_other_latent_reasoning_methods(tmp_path):
    """`run --strategies curriculum coconut icot coconut-pause`: trained, scored and probed beside CoT on the
    same data; every curriculum keeps a model of its final stage, and results.json says which."""
    out = tmp_path / "peers"
    assert main(["run", "--preset", "tiny", "--out", str(out), "--set", "methods=[cot]",
                 "--strategies", "curriculum", "coconut", "icot", "coconut-pause"]) == 0
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    rows = {m["name"]: m for m in results["methods"]}
    assert list(rows) == ["CoT", "Curriculum-Replace", "Coconut", "iCoT", "Coconut-Pause"]
    checkpoints = {name: row["checkpoint"] for name, row in rows.items()}
    assert checkpoints["CoT"] == {"epoch": 1, "stage": None, "final_stage": True}
    assert checkpoints["Curriculum-Replace"] == {"epoch": 3, "stage": 2, "final_stage": True}  # tiny: 3 epochs
    assert checkpoints["Coconut"] == checkpoints["Coconut-Pause"] == {"epoch": 1, "stage": 2, "final_stage": True}
    assert checkpoints["iCoT"]["final_stage"] and checkpoints["iCoT"]["epoch"] == 1
    assert rows["Coconut-Pause"]["avg_latent_tokens"] >= 3 and "interventions" not in rows["Coconut-Pause"]
    assert "## Kept checkpoints" in (out / "report.md").read_text()
    coconut = rows["Coconut"]
    assert coconut["avg_latent_tokens"] >= 3  # <bot>, its one thought (tiny: stage 1, then every step), <eot>
    assert set(coconut["interventions"]) == {"none", "noise", "zero"}
    assert coconut["latent_reliance"] == coconut["interventions"]["none"] - coconut["interventions"]["noise"]
    assert [p["k"] for p in coconut["dial"]] == [0, 1]  # zero thoughts, then the trained stage
    assert coconut["dial"][0]["avg_latent_tokens"] == 2 <= coconut["dial"][1]["avg_latent_tokens"] - 1
    assert rows["iCoT"]["avg_latent_tokens"] == 0 and "interventions" not in rows["iCoT"]
    runs = results["details"]["methods"]
    assert all(runs[m]["runs"][0]["train_seconds_per_step"] > 0 for m in ("cot", "coconut", "icot", "coconut-pause"))
    assert runs["coconut"]["runs"][0]["checkpoint"] == checkpoints["Coconut"]
    report = (out / "report.md").read_text()
    assert "### Continuous thoughts (Coconut)" in report and "## Training cost" in report
    assert "| coconut |" in report and "[Curriculum-Replace" in report  # the only model with codes to decode
