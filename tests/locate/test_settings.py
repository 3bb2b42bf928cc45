"""Locate's settings (lasa_jax/locate/settings.py): the model fields as ModelSettings, frozen, checked values,
and the t-SNE layer list."""
import dataclasses

import pytest

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.locate.settings import parse_tsne_layers, settings
from lasa_jax.models.loading import ModelSettings


def test_settings_hold_the_model_settings_and_are_frozen(locate_config):
    config = locate_config
    config.model_path = "some/model"
    s = settings(config)
    assert s.model == ModelSettings(path="some/model", dtype="float32", compute_dtype="", attention_backend="einsum")
    assert s.data.languages == MULTIJAIL_LANGUAGES and s.selection.num_bootstrap == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    config.model_path = ""
    assert settings(config).model.path == ""  # a loaded model may be given to run instead
    config.dtype = "float8"
    with pytest.raises(ValueError, match="config field dtype"):
        settings(config)


def test_tsne_layers_parse():
    assert parse_tsne_layers("best, 1,best", best_layer=2, num_layers=3) == (2, 1)
    assert parse_tsne_layers("", best_layer=2) == ()
    with pytest.raises(ValueError, match="0..3"):
        parse_tsne_layers("4", best_layer=2, num_layers=3)
