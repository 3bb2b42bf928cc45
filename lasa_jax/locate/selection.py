"""Semantic-bottleneck layer selection: argmax over residual indices of S_sem - S_lang with a group bootstrap.

Silhouettes come from `lasa_jax.locate.silhouette` (its conventions: residual indices, labels, metrics). Here:

- Candidates for k* (`select_bottleneck_layer`): 1..L by default, the paper's `select_best_layer` (embeddings out,
  the post-norm entry L in); `include_embeddings` adds 0, `include_final=False` drops L.
- Verdict (`no_bottleneck_reasons`): no semantic bottleneck is found when S_sem - S_lang < 0 at every candidate,
  or k* is at an edge of the candidate range, or k* wins in < 50% of the bootstrap resamples (MIN_PICK_SHARE);
  bottleneck.json records `bottleneck_found`, `reason` (every reason that applies, "; "-joined; null when found)
  and `reason_codes` (NO_BOTTLENECK_REASONS). k* is still the argmax, so later stages can run, but it is then
  only the least language-clustered candidate, not a bottleneck.

Group bootstrap (`select_bottleneck_layer`, `layer_silhouettes`)
------------------------------------------------------------------
A resample draws the G query groups with replacement; multiplicity m_g = times group g was drawn (row 0 of every
multiplicity matrix is all ones: the point estimate, equal to `silhouette_score`). Point i carries weight m_{g_i}.
bootstrap="points" (the only scheme): per-point silhouettes s_i are computed once per layer on the full data; a
resample's score is the weighted mean sum_i m_{g_i} s_i / sum_i m_{g_i} (a cluster bootstrap of the mean over
queries). The resample distribution is centred on the point estimate; it holds the geometry fixed (clusters are not
re-formed). Cost per layer: two cluster-sum passes (k = L and k = G); memory 4 x (R + G) x N bytes. The same
resamples are used for every layer, so pick_share measures how stable the argmax is.
(An "expanded" scheme, the exact silhouettes of the data set with each group's points repeated m_g times, was
removed: measured, its distribution was not centred on the point estimate — with ~37% of the groups absent from a
resample, b_i grows and S_sem is biased upwards — and nothing used it. `bootstrap="expanded"` now raises.)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lasa_jax.locate.silhouette import (
    check_metric,
    check_num_labels,
    check_points,
    device_chunks,
    factorize,
    point_bootstrap_jit,
)

BOOTSTRAP_MODES = ("points",)
LAYER_FIELDS = ("layer", "s_lang", "s_sem", "diff", "diff_lo", "diff_hi", "pick_share")  # required per layer
PROBE_FIELD = "probe_auroc"  # per layer, optional (null: no probe); files written before it lack it
CSV_FIELDS = LAYER_FIELDS + (PROBE_FIELD,)
MIN_PICK_SHARE = 0.5
NO_BOTTLENECK_REASONS = ("diff_negative_everywhere", "argmax_at_range_edge", "unstable_argmax")


def group_bootstrap_multiplicities(num_groups: int, num_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(num_bootstrap, num_groups) int32: how often each group is drawn when `num_groups` groups are resampled
    with replacement, one row per resample (`np.random.default_rng(seed)`)."""
    draws = np.random.default_rng(seed).integers(0, num_groups, size=(num_bootstrap, num_groups))
    counts = np.zeros((num_bootstrap, num_groups), np.int32)
    np.add.at(counts, (np.arange(num_bootstrap)[:, None], draws), 1)
    return counts


