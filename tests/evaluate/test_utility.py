"""Utility metric: label log-likelihoods and NLL against HF PyTorch, argmax, intervals, data, the stage hook."""
import json
import math

import ml_collections
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lasa_jax.evaluate import utility as u
from lasa_jax.evaluate import utility_scoring
from lasa_jax.infra.errors import InputError
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
    got = u.label_logprobs(model, contexts, labels, batch_size=2)
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
    before = utility_scoring.label_logps_step._cache_size()
    u.label_logprobs(model, contexts, labels, batch_size=3)  # a batch size no other test uses: fresh programs
    assert utility_scoring.label_logps_step._cache_size() - before == 2


@pytest.mark.slow  # ~90 s on the shared 2-core machine (compiles for an 8-device mesh)
def test_label_logprobs_on_mesh_equal_single_device(tiny_hf_dirs):
    directory = tiny_hf_dirs["qwen2"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    contexts = [u.encode_raw(tokenizer, c) for c in CONTEXTS]
    labels = u.label_token_ids(tokenizer)
    single = u.label_logprobs(from_pretrained(directory), contexts, labels, batch_size=4)
    sharded = u.label_logprobs(from_pretrained(directory, mesh=make_mesh(data=2, fsdp=2, tensor=2)), contexts,
                               labels, batch_size=4)
    np.testing.assert_allclose(sharded, single, atol=2e-5)


def test_sentence_nll_matches_hf(llama):
    model, tokenizer, hf = llama
    ids = [u.encode_raw(tokenizer, c) for c in CONTEXTS]
    nll, tokens = u.sentence_nll(model, ids, batch_size=2)
    for i, sentence in enumerate(ids):
        assert tokens[i] == len(sentence) - 1
        np.testing.assert_allclose(nll[i], -_hf_token_logps(hf, sentence).sum(), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        u.sentence_nll(model, [np.array([5], np.int32)])


def test_predict_labels_argmax_and_normalisation():
    # label 0 has 1 token, label 1 has 3 tokens, label 2 has 2 tokens
    logps = np.array([[-2.0, -3.0, -2.5],     # sum: 0 wins; per token: 1 (-1.0) wins
                      [-1.0, -6.0, -4.0],     # both: 0
                      [-3.0, -9.0, -3.0]])    # sum: tie 0/2 -> 0; per token: 2 (-1.5)
    lengths = [1, 3, 2]
    assert u.predict_labels(logps, lengths, "none").tolist() == [0, 0, 0]
    assert u.predict_labels(logps, lengths, "token").tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="normalization"):
        u.predict_labels(logps, lengths, "byte")


def test_t_interval_formula():
    values = [2.0, 4.0, 4.0, 5.0, 9.0]
    got = u.t_interval(values, z=1.96)
    mean, s, n = 4.8, math.sqrt(sum((v - 4.8) ** 2 for v in values) / 4), 5
    t_975_4 = 2.7764451051977987  # Student-t 0.975 quantile, 4 degrees of freedom (tables)
    assert got["mean"] == pytest.approx(mean)
    assert got["ci_low"] == pytest.approx(mean - t_975_4 * s / math.sqrt(n), rel=1e-4)
    assert got["ci_high"] == pytest.approx(mean + t_975_4 * s / math.sqrt(n), rel=1e-4)
    assert u.t_interval([1.0])["ci_low"] is None


def _write_sib200(root, languages=("eng_Latn", "zho_Hans"), n=14):
    for code in languages:
        folder = root / "flores200_sib200" / "data" / "annotated" / code
        folder.mkdir(parents=True)
        for split, count in (("train", n), ("dev", n), ("test", n)):
            lines = ["index_id\tcategory\ttext"]
            for i in range(count):
                topic = u.SIB200_TOPICS[i % len(u.SIB200_TOPICS)]
                lines.append(f"{split}{i}\t{topic}\t{code} {split} sentence number {i} about {topic}.")
            (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_load_utility_data_samples_aligned_positions(tmp_path):
    _write_sib200(tmp_path)
    settings = u.UtilitySettings(languages=("en", "zh"), max_sentences=5, k_shot=2, seed=3)
    data = u.load_utility_data(tmp_path / "flores200_sib200", settings)
    assert list(data) == ["en", "zh"]
    ids = {lang: [r["index_id"] for r in data[lang]["classify"]] for lang in data}
    assert ids["en"] == ids["zh"] and len(ids["en"]) == 5 and all(i.startswith("test") for i in ids["en"])
    assert all(r["index_id"].startswith("dev") for r in data["en"]["nll"])
    assert len(data["en"]["shots"]) == 2 and all(r["split"] == "train" for r in data["en"]["shots"])
    prompt = u.topic_prompt("X.", data["en"]["shots"])
    assert prompt.startswith(u.PROMPT_HEADER) and prompt.endswith("Sentence: X.\nTopic:")
    assert prompt.count("\nTopic:") == 3  # two shots and the query
    with pytest.raises(InputError, match="never train"):
        u.UtilitySettings(split="train")


def _utility_config(data_root, model_path, **overrides):
    c = ml_collections.ConfigDict(dict(dtype="float32", compute_dtype="", model_path=""))
    c.utility = ml_collections.ConfigDict(dict(
        enabled=True, data_root=str(data_root), languages="en,zh", max_sentences=4, split="test", nll_split="dev",
        k_shot=1, normalization="token", batch_size=4, seed=0, tokenizer_path="",
        models=ml_collections.ConfigDict(dict(baseline=str(model_path), lasa=str(model_path)))))
    c.utility.update(overrides)
    return c


def test_run_utility_end_to_end_and_report(tmp_path, tiny_hf_dirs):
    from lasa_jax.evaluate.report_markdown import render_utility_markdown

    _write_sib200(tmp_path)
    section = u.run_utility(_utility_config(tmp_path, tiny_hf_dirs["llama"]), out_dir=str(tmp_path))
    assert section["status"] == "ran" and section["reference"] == "baseline"
    base = section["systems"]["baseline"]
    assert set(base["per_language"]) == {"en", "zh"}
    accuracy = base["per_language"]["en"]["accuracy"]
    assert accuracy["total"] == 4 and 0 <= accuracy["ci_low"] <= accuracy["ci_high"] <= 1
    assert base["per_language"]["en"]["accuracy_by_normalization"]["token"] == accuracy  # the config's choice
    rows = [json.loads(line) for line in (tmp_path / "utility_baseline.jsonl").read_text().splitlines()]
    en = [r for r in rows if r["metric"] == "sib200" and r["language"] == "en"]
    assert sum(r["correct"] for r in en) == accuracy["count"]
    assert all(r["predicted"] == r["topic"] for r in en if r["correct"])
    # the same model twice: every difference is exactly 0
    diff = section["differences"]["lasa"]["all"]
    assert diff["accuracy"]["mean"] == 0 and diff["nll"]["mean"] == 0
    markdown = "\n".join(render_utility_markdown(section))
    assert "SIB-200" in markdown and "| en |" in markdown and "lasa − baseline" in markdown


def test_run_utility_not_run_reasons(tmp_path, tiny_hf_dirs):
    from lasa_jax.evaluate.report_markdown import render_utility_markdown

    section = u.run_utility(_utility_config("", tiny_hf_dirs["llama"]))
    assert section == {"status": "not run", "reason": section["reason"]} and "data_root" in section["reason"]
    assert u.run_utility(_utility_config(tmp_path, tiny_hf_dirs["llama"]))["reason"].startswith("no FLORES")
    assert "utility: not run: " in "\n".join(render_utility_markdown(section))
