"""The one query-group subsampler: at most n whole groups per stratum (Locate: per source; SSI: per label).

Records are any objects with a `group_id` (ParallelText, LabelledPrompt); a group is all records sharing one. The
convention, for every caller: `max_groups` None or 0 keeps everything, a negative value is an error; the strata are
visited in sorted order with one `np.random.default_rng(seed)`, and a stratum with more than `max_groups` groups
keeps `rng.choice(num_groups, max_groups, replace=False)` of its candidate list; record order is preserved.

The candidate list is either the stratum's group ids in sorted order (`candidates="sorted"`, independent of record
order: the SSI's `limit_groups`) or in order of first appearance (`candidates="first_seen"`: Locate's corpus). Both
orders exist only so that existing configs keep drawing exactly the groups they drew before the two subsamplers
were merged; new callers should use "sorted".
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from lasa_jax.errors import InputError

R = TypeVar("R")
CANDIDATE_ORDERS = ("sorted", "first_seen")


def sample_groups(records: Sequence[R], max_groups: int | None, *, stratum: Callable[[Any], Hashable],
                  seed: int = 0, candidates: str = "sorted", what: str = "max_groups") -> list[R]:
    """At most `max_groups` whole groups of each `stratum(record)` (module docstring); `what` names the setting in
    the error for a negative value."""
    if candidates not in CANDIDATE_ORDERS:
        raise ValueError(f"candidates must be one of {CANDIDATE_ORDERS}, got {candidates!r}")
    if not max_groups:
        return list(records)
    if max_groups < 0:
        raise InputError(f"{what} must be >= 0 (0 or None = all groups), got {max_groups}")
    groups_by_stratum: dict[Hashable, dict[str, None]] = {}  # stratum -> ordered set of group ids
    for r in records:
        groups_by_stratum.setdefault(stratum(r), {}).setdefault(r.group_id)
    rng = np.random.default_rng(seed)
    kept: set[str] = set()
    for key in sorted(groups_by_stratum):
        groups = list(groups_by_stratum[key])
        if candidates == "sorted":
            groups.sort()
        if len(groups) > max_groups:
            groups = [groups[i] for i in rng.choice(len(groups), size=max_groups, replace=False)]
        kept.update(groups)
    return [r for r in records if r.group_id in kept]
