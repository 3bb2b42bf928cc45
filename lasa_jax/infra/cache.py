"""The one cache directory of lasa-jax (`$LASA_JAX_CACHE`, default `~/.cache/lasa-jax`): fetched models, the
compiled XLA programs, the trained no-model judge, generated benign answers; each user lays out `<cache_dir()>/<kind>/`.
Entries are written atomically by their users (a temporary sibling, then a rename)."""
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
