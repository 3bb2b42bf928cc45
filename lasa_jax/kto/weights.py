"""KTO class weights: TRL's range check of desirable/undesirable weights and the rescaling that satisfies it."""
from __future__ import annotations

import logging
from typing import Any

from lasa_jax.infra.errors import InputError, config_field

log = logging.getLogger(__name__)

# TRL's KTOTrainer (trl 1.16, Eq. (8) of the KTO paper): n_d * w_d / (n_u * w_u) should lie in [1, 4/3]
# (TRL's bounds: 1 and 1.33, rounded to 2 decimals).
WEIGHT_RATIO_RANGE = (1.0, 1.33)
AUTO_WEIGHT_RATIO = 7.0 / 6.0  # the ratio `balance_class_weights` aims at: inside the range, away from its ends
BALANCE_MODES = ("", "undesirable", "desirable")
_BALANCE_FIELD = "kto.train.balance_weights"


def trl_weight_check(num_desirable: int, num_undesirable: int, desirable_weight: float,
                     undesirable_weight: float) -> str | None:
    """TRL's check of the class weights (KTOTrainer, trl 1.16): None when they are fine, else TRL's warning text.

    With n_d != n_u, fine iff desirable_weight lies in [n_u w_u / n_d, 1.33 n_u w_u / n_d] or undesirable_weight in
    [n_d w_d / (1.33 n_u), n_d w_d / n_u], each bound rounded to 2 decimals (counts below 1 count as 1).
    """
    n_d, n_u = max(int(num_desirable), 1), max(int(num_undesirable), 1)
    if n_d == n_u:
        return None
    d_low, d_high = round(n_u * undesirable_weight / n_d, 2), round(n_u * undesirable_weight / n_d * 1.33, 2)
    u_low, u_high = round(n_d * desirable_weight / n_u / 1.33, 2), round(n_d * desirable_weight / n_u, 2)
    if d_low <= desirable_weight <= d_high or u_low <= undesirable_weight <= u_high:
        return None
    return ("You have different amounts of desirable/positive and undesirable/negative examples but the weights on "
            "the desirable and undesirable losses don't seem to be in an ideal range. Based on your data, we "
            f"recommend EITHER desirable_weight in [{d_low}, {d_high}] or undesirable_weight in [{u_low}, {u_high}] "
            "(but NOT BOTH).")


def balance_class_weights(num_desirable: int, num_undesirable: int, desirable_weight: float,
                          undesirable_weight: float, mode: str = "undesirable") -> dict[str, Any]:
    """The class weights a run uses, and the record of TRL's check.

    mode "": the given weights. "undesirable" / "desirable": when TRL's check fails for the given weights, that
    class's weight is replaced so that n_d w_d / (n_u w_u) = AUTO_WEIGHT_RATIO (inside TRL's range), the other
    kept; weights that pass are used as given. Returns {"desirable_weight",
    "undesirable_weight", "ratio" (n_d w_d / (n_u w_u)), "mode", "configured": [w_d, w_u], "counts": [n_d, n_u],
    "trl_warning" (None or the text, for the weights used)}; the warning is logged.
    """
    if mode not in BALANCE_MODES:
        raise InputError(f"{config_field(_BALANCE_FIELD)}: expected one of {BALANCE_MODES}, got {mode!r}")
    n_d, n_u = int(num_desirable), int(num_undesirable)
    w_d, w_u = float(desirable_weight), float(undesirable_weight)
    if mode and n_d > 0 and n_u > 0 and trl_weight_check(n_d, n_u, w_d, w_u) is not None:
        if mode == "undesirable":
            w_u = n_d * w_d / (n_u * AUTO_WEIGHT_RATIO)
        else:
            w_d = AUTO_WEIGHT_RATIO * n_u * w_u / n_d
    warning = trl_weight_check(n_d, n_u, w_d, w_u)
    ratio = n_d * w_d / (n_u * w_u) if n_u and w_u else float("inf")
    if warning:
        log.warning("KTO class weights: %d desirable x %.4g : %d undesirable x %.4g (ratio %.3f, TRL's range "
                    "[1, 4/3]). TRL: %s Set %s=undesirable to rescale.",
                    n_d, w_d, n_u, w_u, ratio, warning, config_field(_BALANCE_FIELD))
    else:
        log.info("KTO class weights: %d desirable x %.4g : %d undesirable x %.4g (ratio %.3f; balance_weights=%r)",
                 n_d, w_d, n_u, w_u, ratio, mode)
    return {"desirable_weight": w_d, "undesirable_weight": w_u, "ratio": ratio, "mode": mode,
            "configured": [float(desirable_weight), float(undesirable_weight)], "counts": [n_d, n_u],
            "trl_warning": warning}
