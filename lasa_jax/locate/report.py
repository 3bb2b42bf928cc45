"""Locate's report: bottleneck.json and layers.csv (written, and loaded with validation), the plots, one-line texts.

`write_bottleneck_report` writes bottleneck.json, layers.csv, the layer plot and the t-SNE plots.
bottleneck.json holds `BottleneckResult.to_json_dict()` (`lasa_jax.locate.selection`) plus caller metadata
("model", "corpus"); `load_bottleneck` (how the SSI reads k*) validates it and fills the verdict of files written
before the verdict fields existed, so every bottleneck.json written before still loads. `summary_line` (of a
`BottleneckResult`), `verdict_line` and `probe_line` (of a loaded bottleneck.json) say the result in one line.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_path, atomic_write_json, atomic_write_text
from lasa_jax.locate.selection import CSV_FIELDS, LAYER_FIELDS, PROBE_FIELD, BottleneckResult, no_bottleneck_reasons
from lasa_jax.locate.silhouette import TINY, factorize

BOTTLENECK_FILE = "bottleneck.json"


def _save_figure(figure, path: pathlib.Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_layer_curves(result: BottleneckResult, path: str | os.PathLike) -> None:
    """PNG of S_lang, S_sem and diff vs residual index, the bootstrap band on diff, k* marked, the probe's
    validation AUROC on a second axis (when computed) and, when no bottleneck is found, the reasons in red."""
    from matplotlib.figure import Figure  # object API: no pyplot global state, Agg canvas

    layers = np.arange(result.num_layers + 1)
    figure = Figure(figsize=(8, 5))
    axes = figure.add_subplot()
    axes.plot(layers, result.s_lang, marker=".", label="S_lang (by language)")
    axes.plot(layers, result.s_sem, marker=".", label="S_sem (by query group)")
    axes.plot(layers, result.diff, marker=".", color="black", label="S_sem - S_lang")
    axes.fill_between(layers, result.diff_lo, result.diff_hi, color="grey", alpha=0.3,
                      label=f"{100 * result.confidence:g}% group-bootstrap interval ({result.bootstrap}, "
                            f"{result.num_bootstrap} resamples)")
    found = result.bottleneck_found
    axes.axvline(result.best_layer, color="red", linestyle="--",
                 label=f"k* = {result.best_layer} (pick share {result.pick_share[result.best_layer]:.2f})"
                       + ("" if found else ", NO bottleneck"))
    first, last = result.selection_range
    axes.axvspan(first - 0.5, last + 0.5, color="yellow", alpha=0.08, label=f"candidates {first}..{last}")
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel(f"residual index (0 = embeddings, {result.num_layers} = after final norm)")
    axes.set_ylabel(f"silhouette ({result.metric})")
    axes.set_title(f"Semantic bottleneck: {result.num_points} texts, {result.num_groups} groups, "
                   f"{len(result.languages)} languages")
    handles, labels = axes.get_legend_handles_labels()
    if result.best_probe_layer is not None:
        probe_axes = axes.twinx()
        best = result.best_probe_layer
        probe_axes.plot(layers, result.probe_auroc, marker="x", color="tab:green", linestyle=":",
                        label=f"probe val AUROC (harmful vs benign; best {result.probe_auroc[best]:.3f} at {best})")
        probe_axes.set_ylabel("probe validation AUROC")
        probe_axes.set_ylim(0.0, 1.02)
        more_handles, more_labels = probe_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below
    axes.grid(alpha=0.3)
    if not found:
        message = "NO SEMANTIC BOTTLENECK FOUND: " + "; ".join(m for _, m in result.reasons)
        figure.suptitle(textwrap.fill(message, 120), color="red", fontsize=7, y=1.04)
    _save_figure(figure, storage.to_path(path))


def plot_tsne(x: Any, languages: Sequence[Any], group_ids: Sequence[Any], path: str | os.PathLike, *,
              title: str = "", max_iter: int = 1000, seed: int = 42) -> None:
    """t-SNE PNG of one layer's vectors x (N, D), L2-normalised, 2 panels: coloured by language and by group.

    sklearn TSNE: 2-D, random_state=seed, perplexity min(30, N-1), `max_iter` iterations (>= 250), euclidean.
    """
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), TINY)
    embedded = TSNE(n_components=2, perplexity=min(30.0, x.shape[0] - 1.0), max_iter=max_iter,
                    random_state=seed).fit_transform(x)
    language_codes, unique_languages = factorize(languages, x.shape[0], "languages")
    group_codes, unique_groups = factorize(group_ids, x.shape[0], "group_ids")
    figure = Figure(figsize=(12, 5.5))
    by_language, by_group = figure.subplots(1, 2)
    for code, language in enumerate(unique_languages):
        mask = language_codes == code
        by_language.scatter(embedded[mask, 0], embedded[mask, 1], s=6, label=str(language),
                            color=_category_colour(code, len(unique_languages)))
    by_language.legend(fontsize=7, markerscale=2, loc="best")
    by_language.set_title("coloured by language")
    by_group.scatter(embedded[:, 0], embedded[:, 1], s=6,
                     c=[_category_colour(code, len(unique_groups)) for code in group_codes])
    by_group.set_title(f"coloured by query group ({len(unique_groups)} groups, colours repeat)")
    figure.suptitle(title)
    _save_figure(figure, storage.to_path(path))


def _category_colour(index: int, num_categories: int):
    """Distinct colours for up to 10 categories (tab10), then 20 repeating ones (tab20)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if num_categories <= 10 else "tab20"]
    return palette(index % palette.N)


