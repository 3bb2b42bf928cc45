"""lasa_jax.kto.settings: the one reader of the kto config section (typed, frozen, no config inside), its errors
naming the field, and the mesh check."""
import dataclasses

import jax
import ml_collections
import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.kto.settings import KTOSettings, check_mesh, read_settings
from lasa_jax.sharding import make_mesh
from tests.kto.kto_runs import base_kto_config


def _values(settings):
    """Every field value of a settings tree (dataclasses within dataclasses)."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        yield value
        if dataclasses.is_dataclass(value):
            yield from _values(value)


def test_defaults_are_typed_frozen_and_hold_no_config():
    settings = read_settings(base_kto_config("/models/base"))
    assert isinstance(settings, KTOSettings) and settings.model.path == "/models/base"
    assert not any(isinstance(v, ml_collections.ConfigDict) for v in _values(settings))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train.batch_size = 2
    assert settings.data.paths == () and settings.data.polyrefuse.modes == ("baseline", "harm_ablation")
    assert settings.labels.unsafe_prob_by_source == {"safety": 0.5}
    assert settings.train.length_buckets == (64, 128, 256, 512) and settings.train.peak_flops_per_device is None
    # "" dtypes follow dtype; the raw values stay as configured (the memory plan and the run identity read them)
    assert (settings.compute_dtype, settings.reference_dtype, settings.export_dtype) == (
        "bfloat16", "bfloat16", "bfloat16")
    blank = read_settings(base_kto_config("m", **{"compute_dtype": "", "reference.dtype": "", "export.dtype": ""}))
    assert (blank.compute_dtype, blank.reference_dtype, blank.export_dtype) == ("float32",) * 3
    assert blank.reference.dtype == blank.model.compute_dtype == ""
    many = read_settings(base_kto_config("m", **{"data.path": " a.json, b.json ,", "train.length_buckets": "off"}))
    assert many.data.paths == ("a.json", "b.json") and many.train.length_buckets is None


def test_the_paths_the_pipeline_wires_in_are_not_required_to_read_the_section():
    """The pipeline's memory check reads its kto section before model_path, data.path and labels.ssi_dir are set."""
    settings = read_settings(base_kto_config("", **{"labels.mode": "ssi", "data.format": "polyrefuse_completions"}))
    assert settings.model.path == "" and settings.labels.ssi_dir == "" and settings.data.paths == ()


@pytest.mark.parametrize("field, value, message", [
    ("data.format", "parquet", "config field data.format must be one of"),
    ("labels.mode", "oracle", "config field labels.mode must be one of"),
    ("labels.unsafe_prob_by_source", "safety:0.5", "config field labels.unsafe_prob_by_source: expected"),
    ("reference.mode", "offline", "config field reference.mode must be one of"),
    ("reference.dtype", "float16", "config field reference.dtype must be one of"),
    ("export.dtype", "int8", "config field export.dtype must be one of"),
    ("dtype", "float16", "config field dtype must be one of"),
    ("remat_policy", "some", "config field remat_policy must be one of"),
    ("train.balance_weights", "auto", "config field train.balance_weights: expected one of"),
    ("train.batch_size", 1, "config field train.batch_size must be >= 2"),
    ("train.grad_accum_steps", 3, "must be a multiple of config field train.grad_accum_steps"),
    ("train.num_epochs", 0, "need config field train.num_steps > 0 or config field train.num_epochs >= 1"),
    ("train.log_every_steps", 0, "config field train.log_every_steps must be >= 1"),
    ("train.length_buckets", "small", "length buckets: expected 'auto', 'off' or comma-separated lengths"),
    ("data.benign.share", 1.0, "config field data.benign.share: expected a fraction in"),
    ("template_kwargs", "[1]", "config field template_kwargs must be a JSON object"),
])
def test_a_bad_value_is_one_error_naming_its_field(field, value, message):
    with pytest.raises(InputError, match=message):
        read_settings(base_kto_config("m", **{field: value}))


def test_the_micro_batch_must_split_over_the_batch_shards():
    settings = read_settings(base_kto_config("m", **{"train.batch_size": 6, "train.grad_accum_steps": 3}))
    check_mesh(settings, make_mesh(devices=jax.devices()[:2]))  # micro-batch 2 over 2 shards
    with pytest.raises(InputError, match="must be a multiple of the mesh's batch shards"):
        check_mesh(settings, make_mesh(devices=jax.devices()[:4]))
