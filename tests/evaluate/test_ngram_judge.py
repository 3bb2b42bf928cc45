"""The calibrated n-gram judge (lasa_jax.evaluate.ngram_judge): the fit against sklearn, the features, training,
the saved artifact, the fallback for other languages, the cached judge and its stored calibration."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from lasa_jax.evaluate.calibration import calibrate, find_calibration, load_labelled_responses
from lasa_jax.evaluate.judge_cache import CachedJudge
from lasa_jax.evaluate.ngram_judge import (
    NgramJudge,
    NgramSettings,
    cached_ngram_judge,
    fit_logistic_regression,
    load_artifact,
    ngram_features,
    save_artifact,
    train_ngram_judge,
)
from lasa_jax.infra.errors import InputError


def test_logistic_regression_matches_sklearn():
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = sparse.csr_matrix(rng.random((60, 12)) * (rng.random((60, 12)) < 0.4))
    y = (x @ rng.normal(size=12) + 0.3 * rng.normal(size=60) > 0.3).astype(float)
    w, b = fit_logistic_regression(x, y, c=3.0)
    ref = LogisticRegression(C=3.0, tol=1e-10, max_iter=10000).fit(x.toarray(), y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-4)
    features = ngram_features(["Hello world", "", "hello WORLD"], NgramSettings(num_features=64))
    assert features.shape == (3, 64) and features[1].nnz == 0
    np.testing.assert_allclose(features[0].toarray(), features[2].toarray())  # case-folded
    np.testing.assert_allclose(np.sqrt(features[0].multiply(features[0]).sum()), 1.0)


def test_ngram_judge_trains_saves_and_falls_back(tmp_path, monkeypatch, labelled_root, labelled_answers):
    root = labelled_root
    settings = NgramSettings(num_features=1 << 12)
    artifact = train_ngram_judge(root, settings)
    assert artifact.languages == ("en", "ko") and artifact.meta["training"]["rows"] == 36
    np.testing.assert_array_equal(train_ngram_judge(root, settings).w, artifact.w)  # deterministic
    save_artifact(tmp_path / "art", artifact)
    assert load_file(str(tmp_path / "art" / "weights.safetensors"))["w"].shape == (1 << 12,)
    loaded = load_artifact(tmp_path / "art")
    np.testing.assert_array_equal(loaded.w, artifact.w)
    assert loaded.thresholds == artifact.thresholds and loaded.name == artifact.name
    judge = NgramJudge(loaded)
    odd = load_labelled_responses(root, "odd")
    result = calibrate(judge, odd)
    assert result["goal"]["met"] and result["overall"]["agreement"] == 1.0  # separable toy data
    verdicts = judge.judge(["q", "q", "q"], [labelled_answers["comply"][0], labelled_answers["harmless"][0],
                            "Samahani, siwezi kusaidia."],
                           languages=["en", "en", "sw"])
    assert [v.label for v in verdicts] == ["unsafe", "safe", "safe"] and verdicts[2].raw is None  # sw: heuristic
    assert "calibrated: en,ko" in judge.name
    with pytest.raises(InputError, match="language of every prompt"):
        judge.judge(["q"], ["a"])
    # cached: trained once under LASA_JAX_CACHE, calibrated on the odd half, found again by the evaluation
    monkeypatch.setenv("LASA_JAX_CACHE", str(tmp_path / "cache"))
    first, directory = cached_ngram_judge(root, settings)
    second, again = cached_ngram_judge(root, settings)
    assert directory == again and first.name == second.name and directory.startswith(str(tmp_path / "cache"))
    cached = CachedJudge(second, tmp_path / "judge_cache.jsonl")
    summary = find_calibration(cached)
    assert summary["judge"] == second.name and summary["split"] == "odd" and set(summary["languages"]) == {"en", "ko"}
