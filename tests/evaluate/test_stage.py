"""The evaluate stage (lasa_jax.evaluate.stage): a run from configs/evaluate.py with the verdict caches, the meta
file, the utility note and the pipeline report lines; older configs; the pipeline's evaluate config."""
import importlib.util
import json
import os

import ml_collections
import pytest

from lasa_jax.decoding.answers import write_generations
from lasa_jax.evaluate.report import REPORT_MD
from lasa_jax.evaluate.settings import evaluated_systems
from lasa_jax.evaluate.stage import EVALUATION_META, report_lines, settings
from lasa_jax.evaluate.stage import run as run_evaluate_stage


def test_evaluate_stage_with_cache(tmp_path, two_systems, evaluate_config):
    write_generations(tmp_path / "baseline.jsonl", two_systems["baseline"])
    write_generations(tmp_path / "lasa.jsonl", two_systems["lasa"])
    config = evaluate_config
    config.baseline_generations = str(tmp_path / "baseline.jsonl")
    config.lasa_generations = str(tmp_path / "lasa.jsonl")
    config.progress = False
    workdir = tmp_path / "eval"
    report = run_evaluate_stage(config, str(workdir)).details
    assert report["systems"] == ["baseline", "lasa"] and report["refusal"] is not None
    meta = json.loads((workdir / EVALUATION_META).read_text(encoding="utf-8"))
    assert meta["safety_judge"] == "refusal-heuristic(approximate)"
    assert meta["refusal_judge"] == "refusal-heuristic(approximate):refusal"
    assert len(meta["inputs"]["lasa"]["sha256"]) == 64 and meta["judge_cache"]["misses"] > 0
    assert (workdir / "judge_cache_safety.jsonl").is_file() and (workdir / "judge_cache_refusal.jsonl").is_file()
    assert (workdir / REPORT_MD).is_file()
    # no utility.data_root: the utility section says why it did not run, in report.json and report.md
    assert report["utility"]["status"] == "not run" and "data_root" in report["utility"]["reason"]
    assert json.loads((workdir / "report.json").read_text(encoding="utf-8"))["utility"] == report["utility"]
    assert "utility: not run: no --config.utility.data_root" in (workdir / REPORT_MD).read_text(encoding="utf-8")
    again = run_evaluate_stage(config, str(workdir)).details
    assert again == report
    meta = json.loads((workdir / EVALUATION_META).read_text(encoding="utf-8"))
    assert meta["judge_cache"]["misses"] == 0 and meta["judge_cache"]["hits"] > 0
    # the stage also runs from its already-read settings
    assert run_evaluate_stage(settings(config), str(workdir)).details == report
    # the pipeline report: headline numbers and links to the files written
    lines = report_lines(str(workdir))
    assert lines[0].startswith("- Average ASR (harmful) over languages: baseline **")
    assert lines[-1].startswith("- [eval/report.md](eval/report.md), [eval/report.json](eval/report.json)")
    assert "missing" not in lines[-1]
    assert report_lines(str(tmp_path / "not_run")) == [
        "- not_run/report.md (missing), not_run/report.json (missing), not_run/asr_by_language.png (missing), "
        "not_run/systems_by_language.png (missing)"]
    config.baseline_generations = config.lasa_generations = ""
    with pytest.raises(ValueError, match="lasa_generations and/or config field generations"):
        run_evaluate_stage(config, str(workdir))


def test_two_systems_and_old_evaluate_configs_still_work(tmp_path, three_systems, evaluate_config):
    """A run with baseline and LASA only (an evaluate config without the prefix_only field, as older runs saved
    it) gives the same two-system report (further systems from --config.generations: test_settings)."""
    paths = {}
    for system, records in three_systems.items():
        paths[system] = str(tmp_path / f"{system}.jsonl")
        write_generations(paths[system], records)
    config = evaluate_config
    old_fields = {k: v for k, v in config.to_dict().items() if k not in ("prefix_only_generations", "generations")}
    old = ml_collections.ConfigDict(old_fields)
    old.update(baseline_generations=paths["baseline"], lasa_generations=paths["lasa"], asr_sources="demo",
               refusal_sources="demo", progress=False)
    assert evaluated_systems(old) == {"baseline": paths["baseline"], "lasa": paths["lasa"]}
    report = run_evaluate_stage(old, str(tmp_path / "two")).details
    comp = report["comparison"]
    assert report["systems"] == comp["systems"] == ["baseline", "lasa"]
    assert comp["metrics"]["asr"]["systems"]["lasa"]["average"] == pytest.approx(0.125)
    assert comp["ssi"]["system"] == "lasa" and comp["ssi"]["disagreements"] == 0
    assert comp["ssi"]["harmful"]["average"] == pytest.approx(0.75)  # lasa's own flags: 3/4 in en and zh
    assert ("| en | 75.0% | 25.0% | 0.0% | 0.0% | 0.0% | 50.0% | 75.0% | 50.0% |"
            in (tmp_path / "two" / REPORT_MD).read_text())


def test_pipeline_gives_the_evaluation_its_data_root():
    from lasa_jax.pipeline import stage_configs

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pipeline.py")
    spec = importlib.util.spec_from_file_location("pipeline_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data_root = "/data/shared"
    evaluate = stage_configs(config, "/tmp/run")["evaluate"]
    assert evaluate.data_root == "/data/shared" and evaluate.judge.safety == "auto"
    assert settings(evaluate).judge.labelled == "/data/shared/polyrefuse_completions"