@dataclasses.dataclass(frozen=True)
class _PointLabels:
    """Host factorisation of per-point language and group labels, shared by all layers."""

    language_codes: np.ndarray  # (N,) into `languages`
    group_codes: np.ndarray  # (N,) into `groups`
    languages: np.ndarray  # sorted unique languages
    groups: np.ndarray  # sorted unique group ids

    @classmethod
    def build(cls, languages: Sequence[Any], group_ids: Sequence[Any], num_points: int) -> _PointLabels:
        language_codes, unique_languages = factorize(languages, num_points, "languages")
        group_codes, unique_groups = factorize(group_ids, num_points, "group_ids")
        check_num_labels(len(unique_languages), num_points, "languages")
        check_num_labels(len(unique_groups), num_points, "group ids")
        return cls(language_codes, group_codes, unique_languages, unique_groups)

    def bootstrap_silhouettes(self, x: Any, multiplicities: np.ndarray, *, metric: str, normalize: bool,
                              block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(s_lang (R,), s_sem (R,)) of one layer x (N, D) for multiplicity rows (R, G)."""
        s_lang, s_sem = point_bootstrap_jit(
            device_chunks(x), jnp.asarray(self.language_codes), jnp.asarray(self.group_codes),
            jnp.asarray(multiplicities), num_languages=len(self.languages), num_groups=len(self.groups),
            metric=metric, normalize=normalize, block_size=min(block_size, x.shape[0]))
        return np.asarray(s_lang), np.asarray(s_sem)


def _check_bootstrap(bootstrap: str) -> None:
    if bootstrap == "expanded":
        raise ValueError("bootstrap 'expanded' was removed (its resample distribution is biased upwards, see "
                         "lasa_jax.locate.selection); use bootstrap='points'")
    if bootstrap not in BOOTSTRAP_MODES:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAP_MODES}, got {bootstrap!r}")


def layer_silhouettes(x: Any, languages: Sequence[Any], group_ids: Sequence[Any],
                      multiplicities: np.ndarray | None = None, metric: str = "cosine", *,
                      bootstrap: str = "points", normalize: bool = True,
                      block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(s_lang (R,), s_sem (R,)) of one layer x (N, D) for each group-multiplicity row (R, G) (groups in sorted
    order of the unique `group_ids`) under the "points" bootstrap of the module docstring; None = one row of ones,
    the plain silhouettes. normalize: L2-normalise the vectors first (no effect on cosine)."""
    check_metric(metric)
    _check_bootstrap(bootstrap)
    x = check_points(x, 2, "x")
    labels = _PointLabels.build(languages, group_ids, x.shape[0])
    if multiplicities is None:
        multiplicities = np.ones((1, len(labels.groups)), np.int32)
    multiplicities = np.asarray(multiplicities)
    if multiplicities.ndim != 2 or multiplicities.shape[1] != len(labels.groups):
        raise ValueError(f"multiplicities must have shape (R, {len(labels.groups)}), got {multiplicities.shape}")
    return labels.bootstrap_silhouettes(x, multiplicities, metric=metric, normalize=normalize, block_size=block_size)


def no_bottleneck_reasons(diff: Sequence[float], pick_share: Sequence[float], best_layer: int,
                          selection_range: Sequence[int], num_bootstrap: int | None = None) -> list[tuple[str, str]]:
    """Every reason (code of NO_BOTTLENECK_REASONS, message) why k* = `best_layer` is not a semantic bottleneck
    (module docstring, "Verdict"); [] when it is one. diff, pick_share: per residual index 0..L."""
    first, last = int(selection_range[0]), int(selection_range[1])
    candidates = np.asarray(diff, np.float64)[first:last + 1]
    reasons = []
    if (candidates < 0).all():
        reasons.append(("diff_negative_everywhere",
                        f"S_sem - S_lang < 0 at every candidate residual index {first}..{last} (from "
                        f"{candidates.min():.4f} to {candidates.max():.4f}): language clusters dominate everywhere"))
    if best_layer in (first, last):
        reasons.append(("argmax_at_range_edge",
                        f"the argmax k* = {best_layer} is at the edge of the candidate range {first}..{last}"))
    share = float(pick_share[best_layer])
    if share < MIN_PICK_SHARE:
        of = f" of {num_bootstrap}" if num_bootstrap else ""
        reasons.append(("unstable_argmax", f"k* = {best_layer} is the argmax in only {100 * share:.0f}%{of} "
                                           f"bootstrap resamples (< {100 * MIN_PICK_SHARE:.0f}%)"))
    return reasons


@dataclasses.dataclass(frozen=True)
class BottleneckResult:
    """Per-residual-index silhouettes and the selected bottleneck layer.

    Arrays have shape (num_layers + 1,), indexed by residual index 0..L. diff = s_sem - s_lang;
    diff_lo/diff_hi: percentile interval of diff over group-bootstrap resamples; pick_share: share of resamples
    whose argmax over `selection_range` (inclusive) is that index. best_layer = argmax of diff over
    `selection_range`, ties -> lowest index. probe_auroc: validation AUROC of the harmful-vs-benign probe per
    index (`lasa_jax.locate.probe`), None when not computed; probe: its settings and, when unavailable, its reason.
    """

    best_layer: int
    num_layers: int
    s_lang: np.ndarray
    s_sem: np.ndarray
    diff: np.ndarray
    diff_lo: np.ndarray
    diff_hi: np.ndarray
    pick_share: np.ndarray
    languages: tuple[str, ...]
    num_groups: int
    num_points: int
    selection_range: tuple[int, int]
    metric: str
    num_bootstrap: int
    bootstrap: str
    confidence: float
    seed: int
    probe_auroc: np.ndarray | None = None
    probe: Mapping[str, Any] | None = None

    @property
    def reasons(self) -> list[tuple[str, str]]:
        """(code, message) of every reason that k* is not a bottleneck (`no_bottleneck_reasons`)."""
        return no_bottleneck_reasons(self.diff, self.pick_share, self.best_layer, self.selection_range,
                                     self.num_bootstrap)

    @property
    def bottleneck_found(self) -> bool:
        return not self.reasons

    @property
    def best_probe_layer(self) -> int | None:
        """Residual index of the highest probe AUROC (ties -> lowest), or None without a probe."""
        if self.probe_auroc is None or not np.isfinite(self.probe_auroc).any():
            return None
        return int(np.nanargmax(self.probe_auroc))

    def layer_rows(self) -> list[dict]:
        """One dict per residual index with the keys of CSV_FIELDS (probe_auroc None without a probe)."""
        def probe_value(k):
            if self.probe_auroc is None or not np.isfinite(self.probe_auroc[k]):
                return None
            return float(self.probe_auroc[k])

        return [{"layer": k, "s_lang": float(self.s_lang[k]), "s_sem": float(self.s_sem[k]),
                 "diff": float(self.diff[k]), "diff_lo": float(self.diff_lo[k]), "diff_hi": float(self.diff_hi[k]),
                 "pick_share": float(self.pick_share[k]), PROBE_FIELD: probe_value(k)}
                for k in range(self.num_layers + 1)]

    def to_json_dict(self) -> dict:
        """The `bottleneck.json` content."""
        reasons = self.reasons
        probe = dict(self.probe) if self.probe is not None else {
            "reason": "not computed (no labels were passed to the report)"}
        probe["best_layer"] = self.best_probe_layer
        probe["best_auroc"] = None if self.best_probe_layer is None else float(self.probe_auroc[self.best_probe_layer])
        return {
            "best_layer": self.best_layer,
            "num_layers": self.num_layers,
            "layers": self.layer_rows(),
            "languages": list(self.languages),
            "num_groups": self.num_groups,
            "num_points": self.num_points,
            "selection_range": list(self.selection_range),
            "bottleneck_found": not reasons,
            "reason": "; ".join(message for _, message in reasons) or None,
            "reason_codes": [code for code, _ in reasons],
            "probe": probe,
            "metric": self.metric,
            "num_bootstrap": self.num_bootstrap,
            "bootstrap": self.bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "residual_index_convention": "0 = token embeddings, k in 1..L-1 = after block k, "
                                         "L = last block output after the final norm",
        }


def select_bottleneck_layer(features: Any, languages: Sequence[Any], group_ids: Sequence[Any], *,
                            metric: str = "cosine", include_embeddings: bool = False, include_final: bool = True,
                            num_bootstrap: int = 200, bootstrap: str = "points", confidence: float = 0.95,
                            seed: int = 0, normalize: bool = True, block_size: int = 1024) -> BottleneckResult:
    """Pick the semantic bottleneck: argmax over residual indices of S_sem - S_lang, with a group bootstrap.

    features: (L+1, N, D) pooled vectors for residual indices 0..L (any float dtype; one layer is on the device
    at a time). languages, group_ids: (N,) labels. Silhouettes use `metric` on L2-normalised vectors
    (`normalize`). Candidates: 1..L-1, plus 0 with `include_embeddings` and L (post-norm) with `include_final`
    (default: 1..L, the paper's selection).
    Bootstrap: `num_bootstrap` (>= 1) resamples of the query groups (`group_bootstrap_multiplicities(seed)`), the
    same resamples for every layer, under the "points" scheme (module docstring); diff_lo/diff_hi are the
    (1 - confidence)/2 and (1 + confidence)/2 percentiles.
    """
    check_metric(metric)
    _check_bootstrap(bootstrap)
    features = check_points(features, 3, "features (L+1, N, D)")
    num_layers = features.shape[0] - 1
    first = 0 if include_embeddings else 1
    last = num_layers if include_final else num_layers - 1
    if last < first:
        raise ValueError(f"no candidate layer: features have residual indices 0..{num_layers}, candidates would be "
                         f"{first}..{last} (include_embeddings={include_embeddings}, include_final={include_final})")
    if num_bootstrap < 1:
        raise ValueError(f"num_bootstrap must be >= 1, got {num_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    num_points = features.shape[1]
    labels = _PointLabels.build(languages, group_ids, num_points)
    resamples = group_bootstrap_multiplicities(len(labels.groups), num_bootstrap, seed)
    multiplicities = np.concatenate([np.ones((1, len(labels.groups)), np.int32), resamples])

    per_layer = [labels.bootstrap_silhouettes(features[k], multiplicities, metric=metric, normalize=normalize,
                                              block_size=block_size) for k in range(num_layers + 1)]
    s_lang = np.stack([lang for lang, _ in per_layer]).astype(np.float64)  # (L+1, 1 + B)
    s_sem = np.stack([sem for _, sem in per_layer]).astype(np.float64)
    diff = s_sem - s_lang
    tail = 100.0 * (1.0 - confidence) / 2.0
    diff_lo, diff_hi = np.percentile(diff[:, 1:], [tail, 100.0 - tail], axis=1)
    best_layer = first + int(np.argmax(diff[first:last + 1, 0]))
    resample_best = first + np.argmax(diff[first:last + 1, 1:], axis=0)
    pick_share = np.bincount(resample_best, minlength=num_layers + 1) / num_bootstrap
    return BottleneckResult(
        best_layer=best_layer, num_layers=num_layers, s_lang=s_lang[:, 0], s_sem=s_sem[:, 0], diff=diff[:, 0],
        diff_lo=diff_lo, diff_hi=diff_hi, pick_share=pick_share,
        languages=tuple(str(lang) for lang in dict.fromkeys(np.asarray(languages).tolist())),
        num_groups=len(labels.groups), num_points=num_points, selection_range=(first, last), metric=metric,
        num_bootstrap=int(num_bootstrap), bootstrap=bootstrap, confidence=float(confidence), seed=int(seed))
