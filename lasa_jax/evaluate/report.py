"""Evaluation report: judged rows of several systems -> report.json, report.md and grouped bar charts.

Row format (one dict per judged response, as `judge_responses` builds it):
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

from lasa_jax import io_utils
from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.evaluate.judges import APPROXIMATE_MARKER, REFUSAL, Judge
from lasa_jax.evaluate.metrics import Rate, asr_summary, refusal_by_language, refusal_summary
from lasa_jax.inference import GATED_MODES
from lasa_jax.io_utils import atomic_path, atomic_write_json, atomic_write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ASR_CHART_PNG = "asr_by_language.png"
SYSTEMS_CHART_PNG = "systems_by_language.png"

Rows = Sequence[Mapping[str, Any]]


def judge_responses(judge: Judge, prompts: Sequence[EvalPrompt], responses: Sequence[str]) -> list[dict[str, Any]]:
    """Judge `responses[i]` to `prompts[i]` and return report rows (see the module docstring)."""
    if len(prompts) != len(responses):
        raise ValueError(f"judge_responses: {len(prompts)} prompts but {len(responses)} responses")
    verdicts = judge.judge([p.prompt for p in prompts], list(responses), languages=[p.language for p in prompts])
    return [{**p.to_dict(), "response": r, "verdict": v.label, "raw": v.raw, "categories": list(v.categories),
             "judge": judge.name} for p, r, v in zip(prompts, responses, verdicts)]


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


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def _rate_cell(rate: Mapping[str, Any] | None) -> str:
    if rate is None:
        return "–"
    return (f"{_percent(rate['rate'])} [{100 * rate['ci_low']:.1f}, {100 * rate['ci_high']:.1f}] "
            f"(n={rate['total']})")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _judge_note(section: Mapping[str, Any]) -> str:
    note = f"Judge: `{section['judge']}`."
    if section["approximate"]:
        note += (" **Warning: this judge is an approximate refusal-phrase heuristic, not a safety classifier; "
                 "treat these numbers as rough.**")
    return note


def calibration_lines(asr: Mapping[str, Any]) -> list[str]:
    """Markdown lines stating the safety judge's measured calibration per evaluated language, or "not calibrated"."""
    calibration = asr.get("calibration")
    if not calibration:
        return ["Judge calibration: **not calibrated** (no calibration against labelled responses was found; run "
                "`python -m lasa_jax.scripts.calibrate_judge` and pass `--config.judge.calibration`).", ""]
    goal = calibration["goal"]
    lines = [f"Judge calibration against WildGuard on the {calibration['split']} half of the labelled "
             f"responses{' (`' + calibration['path'] + '`)' if calibration.get('path') else ''}: worst per-file "
             f"|Δ ASR| {goal['worst_abs_delta_points']:.1f} points, worst agreement "
             f"{100 * goal['worst_agreement']:.1f}% (goal |Δ| ≤ {goal['max_abs_delta_points']:.0f}, agreement ≥ "
             f"{100 * goal['min_agreement']:.0f}%: {'met' if goal['met'] else 'not met'}).", ""]
    rows = []
    for lang in asr["languages"]:
        m = calibration["languages"].get(lang)
        if m is None:
            rows.append([lang, "uncalibrated", "–", "–", "–"])
        else:
            kappa = "–" if m["kappa"] is None else f"{m['kappa']:.2f}"
            rows.append([lang, f"{m['delta_points']:+.1f}", f"{100 * m['agreement']:.1f}%", kappa, str(m["n"])])
    return lines + _table(["language", "Δ ASR vs WildGuard (points)", "agreement", "κ", "labelled n"], rows) + [""]


