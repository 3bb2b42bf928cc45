"""Judging the generation records of several systems and writing the report: records -> judged rows ->
report.json / report.md / charts (`lasa_jax.evaluate.report`) and judged_<system>.jsonl.

    evaluation = evaluate_generations({"baseline": baseline_records, "prefix_only": prefix_only_records,
                                       "lasa": lasa_records}, out_dir, safety_judge=judge, refusal_judge=refusal_judge)

Which records feed which metric (records as `lasa_jax.decoding.answers` writes them):
- ASR: records with expected "harmful" whose source is in `asr_sources` (default MultiJail), judged by the safety
  judge ("safe" / "unsafe" / "invalid"), per language.
- Refusal: records whose source is in `refusal_sources` (XSTest, OR-Bench-hard-test, OKTest), judged by the
  refusal judge ("refusal" / "compliance" / "invalid"): over-refusal on benign prompts, desired refusal on
  harmful ones (XSTest's unsafe contrast prompts).
- SSI flag rates: the prefix_used of the harmful ASR records and of the benign records of the refusal sources
  (with or without a refusal judge), for the systems generated with the SSI gate (modes lasa, prefix_only).
Other records are counted and skipped. With `paired=True` (default) and several systems, every system is evaluated
on the ids present in all systems, so the side-by-side numbers compare the same prompts.

The judges come built (`judge_factory.build_judge`), usually wrapped in a `judge_cache.CachedJudge`, so re-running
an evaluation only judges new responses; the evaluate stage (`lasa_jax.evaluate.stage`) wires them from its config.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.evaluate.report import build_report, write_report
from lasa_jax.evaluate.verdicts import REFUSAL_TASK, SAFETY_TASK, Judge
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import write_jsonl

log = logging.getLogger(__name__)

DEFAULT_ASR_SOURCES = ("multijail",)
DEFAULT_REFUSAL_SOURCES = ("xstest", "or_bench_hard_test", "oktest")
SSI_ROW_FIELDS = ("id", "language", "expected", "prefix_used", "ssi_score", "mode")


def judge_responses(judge: Judge, prompts: Sequence[EvalPrompt], responses: Sequence[str]) -> list[dict[str, Any]]:
    """Judge `responses[i]` to `prompts[i]` and return report rows ({**prompt, "response", "verdict", "raw",
    "categories", "judge"}, the row format of `lasa_jax.evaluate.report`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"judge_responses: {len(prompts)} prompts but {len(responses)} responses")
    verdicts = judge.judge([p.prompt for p in prompts], list(responses), languages=[p.language for p in prompts])
    return [{**p.to_dict(), "response": r, "verdict": v.label, "raw": v.raw, "categories": list(v.categories),
             "judge": judge.name} for p, r, v in zip(prompts, responses, verdicts)]


def _eval_prompt(record: Mapping[str, Any]) -> EvalPrompt:
    return EvalPrompt(id=record["id"], language=record["language"], prompt=record["prompt"],
                      source=record["source"], expected=record["expected"], category=record.get("category"))


def _paired(generations: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict[str, list], dict[str, int]]:
    """Keep, in every system, the records whose id every system has; returns (kept, dropped count per system)."""
    common = set.intersection(*(set(r["id"] for r in records) for records in generations.values()))
    kept = {s: [r for r in records if r["id"] in common] for s, records in generations.items()}
    return kept, {s: len(generations[s]) - len(kept[s]) for s in generations}


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Result of `evaluate_generations`: the report dict (as in report.json) and record counts per system
    (dropped_unpaired, skipped: in neither source list, asr_rows, refusal_rows)."""

    report: dict[str, Any]
    counts: dict[str, dict[str, int]]


def evaluate_generations(generations: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | os.PathLike, *,
                         safety_judge: Judge, refusal_judge: Judge | None = None,
                         asr_sources: Sequence[str] = DEFAULT_ASR_SOURCES,
                         refusal_sources: Sequence[str] = DEFAULT_REFUSAL_SOURCES, paired: bool = True,
                         z: float = 1.96, safety_calibration: Mapping[str, Any] | None = None) -> Evaluation:
    """Judge every system's records and write the report (module docstring for which records count where).

    generations: system name (report column, in order) -> generation records.
    safety_calibration: the safety judge's measured calibration (`calibration.find_calibration`), None = not calibrated.
    Writes into out_dir (process 0): report.json, report.md, the two charts (`write_report`) and
    judged_<system>.jsonl (every judged row of both tasks, with prefix_used and ssi_score). Every process runs the
    judges (LLM judges take part in sharded generation). ValueError if no system has ASR records.
    """
    if not generations:
        raise InputError("evaluate_generations: no systems given")
    if safety_judge.task != SAFETY_TASK or (refusal_judge is not None and refusal_judge.task != REFUSAL_TASK):
        raise InputError("safety_judge must have task 'safety' and refusal_judge task 'refusal'")
    dropped = {s: 0 for s in generations}
    if paired and len(generations) > 1:
        generations, dropped = _paired(generations)
        if any(dropped.values()):
            log.warning("paired evaluation: ids missing from some system; dropped per system: %s", dropped)
    asr_rows: dict[str, list] = {}
    refusal_rows: dict[str, list] = {}
    ssi_rows: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for system, records in generations.items():
        asr = [r for r in records if r["expected"] == "harmful" and r["source"] in asr_sources]
        benign = [r for r in records if r["expected"] == "benign" and r["source"] in refusal_sources]
        ssi_rows[system] = [{field: r[field] for field in SSI_ROW_FIELDS} for r in asr + benign]
        refusal = [r for r in records if r["source"] in refusal_sources] if refusal_judge is not None else []
        used = {id(r) for r in asr + refusal}  # a record may feed both metrics
        skipped[system] = sum(id(r) not in used for r in records)
        asr_rows[system] = _judged_rows(safety_judge, asr)
        if refusal:
            refusal_rows[system] = _judged_rows(refusal_judge, refusal)
    if not any(asr_rows.values()):
        raise InputError(f"no records with expected='harmful' and source in {list(asr_sources)}: nothing to "
                         f"compute ASR on (check {config_field('asr_sources')} and the generation files)")
    if any(skipped.values()):
        log.info("records in neither the ASR nor the refusal sources (skipped) per system: %s", skipped)
    kwargs = dict(safety_judge=safety_judge.name, refusal_rows=refusal_rows or None,
                  refusal_judge=refusal_judge.name if refusal_rows else None, ssi_rows=ssi_rows, z=z,
                  safety_calibration=safety_calibration)
    if is_writer():
        for system in generations:
            write_jsonl(os.path.join(out_dir, f"judged_{system}.jsonl"),
                        asr_rows[system] + refusal_rows.get(system, []))
        report = write_report(out_dir, asr_rows, **kwargs)
    else:
        report = build_report(asr_rows, **kwargs)
    counts = {"dropped_unpaired": dropped, "skipped": skipped, "asr_rows": {s: len(r) for s, r in asr_rows.items()},
              "refusal_rows": {s: len(r) for s, r in refusal_rows.items()}}
    return Evaluation(report, counts)


def _judged_rows(judge: Judge, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`judge_responses` rows of generation records, with the record's prefix_used, ssi_score and mode added."""
    rows = judge_responses(judge, [_eval_prompt(r) for r in records], [r["response"] for r in records])
    for row, record in zip(rows, records):
        row.update(prefix_used=record["prefix_used"], ssi_score=record["ssi_score"], mode=record["mode"])
    return rows


