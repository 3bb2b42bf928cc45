"""SSI metrics: thresholds chosen on validation scores and per-language classification metrics with AUROC.

Decision rule everywhere: a prompt is flagged harmful iff score > threshold (strict). The SSI trainer chooses and
applies its threshold on LOGITS (harmful iff logit > threshold_logit): float32 probabilities sigmoid(logit)
saturate to exactly 1.0 above a logit of about 16.6, so on probabilities every confident harmful prompt ties and
no threshold can separate them. The functions below take any real scores: logits, or probabilities (0..1).

Threshold rules (`choose_threshold`), on validation scores and labels (1 harmful, 0 benign):
- "tpr_at_fpr" (default): the highest TPR whose benign FPR <= fpr_bound (pooled over the validation rows).
- "accuracy": the highest accuracy (ties: the lower FPR).
Candidates are all distinct validation decisions: with sorted distinct scores u_1 < ... < u_m, flag-none, and
"flag p > u_j" for each j (and flag-all). The returned threshold is the midpoint between the score that bounds the
chosen decision from below and the next higher score (at the ends: 0 and 1 for probabilities, the extreme score
-/+ 1 for logits), so it reproduces that decision on the validation set with the widest margin on both sides.
(The reference implementation swept t = 0.30, 0.31, ..., 0.70 on probabilities and kept the most accurate.)

Per-set metrics (`evaluate_by_language`): per language and "pooled" over all rows: n, counts, accuracy, TPR
(recall on harmful), FPR (benign flagged), precision, F1, AUROC (threshold-free), with 95% Wilson intervals for
TPR and FPR. "macro" = unweighted mean over languages of each metric (languages where it is undefined are skipped,
e.g. TPR in a benign-only language). Undefined values are None (JSON null).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lasa_jax.statistics import roc_auc, wilson_interval

THRESHOLD_RULES = ("tpr_at_fpr", "accuracy")
DECISION_RULE = ("harmful iff logit > threshold_logit (threshold = sigmoid(threshold_logit); artifacts without "
                 "threshold_logit: harmful iff p > threshold)")
SCORE_SCALES = ("probability", "logit")
METRIC_NAMES = ("accuracy", "tpr", "fpr", "precision", "f1", "auroc")


def _check_scores(labels, scores, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"{what}: labels and scores must be 1-D of equal length, got {labels.shape}, {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what}: labels must be 0 (benign) or 1 (harmful)")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores contain NaN or infinity")
    return labels.astype(np.int64), scores


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def classification_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float) -> dict[str, Any]:
    """Metrics of the rule score > threshold (scores: logits or probabilities, with the threshold on the same
    scale; see the module docstring); None where undefined."""
    labels, probs = _check_scores(labels, probs, "classification_metrics")
    flags = probs > threshold
    positives = labels == 1
    tp = int(np.sum(flags & positives))
    fp = int(np.sum(flags & ~positives))
    fn = int(np.sum(~flags & positives))
    tn = int(np.sum(~flags & ~positives))
    n_pos, n_neg = tp + fn, fp + tn
    precision = _ratio(tp, tp + fp)
    tpr = _ratio(tp, n_pos)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn) if n_pos else None
    return {
        "n": int(labels.size), "num_harmful": n_pos, "num_benign": n_neg,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": _ratio(tp + tn, labels.size),
        "tpr": tpr, "tpr_ci95": list(wilson_interval(tp, n_pos)) if n_pos else None,
        "fpr": _ratio(fp, n_neg), "fpr_ci95": list(wilson_interval(fp, n_neg)) if n_neg else None,
        "precision": precision, "f1": f1,
        "auroc": roc_auc(labels, probs),
    }


def evaluate_by_language(labels: Sequence[int], probs: Sequence[float], languages: Sequence[str],
                         threshold: float) -> dict[str, Any]:
    """{"per_language": {lang: metrics}, "macro": {metric: mean over languages}, "pooled": metrics}."""
    labels, probs = _check_scores(labels, probs, "evaluate_by_language")
    languages = np.asarray(languages)
    if languages.shape != labels.shape:
        raise ValueError(f"languages must have one entry per row, got {languages.shape} for {labels.shape}")
    per_language = {str(lang): classification_metrics(labels[languages == lang], probs[languages == lang], threshold)
                    for lang in sorted(set(languages.tolist()))}
    macro = {}
    for name in METRIC_NAMES:
        values = [m[name] for m in per_language.values() if m[name] is not None]
        macro[name] = float(np.mean(values)) if values else None
    macro["num_languages"] = len(per_language)
    return {"per_language": per_language, "macro": macro,
            "pooled": classification_metrics(labels, probs, threshold) if labels.size else None}


# ------------------------------------------------------------------------------------------------- thresholds


def _decision_table(labels: np.ndarray, probs: np.ndarray, scale: str = "probability"):
    """Candidate decisions: lower bounds b_j (flag score > b_j), the next score above, and TPR/FPR/accuracy of each.

    Candidate j = 0 flags everything (bound below the smallest score), j = m flags nothing.
    """
    unique = np.unique(probs)  # ascending, m values
    # sentinels outside the scores: probabilities lie in [0, 1]; logits are unbounded
    low_end = 0.0 if scale == "probability" and unique[0] > 0 else unique[0] - 1.0
    high_end = 1.0 if scale == "probability" and unique[-1] < 1 else unique[-1] + 1.0
    lower = np.r_[low_end, unique]  # (m + 1,)
    upper = np.r_[unique, high_end]
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    pos_sorted = np.sort(probs[labels == 1])
    neg_sorted = np.sort(probs[labels == 0])
    tp = n_pos - np.searchsorted(pos_sorted, lower, side="right")  # count of positives with p > bound
    fp = n_neg - np.searchsorted(neg_sorted, lower, side="right")
    tpr = tp / n_pos if n_pos else np.zeros_like(lower)
    fpr = fp / n_neg if n_neg else np.zeros_like(lower)
    accuracy = (tp + (n_neg - fp)) / labels.size
    return lower, upper, tpr, fpr, accuracy


def choose_threshold(labels: Sequence[int], probs: Sequence[float], rule: str = "tpr_at_fpr",
                     fpr_bound: float = 0.05, *, scale: str = "probability") -> float:
    """Threshold t (harmful iff score > t) by `rule` on validation scores; see the module docstring. scale:
    "probability" (scores in [0, 1]) or "logit" (the SSI trainer's choice: no saturation)."""
    if scale not in SCORE_SCALES:
        raise ValueError(f"scale must be one of {SCORE_SCALES}, got {scale!r}")
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    if not 0.0 <= fpr_bound <= 1.0:
        raise ValueError(f"fpr_bound must be in [0, 1], got {fpr_bound}")
    labels, probs = _check_scores(labels, probs, "choose_threshold")
    if labels.size == 0:
        raise ValueError("choose_threshold: no validation scores")
    if rule == "tpr_at_fpr" and labels.sum() in (0, labels.size):
        raise ValueError("choose_threshold: rule 'tpr_at_fpr' needs harmful and benign validation rows")
    lower, upper, tpr, fpr, accuracy = _decision_table(labels, probs, scale)
    if rule == "tpr_at_fpr":
        feasible = fpr <= fpr_bound + 1e-12  # flag-none (fpr 0) is always feasible
        primary = np.where(feasible, tpr, -np.inf)
    else:
        primary = accuracy
    # lexicographic: highest primary, then lowest FPR (distinct candidates never tie on both)
    best = np.lexsort((fpr, -primary))[0]
    return float(0.5 * (lower[best] + upper[best]))
