"""The whole pipeline: the demo end to end with an interruption and resume, stage bookkeeping, paper presets."""
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from lasa_jax.memory_plan import kto_plan
from lasa_jax.pipeline import STAGES, run_pipeline, stage_configs, stage_inputs
from lasa_jax.presets import PAPER_MODELS, TPU_PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"test_configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def _checkpoint_steps(directory) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes_after_sigterm(tmp_path):
    workdir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lasa_jax.scripts.demo", "--config=configs/demo_tiny.py", f"--workdir={workdir}",
           "--config.kto.train.num_steps=60", "--config.kto.checkpoint.every_steps=10"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not _checkpoint_steps(workdir / "kto" / "checkpoints") and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    out = first.communicate(timeout=300)[0].decode(errors="replace")
    assert first.returncode == 75, out[-3000:]  # KTO saved a checkpoint and asked to be rerun
    done_before = {s: (workdir / s / "stage_done.json").stat().st_mtime_ns
                   for s in ("locate", "ssi") if (workdir / s / "stage_done.json").exists()}
    assert set(done_before) == {"locate", "ssi"} and not (workdir / "kto" / "stage_done.json").exists()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "locate skipped" in second.stdout and "kto done" in second.stdout
    for stage, mtime in done_before.items():  # finished stages were not run again
        assert (workdir / stage / "stage_done.json").stat().st_mtime_ns == mtime
    run = json.loads((workdir / "kto" / "run_summary.json").read_text())
    assert run["status"] == "completed" and run["step"] == 60 and run["resumed_from"] is not None
    for stage in STAGES:
        assert (workdir / stage / "stage_done.json").exists(), stage
    bottleneck = json.loads((workdir / "locate" / "bottleneck.json").read_text())
    ssi_config = json.loads((workdir / "ssi" / "ssi" / "config.json").read_text())
    assert ssi_config["residual_index"] == bottleneck["best_layer"]  # the demo uses the located layer
    lasa = [json.loads(line) for line in open(workdir / "generate_lasa" / "generations.jsonl")]
    assert len(lasa) == 160 and {"id", "language", "prompt", "response", "ssi_score", "prefix_used"} <= set(lasa[0])
    report = json.loads((workdir / "evaluate" / "report.json").read_text())
    assert report["systems"] == ["baseline", "prefix_only", "lasa"] and len(report["asr"]["languages"]) == 10
    comp = report["comparison"]  # the held-out demo prompts: 8 harmful and 8 benign groups in every language
    assert comp["ssi"]["system"] == "prefix_only" and comp["ssi"]["disagreements"] == 0
    for metric in ("asr", "benign_refusal"):
        for system in report["systems"]:
            per_language = comp["metrics"][metric]["systems"][system]["per_language"]
            assert len(per_language) == 10 and {r["total"] for r in per_language.values()} == {8}
    prefix_only = [json.loads(line) for line in open(workdir / "generate_prefix_only" / "generations.jsonl")]
    assert [r["prefix_used"] for r in prefix_only] == [r["prefix_used"] for r in lasa]
    summary = (workdir / "report.md").read_text()
    assert "Semantic bottleneck k* =" in summary and "(missing)" not in summary

    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and all(f"{s} skipped" in third.stdout for s in STAGES), third.stdout[-2000:]


def test_finished_stage_with_changed_config_is_refused(tmp_path, tiny_hf_dirs):
    config = _load_config("demo")
    config.model_path = str(tiny_hf_dirs["llama"])
    config.stages = "locate"
    (tmp_path / "locate").mkdir()
    (tmp_path / "locate" / "stage_done.json").write_text(json.dumps({"stage": "locate", "config_hash": "0" * 16}))
    with pytest.raises(ValueError, match="already finished .* different configuration.*config field rerun"):
        run_pipeline(config, str(tmp_path))
    config.stages = "locate,sft"
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['sft'\]"):
        run_pipeline(config, str(tmp_path))
    config.stages, config.model_path = "locate", ""
    with pytest.raises(ValueError, match="model_path is required"):
        run_pipeline(config, str(tmp_path))


