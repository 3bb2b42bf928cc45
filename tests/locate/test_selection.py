"""Layer selection (lasa_jax/locate/selection.py): the group bootstrap against weighted sklearn per-point
silhouettes, the argmax of S_sem - S_lang on features whose answer is known, candidate ranges, the verdict."""
import numpy as np
import pytest
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples
from sklearn.metrics import silhouette_score as sklearn_silhouette_score

from lasa_jax.locate.selection import (
    group_bootstrap_multiplicities,
    layer_silhouettes,
    no_bottleneck_reasons,
    select_bottleneck_layer,
)

METRICS = ("cosine", "euclidean")

def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("metric", METRICS)
def test_group_bootstrap_against_reference(metric, parallel_points):
    x, languages, groups = parallel_points(25, 4, 16, 1.0, 1.0, seed=4)
    keep = np.ones(len(x), bool)
    keep[[1, 6, 7, 50]] = False  # some groups miss languages: empty (group, language) slots
    x, languages, groups = x[keep], languages[keep], groups[keep]
    multiplicities = group_bootstrap_multiplicities(25, 3, seed=2)
    assert multiplicities.shape == (3, 25) and (multiplicities.sum(axis=1) == 25).all()
    assert (multiplicities == 0).any() and (multiplicities >= 2).any()
    unit = _unit(x.astype(np.float64))
    points = layer_silhouettes(x, languages, groups, multiplicities, metric, bootstrap="points")
    per_point = [sklearn_silhouette_samples(unit, labels, metric=metric) for labels in (languages, groups)]
    for r, row in enumerate(multiplicities):
        copies = row[groups]  # the weight of each point in resample r
        for s in range(2):
            assert points[s][r] == pytest.approx(copies @ per_point[s] / copies.sum(), abs=1e-4)
    plain_lang, plain_sem = layer_silhouettes(x, languages, groups, metric=metric)
    assert plain_lang[0] == pytest.approx(sklearn_silhouette_score(unit, languages, metric=metric), abs=1e-4)
    assert plain_sem[0] == pytest.approx(sklearn_silhouette_score(unit, groups, metric=metric), abs=1e-4)


def test_layer_silhouettes_input_errors(parallel_points):
    x, languages, groups = parallel_points(5, 3, 8, 1.0, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"multiplicities must have shape \(R, 5\)"):
        layer_silhouettes(x, languages, groups, np.ones((2, 4)))
    with pytest.raises(ValueError, match="bootstrap must be one of"):
        layer_silhouettes(x, languages, groups, bootstrap="jackknife")
    with pytest.raises(ValueError, match="bootstrap 'expanded' was removed"):
        select_bottleneck_layer(np.stack([x, x]), languages, groups, bootstrap="expanded")


def test_selection_finds_the_semantic_layer(known_layer_features):
    features, languages, group_ids = known_layer_features(semantic_layers=(3,))
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=50, seed=1)
    assert result.best_layer == 3
    assert result.pick_share[3] >= 0.9 and result.pick_share.sum() == pytest.approx(1.0)
    assert result.pick_share[0] == 0.0  # outside the default range 1..L (the paper's)
    assert result.selection_range == (1, 6) and result.num_layers == 6
    assert result.bottleneck_found and result.reasons == []
    assert result.diff[3] > 0 > result.diff[2]
    assert (result.diff_lo <= result.diff + 1e-6).all() and (result.diff <= result.diff_hi + 1e-6).all()
    assert result.diff_lo[3] > result.diff_hi[2]  # clean case: intervals separate
    assert result.languages == ("en", "zh", "ko", "sw", "jv")
    assert (result.num_groups, result.num_points) == (30, 150)
    for k in (0, 3, 6):  # point estimates are the plain silhouettes of the L2-normalised vectors
        unit = _unit(features[k].astype(np.float64))
        assert result.s_lang[k] == pytest.approx(sklearn_silhouette_score(unit, languages, metric="cosine"), abs=1e-4)
        assert result.s_sem[k] == pytest.approx(sklearn_silhouette_score(unit, group_ids, metric="cosine"), abs=1e-4)
    again = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=50, seed=1)
    np.testing.assert_array_equal(again.diff_lo, result.diff_lo)


