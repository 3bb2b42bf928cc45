"""Evaluation report: judged rows of several systems -> report.json (built here), report.md (`report_markdown`) and
grouped bar charts (`report_plots`).

Row format (one dict per judged response, as `lasa_jax.evaluate.runner.judge_responses` builds it):
{"id", "language", "source", "expected", "category", "prompt", "response", "verdict", "raw", "categories", "judge"}.
ASR rows carry safety verdicts ("safe" | "unsafe" | "invalid"), refusal rows carry refusal verdicts
("refusal" | "compliance" | "invalid"); see `lasa_jax.evaluate.metrics` for the definitions. SSI rows (one per
harmful ASR prompt and benign refusal-set prompt of a system) carry {"id", "language", "expected", "prefix_used",
"ssi_score", "mode"} of the generation record.

report.json "comparison" puts the systems side by side per language and averaged (macro mean over languages):
{"systems", "languages", "metrics": {name: {"label", "better": "lower" | "higher", "judge", "systems": {system:
{"per_language": {language: rate JSON}, "average", "pooled"}}}}, "ssi": {"system", "harmful", "benign",
"disagreements"} | null}. Metrics: "asr" (harmful prompts of the ASR sources) and "benign_refusal" (benign prompts
of the refusal sources); "ssi" is the SSI's flag rate (prefix_used) of the first SSI-gated system (mode lasa or
prefix_only), "disagreements" the prompts on which the gated systems' flags differ. Further per-language,
per-system metrics slot into "metrics" with the same shape and appear in the table and chart.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.decoding.answers import GATED_MODES
from lasa_jax.evaluate.metrics import asr_summary, refusal_by_language, refusal_summary
from lasa_jax.evaluate.report_markdown import render_markdown
from lasa_jax.evaluate.report_plots import ASR_CHART_PNG, SYSTEMS_CHART_PNG, plot_asr, plot_comparison
from lasa_jax.evaluate.verdicts import APPROXIMATE_MARKER, REFUSAL
from lasa_jax.infra import storage
from lasa_jax.infra.storage import atomic_write_json, atomic_write_text
from lasa_jax.statistics import Rate

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

Rows = Sequence[Mapping[str, Any]]


def _judge_name(rows_by_system: Mapping[str, Rows], given: str | None, what: str) -> str:
    """The one judge behind all rows: `given`, checked against the rows' "judge" fields, or read from them."""
    names = {row["judge"] for rows in rows_by_system.values() for row in rows if "judge" in row}
    if given is not None:
        names.add(given)
    if len(names) != 1:
        raise ValueError(f"{what}: expected exactly one judge across all systems, got {sorted(names) or 'none'}; "
                         "pass the judge name or add a 'judge' field to the rows")
    return names.pop()


def _confidence(z: float) -> float:
    return math.erf(z / math.sqrt(2.0))


