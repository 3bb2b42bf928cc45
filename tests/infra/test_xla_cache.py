"""The persistent compilation cache switch (lasa_jax.infra.xla_cache): default location, explicit directory, off."""
import jax

from lasa_jax.infra import xla_cache


def test_cache_location_and_off_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("LASA_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(xla_cache.ENV, raising=False)
    assert xla_cache.compilation_cache_dir() == str(tmp_path / "cache" / "xla")
    assert xla_cache.compilation_cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")
    assert xla_cache.compilation_cache_dir("off") is None
    monkeypatch.setenv(xla_cache.ENV, "off")
    assert xla_cache.compilation_cache_dir() is None
    previous = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert xla_cache.enable_compilation_cache() is None and not jax.config.jax_compilation_cache_dir
        monkeypatch.setenv(xla_cache.ENV, str(tmp_path / "xla"))
        assert xla_cache.enable_compilation_cache() == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert xla_cache.enable_compilation_cache("off") == str(tmp_path / "xla")  # an existing setting is kept
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
