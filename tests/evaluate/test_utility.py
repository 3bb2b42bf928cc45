"""The utility metric (lasa_jax.evaluate.utility): the t interval, the sampled sentences and prompts, and the
evaluate stage's utility section end to end (or why it did not run)."""
import json
import math

import ml_collections
import pytest

from lasa_jax.evaluate import utility as u
from lasa_jax.evaluate.report_markdown import render_utility_markdown
from lasa_jax.evaluate.settings import UtilitySettings, utility_run_settings


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
    settings = UtilitySettings(languages=("en", "zh"), max_sentences=5, k_shot=2, seed=3)
    data = u.load_utility_data(tmp_path / "flores200_sib200", settings)
    assert list(data) == ["en", "zh"]
    ids = {lang: [r["index_id"] for r in data[lang]["classify"]] for lang in data}
    assert ids["en"] == ids["zh"] and len(ids["en"]) == 5 and all(i.startswith("test") for i in ids["en"])
    assert all(r["index_id"].startswith("dev") for r in data["en"]["nll"])
    assert len(data["en"]["shots"]) == 2 and all(r["split"] == "train" for r in data["en"]["shots"])
    prompt = u.topic_prompt("X.", data["en"]["shots"])
    assert prompt.startswith(u.PROMPT_HEADER) and prompt.endswith("Sentence: X.\nTopic:")
    assert prompt.count("\nTopic:") == 3  # two shots and the query


def _utility_config(data_root, model_path, **overrides):
    c = ml_collections.ConfigDict(dict(dtype="float32", compute_dtype="", model_path=""))
    c.utility = ml_collections.ConfigDict(dict(
        enabled=True, data_root=str(data_root), languages="en,zh", max_sentences=4, split="test", nll_split="dev",
        k_shot=1, normalization="token", batch_size=4, seed=0, tokenizer_path="",
        models=ml_collections.ConfigDict(dict(baseline=str(model_path), lasa=str(model_path)))))
    c.utility.update(overrides)
    return c


def test_run_utility_end_to_end_and_report(tmp_path, tiny_hf_dirs):
    _write_sib200(tmp_path)
    section = u.run_utility(utility_run_settings(_utility_config(tmp_path, tiny_hf_dirs["llama"])),
                            out_dir=str(tmp_path))
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
    section = u.run_utility(utility_run_settings(_utility_config("", tiny_hf_dirs["llama"])))
    assert section == {"status": "not run", "reason": section["reason"]} and "data_root" in section["reason"]
    no_data = u.run_utility(utility_run_settings(_utility_config(tmp_path, tiny_hf_dirs["llama"])))
    assert no_data["reason"].startswith("no FLORES")
    assert "utility: not run: " in "\n".join(render_utility_markdown(section))
