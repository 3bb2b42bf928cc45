"""Token selection (`select_tokens`): top-k / top-p support and draw frequencies match Hugging Face's warpers."""
import jax
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from lasa_jax.decoding.sampling import select_tokens


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (5, 1.0), (8, 0.7)])
def test_top_k_top_p_support_and_frequencies_match_hf_warpers(top_k, top_p):
    """The tokens our sampler can draw are exactly those HF's warpers keep; draw frequencies match the
    renormalised probabilities."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 24)).astype(np.float32) * 2
    temperature = 0.7
    scores = torch.tensor(logits) / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    reference = torch.softmax(scores, -1).numpy()[0]
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draw = jax.vmap(lambda k: select_tokens(jax.numpy.asarray(logits), k, jax.numpy.float32(temperature),
                                            jax.numpy.float32(top_p), jax.numpy.int32(top_k), greedy=False)[0])
    counts = np.bincount(np.asarray(draw(keys)), minlength=24) / len(keys)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(reference > 0))
    np.testing.assert_allclose(counts, reference, atol=0.03)
