"""lasa_jax.kto.labels: latent labels from the paper's per-source proxy and from SSI flags."""
import math

import numpy as np
import pytest

from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.kto.labels import assign_latent_labels


def test_paper_labels_are_deterministic_order_free_and_follow_the_source_probability():
    rows = [PreferenceRow(f"prompt {i}", f"answer {i}", i % 2 == 0, "safety" if i % 3 else "ultrafeedback",
                          group_id=f"g{i // 2}") for i in range(3000)]
    labels = [r.is_unsafe for r in assign_latent_labels(rows, seed=42)]
    assert labels == [r.is_unsafe for r in assign_latent_labels(rows, seed=42)]
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = assign_latent_labels([rows[i] for i in order], seed=42)
    assert [labels[i] for i in order] == [r.is_unsafe for r in shuffled]
    # a batch split (parallel workers) gives the same labels
    halves = assign_latent_labels(rows[:1000], seed=42) + assign_latent_labels(rows[1000:], seed=42)
    assert [r.is_unsafe for r in halves] == labels
    assert labels != [r.is_unsafe for r in assign_latent_labels(rows, seed=7)]
    safety = np.array([labels[i] for i in range(len(rows)) if rows[i].source == "safety"])
    assert abs(safety.mean() - 0.5) < 4 * math.sqrt(0.25 / safety.size)
    assert not any(labels[i] for i in range(len(rows)) if rows[i].source == "ultrafeedback")
    custom = assign_latent_labels(rows, unsafe_prob_by_source={"safety": 1.0}, default_prob=0.0)
    assert all(r.is_unsafe == (r.source == "safety") for r in custom)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        assign_latent_labels(rows, unsafe_prob_by_source={"safety": 1.5})


def test_ssi_labels_from_flags_or_callable():
    rows = [PreferenceRow("bomb?" if i % 2 else "bread?", "a", True, "safety") for i in range(6)]
    flagged = assign_latent_labels(rows, mode="ssi", ssi_flags=[i % 2 == 1 for i in range(6)])
    assert [r.is_unsafe for r in flagged] == [0, 1, 0, 1, 0, 1]
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return np.array(["bomb" in t for t in texts])

    scored = assign_latent_labels(rows, mode="ssi", ssi_flags=scorer)
    assert [r.is_unsafe for r in scored] == [0, 1, 0, 1, 0, 1] and calls == [["bomb?", "bread?"]]
    with pytest.raises(ValueError, match="shape"):
        assign_latent_labels(rows, mode="ssi", ssi_flags=[True])
