"""The evaluate stage (`python -m lasa_jax.scripts.evaluate`, `configs/evaluate.py`): the systems' generation files
-> cached judges -> report.md / report.json / charts (+ the utility section) and `evaluation_meta.json` (inputs
with sha256, judges, cache hits/misses, counts). Stage contract: `lasa_jax.stage`; judging and the report:
`lasa_jax.evaluate.runner.evaluate_generations`.

Judge verdict caches (`judge_cache_{safety,refusal}.jsonl` in `judge.cache_dir` or the workdir) are written by
process 0 only; every process reads them when the judges are built, so all issue the same judge calls.

`settings` reads the stage's fields; the shared base-config fields (dtype, compute_dtype) apply to the judge and
utility models through `runtime.load_model`, and `utility` is read by `evaluate.utility.run_utility`, both from
`EvaluateSettings.section`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from lasa_jax.decoding.answers import read_generations
from lasa_jax.evaluate.judge_cache import CachedJudge
from lasa_jax.evaluate.runner import (
    EVALUATION_META,
    JUDGE_KINDS,
    NAMED_SYSTEMS,
    REFUSAL_JUDGE_KINDS,
    JudgeModels,
    build_judge,
    evaluate_generations,
    find_calibration,
    labelled_dir,
)
from lasa_jax.evaluate.verdicts import REFUSAL_TASK, SAFETY_TASK
from lasa_jax.infra import storage
from lasa_jax.infra.base_config import comma_list
from lasa_jax.infra.base_config import template_kwargs as config_template_kwargs
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import atomic_write_json, read_json, sha256_file
from lasa_jax.stage import StageResult, as_settings, report_link

log = logging.getLogger(__name__)
NAME = "evaluate"


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """The judges of an evaluation (configs/evaluate.py `judge`); labelled: the WildGuard-labelled folder."""

    safety: str
    refusal: str
    model_path: str
    refusal_model_path: str
    batch_size: int
    max_new_tokens: int
    template_kwargs: Mapping[str, Any]
    cache_dir: str
    cache_batch_size: int
    calibration: str
    labelled: str


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """The evaluate stage's settings; systems: name -> generation JSONL path, in report column order."""

    systems: Mapping[str, str]
    judge: JudgeSettings
    asr_sources: tuple[str, ...]
    refusal_sources: tuple[str, ...]
    paired: bool
    z: float
    progress: bool
    section: Any = dataclasses.field(repr=False, compare=False, default=None)


def evaluated_systems(config) -> dict[str, str]:
    """System name -> generation JSONL path, in report column order: the non-empty `<system>_generations` fields
    (baseline, prefix_only, lasa; a config without prefix_only_generations works), then the comma-separated
    `name=path` pairs of `generations`. InputError for a malformed pair, a repeated name or no system."""
    systems = {name: config.get(f"{name}_generations", "") for name in NAMED_SYSTEMS}
    systems = {name: path for name, path in systems.items() if path}
    for pair in comma_list(config.get("generations", "")):
        name, sep, path = (part.strip() for part in pair.partition("="))
        if not sep or not name or not path:
            raise InputError(f"{config_field('generations')}: expected comma-separated name=path pairs, got {pair!r}")
        if name in systems:
            raise InputError(f"{config_field('generations')}: system {name!r} is given twice")
        systems[name] = path
    if not systems:
        raise InputError(f"give {config_field('baseline_generations')}, {config_field('prefix_only_generations')}, "
                         f"{config_field('lasa_generations')} and/or {config_field('generations')}=name=path,... "
                         "(generation JSONL files written by lasa_jax.scripts.generate)")
    return systems


def judge_settings(config) -> JudgeSettings:
    """The `judge` section of an evaluate (or calibrate_judge) config, with the labelled folder resolved."""
    j = config.judge
    if j.safety not in JUDGE_KINDS or j.get("refusal", "none") not in REFUSAL_JUDGE_KINDS:
        raise InputError(f"{config_field('judge.safety')} must be one of {JUDGE_KINDS} and "
                         f"{config_field('judge.refusal')} one of {REFUSAL_JUDGE_KINDS}; got {j.safety!r} and "
                         f"{j.get('refusal')!r}")
    return JudgeSettings(
        safety=j.safety, refusal=j.get("refusal", "none"), model_path=j.model_path,
        refusal_model_path=j.get("refusal_model_path", "") or j.model_path, batch_size=int(j.batch_size),
        max_new_tokens=int(j.max_new_tokens), template_kwargs=config_template_kwargs(j),
        cache_dir=j.get("cache_dir", ""), cache_batch_size=int(j.get("cache_batch_size", 64)),
        calibration=j.get("calibration", ""), labelled=labelled_dir(config.get("data_root", ""),
                                                                    j.get("labelled_dir", "")))


