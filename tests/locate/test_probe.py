"""The per-residual-index harmful-vs-benign probe of Locate (lasa_jax/locate/probe.py): AUROC against
sklearn.metrics.roc_auc_score, the Newton logistic regression against sklearn's LogisticRegression, the grouped
split, and the whole per-layer AUROC against an sklearn pipeline on the same split."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lasa_jax.locate.probe import auroc, fit_logistic, grouped_split, layer_probe_auroc


def test_auroc_matches_sklearn_with_ties_and_a_mask():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 60
        labels = rng.integers(0, 2, n)
        scores = (rng.normal(size=n).round(1) + 0.5 * labels).astype(np.float32)  # rounding: many ties
        mask = rng.random(n) < 0.7
        expected = roc_auc_score(labels[mask], scores[mask])
        got = float(auroc(jnp.asarray(labels), jnp.asarray(scores), jnp.asarray(mask)))
        assert got == pytest.approx(expected, abs=1e-6), trial
    one_class = float(auroc(jnp.zeros(4, jnp.int32), jnp.arange(4.0), jnp.ones(4, bool)))
    assert np.isnan(one_class)


@pytest.mark.parametrize("separation", [0.5, 3.0])
def test_newton_logistic_regression_matches_sklearn(separation):
    """Same objective as LogisticRegression(C=0.5): tolerance 1e-4 on every coefficient and the intercept
    (float32 Newton vs float64 lbfgs at tol 1e-10); the weights column 0 = row left out of the fit."""
    rng = np.random.default_rng(1)
    n, d = 240, 12
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + separation * labels[:, None] * rng.normal(size=d)
    used = rng.random(n) < 0.8
    w, b = fit_logistic(jnp.asarray(x, jnp.float32), jnp.asarray(labels), jnp.asarray(used, jnp.float32), c=0.5,
                        num_steps=15)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x[used], labels[used])
    np.testing.assert_allclose(np.asarray(w), reference.coef_[0], atol=1e-4)
    assert float(b) == pytest.approx(reference.intercept_[0], abs=1e-4)


def test_grouped_split_keeps_groups_whole_and_both_classes_on_both_sides():
    group_ids = np.repeat([f"g{i}" for i in range(20)], 3)  # 20 groups x 3 translations
    labels = np.repeat([1] * 8 + [0] * 12, 3)
    labels[:3] = -1  # an unlabelled group
    train, val = grouped_split(labels, group_ids, val_fraction=0.25, seed=3)
    assert not (train & val).any() and not (train | val)[:3].any()
    for group in np.unique(group_ids):
        rows = group_ids == group
        assert train[rows].all() or val[rows].all() or not (train | val)[rows].any()  # never straddles
    assert set(labels[val]) == {0, 1} and set(labels[train]) == {0, 1}
    assert len(np.unique(group_ids[val & (labels == 0)])) == 3  # round(0.25 * 12)
    again = grouped_split(labels, group_ids, val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again[1], val)


def test_layer_probe_auroc_equals_an_sklearn_pipeline_per_layer():
    rng = np.random.default_rng(2)
    num_groups, languages, d = 40, 3, 16
    group_ids = np.repeat(np.arange(num_groups), languages).astype(str)
    labels = np.repeat(rng.integers(0, 2, num_groups), languages)
    direction = rng.normal(size=d)
    features = np.stack([rng.normal(size=(len(labels), d)) + scale * labels[:, None] * direction
                         for scale in (0.0, 0.3, 2.0)]).astype(np.float32)  # residual indices 0, 1, 2
    result = layer_probe_auroc(features, labels, group_ids, seed=5, c=1.0, num_steps=15)
    assert result.reason is None and result.auroc.shape == (3,)
    train, val = grouped_split(labels, group_ids, val_fraction=0.25, seed=5)
    assert result.settings["num_train"] == train.sum() and result.settings["num_val"] == val.sum()
    for k in range(3):  # reference: L2-normalise, standardise on train, LogisticRegression(C=1), roc_auc_score
        x = features[k] / np.linalg.norm(features[k], axis=1, keepdims=True)
        mean, std = x[train].mean(0), x[train].std(0)
        x = (x - mean) / std
        model = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[train], labels[train])
        expected = roc_auc_score(labels[val], model.decision_function(x[val]))
        assert result.auroc[k] == pytest.approx(expected, abs=1e-3), k
    assert result.auroc[2] > 0.95 and result.auroc[2] > result.auroc[0]
    chunked = layer_probe_auroc(features, labels, group_ids, seed=5, max_chunk_bytes=1)  # one layer per chunk
    np.testing.assert_allclose(chunked.auroc, result.auroc, atol=1e-6)


def test_layer_probe_without_labels_gives_a_reason():
    features = np.zeros((2, 6, 4), np.float32)
    groups = ["a", "a", "b", "b", "c", "c"]
    unknown = layer_probe_auroc(features, [-1] * 6, groups)
    assert unknown.auroc is None and "no harmful/benign labels" in unknown.reason
    assert unknown.to_json_dict()["auroc"] is None
    benign_only = layer_probe_auroc(features, [0] * 6, groups)
    assert benign_only.auroc is None and "needs harmful and benign rows" in benign_only.reason
    with pytest.raises(ValueError, match="one entry per row"):
        layer_probe_auroc(features, [0] * 5, groups[:5])
