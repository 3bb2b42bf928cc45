"""Latent labels of KTO rows: `is_unsafe` (train with the conditional prefix) from a per-source probability (the
paper's proxy) or from SSI predictions."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lasa_jax.data.preference.rows import PreferenceRow, row_hash_words
from lasa_jax.infra.errors import InputError
from lasa_jax.models.chat import prompt_text

DEFAULT_UNSAFE_PROB_BY_SOURCE = {"safety": 0.5}


def assign_latent_labels(rows: Sequence[PreferenceRow], mode: str = "paper",
                         unsafe_prob_by_source: Mapping[str, float] | None = None, default_prob: float = 0.0,
                         seed: int = 42,
                         ssi_flags: Sequence[bool] | np.ndarray | Callable[[list[str]], np.ndarray] | None = None,
                         ) -> list[PreferenceRow]:
    """Return copies of `rows` with `is_unsafe` set.

    mode "paper": each row is unsafe with probability unsafe_prob_by_source[row.source] (else default_prob),
      drawn from a numpy Generator seeded by (seed, SHA-256 of the row's content: source, group_id, prompt,
      completion, desirable). The label of a row therefore depends on the row only, not on its position, the
      order of the rows or how they are split across workers; the two answers of a pair are drawn independently.
      (The reference drew from one Python RNG in dataset order; the per-row draws are not those numbers.)
    mode "ssi": is_unsafe = SSI prediction for the row's prompt. ssi_flags is either a (num_rows,) sequence of
      bools / 0-1 aligned with rows, or a callable mapping a list of prompt texts (the last user message of each
      distinct prompt) to an array of harmful flags; it is called once with the distinct prompts.
    """
    if mode == "paper":
        if ssi_flags is not None:
            raise InputError("ssi_flags is only used with mode='ssi'")
        labels = _paper_labels(rows, unsafe_prob_by_source, default_prob, seed)
    elif mode == "ssi":
        if ssi_flags is None:
            raise InputError("mode='ssi' needs ssi_flags: per-row flags or a callable scoring prompt texts")
        labels = _ssi_labels(rows, ssi_flags)
    else:
        raise InputError(f"latent-label mode must be 'paper' or 'ssi', got {mode!r}")
    return [dataclasses.replace(row, is_unsafe=label) for row, label in zip(rows, labels)]


def _paper_labels(rows: Sequence[PreferenceRow], unsafe_prob_by_source: Mapping[str, float] | None,
                  default_prob: float, seed: int) -> list[int]:
    """Mode "paper": one seeded draw per row from its content hash (`assign_latent_labels`)."""
    probs = dict(DEFAULT_UNSAFE_PROB_BY_SOURCE if unsafe_prob_by_source is None else unsafe_prob_by_source)
    for name, p in [*probs.items(), ("default_prob", default_prob)]:
        if not 0.0 <= float(p) <= 1.0:
            raise InputError(f"unsafe probability for {name!r} must be in [0, 1], got {p}")
    labels = []
    for row in rows:
        p = float(probs.get(row.source, default_prob))
        generator = np.random.default_rng(np.random.SeedSequence([int(seed), *row_hash_words(row)]))
        labels.append(int(generator.random() < p))
    return labels


def _ssi_labels(rows: Sequence[PreferenceRow],
                ssi_flags: Sequence[bool] | np.ndarray | Callable[[list[str]], np.ndarray]) -> list[int]:
    """Mode "ssi": per-row flags, or the callable's flags of the distinct prompt texts (`assign_latent_labels`)."""
    if callable(ssi_flags):
        texts = [prompt_text(row.prompt) for row in rows]
        distinct = sorted(set(texts))
        flags = _flag_array(ssi_flags(distinct), len(distinct), "the SSI callable's output")
        by_text = dict(zip(distinct, flags))
        return [int(by_text[text]) for text in texts]
    return [int(f) for f in _flag_array(ssi_flags, len(rows), "ssi_flags")]


def _flag_array(values, n: int, name: str) -> np.ndarray:
    """(n,) bool from booleans or 0/1 flags of shape (n,); `name` names them in errors."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {array.shape}")
    if array.dtype != bool and not np.all((array == 0) | (array == 1)):
        raise InputError(f"{name} must hold booleans or 0/1 flags, got values {np.unique(array)[:5]}")
    return array.astype(bool)
