"""The persistent XLA compilation cache, on by default: `enable_compilation_cache(setting)` sets it up once per run.

Location: `$LASA_JAX_XLA_CACHE` if set, else `<lasa_jax.infra.cache.cache_dir()>/xla` (`$LASA_JAX_CACHE/xla`, by
default `~/.cache/lasa-jax/xla`); a `setting` (e.g. a config field) other than "" or "auto" names the directory.
Off switch: setting or `$LASA_JAX_XLA_CACHE` = "off" (also "0", "false", "none"). A cache directory already set
(`JAX_COMPILATION_CACHE_DIR` or `jax.config`, e.g. by tests) is left as it is. Programs are cached only when they
took >= `MIN_COMPILE_SECONDS` to compile. The cache stores compiled executables keyed by the program and the
compiler/device versions: it changes no numerics, only the time a rerun (e.g. a resume after preemption, one
program per KTO length bucket) spends compiling. The directory may be a gs:// path on TPU VMs (jax handles it).
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

ENV = "LASA_JAX_XLA_CACHE"
OFF = ("off", "0", "false", "none")
MIN_COMPILE_SECONDS = 1.0


def compilation_cache_dir(setting: str = "") -> str | None:
    """The directory `enable_compilation_cache(setting)` would use, or None when the cache is switched off."""
    value = str(setting or os.environ.get(ENV, "") or "auto").strip()
    if value.lower() in OFF:
        return None
    if value != "auto":
        return value
    from lasa_jax.infra.cache import cache_dir

    return os.path.join(str(cache_dir()), "xla")


def enable_compilation_cache(setting: str = "") -> str | None:
    """Turn the persistent compilation cache on (module docstring); returns the directory in use, or None (off)."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    directory = compilation_cache_dir(setting)
    if directory is None:
        log.info("XLA compilation cache off (%s)", ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    log.info("XLA compilation cache: %s", directory)
    return directory
