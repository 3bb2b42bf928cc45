"""Where lasa-jax caches things it fetched or derived once (models, judges): one directory, set by LASA_JAX_CACHE.

Layout: `<cache_dir()>/<kind>/<name>/...` (e.g. `models/SmolLM2-135M-Instruct/`). Entries are written atomically
(a temporary sibling, then a rename), so a half-written entry is never read as complete.
"""
from __future__ import annotations

import os
import pathlib

CACHE_ENV = "LASA_JAX_CACHE"


def cache_dir() -> pathlib.Path:
    """`$LASA_JAX_CACHE`, or `~/.cache/lasa-jax` when unset (created on first use)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "lasa-jax")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
