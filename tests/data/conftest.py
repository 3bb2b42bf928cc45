"""Fixtures of the data tests: synthetic labelled prompts in query groups."""
import numpy as np
import pytest

from lasa_jax.data.labelled import LabelledPrompt


def _synthetic(num_groups=60, languages=("en", "zh", "ko", "sw"), seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for g in range(num_groups):
        label = int(rng.random() < 0.3)
        for lang in languages[:rng.integers(1, len(languages) + 1)]:
            records.append(LabelledPrompt(f"q{g}-{lang}", lang, label, f"src:{g}", "src"))
    return records


@pytest.fixture
def synthetic_prompts():
    """(num_groups=60, languages=("en", "zh", "ko", "sw"), seed=0) -> LabelledPrompts: each group "src:<g>" has one
    label (harmful with probability 0.3) and texts in the first 1..4 of `languages`."""
    return _synthetic
