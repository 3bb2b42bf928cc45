"""The evaluate settings (lasa_jax.evaluate.settings): the systems compared, the judges, the utility section and
the calibrate_judge command, read from their configs once, with errors that name the config field."""
import ml_collections
import pytest

from lasa_jax.evaluate.settings import (
    UtilitySettings,
    calibration_settings,
    evaluated_systems,
    read_settings,
    utility_run_settings,
)
from lasa_jax.infra.errors import InputError
from lasa_jax.models.loading import ModelSettings


def test_further_systems_from_the_generations_field(evaluate_config):
    config = evaluate_config
    config.update(baseline_generations="b.jsonl", generations="ablation=p.jsonl, kto_only = l.jsonl", progress=False)
    assert list(evaluated_systems(config)) == ["baseline", "ablation", "kto_only"]
    assert evaluated_systems(config)["kto_only"] == "l.jsonl"
    config.generations = "baseline=l.jsonl"
    with pytest.raises(ValueError, match="system 'baseline' is given twice"):
        evaluated_systems(config)
    config.generations = "l.jsonl"
    with pytest.raises(ValueError, match="expected comma-separated name=path pairs"):
        evaluated_systems(config)


def test_default_settings(evaluate_config):
    evaluate_config.lasa_generations = "lasa.jsonl"
    evaluate_config.data_root = "/shared"
    s = read_settings(evaluate_config)
    assert s.systems == {"lasa": "lasa.jsonl"} and s.asr_sources == ("multijail",)
    assert s.refusal_sources == ("xstest", "or_bench_hard_test", "oktest") and s.paired and s.z == 1.96
    j = s.judge
    assert (j.safety, j.refusal, j.model, j.refusal_model) == ("auto", "heuristic", None, None)
    assert j.labelled == "/shared/polyrefuse_completions" and j.cache_batch_size == 64 and j.template_kwargs == {}
    assert s.utility.enabled and s.utility.models == {} and s.utility.tokenizer_path == ""
    assert s.utility.metric == UtilitySettings(batch_size=8)
    del evaluate_config["utility"]  # configs saved before the utility section existed
    assert read_settings(evaluate_config).utility is None


def test_llm_judges_get_their_model_settings(evaluate_config):
    config = evaluate_config
    config.update(lasa_generations="lasa.jsonl", dtype="float32")
    config.judge.update(safety="llama_guard", refusal="rubric", model_path="/m/guard",
                        template_kwargs='{"enable_thinking": false}')
    j = read_settings(config).judge
    assert j.model == ModelSettings(path="/m/guard", dtype="float32")
    assert j.refusal_model == ModelSettings(path="/m/guard", dtype="float32")  # refusal_model_path "" = model_path
    assert j.template_kwargs == {"enable_thinking": False}
    config.judge.refusal_model_path = "/m/chat"
    assert read_settings(config).judge.refusal_model.path == "/m/chat"
    config.judge.model_path = ""
    with pytest.raises(InputError, match="judge kind 'llama_guard' needs config field judge.model_path"):
        read_settings(config)


@pytest.mark.parametrize("field, value, message", [
    ("judge.safety", "gpt", "config field judge.safety must be one of"),
    ("judge.refusal", "llama_guard", "config field judge.refusal one of"),
    ("judge.batch_size", 0, "config field judge.batch_size must be >= 1"),
    ("judge.cache_batch_size", 0, "config field judge.cache_batch_size must be >= 1"),
    ("z", 0.0, "config field z must be > 0"),
    ("utility.normalization", "byte", "config field utility.normalization must be one of"),
    ("utility.split", "train", "never train"),
    ("dtype", "float8", "config field dtype must be one of"),
])
def test_bad_values_name_their_field(evaluate_config, field, value, message):
    evaluate_config.lasa_generations = "lasa.jsonl"
    evaluate_config.utility.models.baseline = "/m/base"  # the utility models read the base config's dtype
    section, _, name = field.rpartition(".")
    (evaluate_config[section] if section else evaluate_config)[name] = value
    with pytest.raises(InputError, match=message):
        read_settings(evaluate_config)


def test_utility_run_settings(evaluate_config):
    config = evaluate_config
    config.utility.update(max_sentences=0, batch_size=0, languages="en, Chinese", data_root="/d")
    config.utility.models.lasa = "/m/lasa"
    u = utility_run_settings(config)
    assert u.models == {"lasa": ModelSettings(path="/m/lasa")} and u.tokenizer_path == "/m/lasa"
    assert (u.metric.max_sentences, u.metric.batch_size, u.metric.languages) == (None, None, ("en", "zh"))
    config.utility.models.baseline = "/m/base"
    assert utility_run_settings(config).tokenizer_path == "/m/base"  # the baseline's tokenizer first
    config.utility.tokenizer_path = "/m/tok"
    assert utility_run_settings(config).tokenizer_path == "/m/tok"
    with pytest.raises(InputError, match="never train"):
        UtilitySettings(split="train")


def test_calibration_settings():
    config = ml_collections.ConfigDict(dict(data_root="/shared", labelled_dir="", split="odd", progress=False,
                                            judge=dict(safety="heuristic", model_path="", batch_size=8,
                                                       max_new_tokens=32, template_kwargs="")))
    s = calibration_settings(config)
    assert (s.split, s.judge.safety, s.judge.refusal, s.judge.model) == ("odd", "heuristic", "none", None)
    assert s.judge.labelled == "/shared/polyrefuse_completions"
    config.labelled_dir = "/elsewhere"
    assert calibration_settings(config).judge.labelled == "/elsewhere"
    config.split = "third"
    with pytest.raises(InputError, match="config field split must be one of"):
        calibration_settings(config)
