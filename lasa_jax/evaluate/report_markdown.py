"""The evaluation report as markdown: report.md (per-language ASR / refusal tables with the judge notes and
calibration, the systems side by side, the utility section) and the headline lines of the pipeline report, both
from report.json's parts (`lasa_jax.evaluate.report`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.evaluate.report_plots import ASR_CHART_PNG, SYSTEMS_CHART_PNG


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


def headline_lines(report: Mapping[str, Any]) -> list[str]:
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
