"""Silhouettes on the device (lasa_jax/locate/silhouette.py) against sklearn: cosine and euclidean, chunked host
input, per-layer scores, input errors; and the README's `lasa_jax.bottleneck.silhouette_score`."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples
from sklearn.metrics import silhouette_score as sklearn_silhouette_score

import lasa_jax.bottleneck
from lasa_jax.locate import silhouette
from lasa_jax.locate.silhouette import layerwise_silhouette_scores, silhouette_samples, silhouette_score

METRICS = ("cosine", "euclidean")


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
    monkeypatch.setattr(silhouette, "_HOST_CHUNK_BYTES", 32 * 4 * 70)  # 70 rows per chunk
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


def test_readme_import_is_the_device_silhouette():
    """The README's `from lasa_jax.bottleneck import silhouette_score` is this module's sklearn-equal score."""
    x, labels = _blobs(n=60)
    assert lasa_jax.bottleneck.silhouette_score is silhouette_score
    assert lasa_jax.bottleneck.silhouette_score(x, labels) == pytest.approx(
        sklearn_silhouette_score(x, labels, metric="cosine"), abs=1e-4)
