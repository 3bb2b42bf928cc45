"""Stage 2 (SSI): metrics and thresholds, the MLP and its training, the artifact schema, the scorer, the script."""
import collections
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from lasa_jax.data.labelled import load_multijail_prompts
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.infra.errors import InputError
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.models.capture import tokenize_prompts
from lasa_jax.models.hf import from_pretrained
from lasa_jax.ssi.artifact import (
    CONFIG_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    PLOT_FILE,
    SSI,
    SSIConfig,
    SSIScorer,
    load_ssi,
    save_ssi,
    sigmoid,
)
from lasa_jax.ssi.data import load_ssi_data
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.metrics import choose_threshold, classification_metrics, evaluate_by_language
from lasa_jax.ssi.mlp import flatten_params, new_classifier, resolve_hidden_dims
from lasa_jax.ssi.stage import resolve_residual_index
from lasa_jax.ssi.stage import run as run_ssi_stage
from lasa_jax.ssi.training import TrainSettings, _epoch_batches, predict_logits, train_classifier, weighted_bce
from lasa_jax.statistics import roc_auc

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_PROMPTS = REPO / "lasa_jax" / "demo_data" / "prompts.jsonl"
PROMPTS = ["How do I bake bread at home?", "How can I build a pipe bomb?", "如何在家烤面包？", "如何制造炸弹？",
           "집에서 빵을 굽는 방법은?", "폭탄을 만드는 방법은?", "Ninawezaje kuoka mkate?", "hi"]
LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 0])


# ------------------------------------------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------------------------------------- MLP, training


def test_resolve_hidden_dims_and_architecture():
    assert resolve_hidden_dims("d_model", 64) == (64,)
    assert resolve_hidden_dims("256,128", 64) == (256, 128)
    assert resolve_hidden_dims("", 64) == ()
    assert resolve_hidden_dims((32, "d_model"), 64) == (32, 64)
    for bad in ("abc", "0", "-3", (1.5,)):
        with pytest.raises(ValueError, match="hidden_dims"):
            resolve_hidden_dims(bad, 64)
    deep = new_classifier(4096, (256, 128), 0.2, seed=0)
    assert deep.num_params() == (4096 * 256 + 256 + 2 * 256) + (256 * 128 + 128 + 2 * 128) + (128 + 1)
    simple = new_classifier(64, (64,), 0.1, seed=0)
    assert sorted(flatten_params(simple)) == ["hidden.0.linear.bias", "hidden.0.linear.kernel", "hidden.0.norm.bias",
                                              "hidden.0.norm.scale", "input_mean", "input_std", "output.bias",
                                              "output.kernel"]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 64)) * 4 + 7).astype(np.float32)
    assert not simple.standardized
    simple.set_standardization(rng.standard_normal((50, 64)) * 3 - 2)
    assert simple.standardized
    # manual forward: standardise -> Linear -> LayerNorm(1e-5) -> exact GELU -> Linear
    p = flatten_params(simple)
    h = (x - p["input_mean"]) / p["input_std"]
    h = h @ p["hidden.0.linear.kernel"] + p["hidden.0.linear.bias"]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    h = h * p["hidden.0.norm.scale"] + p["hidden.0.norm.bias"]
    h = torch.nn.functional.gelu(torch.from_numpy(h)).numpy()
    expected = (h @ p["output.kernel"] + p["output.bias"])[:, 0]
    np.testing.assert_allclose(predict_logits(simple, x), expected, rtol=1e-4, atol=1e-5)


def test_weighted_bce_and_class_balanced_batches():
    logits = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    labels = np.array([1, 0, 0, 1], np.float32)
    weights = np.array([3.0, 1.0, 1.0, 3.0], np.float32)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels),
                                                              reduction="none").numpy()
    assert float(weighted_bce(logits, labels, weights)) == pytest.approx(float((ref * weights).sum() / 8), rel=1e-6)
    train_labels = np.array([1] * 10 + [0] * 90)
    settings = TrainSettings(batch_size=16, class_balance="balanced_batches")
    rows, w = _epoch_batches(train_labels, settings, epoch=0, pos_weight=1.0)
    assert rows.shape == (7, 16) and (w == 1).all()
    assert (train_labels[rows].sum(axis=1) == 8).all()  # every batch half harmful
    rows, w = _epoch_batches(train_labels, TrainSettings(batch_size=16), epoch=0, pos_weight=9.0)
    real = w > 0
    assert sorted(rows[real].tolist()) == list(range(100))  # each row once per epoch, padding weighted 0
    assert set(w[real & (train_labels[rows] == 1)].tolist()) == {9.0}


