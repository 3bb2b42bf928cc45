"""The per-language plot of an SSI's evaluation metrics (metrics_per_language.png in the artifact directory)."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from lasa_jax.infra.storage import atomic_path


def plot_per_language(metrics_by_set: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                      title: str = "") -> None:
    """PNG with one panel per evaluation set: bars of TPR, FPR, accuracy and AUROC per language (+ macro), each
    labelled with its value; tick labels give the harmful (h) / benign (b) counts. Undefined metrics get no bar.

    metrics_by_set: set name -> `evaluate_by_language` output.
    """
    from matplotlib.figure import Figure  # object API (Agg canvas), no pyplot global state

    names = [name for name, m in metrics_by_set.items() if m and m.get("per_language")]
    if not names:
        raise ValueError("plot_per_language: no evaluation set with per-language metrics")
    shown = ("tpr", "fpr", "accuracy", "auroc")
    widest = max(len(metrics_by_set[n]["per_language"]) for n in names) + 1
    figure = Figure(figsize=(max(8.0, 1.1 * widest + 2), 3.4 * len(names) + 0.6))
    axes_list = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for axes, name in zip(axes_list, names):
        per_language = dict(metrics_by_set[name]["per_language"])
        columns = list(per_language) + ["macro"]
        rows = [per_language[c] for c in columns[:-1]] + [metrics_by_set[name]["macro"]]
        x = np.arange(len(columns))
        width = 0.8 / len(shown)
        for i, metric in enumerate(shown):
            values = [row.get(metric) for row in rows]
            bars = axes.bar(x + (i - (len(shown) - 1) / 2) * width, [np.nan if v is None else v for v in values],
                            width, label=metric.upper())
            axes.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=5, padding=1)
        counts = [f"{c}\n{row['num_harmful']}h/{row['num_benign']}b" for c, row in zip(columns[:-1], rows[:-1])]
        axes.set_xticks(x, counts + ["macro"], fontsize=8)
        axes.set_ylim(0, 1.12)
        axes.set_title(name, fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    handles, labels = axes_list[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", ncol=len(shown), fontsize=8)
    figure.suptitle(title or "SSI per-language metrics", fontsize=10, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(pathlib.Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
