"""The utility scoring kernels (lasa_jax.evaluate.utility_scoring): label log-likelihoods and sentence NLL against
HF PyTorch, one compile per bucket, the mesh, the argmax and its normalisation."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lasa_jax.evaluate import utility as u
from lasa_jax.evaluate.utility_scoring import label_logprobs, label_logps_step, predict_labels, sentence_nll
from lasa_jax.models.hf import from_pretrained
from lasa_jax.sharding import make_mesh

CONTEXTS = ["Sentence: The team won the cup.\nTopic:", "Sentence: 如何在家烤面包？\nTopic:",
            "hi", "Sentence: Làm thế nào để nướng bánh mì ở nhà? Thủ đô của Pháp là gì?\nTopic:",
            "كيف أخبز الخبز في المنزل؟ " * 4]
ATOL = 1e-4  # float32 JAX vs float32 PyTorch log-probabilities (measured ~1e-6)


@pytest.fixture(scope="module")
def llama(tiny_hf_dirs):
    directory = tiny_hf_dirs["llama"]
    return (from_pretrained(directory), AutoTokenizer.from_pretrained(directory),
            AutoModelForCausalLM.from_pretrained(directory).eval())


def _hf_token_logps(hf, ids: np.ndarray) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t >= 1, from one unpadded HF forward."""
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ids[None].astype(np.int64))).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    return logps[:-1].gather(1, torch.tensor(ids[1:, None].astype(np.int64)))[:, 0].numpy()


def test_label_logprobs_match_hf(llama):
    model, tokenizer, hf = llama
    contexts = [u.encode_raw(tokenizer, c) for c in CONTEXTS]
    labels = u.label_token_ids(tokenizer)
    assert all(c[0] == tokenizer.bos_token_id for c in contexts)  # Llama style: default special tokens add BOS
    assert len({len(label) for label in labels}) > 1  # labels of different lengths exercise the label padding
    got = label_logprobs(model, contexts, labels, batch_size=2)
    assert got.shape == (len(CONTEXTS), len(labels))
    for n, context in enumerate(contexts):
        for c, label in enumerate(labels):
            full = np.concatenate([context, label])
            expected = _hf_token_logps(hf, full)[len(context) - 1:].sum()
            np.testing.assert_allclose(got[n, c], expected, atol=ATOL, rtol=0)


def test_label_logprobs_compile_once_per_bucket(llama):
    model, tokenizer, _ = llama
    labels = u.label_token_ids(tokenizer)
    rng = np.random.default_rng(0)
    contexts = [rng.integers(5, 300, n).astype(np.int32) for n in (3, 9, 14, 20, 30, 5, 7)]  # buckets 16 and 32
    before = label_logps_step._cache_size()
    label_logprobs(model, contexts, labels, batch_size=3)  # a batch size no other test uses: fresh programs
    assert label_logps_step._cache_size() - before == 2


@pytest.mark.slow  # ~90 s on the shared 2-core machine (compiles for an 8-device mesh)
def test_label_logprobs_on_mesh_equal_single_device(tiny_hf_dirs):
    directory = tiny_hf_dirs["qwen2"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    contexts = [u.encode_raw(tokenizer, c) for c in CONTEXTS]
    labels = u.label_token_ids(tokenizer)
    single = label_logprobs(from_pretrained(directory), contexts, labels, batch_size=4)
    sharded = label_logprobs(from_pretrained(directory, mesh=make_mesh(data=2, fsdp=2, tensor=2)), contexts,
                               labels, batch_size=4)
    np.testing.assert_allclose(sharded, single, atol=2e-5)


def test_sentence_nll_matches_hf(llama):
    model, tokenizer, hf = llama
    ids = [u.encode_raw(tokenizer, c) for c in CONTEXTS]
    nll, tokens = sentence_nll(model, ids, batch_size=2)
    for i, sentence in enumerate(ids):
        assert tokens[i] == len(sentence) - 1
        np.testing.assert_allclose(nll[i], -_hf_token_logps(hf, sentence).sum(), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        sentence_nll(model, [np.array([5], np.int32)])


def test_predict_labels_argmax_and_normalisation():
    # label 0 has 1 token, label 1 has 3 tokens, label 2 has 2 tokens
    logps = np.array([[-2.0, -3.0, -2.5],     # sum: 0 wins; per token: 1 (-1.0) wins
                      [-1.0, -6.0, -4.0],     # both: 0
                      [-3.0, -9.0, -3.0]])    # sum: tie 0/2 -> 0; per token: 2 (-1.5)
    lengths = [1, 3, 2]
    assert predict_labels(logps, lengths, "none").tolist() == [0, 0, 0]
    assert predict_labels(logps, lengths, "token").tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="normalization"):
        predict_labels(logps, lengths, "byte")
