"""Fixtures of the Locate tests: a fresh configs/locate.py config, and parallel features with a known answer."""
import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def locate_config():
    """A fresh configs/locate.py config for quick runs: float32, no progress bar, 20 bootstrap resamples, no t-SNE."""
    spec = importlib.util.spec_from_file_location("locate_config", REPO / "configs" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.dtype = "float32"
    config.progress = False
    config.selection.num_bootstrap = 20
    config.report.tsne_layers = ""
    return config


def _parallel_points(num_groups, num_languages, d, group_scale, language_scale, seed):
    """Points of a parallel corpus: group centre * group_scale + language centre * language_scale + noise."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(num_groups), num_languages)
    languages = np.tile(np.arange(num_languages), num_groups)
    x = (group_scale * rng.standard_normal((num_groups, d))[groups]
         + language_scale * rng.standard_normal((num_languages, d))[languages] + rng.standard_normal((groups.size, d)))
    return x.astype(np.float32), languages, groups


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


@pytest.fixture
def parallel_points():
    """(num_groups, num_languages, d, group_scale, language_scale, seed) -> (x (G*Lang, d) float32, language codes,
    group codes): group centre * group_scale + language centre * language_scale + unit noise."""
    return _parallel_points


@pytest.fixture
def known_layer_features():
    """(semantic_layers=(3,), num_layers=6, seed=0) -> (features (L+1, 150, 32), languages, group ids): 30 groups x
    5 languages; the residual indices in `semantic_layers` cluster by group, the others by language."""
    return _known_layer_features
