"""The generate stage's settings: the one reader of configs/generate.py; typed values, the models per mode, and
errors that name the config field."""
import dataclasses

import ml_collections
import pytest

from lasa_jax.generate.settings import GenerateSettings, eval_set_selection, settings
from lasa_jax.infra.errors import InputError
from lasa_jax.models.loading import ModelSettings


def _holds_no_config(value) -> bool:
    if isinstance(value, ml_collections.ConfigDict):
        return False
    if dataclasses.is_dataclass(value):
        return all(_holds_no_config(getattr(value, f.name)) for f in dataclasses.fields(value))
    return True


def test_settings_are_typed_and_resolve_the_models_per_mode(generate_config):
    config = generate_config
    config.update(dict(mode="lasa", model_path="/m/aligned", base_model_path="/m/base", ssi_dir="/s", dtype="float32",
                       eos_token_ids="7, 9", max_prompt_length=0, template_kwargs='{"enable_thinking": false}'))
    s = settings(config)
    assert isinstance(s, GenerateSettings) and _holds_no_config(s)
    assert s.model == ModelSettings(path="/m/aligned", dtype="float32") and s.base_model.path == "/m/base"
    assert s.base_model.dtype == "float32" and s.tokenizer_path == "/m/aligned" and s.scores
    assert s.eos_token_ids == (7, 9) and s.max_prompt_length is None
    assert s.template_kwargs == {"enable_thinking": False} and s.decoding.seed == config.seed
    assert s.eval_sets.specs == ("multijail", "xstest_safe", "or_bench_hard_test", "oktest")
    # prefix_only generates with the base model: model_path may be empty, base_model_path defaults to it
    config.update(dict(mode="prefix_only", model_path="", base_model_path="/m/base", tokenizer_path="/t"))
    s = settings(config)
    assert s.model.path == s.base_model.path == "/m/base" and s.tokenizer_path == "/t"
    config.update(dict(mode="prefix_only", model_path="/m/base", base_model_path=""))
    assert settings(config).base_model.path == "/m/base"
    config.update(dict(mode="baseline", model_path="/m/instruct", base_model_path="", ssi_dir=""))
    s = settings(config)
    assert s.model.path == "/m/instruct" and s.base_model.path == "" and not s.scores


@pytest.mark.parametrize("field, value, message", [
    ("mode", "gated", "config field mode: expected one of"),
    ("decoding.top_p", 0.0, r"config field decoding.top_p must be a number in \(0, 1\]"),
    ("decoding.max_new_tokens", 0, "config field decoding.max_new_tokens must be an integer >= 1"),
    ("decoding.temperature", -1.0, "config field decoding.temperature must be a number >= 0"),
    ("decoding.top_k", -2, "config field decoding.top_k must be an integer >= 0"),
    ("decoding.batch_size", 0, "config field decoding.batch_size must be an integer >= 1"),
    ("chunk_size", 0, "config field chunk_size must be >= 1"),
    ("max_prompt_length", -1, "config field max_prompt_length must be >= 0"),
    ("eos_token_ids", "7,eos", "config field eos_token_ids must be comma-separated token ids"),
    ("eval_sets", " , ", "config field eval_sets is empty"),
    ("hub.field_map", "[1]", "config field hub.field_map must be a JSON object"),
    ("hub.field_map", "{nope", "config field hub.field_map must be a JSON object"),
    ("max_per_language_sets", "xstest", r"config field max_per_language_sets: \['xstest'\] not in"),
    ("dtype", "float8", "config field dtype must be one of"),
])
def test_bad_fields_are_named(generate_config, field, value, message):
    config = generate_config
    config.update(dict(mode="baseline", model_path="/m/instruct"))
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(InputError, match=message):
        settings(config)


def test_gated_modes_need_an_ssi_and_prefix_only_one_model(generate_config):
    config = generate_config
    config.update(dict(mode="lasa", model_path="/m/aligned", base_model_path="", ssi_dir="/s"))
    with pytest.raises(InputError, match="needs config field ssi_dir and config field base_model_path"):
        settings(config)
    config.update(dict(mode="baseline", base_model_path="", ssi_dir="/s"))  # recording scores needs the base model
    with pytest.raises(InputError, match="needs config field ssi_dir and config field base_model_path"):
        settings(config)
    config.update(dict(mode="prefix_only", model_path="/m/other", base_model_path="/m/base", ssi_dir="/s"))
    with pytest.raises(InputError, match="prefix_only generates with the base model"):
        settings(config)


def test_eval_set_selection_reads_the_prompt_fields(generate_config):
    config = generate_config
    config.update(dict(eval_sets="multijail, jsonl:/p.jsonl", languages="en,sw", max_per_language=3,
                       max_per_language_sets="multijail", data_root="/data"))
    config.hub.field_map = '{"prompt": "text"}'
    selection = eval_set_selection(config)
    assert selection.specs == ("multijail", "jsonl:/p.jsonl") and selection.languages == ("en", "sw")
    assert (selection.max_per_language, selection.limit_sets, selection.data_root) == (3, ("multijail",), "/data")
    assert selection.hub.field_map == {"prompt": "text"} and selection.hub.name is None