def _asr_cell(group: Mapping[str, Any] | None) -> str:
    """ASR with its interval and, in the same cell, the invalid share that lowers it (ASR = unsafe / all)."""
    if group is None:
        return "–"
    return f"{_rate_cell(group['rate'])}; invalid {_percent(group['invalid']['rate'])}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md text: per-language ASR tables side by side, invalid rates, over-refusal table, judge notes."""
    systems = report["systems"]
    asr = report["asr"]
    confidence = f"{100 * report['confidence']:.0f}%"
    lines = ["# Evaluation report", "",
             "ASR = unsafe / all judged responses (invalid responses stay in the denominator). "
             f"Brackets: {confidence} Wilson score interval, in percent.", ""]
    if report.get("comparison"):
        lines += render_comparison(report["comparison"])
    lines += ["## Attack success rate by language", "", _judge_note(asr), "", *calibration_lines(asr),
              "Each cell: ASR [interval] (n); invalid = share of answers judged invalid (empty, repetition loop, "
              "wrong script, or an LLM judge's invalid), which count in n but never as attacks.", ""]
    per_lang_rows = []
    for lang in asr["languages"]:
        per_lang_rows.append([lang, *(_asr_cell(asr["systems"][s]["per_language"].get(lang)) for s in systems)])
    per_lang_rows.append(["**macro avg**", *(f"{_percent(asr['systems'][s]['macro_asr'])}; invalid "
                                             f"{_percent(asr['systems'][s]['macro_invalid'])}" for s in systems)])
    per_lang_rows.append(["**pooled**", *(_asr_cell(asr["systems"][s]["pooled"]) for s in systems)])
    lines += _table(["language", *(f"{s} ASR" for s in systems)], per_lang_rows)
    lines += ["", f"![ASR by language]({ASR_CHART_PNG})"]
    refusal = report.get("refusal")
    if refusal:
        lines += ["", "## Refusal rate on over-refusal sets", "",
                  "Refusal rate = responses judged as refusals / all judged responses (partial refusals count as "
                  "refusals). For expected=benign this is over-refusal (lower is better); for expected=harmful it is "
                  "the desired refusal rate (higher is better).", "", _judge_note(refusal), ""]
        refusal_systems = list(refusal["systems"])
        keys = list(dict.fromkeys((g["source"], g["expected"]) for s in refusal_systems
                                  for g in refusal["systems"][s]))
        rows = []
        for source, expected in keys:
            cells = []
            for system in refusal_systems:
                match = [g for g in refusal["systems"][system] if (g["source"], g["expected"]) == (source, expected)]
                cells.append(_rate_cell(match[0]["rate"]) if match else "–")
            rows.append([source, expected, *cells])
        lines += _table(["source", "expected", *(f"{s} refusal" for s in refusal_systems)], rows)
    if report.get("utility"):
        lines += ["", *render_utility_markdown(report["utility"])]
    return "\n".join(lines) + "\n"


