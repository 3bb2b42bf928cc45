"""Row order and KL pairing: the seeded permutation of an epoch and the derangements that pair each row's prompt with
another row's completion (avoiding the row's own group and its own prompt)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lasa_jax.infra.errors import InputError


def epoch_permutation(num_rows: int, epoch: int, seed: int) -> np.ndarray:
    """The row order of `epoch`: a permutation of range(num_rows), int64, a pure function of (seed, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0, int(epoch)])).permutation(num_rows)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) without fixed points (n >= 2), by rejection sampling.

    A random permutation is a derangement with probability ≈ 1/e, so this takes about e draws on average.
    """
    if n < 2:
        raise InputError(f"a derangement needs n >= 2, got {n}")
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


def kl_partners(group_ids: Sequence[str], rng: np.random.Generator, max_tries: int = 1000,
                prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """partner[i] != i such that rows i and partner[i] share neither group_ids nor prompt_keys (if given) where
    possible: row i's KL row pairs its prompt with row partner[i]'s completion.

    Uniform derangements are drawn until one has no clash (a pair of the same group or the same prompt); if none is
    found in `max_tries` draws (e.g. most rows share one prompt), the draw with the fewest clashing pairs is
    returned (see `kl_clashes`).
    """
    codes = _key_codes(group_ids, prompt_keys)
    best, best_clashes = None, None
    for _ in range(max_tries):
        partner = derangement(len(group_ids), rng)
        clashes = int(_clashes(codes, partner).sum())
        if best is None or clashes < best_clashes:
            best, best_clashes = partner, clashes
        if clashes == 0:
            break
    return best


def kl_clashes(group_ids: Sequence[str], partner: np.ndarray, prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool: row i and its KL partner partner[i] share a group id or (if given) a prompt key."""
    return _clashes(_key_codes(group_ids, prompt_keys), partner)


def _key_codes(*key_lists: Sequence[str] | None) -> list[np.ndarray]:
    """Each given list of N keys as (N,) integer codes (equal keys, equal codes)."""
    return [np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1] for keys in key_lists
            if keys is not None]


def _clashes(codes: Sequence[np.ndarray], partner: np.ndarray) -> np.ndarray:
    """(N,) bool: row i and row partner[i] have equal codes in any of `codes`."""
    return np.logical_or.reduce([c[partner] == c for c in codes])
