"""The statistics every report uses: binomial rates with Wilson score intervals (`Rate`, `wilson_interval`) and the
rank AUROC (`roc_auc`, equal to `sklearn.metrics.roc_auc_score`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n at normal quantile z (1.96 -> 95%).

    n = 0 gives (0.0, 1.0): with no observations every rate is possible (the rate itself is undefined, see `Rate`).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if z <= 0:
        raise ValueError(f"wilson_interval needs z > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)



@dataclasses.dataclass(frozen=True)
class Rate:
    """count / total with its Wilson interval; `rate` is NaN (JSON null) when total is 0."""

    count: int
    total: int
    z: float = 1.96

    @property
    def rate(self) -> float:
        return self.count / self.total if self.total else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.count, self.total, self.z)

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"count": self.count, "total": self.total, "rate": None if self.total == 0 else self.rate,
                "ci_low": lo, "ci_high": hi, "z": self.z}


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve = P(score of a random harmful > score of a random benign), ties counted 1/2
    (Mann-Whitney U with average ranks). None when either class is absent."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"roc_auc: labels and scores must be 1-D of equal length, got {labels.shape}, {scores.shape}")
    if not np.isin(labels, (0, 1)).all() or not np.isfinite(scores).all():
        raise ValueError("roc_auc: labels must be 0 or 1 and scores finite")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # tie block j holds 1-based ranks ends[j] - counts[j] + 1 .. ends[j]
    ranks = ((2 * ends - counts + 1) / 2.0)[inverse]  # average rank of each score's tie block
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