def _comparison_columns(comp: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(column header, {"per_language", "average"}) of the side-by-side table: every metric for every system that
    has it, then the SSI's flag rates on harmful and on benign prompts."""
    columns = [(f"{system} {metric['label']}", metric["systems"][system]) for metric in comp["metrics"].values()
               for system in comp["systems"] if system in metric["systems"]]
    if comp.get("ssi"):
        columns += [(f"SSI flagged ({part})", comp["ssi"][part]) for part in ("harmful", "benign")]
    return columns


def render_comparison(comp: Mapping[str, Any]) -> list[str]:
    """report.md lines of the side-by-side table: one row per language plus the macro average."""
    columns = _comparison_columns(comp)
    rows = []
    for lang in comp["languages"]:
        rows.append([lang, *(_percent((c["per_language"].get(lang) or {}).get("rate")) for _, c in columns)])
    rows.append(["**average**", *(_percent(c["average"]) for _, c in columns)])
    lines = ["## Systems side by side", "",
             "Per language and averaged over languages (unweighted mean of the per-language rates): ASR on the "
             "harmful prompts, refusal rate on the benign prompts (lower is better for both), and the share of "
             "prompts the SSI flagged (the conditional prefix was used). Systems: "
             + ", ".join(f"`{s}`" for s in comp["systems"]) + ".", "",
             "Judges: " + "; ".join(f"{m['label']} `{m['judge']}`" for m in comp["metrics"].values() if m.get("judge"))
             + " (calibration and warnings in the sections below).", ""]
    lines += _table(["language", *(header for header, _ in columns)], rows)
    ssi = comp.get("ssi")
    if ssi:
        lines += ["", f"SSI flags from the `{ssi['system']}` generations; the gated systems "
                      f"({', '.join(ssi['gated_systems'])}) disagree on {ssi['disagreements']} prompt(s)."]
    return lines + ["", f"![systems by language]({SYSTEMS_CHART_PNG})", ""]


def plot_comparison(comp: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Grouped bar charts (PNG) of the side-by-side table: one panel per metric (bars per system) and one for the
    SSI's flag rates (bars per prompt kind); languages and the average on x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(m["label"], [(s, m["systems"][s], None) for s in comp["systems"] if s in m["systems"]])
              for m in comp["metrics"].values()]
    if comp.get("ssi"):
        panels.append(("SSI flag rate", [(f"{part} prompts", comp["ssi"][part], color)
                                         for part, color in (("harmful", "tab:red"), ("benign", "tab:gray"))]))
    groups = list(comp["languages"]) + ["average"]
    figure = Figure(figsize=(max(6.0, 0.8 * len(groups) + 2.0), 2.8 * len(panels)), dpi=110)
    FigureCanvasAgg(figure)
    for p_index, (title, bars) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, p_index + 1)
        width = 0.8 / max(1, len(bars))
        for b_index, (name, values, color) in enumerate(bars):
            heights = [(values["per_language"].get(g) or {}).get("rate") for g in groups[:-1]] + [values["average"]]
            xs = [g - 0.4 + width * (b_index + 0.5) for g, h in enumerate(heights) if h is not None]
            axes.bar(xs, [100 * h for h in heights if h is not None], width, label=name, color=color)
        axes.set_xticks(range(len(groups)), groups)
        axes.set_ylim(0, 100)
        axes.set_ylabel(f"{title} (%)", fontsize=8)
        axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")


def _mean_cell(stat: Mapping[str, Any], digits: int = 3, scale: float = 1.0, sign: str = "+") -> str:
    """mean [ci_low, ci_high] of a t-interval dict; sign "+" shows signs (differences), "" does not."""
    if stat["mean"] is None:
        return "–"
    cell = f"{scale * stat['mean']:{sign}.{digits}f}"
    if stat["ci_low"] is not None:
        cell += f" [{scale * stat['ci_low']:{sign}.{digits}f}, {scale * stat['ci_high']:{sign}.{digits}f}]"
    return cell


def render_utility_markdown(utility: Mapping[str, Any]) -> list[str]:
    """The "Utility" section (lines) of a `lasa_jax.evaluate.utility.run_utility` result: per-language SIB-200
    accuracy (Wilson) and FLORES NLL per token (t interval) per system, averages, and each system - reference."""
    lines = ["## Utility (capability beside safety)", ""]
    if utility.get("status") != "ran":
        return lines + [f"utility: not run: {utility.get('reason', 'unknown reason')}"]
    settings, systems = utility["settings"], list(utility["systems"])
    lines += [f"SIB-200 topic accuracy ({settings['split']} split, {settings['k_shot']}-shot, label log-likelihood "
              f"normalised by: {settings['normalization']}; 7 topics, chance 14.3%) and FLORES {settings['nll_split']} "
              f"mean NLL per token (nats, lower is better). Tokenisation: {settings['tokenisation']}. At most "
              f"{settings['max_sentences'] or 'all'} sentences per language and metric, the same for every system. "
              "Accuracy brackets: Wilson interval; NLL and difference brackets: t interval over sentences "
              "(differences paired).", ""]
    header = ["language", *(f"{s} accuracy" for s in systems), *(f"{s} NLL/token" for s in systems)]
    rows = []
    for lang in utility["languages"]:
        groups = [utility["systems"][s]["per_language"][lang] for s in systems]
        rows.append([lang, *(_rate_cell(g["accuracy"]) for g in groups),
                     *(_mean_cell(g["nll"], sign="") for g in groups)])
    rows.append(["**macro avg**", *(_percent(utility["systems"][s]["macro_accuracy"]) for s in systems),
                 *(f"{utility['systems'][s]['macro_nll']:.3f}" for s in systems)])
    rows.append(["**pooled**", *(_rate_cell(utility["systems"][s]["pooled_accuracy"]) for s in systems),
                 *("–" for _ in systems)])
    lines += _table(header, rows)
    reference = utility.get("reference")
    for system, diff in utility.get("differences", {}).items():
        lines += ["", f"Difference {system} − {reference} (accuracy in points, NLL in nats/token):", ""]
        diff_rows = [[lang, _mean_cell(d["accuracy"], 1, 100.0), _mean_cell(d["nll"])]
                     for lang, d in diff["per_language"].items()]
        diff_rows.append(["**all sentences**", _mean_cell(diff["all"]["accuracy"], 1, 100.0),
                          _mean_cell(diff["all"]["nll"])])
        lines += _table(["language", f"{system} − {reference} accuracy", f"{system} − {reference} NLL/token"],
                        diff_rows)
    return lines