def write_bottleneck_report(result: BottleneckResult, workdir: str | os.PathLike, *, features: Any = None,
                            languages: Sequence[Any] | None = None, group_ids: Sequence[Any] | None = None,
                            tsne_layers: Sequence[int] | None = None, tsne_max_iter: int = 1000,
                            metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write `bottleneck.json`, `layers.csv` and `bottleneck_layers.png` into `workdir` (atomically), plus
    `tsne_layer<k>.png` for each of `tsne_layers` (default: k*) when `features` (L+1, N, D) and the per-point
    `languages` and `group_ids` are given. `metadata` (e.g. {"model": {"fingerprint", ...}}) is merged into the
    JSON at the top level, so later stages can check the layer belongs to their model. Returns {name: path}."""
    workdir = storage.to_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": workdir / BOTTLENECK_FILE, "csv": workdir / "layers.csv",
             "plot": workdir / "bottleneck_layers.png"}
    atomic_write_json(paths["json"], {**result.to_json_dict(), **dict(metadata or {})})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, lineterminator="\n")  # no probe -> empty cells
    writer.writeheader()
    writer.writerows(result.layer_rows())
    atomic_write_text(paths["csv"], table.getvalue())
    plot_layer_curves(result, paths["plot"])
    if features is not None:
        if languages is None or group_ids is None:
            raise ValueError("t-SNE plots need the per-point `languages` and `group_ids` along with `features`")
        for layer in (result.best_layer,) if tsne_layers is None else tsne_layers:
            if not 0 <= layer <= result.num_layers:
                raise ValueError(f"tsne layer {layer} is outside residual indices 0..{result.num_layers}")
            paths[f"tsne_{layer}"] = workdir / f"tsne_layer{layer:02d}.png"
            plot_tsne(features[layer], languages, group_ids, paths[f"tsne_{layer}"],
                      title=f"residual index {layer} of {result.num_layers}", max_iter=tsne_max_iter)
    return {name: str(path) for name, path in paths.items()}


def load_bottleneck(path_or_workdir: str | os.PathLike) -> dict:
    """Read and validate `bottleneck.json` (a file path or the directory holding it); returns the dict.

    Raises FileNotFoundError if missing and ValueError naming the file and field on a schema violation.
    """
    path = storage.to_path(path_or_workdir)
    if path.is_dir():
        path = path / BOTTLENECK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the {BOTTLENECK_FILE} written by Locate)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err

    def fail(field: str, expected: str):
        value = report.get(field, "<missing>") if isinstance(report, dict) else report
        raise InputError(f"{path}: field {field!r} must be {expected}, got {value!r}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(report, dict):
        fail("<root>", "a JSON object")
    if not is_int(report.get("num_layers")) or report["num_layers"] < 1:
        fail("num_layers", "an integer >= 1")
    num_layers = report["num_layers"]
    if not is_int(report.get("best_layer")) or not 0 <= report["best_layer"] <= num_layers:
        fail("best_layer", f"an integer residual index in 0..{num_layers}")
    for field in ("num_groups", "num_points"):
        if not is_int(report.get(field)) or report[field] < 2:
            fail(field, "an integer >= 2")
    languages = report.get("languages")
    if not isinstance(languages, list) or len(languages) < 2 or not all(isinstance(x, str) for x in languages):
        fail("languages", "a list of at least 2 language codes")
    rows = report.get("layers")
    if not isinstance(rows, list) or len(rows) != num_layers + 1:
        fail("layers", f"a list of {num_layers + 1} per-layer objects (residual indices 0..{num_layers})")
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("layer") != k:
            raise InputError(f"{path}: layers[{k}] must be an object with \"layer\": {k}, got {row!r}")
        for field in LAYER_FIELDS[1:]:
            if not isinstance(row.get(field), (int, float)) or isinstance(row.get(field), bool):
                raise InputError(f"{path}: layers[{k}].{field} must be a number, got {row.get(field, '<missing>')!r}")
        probe = row.get(PROBE_FIELD)
        if probe is not None and (isinstance(probe, bool) or not isinstance(probe, (int, float)) or
                                  not 0.0 <= probe <= 1.0):
            raise InputError(f"{path}: layers[{k}].{PROBE_FIELD} must be null or a number in [0, 1], got {probe!r}")
    _check_or_fill_verdict(report, path)
    return report


def _check_or_fill_verdict(report: dict, path: pathlib.Path) -> None:
    """Validate `bottleneck_found` / `reason`; a file written before them gets them recomputed from its layers
    (when it records its `selection_range`) or null, with `verdict_source` saying so."""
    if "bottleneck_found" in report:
        if not isinstance(report["bottleneck_found"], bool):
            raise InputError(f"{path}: field 'bottleneck_found' must be true or false, "
                             f"got {report['bottleneck_found']!r}")
        if report.get("reason") is not None and not isinstance(report["reason"], str):
            raise InputError(f"{path}: field 'reason' must be null or a string, got {report['reason']!r}")
        if not report["bottleneck_found"] and not report.get("reason"):
            raise InputError(f"{path}: field 'reason' must say why when 'bottleneck_found' is false")
        return
    selection = report.get("selection_range")
    num_layers = report["num_layers"]
    if not (isinstance(selection, list) and len(selection) == 2 and all(isinstance(v, int) for v in selection)
            and 0 <= selection[0] <= report["best_layer"] <= selection[1] <= num_layers):
        report.update(bottleneck_found=None, reason="not recorded (the file predates the verdict and has no "
                                                    "usable selection_range)", reason_codes=[],
                      verdict_source="unknown")
        return
    rows = report["layers"]
    reasons = no_bottleneck_reasons([r["diff"] for r in rows], [r["pick_share"] for r in rows],
                                    report["best_layer"], selection, report.get("num_bootstrap"))
    report.update(bottleneck_found=not reasons, reason="; ".join(m for _, m in reasons) or None,
                  reason_codes=[c for c, _ in reasons],
                  verdict_source="recomputed by load_bottleneck (the file predates the verdict fields)")


def summary_line(result: BottleneckResult) -> str:
    """One human-readable line: k*, its depth, S_sem - S_lang with its interval, the pick share, the verdict and the
    probe's best residual index."""
    k = result.best_layer
    line = (f"semantic bottleneck k* = {k} of L = {result.num_layers} ({100 * k / result.num_layers:.0f}% depth; "
            f"residual index, 0 = embeddings): S_sem - S_lang = {result.diff[k]:.4f} "
            f"(S_sem {result.s_sem[k]:.4f}, S_lang {result.s_lang[k]:.4f}), "
            f"{100 * result.confidence:g}% group-bootstrap interval [{result.diff_lo[k]:.4f}, "
            f"{result.diff_hi[k]:.4f}], picked in {100 * result.pick_share[k]:.0f}% of {result.num_bootstrap} "
            f"resamples; {result.num_points} texts, {result.num_groups} groups, "
            f"languages {','.join(result.languages)}, candidates {result.selection_range[0]}.."
            f"{result.selection_range[1]}")
    if not result.bottleneck_found:
        line += "; NO semantic bottleneck found: " + "; ".join(message for _, message in result.reasons)
    best_probe = result.best_probe_layer
    if best_probe is not None:
        line += (f"; probe val AUROC {result.probe_auroc[k]:.3f} at k*, best {result.probe_auroc[best_probe]:.3f} "
                 f"at residual index {best_probe}")
    elif result.probe and result.probe.get("reason"):
        line += f"; probe AUROC unavailable: {result.probe['reason']}"
    return line


def verdict_line(report: Mapping[str, Any]) -> str:
    """One line on a loaded bottleneck.json's k*: whether it is a bottleneck and why not, and the probe's best."""
    k = report["best_layer"]
    found = report.get("bottleneck_found")
    if found is None:
        head = f"k* = {k} (bottleneck verdict {report.get('reason') or 'not recorded'})"
    elif found:
        head = f"k* = {k} is a semantic bottleneck (S_sem - S_lang = {report['layers'][k]['diff']:.4f})"
    else:
        head = f"k* = {k} is NOT a semantic bottleneck: {report['reason']}"
    probe = probe_line(report)
    return f"{head}; {probe}" if probe else head


def probe_line(report: Mapping[str, Any]) -> str:
    """The probe's validation AUROC at k* and its best residual index, its reason when unavailable, or ""."""
    probe_at_k = report["layers"][report["best_layer"]].get(PROBE_FIELD)
    probe = report.get("probe") or {}
    if probe_at_k is not None:
        return (f"probe val AUROC {probe_at_k:.3f} at k*, best {probe.get('best_auroc', float('nan')):.3f} at "
                f"residual index {probe.get('best_layer')}")
    return f"probe AUROC unavailable: {probe['reason']}" if probe.get("reason") else ""
