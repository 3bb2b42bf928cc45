"""Silhouettes against sklearn, the group bootstrap against weighted sklearn per-point silhouettes, layer
selection on features whose answer is known, and the report files."""
import csv
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples
from sklearn.metrics import silhouette_score as sklearn_silhouette_score

from lasa_jax.locate import silhouette as bottleneck
from lasa_jax.locate.report import load_bottleneck, verdict_line, write_bottleneck_report
from lasa_jax.locate.selection import (
    CSV_FIELDS,
    LAYER_FIELDS,
    PROBE_FIELD,
    group_bootstrap_multiplicities,
    layer_silhouettes,
    no_bottleneck_reasons,
    select_bottleneck_layer,
)
from lasa_jax.locate.silhouette import layerwise_silhouette_scores, silhouette_samples, silhouette_score

METRICS = ("cosine", "euclidean")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_points(seed=0, n=170, d=24):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.2, 5.0, size=(n, 1))  # rows of very different norms
    labels = rng.choice(np.array([3, 7, 11, 50, -2]), size=n)
    labels[[5, 90]] = [99, 1000]  # two singleton clusters
    return x, labels


def _blobs(seed=1, n=240, d=16, k=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n) * 10 + 5  # non-contiguous label values
    centres = rng.standard_normal((k * 10 + 6, d)) * 3.0
    return centres[labels] + rng.standard_normal((n, d)) * 0.5, labels