def test_selection_range_options_and_ties(known_layer_features, parallel_points):
    features, languages, group_ids = known_layer_features(semantic_layers=(0, 2, 6))
    features[4] = features[2]  # a tie between residual indices 2 and 4 -> the lower one
    default = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10, include_final=False)
    assert default.best_layer == 2
    assert default.pick_share[2] + default.pick_share[4] == pytest.approx(1.0)
    assert default.pick_share[2] == 1.0  # identical layers tie in every resample too
    features[0] = features[6] = parallel_points(30, 5, 32, 6.0, 0.3, seed=9)[0]  # the most semantic layers
    without_final = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10, include_final=False)
    assert without_final.selection_range == (1, 5) and without_final.best_layer == 2
    with_final = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10)  # default: 1..L
    assert with_final.selection_range == (1, 6) and with_final.best_layer == 6
    assert [code for code, _ in with_final.reasons] == ["argmax_at_range_edge"]  # L is the upper edge
    with_both = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10,
                                        include_embeddings=True, include_final=True)
    assert with_both.selection_range == (0, 6) and with_both.best_layer == 0  # tie with 6 -> lowest
    euclidean = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10, metric="euclidean",
                                        include_final=False)
    assert euclidean.best_layer == 2 and euclidean.metric == "euclidean"


def test_selection_input_errors(known_layer_features):
    features, languages, group_ids = known_layer_features()
    with pytest.raises(ValueError, match="no candidate layer"):
        select_bottleneck_layer(features[:2], languages, group_ids, include_final=False)  # 1..0
    with pytest.raises(ValueError, match="num_bootstrap must be >= 1"):
        select_bottleneck_layer(features, languages, group_ids, num_bootstrap=0)
    with pytest.raises(ValueError, match=r"features \(L\+1, N, D\) must be a 3-D array"):
        select_bottleneck_layer(features[0], languages, group_ids)
    with pytest.raises(ValueError, match="group_ids must be a 1-D sequence of 150"):
        select_bottleneck_layer(features, languages, group_ids[:-1])
    with pytest.raises(ValueError, match="distinct languages"):
        select_bottleneck_layer(features, np.full(150, "en"), group_ids)


def test_no_bottleneck_reasons_each_and_all():
    diff = [0.5, -0.3, 0.2, -0.1, -0.4]  # residual indices 0..4
    share = [0.0, 0.0, 0.9, 0.1, 0.0]
    assert no_bottleneck_reasons(diff, share, best_layer=2, selection_range=(1, 4)) == []
    negative = [-0.5, -0.3, -0.02, -0.1, -0.4]
    reasons = no_bottleneck_reasons(negative, share, best_layer=2, selection_range=(1, 4))
    assert [code for code, _ in reasons] == ["diff_negative_everywhere"]
    assert "every candidate residual index 1..4 (from -0.4000 to -0.0200)" in reasons[0][1]
    at_edge = no_bottleneck_reasons(diff, [0, 0.9, 0.1, 0, 0], best_layer=1, selection_range=(1, 4))
    assert [code for code, _ in at_edge] == ["argmax_at_range_edge"]
    unstable = no_bottleneck_reasons(diff, [0, 0.3, 0.45, 0.25, 0], best_layer=2, selection_range=(1, 4),
                                     num_bootstrap=20)
    assert unstable == [("unstable_argmax", "k* = 2 is the argmax in only 45% of 20 bootstrap resamples (< 50%)")]
    everything = no_bottleneck_reasons([-0.1, -0.01, -0.2, -0.3, -0.4], [0, 0.4, 0.3, 0.3, 0], best_layer=1,
                                       selection_range=(1, 4))
    assert [c for c, _ in everything] == ["diff_negative_everywhere", "argmax_at_range_edge", "unstable_argmax"]
