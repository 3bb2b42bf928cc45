"""Query-group operations shared by the corpora: the one subsampler, the grouped split, the disjointness check.

Records are any objects with a `group_id` (ParallelText, LabelledPrompt; `grouped_split` and `limit_groups` also
need a 0/1 `label`); a group is all records sharing one, e.g. all translations of one query. Splits and subsamples
take whole groups, so no translation of a query lands on the other side of a split.

Subsampling (`sample_groups`; `limit_groups` = per label): at most n whole groups per stratum (Locate: per source;
SSI: per label). The convention, for every caller: `max_groups` None or 0 keeps everything, a negative value is an
error; the strata are visited in sorted order with one `np.random.default_rng(seed)`, and a stratum with more than
`max_groups` groups keeps `rng.choice(num_groups, max_groups, replace=False)` of its candidate list; record order is
preserved.

The candidate list is either the stratum's group ids in sorted order (`candidates="sorted"`, independent of record
order: the SSI's `limit_groups`) or in order of first appearance (`candidates="first_seen"`: Locate's corpus). Both
orders exist only so that existing configs keep drawing exactly the groups they drew before the two subsamplers
were merged; new callers should use "sorted".

Splitting (`grouped_split`): every group to exactly one named split, stratified by label; `check_disjoint_groups`
verifies a split. (`lasa_jax.locate.probe.grouped_split` is a second, deliberate one: see its docstring.)
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from lasa_jax.infra.errors import InputError

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


def grouped_split(records: Sequence[R], fractions: Mapping[str, float], seed: int = 0,
                  ) -> dict[str, list[R]]:
    """Split records by query group: every group goes to exactly one split.

    fractions: split name -> share of groups (positive, summing to 1). Groups are stratified by label (a group's
    label is its records' maximum label): within each label the groups, in sorted id order, are shuffled with
    `np.random.default_rng(seed)` and cut by cumulative share (rounded; every split with a positive share gets at
    least one group of a label when that label has enough groups). Record order is preserved inside each split.

    `lasa_jax.locate.probe.grouped_split` is a second, deliberate grouped split: a two-way train/val row mask over
    arrays that include unlabelled rows (left in neither), taking val groups first with its own rounding. Merging
    the two would change the groups of every existing SSI split or Locate probe, so both stay.
    """
    names = list(fractions)
    shares = np.array([float(fractions[n]) for n in names])
    if not names or (shares <= 0).any() or abs(shares.sum() - 1.0) > 1e-6:
        raise InputError(f"fractions must be positive and sum to 1, got {dict(fractions)}")
    group_label: dict[str, int] = {}
    for r in records:
        group_label[r.group_id] = max(group_label.get(r.group_id, 0), r.label)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in (0, 1):
        groups = sorted(g for g, lab in group_label.items() if lab == label)
        if not groups:
            continue
        order = [groups[i] for i in rng.permutation(len(groups))]
        counts = _split_counts(len(order), shares)
        start = 0
        for name, count in zip(names, counts):
            for group in order[start:start + count]:
                assignment[group] = name
            start += count
    result: dict[str, list[R]] = {name: [] for name in names}
    for r in records:
        result[assignment[r.group_id]].append(r)
    return result


def _split_counts(num_groups: int, shares: np.ndarray) -> list[int]:
    """Group counts per split: rounded shares, each >= 1 while groups last, summing to num_groups."""
    counts = np.floor(shares * num_groups).astype(int)
    if num_groups >= len(shares):
        counts = np.maximum(counts, 1)
    while counts.sum() > num_groups:  # take from the largest split
        counts[int(np.argmax(counts))] -= 1
    remainders = shares * num_groups - counts
    while counts.sum() < num_groups:  # give to the largest remainder
        i = int(np.argmax(remainders))
        counts[i] += 1
        remainders[i] -= 1.0
    return counts.tolist()


def limit_groups(records: Sequence[R], max_groups: int | None, seed: int = 0) -> list[R]:
    """At most `max_groups` groups of each label, drawn from the groups in sorted id order; record order preserved;
    None or 0 keeps everything (`sample_groups`)."""
    return sample_groups(records, max_groups, stratum=lambda r: r.label, seed=seed, candidates="sorted")


def check_disjoint_groups(splits: Mapping[str, Sequence[R]]) -> None:
    """ValueError naming the group and splits if any query group occurs in more than one split."""
    owner: dict[str, str] = {}
    for name, records in splits.items():
        for r in records:
            other = owner.setdefault(r.group_id, name)
            if other != name:
                raise InputError(f"query group {r.group_id!r} occurs in splits {other!r} and {name!r}; "
                                 f"translations of one query must stay in one split")