@pytest.mark.parametrize("model", sorted(m for m in PAPER_MODELS if not PAPER_MODELS[m].asset))
def test_paper_model_configs_resolve_for_every_preset(model):
    paper = PAPER_MODELS[model]
    model_config = paper.model_config()
    L = model_config.num_layers
    assert 1 <= paper.bottleneck_residual_index < L
    expected_billions = {"llama31_8b": 8.03, "qwen25_7b": 7.62, "qwen25_14b": 14.77, "qwen25_32b": 32.76,
                         "qwen3_8b": 8.19, "qwen3_14b": 14.77, "qwen3_32b": 32.76}[model]
    assert abs(model_config.num_params() / 1e9 - expected_billions) < 0.01
    for preset in TPU_PRESETS:
        config = _load_config("pipeline", f"{model},{preset}")
        assert config.model_path == paper.hub_id and config.residual_index == paper.bottleneck_residual_index
        assert config.kto.train.batch_size == TPU_PRESETS[preset].kto_batch_size
        assert config.kto.train.peak_flops_per_device == TPU_PRESETS[preset].peak_flops_per_device  # MFU logged
        stages = stage_configs(config, "/runs/x")
        assert stages["ssi"].residual_index == paper.bottleneck_residual_index and not stages["ssi"].locate_workdir
        assert stages["generate_lasa"].model_path == "/runs/x/kto/hf_export"
        assert stages["generate_lasa"].ssi_dir == stages["kto"].labels.ssi_dir or stages["kto"].labels.mode == "paper"
        assert stages["evaluate"].lasa_generations == "/runs/x/generate_lasa/generations.jsonl"
        assert stages["ssi"].data.root == stages["locate"].data.root == stages["generate_lasa"].data_root == \
            stages["kto"].data.root == "../shared/data"
        thinking = '{"enable_thinking": false}' if model.startswith("qwen3") else ""
        assert all(stages[s].template_kwargs == thinking for s in ("kto", "generate_baseline", "generate_lasa"))
    # the KTO state of every paper model fits a v5p pod slice; 32B models do not fit one v5p-8 VM
    # (the preset's own KTO defaults, the paper's max length 512)
    def kto_fits(preset: str) -> bool:
        p = TPU_PRESETS[preset]
        return kto_plan(model_config, preset, batch_size=p.kto_batch_size, grad_accum_steps=p.kto_micro_batches,
                        max_length=512, reference_mode=p.kto_reference_mode).fits

    assert kto_fits("v5p-64")
    assert kto_fits("v5p-8") == (expected_billions < 20)


def _write_cached_import(cache, name: str) -> str:
    """A cache entry as `lasa_jax.models.assets.model_dir` leaves it (its import record names the expected GGUF
    sha256)."""
    from lasa_jax.models.assets import MODELS
    from lasa_jax.models.gguf import IMPORT_RECORD

    entry = cache / "models" / MODELS[name].name
    entry.mkdir(parents=True)
    (entry / IMPORT_RECORD).write_text(json.dumps({"gguf_sha256": MODELS[name].member_sha256}))
    return str(entry)