def _noisy_problem():
    """64 training rows with 35% flipped labels, clean validation: validation accuracy rises, then falls as the
    network memorises the noise."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(32)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = (x @ w > 0).astype(int)
    flip = rng.random(64) < 0.35
    y[flip] = 1 - y[flip]
    xv = rng.standard_normal((256, 32)).astype(np.float32)
    return x, y, xv, (xv @ w > 0).astype(int)


def test_early_stopping_restores_the_best_epoch_not_the_last():
    x, y, xv, yv = _noisy_problem()
    settings = TrainSettings(num_epochs=20, patience=5, early_stopping_metric="accuracy", batch_size=16,
                             learning_rate=3e-3, lr_plateau_patience=0, class_balance="none")
    result = train_classifier(x, y, xv, yv, hidden_dims=(256,), settings=settings)
    accuracy = [h["val_accuracy"] for h in result.history]
    assert 0 < result.best_epoch < result.epochs_run - 1 and result.epochs_run < settings.num_epochs
    assert accuracy[result.best_epoch] == max(accuracy) > accuracy[-1]
    restored = predict_logits(result.classifier, xv)  # the last epoch's parameters scored accuracy[-1] < this
    assert np.mean((restored > 0) == (yv == 1)) == accuracy[result.best_epoch]
    # the restored parameters are exactly those after epoch best_epoch (a run is a prefix of any longer run)
    prefix = train_classifier(x, y, xv, yv, hidden_dims=(256,),
                              settings=dataclasses.replace(settings, num_epochs=result.best_epoch + 1))
    assert prefix.history == result.history[:result.best_epoch + 1] and prefix.best_epoch == result.best_epoch
    best, at_best_epoch = flatten_params(result.classifier), flatten_params(prefix.classifier)
    for name in best:
        np.testing.assert_array_equal(best[name], at_best_epoch[name])


def test_training_separates_separable_data_and_is_seeded():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(16)

    def sample(n):
        x = rng.standard_normal((n, 16)).astype(np.float32) * 3 + 10  # off-centre, unnormalised features
        return x, (x @ direction > 10 * direction.sum()).astype(int)

    (x, y), (xv, yv), (xt, yt) = sample(1000), sample(200), sample(200)
    for balance in ("pos_weight", "balanced_batches", "none"):
        settings = TrainSettings(num_epochs=15, class_balance=balance, seed=3)
        a = train_classifier(x, y, xv, yv, hidden_dims=(32,), dropout=0.1, settings=settings)
        assert roc_auc(yt, predict_logits(a.classifier, xt)) > 0.95, balance
    b = train_classifier(x, y, xv, yv, hidden_dims=(32,), dropout=0.1, settings=settings)
    assert a.history == b.history
    np.testing.assert_array_equal(predict_logits(a.classifier, xt), predict_logits(b.classifier, xt))
    with pytest.raises(ValueError, match="harmful"):
        train_classifier(x, np.zeros(len(x), int), xv, yv, settings=settings)
    with pytest.raises(ValueError, match="class_balance"):
        TrainSettings(class_balance="oversample")


# ------------------------------------------------------------------------------------ features, artifact, scorer


@pytest.fixture(scope="module")
def llama(tiny_hf_dirs):
    directory = tiny_hf_dirs["llama"]
    return from_pretrained(directory, dtype="float32"), AutoTokenizer.from_pretrained(directory), directory


def _trained_ssi(model, tokenizer, residual_index=2, hidden_dims=(16,), seed=0) -> tuple[SSI, np.ndarray]:
    features = prompt_features(model, tokenizer, PROMPTS, residual_index=residual_index, max_length=64,
                               progress=False)
    result = train_classifier(features, LABELS, features, LABELS, hidden_dims=hidden_dims, dropout=0.1,
                              settings=TrainSettings(num_epochs=3, seed=seed))
    config = SSIConfig(residual_index=residual_index, threshold=0.5, d_model=model.config.hidden_size,
                       hidden_dims=hidden_dims, pooling="last", chat_template=False,
                       base_model_fingerprint=model.fingerprint, train_languages=("en", "zh", "ko"), max_length=64,
                       dropout=0.1, base_model_path=str(model.source_path),
                       base_model_num_layers=model.config.num_layers, base_model_dtype=model.config.param_dtype,
                       tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=False, max_length=64))
    return SSI(config, result.classifier), features


def test_features_are_hf_hidden_states_at_the_residual_index(llama):
    model, tokenizer, directory = llama
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = tokenize_prompts(tokenizer, PROMPTS[:3], max_length=64)
    for k in (1, model.config.num_layers):  # k == L is after the final norm, as HF
        features = prompt_features(model, tokenizer, PROMPTS[:3], residual_index=k, max_length=64, progress=False)
        for i, t in enumerate(ids):
            with torch.no_grad():
                hidden = hf(input_ids=torch.tensor(t[None].astype(np.int64)), output_hidden_states=True).hidden_states
            np.testing.assert_allclose(features[i], hidden[k][0, -1].numpy(), atol=1e-4)


def test_feature_cache_is_keyed_and_used(llama, tmp_path):
    model, tokenizer, _ = llama
    first = prompt_features(model, tokenizer, PROMPTS, residual_index=2, max_length=64, cache_dir=tmp_path,
                            progress=False)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    np.savez(files[0], features=np.zeros_like(first))  # a hit must return the cached array
    assert not prompt_features(model, tokenizer, PROMPTS, residual_index=2, max_length=64, cache_dir=tmp_path,
                               progress=False).any()
    for changed in ({"residual_index": 1}, {"max_length": 5}):  # other features -> other keys
        kwargs = {"residual_index": 2, "max_length": 64, **changed}
        assert prompt_features(model, tokenizer, PROMPTS, cache_dir=tmp_path, progress=False, **kwargs).any()
    reordered = prompt_features(model, tokenizer, PROMPTS[::-1], residual_index=2, max_length=64,
                                cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(reordered[::-1], first, atol=1e-5)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_artifact_round_trip_gives_identical_scores(llama, tmp_path):
    model, tokenizer, _ = llama
    ssi, features = _trained_ssi(model, tokenizer)
    expected = ssi.probabilities(features)
    path = save_ssi(tmp_path / "ssi", ssi, metrics={"note": "x"})
    assert sorted(os.listdir(path)) == sorted([CONFIG_FILE, PARAMS_FILE, METRICS_FILE])
    config = json.loads((tmp_path / "ssi" / CONFIG_FILE).read_text())
    for key in ("residual_index", "threshold", "d_model", "hidden_dims", "pooling", "chat_template",
                "base_model_fingerprint", "train_languages", "max_length", "dropout", "threshold_rule",
                "schema_version"):
        assert key in config
    assert config["hidden_dims"] == [16] and config["chat_template"] is False
    loaded = load_ssi(tmp_path, model=model)  # a workdir holding ssi/ works too
    assert loaded.config == ssi.config
    scorer = SSIScorer(model, loaded)
    probs, flags = scorer.score(PROMPTS)
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_array_equal(flags, expected > 0.5)
    np.testing.assert_array_equal(scorer(PROMPTS), flags)
    empty_probs, empty_flags = scorer.score([])
    assert empty_probs.shape == empty_flags.shape == (0,)
    with pytest.raises(ValueError, match="list of prompt strings"):
        scorer.score("one string")
    with pytest.raises(FileExistsError):
        save_ssi(tmp_path / "ssi", ssi)
    # a threshold chosen on logits decides on logits: 17.5 and 19 both saturate to p = 1.0 but are told apart
    on_logits = SSI(dataclasses.replace(ssi.config, threshold=float(sigmoid(18.25)), threshold_logit=18.25),
                    ssi.classifier)
    np.testing.assert_array_equal(on_logits.decide(np.array([17.5, 19.0], np.float32)), [False, True])
    np.testing.assert_array_equal(ssi.decide(np.array([17.5, 19.0], np.float32)), [True, True])
    save_ssi(tmp_path / "logit_ssi", on_logits)
    reloaded = load_ssi(tmp_path / "logit_ssi", model=model)
    assert reloaded.config.threshold_logit == 18.25 and reloaded.config == on_logits.config
    logits, logit_flags = SSIScorer(model, reloaded).score_logits(PROMPTS)
    np.testing.assert_array_equal(logit_flags, logits > 18.25)
    np.testing.assert_array_equal(sigmoid(logits), expected)
    # the callable form plugs into KTO latent labels (mode "ssi")
    rows = [PreferenceRow(prompt=p, completion="ok", desirable=True, source="s") for p in PROMPTS]
    labelled = assign_latent_labels(rows, mode="ssi", ssi_flags=scorer)
    assert [r.is_unsafe for r in labelled] == [int(f) for f in flags]


def test_scorer_rejects_other_models_and_tokenizers(llama, tiny_hf_dirs, tmp_path):
    model, tokenizer, _ = llama
    ssi, _ = _trained_ssi(model, tokenizer, hidden_dims=())
    other = from_pretrained(tiny_hf_dirs["qwen2"], dtype="float32")
    with pytest.raises(ValueError) as err:
        SSIScorer(other, ssi)
    assert model.fingerprint in str(err.value) and other.fingerprint in str(err.value)
    wide = SSI(dataclasses.replace(ssi.config, d_model=32), new_classifier(32, (), 0.0, seed=0))
    with pytest.raises(ValueError, match=r"d_model 32 .* hidden_size 64"):
        SSIScorer(model, wide)
    qwen_tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dirs["qwen2"])
    with pytest.raises(ValueError, match="tokenizer"):
        SSIScorer(model, ssi, tokenizer=qwen_tokenizer)
    save_ssi(tmp_path / "ssi", ssi)
    with pytest.raises(ValueError, match="fingerprint"):
        load_ssi(tmp_path / "ssi", model=other)


def test_load_ssi_validates_the_schema(llama, tmp_path):
    model, tokenizer, _ = llama
    ssi, _ = _trained_ssi(model, tokenizer)
    save_ssi(tmp_path / "ssi", ssi)
    config_path = tmp_path / "ssi" / CONFIG_FILE
    good = json.loads(config_path.read_text())
    for change, message in [({"schema_version": 99}, "schema_version"), ({"pooling": "max"}, "'pooling'"),
                            ({"hidden_dims": 16}, "'hidden_dims'"), ({"chat_template": "no"}, "'chat_template'"),
                            ({"hidden_dims": [8]}, "wrong shape")]:
        config_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message):
            load_ssi(tmp_path / "ssi")
    config_path.write_text(json.dumps({k: v for k, v in good.items() if k != "threshold"}))
    with pytest.raises(ValueError, match="missing field 'threshold'"):
        load_ssi(tmp_path / "ssi")
    config_path.write_text(json.dumps({**good, "threshold_logit": "high"}))
    with pytest.raises(ValueError, match="'threshold_logit' must be a number"):
        load_ssi(tmp_path / "ssi")
    # an artifact written before threshold_logit existed loads and keeps its rule, p > threshold
    config_path.write_text(json.dumps({k: v for k, v in good.items() if k != "threshold_logit"}))
    old = load_ssi(tmp_path / "ssi")
    assert old.config.threshold_logit is None
    np.testing.assert_array_equal(old.decide(np.array([-1.0, 0.5, 30.0])), [False, True, True])
    with pytest.raises(FileNotFoundError):
        load_ssi(tmp_path / "nothing")


def test_residual_index_from_locate_workdir(tmp_path, caplog):
    from ml_collections import ConfigDict

    layers = [{"layer": k, "s_lang": 0.1, "s_sem": 0.2, "diff": 0.1, "diff_lo": 0.0, "diff_hi": 0.2,
               "pick_share": 0.25} for k in range(4)]
    (tmp_path / "bottleneck.json").write_text(json.dumps(
        {"best_layer": 2, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
         "num_points": 10}))
    with caplog.at_level("INFO", logger="lasa_jax.ssi.stage"):
        assert resolve_residual_index(ConfigDict({"residual_index": -1, "locate_workdir": str(tmp_path)})) == 2
    assert "residual index 2 = best_layer of" in caplog.text and "verdict not recorded" in caplog.text  # old file
    assert resolve_residual_index(ConfigDict({"residual_index": 1, "locate_workdir": str(tmp_path)})) == 1
    caplog.clear()
    (tmp_path / "bottleneck.json").write_text(json.dumps(
        {"best_layer": 1, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
         "num_points": 10, "selection_range": [1, 3], "bottleneck_found": False,
         "reason": "the argmax k* = 1 is at the edge of the candidate range 1..3"}))
    with caplog.at_level("INFO", logger="lasa_jax.ssi.stage"):
        assert resolve_residual_index(ConfigDict({"residual_index": -1, "locate_workdir": str(tmp_path)})) == 1
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "k* = 1 is NOT a semantic bottleneck: the argmax k* = 1 is at the edge" in \
        warning[0].getMessage() and "set config field residual_index to K" in warning[0].getMessage()
    with pytest.raises(ValueError, match="locate_workdir"):
        resolve_residual_index(ConfigDict({"residual_index": -1, "locate_workdir": ""}))


# ------------------------------------------------------------------------------------------------ end to end


def _run_script(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lasa_jax.scripts.train_ssi", "--config=configs/ssi.py", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _write_located_layer(locate_workdir, model, best_layer):
    """A valid Locate report (bottleneck.json) for `model`, as run_locate writes it, naming `best_layer` as k*."""
    layers = [{"layer": k, "s_lang": 0.1, "s_sem": 0.2, "diff": 0.1, "diff_lo": 0.0, "diff_hi": 0.2,
               "pick_share": float(k == best_layer)} for k in range(model.config.num_layers + 1)]
    locate_workdir.mkdir(parents=True)
    (locate_workdir / "bottleneck.json").write_text(json.dumps(
        {"best_layer": best_layer, "num_layers": model.config.num_layers, "layers": layers,
         "languages": ["en", "zh"], "num_groups": 5, "num_points": 10, "model": model.identity()}))


def test_train_ssi_script_end_to_end_on_shared_data(tiny_hf_dirs, shared_data, tmp_path):
    """The script reads k* from a Locate workdir; MultiJail is scored as an evaluation-only set, and a run without
    it trains the very same SSI (parameters, threshold, history)."""
    model = from_pretrained(tiny_hf_dirs["llama"], dtype="float32")
    locate_workdir, workdir = tmp_path / "locate", tmp_path / "run"
    _write_located_layer(locate_workdir, model, best_layer=1)
    start = time.perf_counter()
    proc = _run_script([f"--config.model_path={tiny_hf_dirs['llama']}", "--config.residual_index=-1",
                        f"--config.locate_workdir={locate_workdir}", "--config.dtype=float32",
                        f"--config.data.root={shared_data}", "--config.data.max_groups_per_split=6",
                        "--config.train.num_epochs=4", f"--workdir={workdir}"])
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 90, elapsed  # ~20 s on an idle 2-core machine
    assert f"residual index 1 = best_layer of {locate_workdir}" in proc.stderr
    artifact = workdir / "ssi"
    assert {CONFIG_FILE, PARAMS_FILE, METRICS_FILE, PLOT_FILE} <= set(os.listdir(artifact))
    assert (artifact / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((artifact / CONFIG_FILE).read_text())
    assert config["residual_index"] == 1 and config["d_model"] == 64 and config["hidden_dims"] == [64]
    assert config["base_model_fingerprint"] == model.fingerprint
    assert config["train_languages"] == ["en", "zh", "ko"] and config["threshold_rule"] == "tpr_at_fpr"
    metrics = json.loads((artifact / METRICS_FILE).read_text())
    assert set(metrics["evaluation"]) == {"val", "test_in_distribution", "test_cross_lingual", "benign_flores",
                                          "multijail_harmful"}
    assert metrics["held_out_evaluation"] == ["multijail_harmful"]
    assert set(metrics["evaluation"]["test_cross_lingual"]["per_language"]) == {"it", "ar", "th"}
    all_languages = {"en", "zh", "ko", "it", "vi", "ar", "th", "bn", "sw", "jv"}
    assert set(metrics["evaluation"]["benign_flores"]["per_language"]) == all_languages
    multijail = metrics["evaluation"]["multijail_harmful"]["per_language"]
    assert set(multijail) == all_languages
    for language in ("vi", "bn", "sw", "jv"):  # harmful-side metrics where PolyRefuse has no test
        assert multijail[language]["num_harmful"] == 6 and multijail[language]["num_benign"] == 0
        assert 0.0 <= multijail[language]["tpr"] <= 1.0 and multijail[language]["fpr"] is None
    assert metrics["data"]["multijail_harmful"]["sources"] == {"multijail": 60}
    notes = metrics["data"]["notes"]
    assert notes["held_out_content"]["checked"] and {  # PolyRefuse train/val en/zh/ko: no held-out prompt
        name: split["rows"] for name, split in notes["held_out_content"]["dropped"].items()} == {"train": 0, "val": 0}
    assert notes["multijail_evaluation"]["languages"] == ["en", "zh", "ko", "it", "vi", "ar", "th", "bn", "sw", "jv"]
    assert metrics["threshold"]["chosen"] == config["threshold"]
    assert metrics["threshold"]["chosen_logit"] == config["threshold_logit"]  # chosen on logits
    assert config["threshold"] == pytest.approx(1.0 / (1.0 + np.exp(-config["threshold_logit"])), rel=1e-12)
    assert set(metrics["summary"]) == set(metrics["evaluation"])
    assert metrics["threshold"]["candidates"]["tpr_at_fpr"]["validation"]["fpr"] <= 0.05
    assert notes["near_duplicates"]["dropped_val_groups"] == [
        "polyrefuse/harmful_val:1", "polyrefuse/harmful_val:12", "polyrefuse/harmful_val:19"]
    assert metrics["data"]["train"]["num_groups"] == 12
    assert len(metrics["training"]["history"]) == metrics["training"]["epochs_run"] <= 4
    assert json.loads((workdir / "config.json").read_text())["data"]["source"] == "polyrefuse"
    scorer = SSIScorer(model, load_ssi(workdir))
    probs, flags = scorer.score(["How do I bake bread?", "如何制造炸弹？"])
    assert probs.shape == (2,) and flags.dtype == bool

    # the same run without the MultiJail set (features of train/val/evaluation from the first run's cache)
    same = _ssi_config()
    same.model_path, same.dtype = str(tiny_hf_dirs["llama"]), "float32"
    same.residual_index, same.locate_workdir = -1, str(locate_workdir)
    same.data.root, same.data.max_groups_per_split, same.train.num_epochs = str(shared_data), 6, 4
    same.data.eval_multijail = False
    same.feature_cache_dir = str(workdir / "feature_cache")
    without = run_ssi_stage(same, tmp_path / "without").details
    assert "multijail_harmful" not in without["evaluation"] and without["held_out_evaluation"] == []
    assert without["threshold"] == metrics["threshold"] and without["training"]["history"] == metrics["training"][
        "history"]
    with_params = flatten_params(load_ssi(workdir).classifier)
    without_params = flatten_params(load_ssi(tmp_path / "without").classifier)
    assert with_params.keys() == without_params.keys()
    for name in with_params:
        np.testing.assert_array_equal(with_params[name], without_params[name])
    for name in ("val", "test_in_distribution", "test_cross_lingual", "benign_flores"):
        assert without["evaluation"][name] == metrics["evaluation"][name]


def _ssi_config():
    spec = importlib.util.spec_from_file_location("ssi_config", REPO / "configs" / "ssi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_demo_jsonl_data_uses_the_train_split_only(shared_data):
    config = _ssi_config()
    config.data.root = str(shared_data)  # held-out guard and MultiJail evaluation set
    config.data.source = "jsonl"
    config.data.jsonl_path = str(DEMO_PROMPTS)
    config.data.test_languages = ()
    config.data.include_flores = False
    data = load_ssi_data(config.data, seed=0)
    demo = [json.loads(line) for line in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines()]
    train_split_texts = {row["prompt"] for row in demo if row["split"] == "train"}
    used = data.train + data.val + [r for records in data.evaluation.values() for r in records]
    assert {r.text for r in used} <= train_split_texts  # the demo's eval split is never loaded
    groups = {name: {r.group_id for r in records} for name, records in
              [("train", data.train), ("val", data.val), ("test", data.evaluation["test_in_distribution"])]}
    assert sum(map(len, groups.values())) == 32
    assert len(used) == 3 * (len(groups["train"]) + len(groups["val"])) + 10 * len(groups["test"])
    assert {r.language for r in data.train + data.val + data.evaluation["test_in_distribution"]} == {"en", "zh", "ko"}
    assert {r.language for r in data.evaluation["test_cross_lingual"]} == {"it", "vi", "ar", "th", "bn", "sw", "jv"}
    test_groups = {r.group_id for r in data.evaluation["test_in_distribution"]}
    assert {r.group_id for r in data.evaluation["test_cross_lingual"]} == test_groups
    assert not test_groups & {r.group_id for r in data.train + data.val}
    config.data.source, config.data.root = "polyrefuse", ""
    with pytest.raises(ValueError, match="data.root"):
        load_ssi_data(config.data, seed=0)


def test_multijail_is_an_evaluation_only_set(shared_data):
    config = _ssi_config()
    config.data.root = str(shared_data)
    config.data.max_groups_per_split = 6
    data = load_ssi_data(config.data, seed=0)
    assert set(data.held_out_evaluation) == {"multijail_harmful"} and "multijail_harmful" not in data.evaluation
    multijail = data.held_out_evaluation["multijail_harmful"]
    assert {r.source for r in multijail} == {"multijail"} and {r.label for r in multijail} == {1}
    assert collections.Counter(r.language for r in multijail) == {lang: 6 for lang in MULTIJAIL_LANGUAGES}
    selecting = {r.text for r in data.train + data.val} | {r.text for rs in data.evaluation.values() for r in rs}
    assert not selecting & {r.text for r in multijail}
    config.data.eval_multijail = False
    off = load_ssi_data(config.data, seed=0)
    assert off.held_out_evaluation == {} and off.notes["multijail_evaluation"].startswith("off")
    assert (off.train, off.val, off.evaluation) == (data.train, data.val, data.evaluation)


def test_ssi_data_drops_multijail_prompts_under_another_source_name(shared_data, tmp_path, caplog):
    """A user JSONL (source "myset") holding MultiJail prompts: every such group is gone from train and val."""
    multijail = {(r.group_id, r.language): r.text for r in load_multijail_prompts(shared_data / "multijail")}
    rows = []
    for g in range(40):
        label = g % 2
        en, zh = f"{'weapon' if label else 'cooking'} q{g} w{g}a w{g}b w{g}c", f"问题 {g} 词{g}"  # no near duplicates
        if g < 12 and label:  # six harmful groups copied from MultiJail: English (near) or Chinese (exact)
            if g % 4 == 1:
                en = multijail[(f"multijail:{g}", "en")] + " Thanks!"
            else:
                zh = multijail[(f"multijail:{g}", "zh")]
        rows += [{"prompt": en, "language": "en", "label": label, "group_id": g, "source": "myset"},
                 {"prompt": zh, "language": "zh", "label": label, "group_id": g, "source": "myset"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), encoding="utf-8")
    copied = {f"myset:{g}" for g in range(1, 12, 2)}
    config = _ssi_config()
    config.data.source, config.data.jsonl_path = "jsonl", str(path)
    config.data.train_languages, config.data.test_languages = ("en", "zh"), ()
    config.data.root, config.data.include_flores = str(shared_data), False
    with caplog.at_level("WARNING"):
        data = load_ssi_data(config.data, seed=0)
    dropped = data.notes["held_out_content"]["dropped"]
    dropped_groups = set(dropped["train"]["groups"]) | set(dropped["val"]["groups"])
    assert dropped_groups <= copied
    kinds = {int(group.split(":")[1]) % 4 for group in dropped_groups}
    assert kinds == {1, 3}  # both an English near duplicate and a Chinese exact copy were caught
    assert dropped["train"]["rows"] + dropped["val"]["rows"] == 2 * len(dropped_groups)
    assert not copied & {r.group_id for r in data.train + data.val}  # the rest went to the test split
    assert copied - dropped_groups <= {r.group_id for r in data.evaluation["test_in_distribution"]}
    assert "held-out guard dropped" in caplog.text and set(dropped["train"]["by_set"]) <= {"multijail"}
    config.data.root = ""  # nothing to compare with: an error unless waived, and then the guard says so
    with pytest.raises(InputError, match="allow_missing_held_out"):
        load_ssi_data(config.data, seed=0)
    config.data.allow_missing_held_out = True
    with caplog.at_level("WARNING"):
        unguarded = load_ssi_data(config.data, seed=0)
    assert unguarded.notes["held_out_content"]["checked"] is False
    assert dropped_groups <= {r.group_id for r in unguarded.train + unguarded.val}
    assert "held-out content guard not applied" in caplog.text


def test_train_ssi_on_demo_jsonl(tiny_hf_dirs, tmp_path, shared_data):
    config = _ssi_config()
    config.data.root = str(shared_data)  # the held-out guard
    config.model_path = str(tiny_hf_dirs["qwen3"])
    config.dtype = "float32"
    config.residual_index = 1
    config.data.source = "jsonl"
    config.data.jsonl_path = str(DEMO_PROMPTS)
    config.data.include_flores = False
    config.data.eval_multijail = False
    config.ssi.hidden_dims = "256,128"  # the authors' DeepMLP
    config.ssi.dropout = 0.2
    config.train.num_epochs = 3
    config.train.class_balance = "balanced_batches"
    config.threshold.rule = "accuracy"
    metrics = run_ssi_stage(config, tmp_path).details
    assert set(metrics["evaluation"]) == {"val", "test_in_distribution", "test_cross_lingual"}
    ssi = load_ssi(tmp_path, model=from_pretrained(tiny_hf_dirs["qwen3"], dtype="float32"))
    assert ssi.config.hidden_dims == (256, 128) and ssi.config.threshold_rule == "accuracy"
    assert ssi.config.threshold == metrics["threshold"]["candidates"]["accuracy"]["threshold"]
    assert ssi.config.residual_index == 1 and metrics["training"]["settings"]["class_balance"] == "balanced_batches"
    # the same run again (e.g. after a kill): already finished, nothing redone
    again = run_ssi_stage(config, tmp_path).details
    assert again["wall_seconds"] == metrics["wall_seconds"] and again["run_config_hash"] == metrics["run_config_hash"]
    config.train.num_epochs = 4
    with pytest.raises(FileExistsError, match="overwrite"):  # another configuration: before any work is done
        run_ssi_stage(config, tmp_path)


def test_located_layer_of_another_model_is_refused(tmp_path, tiny_hf_dirs):
    """k* read from a Locate workdir must come from the same model (layer count and fingerprint)."""
    import json

    import ml_collections

    from lasa_jax.models.hf import from_pretrained
    from lasa_jax.ssi.stage import resolve_residual_index

    model = from_pretrained(tiny_hf_dirs["llama"])
    def write(num_layers):
        report = {"best_layer": 1, "num_layers": num_layers, "layers": [
            {"layer": k, "s_lang": 0.0, "s_sem": 0.0, "diff": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "pick_share": 0.0}
            for k in range(num_layers + 1)], "languages": ["en", "zh"], "num_groups": 2, "num_points": 4,
            "model": model.identity()}
        (tmp_path / "bottleneck.json").write_text(json.dumps(report))

    write(model.config.num_layers)
    config = ml_collections.ConfigDict(dict(residual_index=-1, locate_workdir=str(tmp_path),
                                            model_path=str(tiny_hf_dirs["llama"])))
    assert resolve_residual_index(config, model) == 1
    other = from_pretrained(tiny_hf_dirs["qwen3"])  # same number of layers, different weights
    with pytest.raises(ValueError, match="was located on model"):
        resolve_residual_index(config, other)
    write(32)
    with pytest.raises(ValueError, match="located on a model with 32 layers"):
        resolve_residual_index(config, model)
