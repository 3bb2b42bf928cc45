"""The evaluation report's charts (PNG, written atomically): ASR per language and system, and every comparison
metric per language and system, with Wilson intervals."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lasa_jax.infra.storage import atomic_path

ASR_CHART_PNG = "asr_by_language.png"
SYSTEMS_CHART_PNG = "systems_by_language.png"


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