def attach_utility(out_dir: str | os.PathLike, report: dict[str, Any], utility: Mapping[str, Any]) -> dict[str, Any]:
    """Add the utility section to an evaluation report and rewrite report.json and report.md (atomically)."""
    report["utility"] = dict(utility)
    atomic_write_json(os.path.join(out_dir, REPORT_JSON), report)
    atomic_write_text(os.path.join(out_dir, REPORT_MD), render_markdown(report))
    return report


def plot_asr(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Grouped bar chart (PNG): languages on x, one bar per system, Wilson intervals as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    asr = report["asr"]
    systems, languages = report["systems"], asr["languages"]
    figure = Figure(figsize=(max(6.0, 0.9 * len(languages) + 2.0), 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(systems)
    for s_index, system in enumerate(systems):
        xs, heights, lower, upper = [], [], [], []
        for l_index, lang in enumerate(languages):
            group = asr["systems"][system]["per_language"].get(lang)
            if group is None or group["rate"]["rate"] is None:
                continue
            rate = group["rate"]
            xs.append(l_index - 0.4 + width * (s_index + 0.5))
            heights.append(100 * rate["rate"])
            lower.append(100 * (rate["rate"] - rate["ci_low"]))
            upper.append(100 * (rate["ci_high"] - rate["rate"]))
        axes.bar(xs, heights, width, yerr=[lower, upper], capsize=2, label=system)
    axes.set_xticks(range(len(languages)), languages)
    axes.set_ylabel("ASR (%)")
    axes.set_ylim(0, 100)
    title = f"Attack success rate, {100 * report['confidence']:.0f}% Wilson intervals\njudge: {asr['judge']}"
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")


def write_report(out_dir: str | os.PathLike, asr_rows: Mapping[str, Rows], *, safety_judge: str | None = None,
                 refusal_rows: Mapping[str, Rows] | None = None, refusal_judge: str | None = None,
                 ssi_rows: Mapping[str, Rows] | None = None, z: float = 1.96,
                 safety_calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, report.md, asr_by_language.png and systems_by_language.png into `out_dir` (each
    atomically); return the report."""
    report = build_report(asr_rows, safety_judge=safety_judge, refusal_rows=refusal_rows,
                          refusal_judge=refusal_judge, ssi_rows=ssi_rows, z=z, safety_calibration=safety_calibration)
    io_utils.makedirs(out_dir)
    atomic_write_json(os.path.join(out_dir, REPORT_JSON), report)
    atomic_write_text(os.path.join(out_dir, REPORT_MD), render_markdown(report))
    plot_asr(report, os.path.join(out_dir, ASR_CHART_PNG))
    plot_comparison(report["comparison"], os.path.join(out_dir, SYSTEMS_CHART_PNG))
    return report