def settings(config) -> EvaluateSettings:
    """Read and validate an evaluate config section."""
    return EvaluateSettings(systems=evaluated_systems(config), judge=judge_settings(config),
                            asr_sources=tuple(comma_list(config.asr_sources)),
                            refusal_sources=tuple(comma_list(config.refusal_sources)), paired=bool(config.paired),
                            z=float(config.z), progress=bool(config.progress), section=config)


def _judges(s: EvaluateSettings, mesh, cache_dir: str) -> tuple[CachedJudge, CachedJudge | None]:
    """(safety judge, refusal judge or None), each cached in `<cache_dir>/judge_cache_<task>.jsonl`."""
    j = s.judge
    common = dict(models=JudgeModels(s.section, mesh), batch_size=j.batch_size, max_new_tokens=j.max_new_tokens,
                  template_kwargs=dict(j.template_kwargs), progress=s.progress, labelled=j.labelled)

    def cached(judge, task):  # one file per CachedJudge (one writer per file: process 0)
        return CachedJudge(judge, os.path.join(cache_dir, f"judge_cache_{task}.jsonl"),
                           batch_size=j.cache_batch_size, write=is_writer())

    safety = cached(build_judge(j.safety, SAFETY_TASK, model_path=j.model_path, **common), SAFETY_TASK)
    refusal = None
    if j.refusal != "none":
        refusal = cached(build_judge(j.refusal, REFUSAL_TASK, model_path=j.refusal_model_path, **common),
                         REFUSAL_TASK)
    return safety, refusal


def _add_utility(s: EvaluateSettings, workdir: str, mesh, report: dict[str, Any]) -> dict[str, Any]:
    """The utility section (`lasa_jax.evaluate.utility.run_utility`) added to report.json / report.md."""
    if "utility" not in s.section:
        return report
    from lasa_jax.evaluate.report import attach_utility
    from lasa_jax.evaluate.utility import run_utility

    utility = run_utility(s.section, mesh, out_dir=workdir)
    if is_writer():
        return attach_utility(workdir, report, utility)
    report["utility"] = utility
    return report


def run(config_or_settings, workdir: str, mesh=None) -> StageResult:
    """Run the evaluate stage into `workdir`; details = the report dict (as in report.json)."""
    s = as_settings(config_or_settings, EvaluateSettings, settings)
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
    from lasa_jax.evaluate.report import REPORT_JSON, REPORT_MD

    return StageResult(NAME, outputs={"report_json": os.path.join(workdir, REPORT_JSON),
                                      "report_md": os.path.join(workdir, REPORT_MD),
                                      "meta": os.path.join(workdir, EVALUATION_META)},
                       summary={"systems": list(s.systems), "safety_judge": safety.name}, details=report)


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def headline_lines(report: dict) -> list[str]:
    """The summary's headline numbers, averaged over languages: ASR and benign refusal rate per system (baseline,
    prefix_only, lasa, ...) and the SSI's flag rates, from report.json's "comparison" part (ASR only for older
    reports without it)."""
    comp = report.get("comparison")
    if not comp:
        parts = [f"{system} {_percent(summary.get('macro_asr'))}"
                 for system, summary in report.get("asr", {}).get("systems", {}).items()]
        return ["Average ASR over languages: " + ", ".join(parts) + "."] if parts else []
    lines = []
    for metric in comp["metrics"].values():
        parts = [f"{system} **{_percent(metric['systems'][system]['average'])}**" for system in comp["systems"]
                 if system in metric["systems"]]
        lines.append(f"- Average {metric['label']} over languages: " + ", ".join(parts) + ".")
    ssi = comp.get("ssi")
    if ssi:
        lines.append(f"- The SSI flagged {_percent(ssi['harmful']['average'])} of harmful and "
                     f"{_percent(ssi['benign']['average'])} of benign prompts (averaged over languages).")
    return lines


def report_lines(stage_dir: str) -> list[str]:
    """The pipeline report's lines: the headline numbers of report.json and links to the report and charts."""
    from lasa_jax.evaluate.report import REPORT_JSON, REPORT_MD

    path = os.path.join(stage_dir, REPORT_JSON)
    lines = headline_lines(read_json(path)) if storage.isfile(path) else []
    links = [report_link(stage_dir, name) for name in (REPORT_MD, REPORT_JSON, "asr_by_language.png",
                                                       "systems_by_language.png")]
    return lines + ["- " + ", ".join(links)]
