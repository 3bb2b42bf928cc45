"""The SSI artifact: save / load round trip with identical scores, decisions on logits, the scorer's checks of the
base model and tokenizer, schema validation, and the scorer as KTO's latent-label callable."""
import dataclasses
import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.models.hf import from_pretrained
from lasa_jax.ssi.artifact import (
    CONFIG_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    SSI,
    SSIConfig,
    SSIScorer,
    load_ssi,
    save_ssi,
    sigmoid,
)
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.mlp import new_classifier
from lasa_jax.ssi.training import TrainSettings, train_classifier


def _trained_ssi(model, tokenizer, prompts, labels, residual_index=2, hidden_dims=(16,),
                 seed=0) -> tuple[SSI, np.ndarray]:
    features = prompt_features(model, tokenizer, prompts, residual_index=residual_index, max_length=64,
                               progress=False)
    result = train_classifier(features, labels, features, labels, hidden_dims=hidden_dims, dropout=0.1,
                              settings=TrainSettings(num_epochs=3, seed=seed))
    config = SSIConfig(residual_index=residual_index, threshold=0.5, d_model=model.config.hidden_size,
                       hidden_dims=hidden_dims, pooling="last", chat_template=False,
                       base_model_fingerprint=model.fingerprint, train_languages=("en", "zh", "ko"), max_length=64,
                       dropout=0.1, base_model_path=str(model.source_path),
                       base_model_num_layers=model.config.num_layers, base_model_dtype=model.config.param_dtype,
                       tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=False, max_length=64))
    return SSI(config, result.classifier), features


def test_artifact_round_trip_gives_identical_scores(llama, tmp_path, prompts, labels):
    model, tokenizer, _ = llama
    ssi, features = _trained_ssi(model, tokenizer, prompts, labels)
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
    probs, flags = scorer.score(prompts)
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_array_equal(flags, expected > 0.5)
    np.testing.assert_array_equal(scorer(prompts), flags)
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
    logits, logit_flags = SSIScorer(model, reloaded).score_logits(prompts)
    np.testing.assert_array_equal(logit_flags, logits > 18.25)
    np.testing.assert_array_equal(sigmoid(logits), expected)
    # the callable form plugs into KTO latent labels (mode "ssi")
    rows = [PreferenceRow(prompt=p, completion="ok", desirable=True, source="s") for p in prompts]
    labelled = assign_latent_labels(rows, mode="ssi", ssi_flags=scorer)
    assert [r.is_unsafe for r in labelled] == [int(f) for f in flags]


def test_scorer_rejects_other_models_and_tokenizers(llama, tiny_hf_dirs, tmp_path, prompts, labels):
    model, tokenizer, _ = llama
    ssi, _ = _trained_ssi(model, tokenizer, prompts, labels, hidden_dims=())
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


def test_load_ssi_validates_the_schema(llama, tmp_path, prompts, labels):
    model, tokenizer, _ = llama
    ssi, _ = _trained_ssi(model, tokenizer, prompts, labels)
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
