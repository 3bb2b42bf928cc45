"""Query-group operations (lasa_jax/data/groups.py): grouped splits never leak a group, the disjointness check,
and the subsamplers (per label for the SSI, per source for Locate)."""
import collections

import pytest

from lasa_jax.data.groups import check_disjoint_groups, grouped_split, limit_groups, sample_groups
from lasa_jax.data.labelled import LabelledPrompt
from lasa_jax.data.parallel import ParallelText


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_split_never_leaks_a_group(seed, synthetic_prompts):
    records = synthetic_prompts(seed=seed)
    parts = grouped_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
    check_disjoint_groups(parts)
    owner = {}
    for name, part in parts.items():
        for r in part:
            assert owner.setdefault(r.group_id, name) == name
    assert sorted(r.text for part in parts.values() for r in part) == sorted(r.text for r in records)
    groups = {name: {r.group_id for r in part} for name, part in parts.items()}
    total = sum(len(g) for g in groups.values())
    assert abs(len(groups["train"]) / total - 0.6) < 0.1
    for part in parts.values():  # stratified: both labels everywhere
        assert {r.label for r in part} == {0, 1}
    assert grouped_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed) == parts
    assert grouped_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed + 100) != parts


def test_grouped_split_validates_fractions(synthetic_prompts):
    with pytest.raises(ValueError, match="sum to 1"):
        grouped_split(synthetic_prompts(), {"train": 0.7, "val": 0.2})


def test_check_disjoint_groups_names_the_leak():
    a = LabelledPrompt("x", "en", 0, "s:1", "s")
    b = LabelledPrompt("y", "zh", 0, "s:1", "s")
    with pytest.raises(ValueError, match=r"'s:1' occurs in splits 'train' and 'val'"):
        check_disjoint_groups({"train": [a], "val": [b]})


def test_limit_groups_keeps_whole_groups_per_label(synthetic_prompts):
    records = synthetic_prompts(num_groups=80)
    limited = limit_groups(records, 5, seed=3)
    by_label = collections.defaultdict(set)
    for r in limited:
        by_label[r.label].add(r.group_id)
    assert {label: len(groups) for label, groups in by_label.items()} == {0: 5, 1: 5}
    kept = {r.group_id for r in limited}
    assert [r for r in records if r.group_id in kept] == limited  # whole groups, order preserved
    assert limit_groups(records, 0) == records


def test_sample_groups_per_source():
    records = [ParallelText("a", "en", "s:1", "s"), ParallelText("b", "zh", "s:1", "s"),
               ParallelText("c", "en", "s:2", "s"), ParallelText("d", "ko", "s:2", "s")]
    by_source = dict(stratum=lambda r: r.source, candidates="first_seen", what="max_groups_per_source")
    assert len(sample_groups(records, 1, seed=0, **by_source)) == 2
    assert sample_groups(records, 0, **by_source) == records == sample_groups(records, None, **by_source)  # all
    with pytest.raises(ValueError, match="max_groups_per_source must be >= 0"):
        sample_groups(records, -1, **by_source)
