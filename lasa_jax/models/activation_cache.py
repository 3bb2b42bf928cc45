"""The one on-disk cache of captured activations (Locate's all-layer features, the SSI's features at index k).

An entry is two files with a common stem: `<stem>.npz`, the float32 features and optional per-row columns
(`lasa_jax.models.capture.save_activations`, no pickle), and `<stem>.json`, {"key", "description", "shape", ...caller
metadata}. The key is the SHA-256 of the canonical JSON of `key_description`: cache format, model fingerprint,
parameter and compute dtypes, num_layers, hidden_size, residual index (None = every index 0..L), pooling,
chat-template flag and kwargs, max_length, the digest of the token ids themselves (prompt texts, order, tokenizer,
truncation) and the caller's extras (Locate: the digest of its corpus records).

- `read_entry` returns the stored features only if the JSON's key, the array shape and every given column match;
  in a multi-process run every process must find a match (a collective; a shared file system), else all of them
  compute again. Only process 0 writes (`write_entry`).
- Writing removes the JSON first and writes it last, so a killed writer never leaves a key beside other features.
- Caches written before this format (Locate's activations.json keyed by format 1, the SSI's key-named .npz files
  without a .json beside them) never match a format-2 key: they are recomputed (and overwritten), never misread.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.storage import atomic_write_json
from lasa_jax.models.capture import load_activations, save_activations, token_ids_digest

log = logging.getLogger(__name__)
CACHE_FORMAT = 2


def key_description(model, token_ids: Sequence[np.ndarray], *, residual_index: int | None, pooling: str,
                    chat_template: bool, max_length: int, template_kwargs: Mapping[str, Any] | None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the captured features depend on (module docstring); `entry_key` hashes it."""
    config = model.config
    return {"format": CACHE_FORMAT, "model_fingerprint": model.fingerprint, "param_dtype": config.param_dtype,
            "compute_dtype": config.compute_dtype, "num_layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "residual_index": None if residual_index is None else int(residual_index),
            "pooling": pooling, "chat_template": bool(chat_template), "template_kwargs": dict(template_kwargs or {}),
            "max_length": int(max_length), "token_ids_sha256": token_ids_digest(token_ids), **dict(extra or {})}


def entry_key(description: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a `key_description`."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def entry_paths(stem: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(`<stem>.npz`, `<stem>.json`)."""
    stem = storage.to_path(stem)
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def all_processes_agree(flag: bool) -> bool:
    """True iff `flag` is True on every process (collective in multi-process runs)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.array(flag, np.int32))))


def _read_local(stem: pathlib.Path, key: str, shape: tuple[int, ...], columns: Mapping[str, np.ndarray],
                log: logging.Logger) -> np.ndarray | None:
    npz_path, meta_path = entry_paths(stem)
    if not meta_path.is_file() or not npz_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("ignoring %s: not valid JSON", meta_path)
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        log.info("stored activations %s were made with other inputs; capturing again", npz_path)
        return None
    stored = load_activations(npz_path)
    if stored.get("features") is None or stored["features"].shape != tuple(shape) or any(
            name not in stored or not np.array_equal(stored[name], values) for name, values in columns.items()):
        log.warning("ignoring %s: its contents do not match %s; capturing again", npz_path, meta_path)
        return None
    return stored["features"]


def read_entry(stem: str | pathlib.Path, key: str, shape: tuple[int, ...],
               columns: Mapping[str, np.ndarray] | None = None, logger: logging.Logger | None = None,
               ) -> np.ndarray | None:
    """The features stored under `stem` if its key, shape and `columns` match on every process, else None (why
    is logged to `logger`, default this module's). Collective in multi-process runs: every process must call it."""
    features = _read_local(storage.to_path(stem), key, shape, dict(columns or {}), logger or log)
    if not all_processes_agree(features is not None):
        return None
    return features


def write_entry(stem: str | pathlib.Path, key: str, description: Mapping[str, Any], features: np.ndarray,
                columns: Mapping[str, Sequence] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
    """Store `features` (and per-row `columns`) under `stem` with its key (process 0 only; others return)."""
    if not is_writer():
        return
    npz_path, meta_path = entry_paths(stem)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # never a stale key next to new features
    save_activations(npz_path, features, **dict(columns or {}))
    atomic_write_json(meta_path, {"key": key, "description": dict(description), "shape": list(features.shape),
                                  **dict(metadata or {})})
