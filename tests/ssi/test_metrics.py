"""SSI metrics: AUROC with ties, the strict decision rule, per-language and macro metrics, the threshold rules (on
probabilities and on logits, where probabilities saturate) against a dense sweep."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lasa_jax.ssi.artifact import sigmoid
from lasa_jax.ssi.metrics import choose_threshold, classification_metrics, evaluate_by_language
from lasa_jax.statistics import roc_auc


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 200)
        scores = np.round(rng.random(200) + 0.3 * labels, 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([1, 1, 1], [0.1, 0.5, 0.9]) is None
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5


def test_classification_metrics_rule_is_strict():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 0.8, 0.9]
    m = classification_metrics(labels, probs, 0.5)  # p == 0.5 is not flagged
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 0, 4, 1)
    assert m["tpr"] == 0.75 and m["fpr"] == 0.0 and m["accuracy"] == 7 / 8 and m["precision"] == 1.0
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["tpr_ci95"][0] < 0.75 < m["tpr_ci95"][1]
    benign_only = classification_metrics([0, 0], [0.9, 0.1], 0.5)
    assert benign_only["tpr"] is None and benign_only["f1"] is None and benign_only["auroc"] is None
    assert benign_only["fpr"] == 0.5


def test_evaluate_by_language_macro_and_pooled():
    labels = np.array([1, 0, 1, 0, 0, 0])
    probs = np.array([0.9, 0.1, 0.2, 0.8, 0.1, 0.7])
    languages = ["en", "en", "zh", "zh", "sw", "sw"]
    result = evaluate_by_language(labels, probs, languages, 0.5)
    per = result["per_language"]
    assert per["en"]["tpr"] == 1.0 and per["zh"]["tpr"] == 0.0 and per["sw"]["tpr"] is None
    assert result["macro"]["tpr"] == 0.5  # sw (no harmful rows) is skipped
    assert result["macro"]["fpr"] == pytest.approx((0.0 + 1.0 + 0.5) / 3)
    assert result["pooled"]["n"] == 6 and result["pooled"]["fpr"] == 0.5


def test_threshold_rules_on_hand_made_scores():
    # benign 0.1 0.2 0.3 0.6 | harmful 0.4 0.7 0.8 0.9
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    # FPR <= 1/4 allows flagging 0.6: every harmful above 0.3 -> TPR 1; midpoint of 0.3 and 0.4
    assert choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=0.25) == pytest.approx(0.35)
    # FPR 0: flag above 0.6 -> TPR 3/4; midpoint of 0.6 and 0.7
    assert choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=0.0) == pytest.approx(0.65)
    assert choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=0.05) == pytest.approx(0.65)
    # accuracy: 0.35 and 0.65 both give 7/8; the tie goes to the lower FPR
    assert choose_threshold(labels, probs, "accuracy") == pytest.approx(0.65)
    # FPR bound 1 flags everything the cheapest way: below the smallest score
    assert choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=1.0) == pytest.approx(0.35)
    assert choose_threshold([0, 1], [0.2, 0.1], "tpr_at_fpr", fpr_bound=1.0) == pytest.approx(0.05)
    assert choose_threshold([0, 1], [0.2, 0.1], "tpr_at_fpr", fpr_bound=0.0) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="threshold rule"):
        choose_threshold(labels, probs, "f1")
    with pytest.raises(ValueError, match="harmful and benign"):
        choose_threshold([0, 0], [0.1, 0.2])


def test_threshold_is_chosen_on_logits_where_probabilities_saturate():
    """Logits above ~17 give float32 probabilities of exactly 1.0: on probabilities the benign 17.5 and 18 tie with
    every harmful prompt, on logits the threshold separates them."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    logits = np.array([-2.0, 3.0, 17.5, 18.0, 19.0, 20.0, 25.0], np.float32)
    probs = sigmoid(logits)
    assert (probs[2:] == 1.0).all()  # saturated
    on_probs = choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=0.0)
    assert classification_metrics(labels, probs, on_probs)["tpr"] == 0.0  # no threshold separates ties
    on_logits = choose_threshold(labels, logits, "tpr_at_fpr", fpr_bound=0.0, scale="logit")
    assert on_logits == pytest.approx(18.5)  # midpoint of the benign 18 and the harmful 19
    chosen = classification_metrics(labels, logits, on_logits)
    assert chosen["tpr"] == 1.0 and chosen["fpr"] == 0.0
    # the ends of a logit scale are the extreme scores -/+ 1, not the probability bounds 0 and 1
    assert choose_threshold([0, 1], [20.0, 10.0], "tpr_at_fpr", fpr_bound=1.0, scale="logit") == pytest.approx(9.5)
    assert choose_threshold([0, 1], [30.0, 20.0], "tpr_at_fpr", fpr_bound=0.0, scale="logit") == pytest.approx(30.5)
    with pytest.raises(ValueError, match="scale must be one of"):
        choose_threshold(labels, logits, scale="odds")


def test_tpr_at_fpr_threshold_is_optimal_against_a_dense_sweep():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = 1 / (1 + np.exp(-(rng.standard_normal(300) + 1.5 * labels)))
    for bound in (0.0, 0.02, 0.05, 0.2):
        t = choose_threshold(labels, probs, "tpr_at_fpr", fpr_bound=bound)
        chosen = classification_metrics(labels, probs, t)
        assert chosen["fpr"] <= bound
        sweep = [classification_metrics(labels, probs, s) for s in np.r_[probs, np.linspace(0, 1, 101)]]
        assert chosen["tpr"] == max(m["tpr"] for m in sweep if m["fpr"] <= bound)
        t_acc = choose_threshold(labels, probs, "accuracy")
        assert classification_metrics(labels, probs, t_acc)["accuracy"] == max(m["accuracy"] for m in sweep)