def _parallel_points(num_groups, num_languages, d, group_scale, language_scale, seed):
    """Points of a parallel corpus: group centre * group_scale + language centre * language_scale + noise."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(num_groups), num_languages)
    languages = np.tile(np.arange(num_languages), num_groups)
    x = (group_scale * rng.standard_normal((num_groups, d))[groups]
         + language_scale * rng.standard_normal((num_languages, d))[languages] + rng.standard_normal((groups.size, d)))
    return x.astype(np.float32), languages, groups


# --------------------------------------------------------------------------------------------- silhouettes


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("data", [_random_points, _blobs])
def test_silhouette_matches_sklearn(metric, data):
    x, labels = data()
    expected = sklearn_silhouette_samples(x, labels, metric=metric)
    np.testing.assert_allclose(silhouette_samples(x, labels, metric), expected, atol=1e-4)
    # float32 input and a small euclidean row block (not a divisor of N) give the same result
    np.testing.assert_allclose(silhouette_samples(x.astype(np.float32), labels, metric, block_size=37),
                               expected, atol=1e-4)
    assert silhouette_score(x, labels, metric) == pytest.approx(
        sklearn_silhouette_score(x, labels, metric=metric), abs=1e-4)


def test_singletons_score_zero_and_string_labels():
    x, labels = _random_points()
    values = silhouette_samples(x, labels)
    assert values[5] == 0.0 and values[90] == 0.0
    names = np.array([f"cluster-{label}" for label in labels])
    assert silhouette_score(x, names) == pytest.approx(silhouette_score(x, labels), abs=1e-7)


def test_cosine_is_scale_invariant_and_handles_large_inputs_in_chunks(monkeypatch):
    """Host arrays go to the device in row chunks; force several small chunks, including a remainder."""
    x, labels = _blobs(n=300, d=32)
    monkeypatch.setattr(bottleneck, "_HOST_CHUNK_BYTES", 32 * 4 * 70)  # 70 rows per chunk
    chunked = silhouette_samples(x.astype(np.float32), labels)
    np.testing.assert_allclose(chunked, sklearn_silhouette_samples(x, labels, metric="cosine"), atol=1e-4)
    np.testing.assert_allclose(silhouette_samples(jnp.asarray(x * 7.0), labels), chunked, atol=1e-5)


def test_silhouette_input_errors():
    x, labels = _blobs(n=20)
    with pytest.raises(ValueError, match="number of distinct labels"):
        silhouette_score(x, np.zeros(20))
    with pytest.raises(ValueError, match="number of distinct labels"):
        silhouette_score(x, np.arange(20))
    with pytest.raises(ValueError, match="metric must be one of"):
        silhouette_score(x, labels, metric="manhattan")
    with pytest.raises(ValueError, match="labels must be a 1-D sequence of 20"):
        silhouette_score(x, labels[:-1])
    with pytest.raises(ValueError, match="x must be a 2-D array"):
        silhouette_score(x[None], labels)


@pytest.mark.parametrize("metric", METRICS)
def test_layerwise_equals_per_layer(metric):
    x, labels = _blobs(n=120)
    rng = np.random.default_rng(3)
    x_layers = np.stack([x, x + rng.standard_normal(x.shape) * 3, rng.standard_normal(x.shape)]).astype(np.float32)
    per_layer = [silhouette_score(layer, labels, metric) for layer in x_layers]
    np.testing.assert_allclose(layerwise_silhouette_scores(x_layers, labels, metric), per_layer, atol=1e-6)
    np.testing.assert_allclose(layerwise_silhouette_scores(jnp.asarray(x_layers), labels, metric), per_layer,
                               atol=1e-6)


# ------------------------------------------------------------------------------------ weighted (bootstrap)


@pytest.mark.parametrize("metric", METRICS)
def test_group_bootstrap_against_reference(metric):
    x, languages, groups = _parallel_points(25, 4, 16, 1.0, 1.0, seed=4)
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


def test_layer_silhouettes_input_errors():
    x, languages, groups = _parallel_points(5, 3, 8, 1.0, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"multiplicities must have shape \(R, 5\)"):
        layer_silhouettes(x, languages, groups, np.ones((2, 4)))
    with pytest.raises(ValueError, match="bootstrap must be one of"):
        layer_silhouettes(x, languages, groups, bootstrap="jackknife")
    with pytest.raises(ValueError, match="bootstrap 'expanded' was removed"):
        select_bottleneck_layer(np.stack([x, x]), languages, groups, bootstrap="expanded")


# -------------------------------------------------------------------------------------------- layer selection


def _known_layer_features(semantic_layers=(3,), num_layers=6, seed=0):
    """(L+1, N, D) features: the residual indices in `semantic_layers` cluster by group, the others by language."""
    layers = []
    for k in range(num_layers + 1):
        group_scale, language_scale = (3.0, 0.3) if k in semantic_layers else (0.3, 3.0)
        x, languages, groups = _parallel_points(30, 5, 32, group_scale, language_scale, seed=seed + k)
        layers.append(x)
    names = np.array(["en", "zh", "ko", "sw", "jv"])[languages]
    group_ids = np.array([f"flores:{g * 7 + 1}" for g in groups])
    return np.stack(layers), names, group_ids


def test_selection_finds_the_semantic_layer():
    features, languages, group_ids = _known_layer_features(semantic_layers=(3,))
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


def test_selection_range_options_and_ties():
    features, languages, group_ids = _known_layer_features(semantic_layers=(0, 2, 6))
    features[4] = features[2]  # a tie between residual indices 2 and 4 -> the lower one
    default = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10, include_final=False)
    assert default.best_layer == 2
    assert default.pick_share[2] + default.pick_share[4] == pytest.approx(1.0)
    assert default.pick_share[2] == 1.0  # identical layers tie in every resample too
    features[0] = features[6] = _parallel_points(30, 5, 32, 6.0, 0.3, seed=9)[0]  # the most semantic layers
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


def test_selection_input_errors():
    features, languages, group_ids = _known_layer_features()
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


# ------------------------------------------------------------------------------------------------- reports


def test_report_files_and_loader(tmp_path):
    features, languages, group_ids = _known_layer_features()
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=20)
    paths = write_bottleneck_report(result, tmp_path / "locate", features=features, languages=languages,
                                    group_ids=group_ids, tsne_max_iter=250)  # t-SNE of k* by default
    report = json.loads((tmp_path / "locate/bottleneck.json").read_text())
    assert list(report)[:8] == ["best_layer", "num_layers", "layers", "languages", "num_groups", "num_points",
                                "selection_range", "bottleneck_found"]
    assert report["bottleneck_found"] is True and report["reason"] is None and report["reason_codes"] == []
    assert report["probe"]["best_layer"] is None and "not computed" in report["probe"]["reason"]
    assert report["best_layer"] == 3 and report["num_layers"] == 6
    assert [row["layer"] for row in report["layers"]] == list(range(7))
    assert list(report["layers"][0]) == list(CSV_FIELDS) and report["layers"][0][PROBE_FIELD] is None
    assert report["layers"][3]["diff"] == pytest.approx(result.diff[3])
    assert report["languages"] == ["en", "zh", "ko", "sw", "jv"]
    assert (report["num_groups"], report["num_points"]) == (30, 150)
    with open(tmp_path / "locate/layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and tuple(rows[0]) == CSV_FIELDS and rows[0][PROBE_FIELD] == ""
    assert float(rows[3]["pick_share"]) == pytest.approx(result.pick_share[3])
    for name in ("plot", "tsne_3"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "locate").iterdir()) == [
        "bottleneck.json", "bottleneck_layers.png", "layers.csv", "tsne_layer03.png"]
    assert load_bottleneck(tmp_path / "locate") == report
    assert load_bottleneck(paths["json"])["best_layer"] == 3
    with pytest.raises(ValueError, match="t-SNE plots need"):
        write_bottleneck_report(result, tmp_path / "other", features=features)
    with pytest.raises(ValueError, match="tsne layer 7 is outside residual indices 0..6"):
        write_bottleneck_report(result, tmp_path / "other", features=features, languages=languages,
                                group_ids=group_ids, tsne_layers=[7])


def _valid_report():
    layers = [dict(zip(LAYER_FIELDS, (k, 0.1, 0.2, 0.1, 0.0, 0.2, 0.5 if k in (1, 2) else 0.0))) for k in range(4)]
    return {"best_layer": 2, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
            "num_points": 10}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("best_layer"), "'best_layer' must be an integer residual index"),
    (lambda r: r.update(best_layer=4), "'best_layer' must be an integer residual index in 0..3"),
    (lambda r: r.update(best_layer=True), "'best_layer'"),
    (lambda r: r.update(num_layers="3"), "'num_layers' must be an integer"),
    (lambda r: r["layers"].pop(), "'layers' must be a list of 4"),
    (lambda r: r["layers"][2].update(layer=5), r"layers\[2\] must be an object with \"layer\": 2"),
    (lambda r: r["layers"][1].pop("diff_hi"), r"layers\[1\].diff_hi must be a number"),
    (lambda r: r.update(languages=["en"]), "'languages' must be a list of at least 2"),
    (lambda r: r.update(num_points=None), "'num_points' must be an integer"),
])
def test_load_bottleneck_schema_errors(tmp_path, change, message):
    report = _valid_report()
    path = tmp_path / "bottleneck.json"
    path.write_text(json.dumps(report))
    assert load_bottleneck(tmp_path)["best_layer"] == 2
    change(report)
    path.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=message) as info:
        load_bottleneck(path)
    assert str(path) in str(info.value)


def test_load_bottleneck_missing_or_invalid(tmp_path):
    with pytest.raises(FileNotFoundError, match="bottleneck.json"):
        load_bottleneck(tmp_path)
    (tmp_path / "bottleneck.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bottleneck(tmp_path)


# ----------------------------------------------------------------------------------------- no-bottleneck verdict


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


def test_no_bottleneck_is_recorded_plotted_and_loaded(tmp_path):
    """Every layer clusters by language: diff < 0 everywhere; bottleneck.json, the plot and the loader say so."""
    features, languages, group_ids = _known_layer_features(semantic_layers=())
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=20)
    assert not result.bottleneck_found and (result.diff[1:] < 0).all()
    paths = write_bottleneck_report(result, tmp_path)
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is False and "diff_negative_everywhere" in report["reason_codes"]
    assert report["reason"].startswith("S_sem - S_lang < 0 at every candidate residual index 1..6")
    assert len(report["reason"].split("; ")) == len(report["reason_codes"])
    assert verdict_line(report).startswith(f"k* = {result.best_layer} is NOT a semantic bottleneck: S_sem")
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    report["bottleneck_found"], report["reason"] = False, None
    (tmp_path / "bottleneck.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="'reason' must say why"):
        load_bottleneck(tmp_path)


def test_old_reports_without_the_verdict_still_load(tmp_path):
    path = tmp_path / "bottleneck.json"
    old = _valid_report()  # written before the verdict fields, without selection_range
    path.write_text(json.dumps(old))
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is None and report["verdict_source"] == "unknown"
    assert "k* = 2 (bottleneck verdict not recorded" in verdict_line(report)
    old["selection_range"] = [1, 2]  # the old default 1..L-1: k* = 2 is its upper edge, picked in 50%
    path.write_text(json.dumps(old))
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is False and report["reason_codes"] == ["argmax_at_range_edge"]
    assert report["verdict_source"].startswith("recomputed")


def test_probe_auroc_in_json_csv_and_plot(tmp_path):
    features, languages, group_ids = _known_layer_features(semantic_layers=(3,))
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10)
    auroc = np.array([0.5, 0.6, 0.7, 0.95, 0.9, 0.8, np.nan])
    result = dataclasses.replace(result, probe_auroc=auroc, probe={"reason": None, "num_val": 40})
    write_bottleneck_report(result, tmp_path)
    report = load_bottleneck(tmp_path)
    assert [row[PROBE_FIELD] for row in report["layers"]] == [0.5, 0.6, 0.7, 0.95, 0.9, 0.8, None]
    assert report["probe"] == {"reason": None, "num_val": 40, "best_layer": 3, "best_auroc": 0.95}
    assert "probe val AUROC 0.950 at k*, best 0.950 at residual index 3" in verdict_line(report)
    with open(tmp_path / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[3][PROBE_FIELD]) == 0.95 and rows[6][PROBE_FIELD] == ""
    report["layers"][2][PROBE_FIELD] = 1.5
    (tmp_path / "bottleneck.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"layers\[2\].probe_auroc must be null or a number in \[0, 1\]"):
        load_bottleneck(tmp_path)