def test_default_demo_runs_on_the_cached_smollm2_and_the_tiny_demo_on_a_random_model(tmp_path, monkeypatch):
    from lasa_jax.infra.cache import CACHE_ENV
    from lasa_jax.infra.errors import InputError
    from lasa_jax.models.assets import asset_name, model_entry, resolve_asset_path
    from lasa_jax.scripts.demo import demo_model_path

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = _load_config("demo")
    assert config.model_path == "asset:smollm2-135m-instruct"
    assert asset_name(config.model_path) == "smollm2-135m-instruct"
    entry = _write_cached_import(tmp_path / "cache", "smollm2-135m-instruct")
    assert str(model_entry("smollm2-135m-instruct")) == entry
    assert entry == str(tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct")
    # a cached entry is reused: no download (pip would fail without an index), the directory itself is returned
    assert demo_model_path(config.model_path, str(tmp_path / "run")) == entry == resolve_asset_path(config.model_path)
    assert resolve_asset_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(InputError, match="model_path 'asset:smollm3'.*smollm2-135m-instruct"):
        resolve_asset_path("asset:smollm3")
    # the demo's shortened settings on the real model; the random-model demo keeps its own
    assert config.ssi.threshold.rule == "tpr_at_fpr" and config.dtype == config.generate.dtype == "float32"
    assert config.kto.train.num_steps == 12 and config.kto.data.max_length == 256
    # the real-model demo reads the shared data (when present) only for the guard, the judge and utility
    shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
    if os.path.isdir(shared) and "LASA_SHARED_DATA" not in os.environ:
        assert os.path.realpath(config.data_root) == os.path.realpath(shared)
    tiny = _load_config("demo_tiny")
    assert tiny.data_root == ""
    assert tiny.model_path == "" and tiny.ssi.threshold.rule == "accuracy" and tiny.kto.train.num_steps == 40
    for c in (config, tiny):
        stages = stage_configs(c, "/runs/demo")
        assert stages["kto"].data.path.endswith("lasa_jax/demo_data/kto.jsonl")
        assert stages["locate"].data.source == "jsonl" and stages["ssi"].data.source == "jsonl"
        assert stages["evaluate"].asr_sources == stages["evaluate"].refusal_sources == "demo"


def test_smollm2_real_data_run_config_resolves(tmp_path, monkeypatch, shared_data):
    from lasa_jax.generate.settings import eval_set_selection
    from lasa_jax.infra.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = _load_config("pipeline", "smollm2_135m,cpu")
    assert config.model_path == "asset:smollm2-135m-instruct" and config.residual_index == -1
    assert config.paper_model == "smollm2_135m" and config.kto.train.num_steps == 200
    config.data_root = str(shared_data)
    stages = stage_configs(config, "/runs/smollm2")
    assert stages["locate"].data.source == "default" and stages["locate"].data.root == str(shared_data)
    assert stages["ssi"].data.source == "polyrefuse" and stages["ssi"].locate_workdir == "/runs/smollm2/locate"
    assert stages["kto"].data.format == "polyrefuse_completions"
    assert stages["kto"].data.path == os.path.join(str(shared_data), "polyrefuse_completions")
    assert all(stages[s].dtype == "float32" for s in ("locate", "ssi", "generate_lasa", "evaluate"))
    assert stages["kto"].compute_dtype == stages["kto"].reference.dtype == "float32"
    prompts = eval_set_selection(stages["generate_baseline"]).load()
    counts = {}
    for p in prompts:
        counts[(p.source, p.language)] = counts.get((p.source, p.language), 0) + 1
    assert {k: v for k, v in counts.items() if k[0] == "multijail"} == {
        ("multijail", lang): 20 for lang in ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")}
    assert counts[("xstest", "en")] == 250  # max_per_language bounds MultiJail only: all safe XSTest prompts
    assert (stages["evaluate"].asr_sources, stages["evaluate"].refusal_sources) == ("multijail", "xstest")
    # other table models keep their hub ids
    assert _load_config("pipeline", "qwen25_7b,cpu").model_path == "Qwen/Qwen2.5-7B-Instruct"


def test_peak_flops_lookup_by_device_kind():
    from lasa_jax.presets import device_peak_flops

    assert device_peak_flops("TPU v5p") == 459e12 and device_peak_flops("TPU v4") == 275e12
    assert device_peak_flops("cpu") is None


def test_abstract_shapes_of_a_paper_model_on_a_simulated_mesh():
    """Shapes only: the Llama-3.1-8B decoder built abstractly (no weights) and its shardings on 8 devices."""
    import jax

    from lasa_jax.models.decoder import abstract_decoder, param_shardings
    from lasa_jax.sharding import make_mesh

    config = PAPER_MODELS["llama31_8b"].model_config(param_dtype="bfloat16")
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    model = abstract_decoder(config, mesh)
    params = model.params()
    assert params["layers"]["q_kernel"].shape == (32, 4096, 32, 128)
    assert params["layers"]["k_kernel"].shape == (32, 4096, 8, 128)
    assert params["lm_head"].shape == (4096, 128256)
    shardings = param_shardings(model, mesh)
    assert shardings["layers"]["gate_kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    total = sum(x.size for x in jax.tree.leaves(params))
    assert total == config.num_params()


def test_a_stage_reruns_when_a_stage_it_consumed_ran_again(tmp_path):
    from lasa_jax.pipeline import stage_decision

    def mark(stage, **fields):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / "stage_done.json").write_text(json.dumps({"stage": stage, **fields}))

    assert stage_decision(str(tmp_path), "generate_lasa", "h", {"ssi": "a"}, rerun=False)[0] == "run"
    mark("generate_lasa", config_hash="h", run_id="g1", inputs={"ssi": "a", "kto": "k"})
    assert stage_decision(str(tmp_path), "generate_lasa", "h", {"ssi": "a", "kto": "k"}, False)[0] == "skip"
    action, reason = stage_decision(str(tmp_path), "generate_lasa", "h", {"ssi": "b", "kto": "k"}, False)
    assert action == "clear" and "ssi ran again" in reason
    assert stage_decision(str(tmp_path), "generate_lasa", "h", {"ssi": "a", "kto": "k"}, True)[0] == "clear"
    with pytest.raises(ValueError, match="different configuration"):
        stage_decision(str(tmp_path), "generate_lasa", "other", {"ssi": "a", "kto": "k"}, False)
    config = _load_config("demo")
    inputs = stage_inputs(config)
    assert inputs["evaluate"] == ("generate_baseline", "generate_prefix_only", "generate_lasa")
    assert "ssi" in inputs["generate_lasa"] and inputs["generate_prefix_only"] == ("ssi",)
    assert inputs["ssi"] == ("locate",)  # the demo reads k* from its own Locate stage
    config.residual_index = 14
    assert stage_inputs(config)["ssi"] == ()


def test_prefix_only_stage_follows_the_ssi_not_kto(tmp_path, monkeypatch):
    """The stage graph with recording stage functions: prefix_only generates with the base model and the SSI, runs
    again when the SSI ran again, not when KTO did; evaluate compares the systems of the stages run."""
    import dataclasses

    import lasa_jax.pipeline as pipeline
    from lasa_jax.stage import StageResult

    calls = []

    @dataclasses.dataclass(frozen=True)
    class Recorder:  # a stage module that records its calls
        NAME: str

        def run(self, config, workdir, mesh=None):
            calls.append((self.NAME, config))
            return StageResult(self.NAME)

        def report_lines(self, stage_dir):
            return []

    monkeypatch.setattr(pipeline, "stage_module", lambda row: Recorder(row.name))
    config = _load_config("demo")
    config.model_path = "/models/base"
    assert config.stages.split(",") == list(STAGES)  # prefix_only is a default stage
    workdir = str(tmp_path / "run")
    assert set(run_pipeline(config, workdir).values()) == {"done"}
    by_stage = dict(calls)
    assert [stage for stage, _ in calls] == list(STAGES)
    prefix_only = by_stage["generate_prefix_only"]
    assert prefix_only.mode == "prefix_only" and prefix_only.model_path == prefix_only.base_model_path == "/models/base"
    assert prefix_only.ssi_dir == os.path.join(workdir, "ssi", "ssi") == by_stage["generate_lasa"].ssi_dir
    assert by_stage["generate_lasa"].model_path == os.path.join(workdir, "kto", "hf_export")
    evaluate = by_stage["evaluate"]
    assert [evaluate.baseline_generations, evaluate.prefix_only_generations, evaluate.lasa_generations] == [
        os.path.join(workdir, s, "generations.jsonl") for s in ("generate_baseline", "generate_prefix_only",
                                                                 "generate_lasa")]
    assert "generate_prefix_only" in (tmp_path / "run" / "report.md").read_text()

    def rerun(stage):
        calls.clear()
        config.rerun = stage
        outcome = run_pipeline(config, workdir)
        return sorted(s for s, state in outcome.items() if state == "done")

    assert rerun("kto") == ["evaluate", "generate_lasa", "kto"]
    assert rerun("ssi") == ["evaluate", "generate_baseline", "generate_lasa", "generate_prefix_only", "ssi"]
    config.rerun = ""
    assert set(run_pipeline(config, workdir).values()) == {"skipped"}

    # an older stage list without prefix_only: evaluate compares baseline and LASA only
    config.stages = "locate,ssi,kto,generate_baseline,generate_lasa,evaluate"
    calls.clear()
    run_pipeline(config, str(tmp_path / "two"))
    evaluate = dict(calls)["evaluate"]
    assert "generate_prefix_only" not in dict(calls) and evaluate.prefix_only_generations == ""
    assert evaluate.baseline_generations and evaluate.lasa_generations
    # ... until prefix_only runs there: evaluate (finished, with another config) runs again with three systems
    config.stages = ",".join(STAGES)
    calls.clear()
    outcome = run_pipeline(config, str(tmp_path / "two"))
    assert sorted(s for s, state in outcome.items() if state == "done") == ["evaluate", "generate_prefix_only"]
    assert dict(calls)["evaluate"].prefix_only_generations.endswith("generate_prefix_only/generations.jsonl")


def test_report_states_the_locate_verdict_and_probe(tmp_path):
    """report.md's Locate section: k*, 'No semantic bottleneck found' with the reason, the probe's best index."""
    import dataclasses

    import numpy as np

    from lasa_jax.locate.report import write_bottleneck_report
    from lasa_jax.locate.selection import select_bottleneck_layer
    from lasa_jax.pipeline import write_summary

    rng = np.random.default_rng(0)
    languages = np.repeat(["en", "zh", "ko"], 12)
    group_ids = np.tile([f"g{i}" for i in range(12)], 3)
    offsets = {lang: rng.normal(size=8) * 3 for lang in ("en", "zh", "ko")}
    features = np.stack([[offsets[lang] + rng.normal(size=8) for lang in languages] for _ in range(4)])
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10)  # language clusters only
    result = dataclasses.replace(result, probe_auroc=np.array([0.5, 0.6, 0.9, 0.7]), probe={"reason": None})
    write_bottleneck_report(result, tmp_path / "locate")
    summary = open(write_summary(str(tmp_path), ml_collections.ConfigDict({"model_path": "m"}))).read()
    assert f"Semantic bottleneck k* = {result.best_layer} of L = 3" in summary
    assert "**No semantic bottleneck found**: S_sem - S_lang < 0 at every candidate residual index 1..3" in summary
    assert "best 0.900 at residual index 2" in summary