def build_report(asr_rows: Mapping[str, Rows], *, safety_judge: str | None = None,
                 refusal_rows: Mapping[str, Rows] | None = None, refusal_judge: str | None = None,
                 ssi_rows: Mapping[str, Rows] | None = None, z: float = 1.96,
                 safety_calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """All numbers of the report as a JSON-ready dict.

    asr_rows: system name (e.g. "baseline", "prefix_only", "lasa") -> rows with safety verdicts on harmful prompts.
    refusal_rows: system name -> rows with refusal verdicts (over-refusal sets), or None.
    ssi_rows: system name -> SSI rows (module docstring) for the SSI flag rates, or None (then no "ssi" part).
    safety_judge / refusal_judge: judge names; default: the rows' "judge" field (one judge per kind).
    safety_calibration: the safety judge's measured calibration (`calibration.calibration_summary`), or None
    ("not calibrated"); stored as report["asr"]["calibration"].
    """
    if not asr_rows:
        raise ValueError("build_report: asr_rows is empty; give at least one system")
    report: dict[str, Any] = {"systems": list(asr_rows), "z": z, "confidence": _confidence(z)}
    judge = _judge_name(asr_rows, safety_judge, "ASR rows")
    summaries = {system: asr_summary(rows, z, MULTIJAIL_LANGUAGES).to_json() for system, rows in asr_rows.items()}
    languages = list(dict.fromkeys(lang for s in summaries.values() for lang in s["per_language"]))
    languages = [lang for lang in MULTIJAIL_LANGUAGES if lang in languages] + sorted(
        lang for lang in languages if lang not in MULTIJAIL_LANGUAGES)
    if safety_calibration is not None and safety_calibration.get("judge") != judge:
        raise ValueError(f"safety_calibration is for judge {safety_calibration.get('judge')!r}, not {judge!r}")
    report["asr"] = {"judge": judge, "approximate": APPROXIMATE_MARKER in judge, "languages": languages,
                     "systems": summaries, "calibration": dict(safety_calibration) if safety_calibration else None}
    report["refusal"] = None
    if refusal_rows:
        judge = _judge_name(refusal_rows, refusal_judge, "refusal rows")
        report["refusal"] = {
            "judge": judge, "approximate": APPROXIMATE_MARKER in judge,
            "systems": {system: [{"source": source, "expected": expected, **rates.to_json()}
                                 for (source, expected), rates in refusal_summary(rows, z).items()]
                        for system, rows in refusal_rows.items()}}
    report["comparison"] = comparison(report, refusal_rows or {}, ssi_rows or {}, z)
    return report


def _macro(per_language: Mapping[str, Mapping[str, Any]]) -> float | None:
    rates = [r["rate"] for r in per_language.values() if r["rate"] is not None]
    return sum(rates) / len(rates) if rates else None


def _metric(label: str, better: str, judge: str | None,
            per_system: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict:
    """A "comparison" metric: per_system maps system -> (per-language rate JSON, pooled rate JSON)."""
    return {"label": label, "better": better, "judge": judge,
            "systems": {system: {"per_language": dict(per_language), "average": _macro(per_language),
                                 "pooled": pooled} for system, (per_language, pooled) in per_system.items()}}


def _flag_rates(rows: Rows, expected: str, z: float, order: Sequence[str]) -> dict[str, Any]:
    """SSI flag rate (prefix_used / all) of the rows with `expected`, per language, macro average and pooled."""
    by_language: dict[str, list[bool]] = {}
    for row in rows:
        if row["expected"] == expected:
            by_language.setdefault(row["language"], []).append(bool(row["prefix_used"]))
    languages = [lang for lang in order if lang in by_language] + sorted(set(by_language) - set(order))
    per_language = {lang: Rate(sum(by_language[lang]), len(by_language[lang]), z).to_json() for lang in languages}
    flags = [f for lang in languages for f in by_language[lang]]
    return {"per_language": per_language, "average": _macro(per_language),
            "pooled": Rate(sum(flags), len(flags), z).to_json()}


def _ssi_part(ssi_rows: Mapping[str, Rows], z: float, order: Sequence[str]) -> dict[str, Any] | None:
    """The SSI's flag rates on harmful and benign prompts, from the first SSI-gated system (None if none is)."""
    gated = [s for s, rows in ssi_rows.items() if rows and all(r.get("mode") in GATED_MODES for r in rows)]
    if not gated:
        return None
    flags = {s: {r["id"]: bool(r["prefix_used"]) for r in ssi_rows[s]} for s in gated}
    first = flags[gated[0]]
    disagreements = sum(any(flags[s].get(i, f) != f for s in gated[1:]) for i, f in first.items())
    return {"system": gated[0], "gated_systems": gated, "disagreements": disagreements,
            "harmful": _flag_rates(ssi_rows[gated[0]], "harmful", z, order),
            "benign": _flag_rates(ssi_rows[gated[0]], "benign", z, order)}


def comparison(report: Mapping[str, Any], refusal_rows: Mapping[str, Rows], ssi_rows: Mapping[str, Rows],
               z: float) -> dict[str, Any]:
    """The "comparison" part of report.json (module docstring): ASR and benign refusal per system and language,
    and the SSI's flag rates."""
    systems = list(report["systems"])
    asr = report["asr"]["systems"]
    metrics = {"asr": _metric("ASR (harmful)", "lower", report["asr"]["judge"], {
        s: ({lang: g["rate"] for lang, g in asr[s]["per_language"].items()}, asr[s]["pooled"]["rate"])
        for s in systems})}
    # the invalid share (empty, looping or wrong-script answers) lowers the ASR without a refusal: shown beside it
    metrics["invalid"] = _metric("invalid (harmful)", "none", report["asr"]["judge"], {
        s: ({lang: g["invalid"] for lang, g in asr[s]["per_language"].items()}, asr[s]["pooled"]["invalid"])
        for s in systems})
    benign = {s: [{**r, "language": r.get("language") or "unknown"} for r in refusal_rows.get(s, ())
                  if r["expected"] == "benign"] for s in systems}
    if any(benign.values()):
        metrics["benign_refusal"] = _metric("refusal (benign)", "lower", report["refusal"]["judge"], {
            s: ({lang: g.main.to_json() for lang, g in refusal_by_language(rows, z, MULTIJAIL_LANGUAGES).items()},
                Rate(sum(r["verdict"] == REFUSAL for r in rows), len(rows), z).to_json())
            for s, rows in benign.items() if rows})
    ssi = _ssi_part(ssi_rows, z, MULTIJAIL_LANGUAGES)
    seen = [lang for m in metrics.values() for v in m["systems"].values() for lang in v["per_language"]]
    seen += [lang for part in ("harmful", "benign") for lang in (ssi[part]["per_language"] if ssi else ())]
    languages = [lang for lang in MULTIJAIL_LANGUAGES if lang in seen] + sorted(set(seen) - set(MULTIJAIL_LANGUAGES))
    return {"systems": systems, "languages": languages, "metrics": metrics, "ssi": ssi}


def attach_utility(out_dir: str | os.PathLike, report: dict[str, Any], utility: Mapping[str, Any]) -> dict[str, Any]:
    """Add the utility section to an evaluation report and rewrite report.json and report.md (atomically)."""
    report["utility"] = dict(utility)
    atomic_write_json(os.path.join(out_dir, REPORT_JSON), report)
    atomic_write_text(os.path.join(out_dir, REPORT_MD), render_markdown(report))
    return report


def write_report(out_dir: str | os.PathLike, asr_rows: Mapping[str, Rows], *, safety_judge: str | None = None,
                 refusal_rows: Mapping[str, Rows] | None = None, refusal_judge: str | None = None,
                 ssi_rows: Mapping[str, Rows] | None = None, z: float = 1.96,
                 safety_calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, report.md, asr_by_language.png and systems_by_language.png into `out_dir` (each
    atomically); return the report."""
    report = build_report(asr_rows, safety_judge=safety_judge, refusal_rows=refusal_rows,
                          refusal_judge=refusal_judge, ssi_rows=ssi_rows, z=z, safety_calibration=safety_calibration)
    storage.makedirs(out_dir)
    atomic_write_json(os.path.join(out_dir, REPORT_JSON), report)
    atomic_write_text(os.path.join(out_dir, REPORT_MD), render_markdown(report))
    plot_asr(report, os.path.join(out_dir, ASR_CHART_PNG))
    plot_comparison(report["comparison"], os.path.join(out_dir, SYSTEMS_CHART_PNG))
    return report
