"""The SSI stage's settings: the one reader of configs/ssi.py; typed values, a stable run hash, and errors that
name the config field."""
import dataclasses

import ml_collections
import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.models.loading import ModelSettings
from lasa_jax.ssi.settings import SSISettings, data_settings, settings


def _holds_no_config(value) -> bool:
    if isinstance(value, ml_collections.ConfigDict):
        return False
    if dataclasses.is_dataclass(value):
        return all(_holds_no_config(getattr(value, f.name)) for f in dataclasses.fields(value))
    return True


def test_settings_are_typed(ssi_config):
    config = ssi_config
    config.update(dict(model_path="/m/base", dtype="float32", capture_batch_size=0, template_kwargs='{"a": 1}'))
    config.data.test_languages = ("Italian", "en", "vi")  # names normalised; train languages dropped
    config.data.jsonl_splits = ("train", "val")
    s = settings(config)
    assert isinstance(s, SSISettings) and _holds_no_config(s)
    assert s.model == ModelSettings(path="/m/base", dtype="float32")
    assert s.capture_batch_size is None and s.template_kwargs == {"a": 1} and s.residual_index == -1
    assert s.data.train_languages == ("en", "zh", "ko") and s.data.test_languages == ("it", "vi")
    assert s.data.jsonl_splits == ("train", "val") and s.data.allow_missing_held_out is False
    assert (s.classifier.hidden_dims, s.classifier.dropout, s.classifier.standardize) == ("d_model", 0.1, True)
    assert (s.threshold.rule, s.threshold.fpr_bound) == ("tpr_at_fpr", 0.05)
    assert s.train.batch_size == 64 and s.train.seed == config.seed
    # the run hash identifies the section: equal for an equal config, different for any changed field
    assert settings(config).run_hash == s.run_hash and len(s.run_hash) == 16
    config.train.num_epochs = 21
    assert settings(config).run_hash != s.run_hash


@pytest.mark.parametrize("field, value, message", [
    ("threshold.rule", "f1", "config field threshold.rule must be one of"),
    ("threshold.fpr_bound", 1.5, r"config field threshold.fpr_bound must be a rate in \[0, 1\]"),
    ("pooling", "max", "config field pooling must be one of"),
    ("max_length", 0, "config field max_length must be an integer >= 1"),
    ("capture_batch_size", -1, "config field capture_batch_size must be an integer >= 0"),
    ("ssi.hidden_dims", "256,abc", "config field ssi.hidden_dims: hidden_dims: expected positive integers"),
    ("ssi.dropout", 1.0, r"config field ssi.dropout must be a number in \[0, 1\)"),
    ("train.class_balance", "oversample", "config field train: class_balance must be one of"),
    ("train.batch_size", 0, "config field train: batch_size must be >= 1"),
    ("data.source", "csv", "config field data.source must be one of"),
    ("data.train_languages", (), "config field data.train_languages must name at least one language"),
    ("data.train_languages", ("en", "klingon"), "config field data.train_languages: unknown language 'klingon'"),
    ("data.root", "", "config field data.root is required for data.source='polyrefuse'"),
    ("data.dedup_jaccard", 2.0, r"config field data.dedup_jaccard must be a Jaccard similarity in \[0, 1\]"),
    ("data.max_groups_per_split", -1, "config field data.max_groups_per_split must be an integer >= 0"),
    ("dtype", "float8", "config field dtype must be one of"),
])
def test_bad_fields_are_named(ssi_config, field, value, message):
    config = ssi_config
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(InputError, match=message):
        settings(config)


def test_data_sources_need_their_files(ssi_config):
    data = ssi_config.data
    data.source = "jsonl"
    with pytest.raises(InputError, match="config field data.jsonl_path is required for data.source='jsonl'"):
        data_settings(data)
    data.jsonl_path, data.val_fraction, data.test_fraction = "/p.jsonl", 0.5, 0.5
    with pytest.raises(InputError, match=r"config field data.val_fraction \+ config field data.test_fraction must"):
        data_settings(data)
    data.source = "authors"
    with pytest.raises(InputError, match="needs config field data.unsafe_train_path"):
        data_settings(data)
    data.unsafe_train_path, data.ultrafeedback_dir, data.val_fraction, data.test_fraction = "/u.json", "/uf", 0.2, 0.2
    assert data_settings(data).source == "authors"
