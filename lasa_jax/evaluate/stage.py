"""The evaluate stage (`lasa_jax.stage` contract; `python -m lasa_jax.scripts.evaluate`, configs/evaluate.py): its
settings, and the wiring of a run: the systems' generation files -> cached judges -> report.md / report.json /
charts (`runner.evaluate_generations`) + the utility section (`utility.run_utility`) and `evaluation_meta.json`
(inputs with sha256, judges, calibration, cache hits/misses, counts).

Judge verdict caches (`judge_cache_{safety,refusal}.jsonl` in `judge.cache_dir` or the workdir) are written by
process 0 only; every process reads them when the judges are built, so all issue the same judge calls.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from lasa_jax.decoding.answers import read_generations
from lasa_jax.evaluate.calibration import find_calibration
from lasa_jax.evaluate.judge_cache import CachedJudge
from lasa_jax.evaluate.judge_factory import JudgeModels, build_judge
from lasa_jax.evaluate.report import REPORT_JSON, REPORT_MD, attach_utility
from lasa_jax.evaluate.report_markdown import headline_lines
from lasa_jax.evaluate.report_plots import ASR_CHART_PNG, SYSTEMS_CHART_PNG
from lasa_jax.evaluate.runner import evaluate_generations
from lasa_jax.evaluate.settings import EvaluateSettings, read_settings
from lasa_jax.evaluate.utility import run_utility
from lasa_jax.evaluate.verdicts import REFUSAL_TASK, SAFETY_TASK
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.storage import atomic_write_json, read_json, sha256_file
from lasa_jax.stage import StageResult, as_settings, report_link

log = logging.getLogger(__name__)
NAME = "evaluate"
EVALUATION_META = "evaluation_meta.json"


def settings(config) -> EvaluateSettings:
    """The validated settings of an evaluate config section (`lasa_jax.evaluate.settings`)."""
    return read_settings(config)


def _judges(s: EvaluateSettings, mesh, cache_dir: str) -> tuple[CachedJudge, CachedJudge | None]:
    """(safety judge, refusal judge or None), each cached in `<cache_dir>/judge_cache_<task>.jsonl`."""
    j = s.judge
    common = dict(models=JudgeModels(mesh), batch_size=j.batch_size, max_new_tokens=j.max_new_tokens,
                  template_kwargs=j.template_kwargs, progress=s.progress, labelled=j.labelled)

    def cached(judge, task):  # one file per CachedJudge (one writer per file: process 0)
        return CachedJudge(judge, os.path.join(cache_dir, f"judge_cache_{task}.jsonl"),
                           batch_size=j.cache_batch_size, write=is_writer())

    safety = cached(build_judge(j.safety, SAFETY_TASK, model=j.model, **common), SAFETY_TASK)
    refusal = None
    if j.refusal != "none":
        refusal = cached(build_judge(j.refusal, REFUSAL_TASK, model=j.refusal_model, **common), REFUSAL_TASK)
    return safety, refusal


def _add_utility(s: EvaluateSettings, workdir: str, mesh, report: dict[str, Any]) -> dict[str, Any]:
    """The utility section (`lasa_jax.evaluate.utility.run_utility`) added to report.json / report.md."""
    if s.utility is None:
        return report
    utility = run_utility(s.utility, mesh, out_dir=workdir)
    if is_writer():
        return attach_utility(workdir, report, utility)
    report["utility"] = utility
    return report


def run(config_or_settings, workdir: str, mesh=None) -> StageResult:
    """Run the evaluate stage into `workdir`; details = the report dict (as in report.json)."""
    s = as_settings(config_or_settings, EvaluateSettings, read_settings)
    generations = {name: read_generations(path) for name, path in s.systems.items()}
    cache_dir = s.judge.cache_dir or workdir
    safety, refusal = _judges(s, mesh, cache_dir)
    calibration = find_calibration(safety, s.judge.calibration, s.judge.labelled, workdir)
    evaluation = evaluate_generations(
        generations, workdir, safety_judge=safety, refusal_judge=refusal, asr_sources=s.asr_sources,
        refusal_sources=s.refusal_sources, paired=s.paired, z=s.z, safety_calibration=calibration)
    judges = [judge for judge in (safety, refusal) if judge is not None]
    report = _add_utility(s, workdir, mesh, evaluation.report)
    meta = {"inputs": {name: {"path": storage.absolute(path), "sha256": sha256_file(path)}
                       for name, path in s.systems.items()},
            "safety_judge": safety.name, "refusal_judge": refusal.name if refusal else None,
            "safety_judge_calibration": calibration["path"] if calibration else None,
            "judge_cache": {"dir": storage.absolute(cache_dir), "hits": sum(judge.hits for judge in judges),
                            "misses": sum(judge.misses for judge in judges)},
            "paired": s.paired, **evaluation.counts}
    if is_writer():
        atomic_write_json(os.path.join(workdir, EVALUATION_META), meta)
    log.info("report written to %s (safety judge %s)", workdir, safety.name)
    return StageResult(NAME, outputs={"report_json": os.path.join(workdir, REPORT_JSON),
                                      "report_md": os.path.join(workdir, REPORT_MD),
                                      "meta": os.path.join(workdir, EVALUATION_META)},
                       summary={"systems": list(s.systems), "safety_judge": safety.name}, details=report)


def report_lines(stage_dir: str) -> list[str]:
    """The pipeline report's lines: the headline numbers of report.json and links to the report and charts."""
    path = os.path.join(stage_dir, REPORT_JSON)
    lines = headline_lines(read_json(path)) if storage.isfile(path) else []
    links = [report_link(stage_dir, name) for name in (REPORT_MD, REPORT_JSON, ASR_CHART_PNG, SYSTEMS_CHART_PNG)]
    return lines + ["- " + ", ".join(links)]
