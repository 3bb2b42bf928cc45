"""lasa_jax.data.preference: the readers of preference files (paired JSON, unpaired JSONL, the WildGuard-labelled
PolyRefuse completions) and their record fields."""
import json
import re
import unicodedata

import numpy as np
import pytest

from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.preference.formats import load_paired_preference_json, load_unpaired_jsonl
from lasa_jax.data.preference.polyrefuse import convert_polyrefuse_completions, family_completion_models
from lasa_jax.data.preference.rows import NATURAL_END_CHARS, ends_naturally, prompt_group_id
from lasa_jax.infra.errors import InputError


def test_paired_loader_unpairs_chosen_then_rejected(tmp_path):
    records = [
        {"prompt": [{"role": "user", "content": "q0"}], "chosen": [{"role": "assistant", "content": "no"}],
         "rejected": [{"role": "assistant", "content": "yes"}], "source": "safety", "language": "en",
         "category": "x"},
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "source": "ultrafeedback", "language": "Korean"},
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    rows = load_paired_preference_json(path)
    assert [(r.completion, r.desirable, r.source) for r in rows] == [
        ("no", True, "safety"), ("yes", False, "safety"), ("good", True, "ultrafeedback"),
        ("bad", False, "ultrafeedback")]
    assert rows[0].prompt == [{"role": "user", "content": "q0"}] and rows[2].prompt == "q1"
    assert rows[0].group_id == rows[1].group_id == "pairs.json:0" != rows[2].group_id
    assert rows[0].language == "en" and rows[2].language == "ko" and rows[0].is_unsafe is None

    del records[1]["rejected"]
    path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: record 1: field 'rejected'")):
        load_paired_preference_json(path)
    with pytest.raises(FileNotFoundError):
        load_paired_preference_json(tmp_path / "missing.json")


def test_unpaired_jsonl_labels_and_errors(tmp_path):
    lines = [{"prompt": "a", "completion": "x", "label": True, "source": "s"},
             {"prompt": "b", "completion": [{"role": "assistant", "content": "y"}], "label": "undesirable",
              "source": "s", "language": "ko", "group_id": "g"},
             {"prompt": [{"role": "user", "content": "c"}], "completion": "z", "label": 1, "source": "s"},
             {"prompt": "d", "completion": "w", "label": 0, "source": "s"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    rows = load_unpaired_jsonl(path)
    assert [r.desirable for r in rows] == [True, False, True, False]
    assert rows[1].completion == "y" and rows[1].language == "ko" and rows[1].group_id == "g"
    # without a group_id the group is the prompt: a str and the equal one-message list share it
    assert rows[0].group_id == prompt_group_id("a") == prompt_group_id([{"role": "user", "content": "a"}])
    assert rows[2].group_id == prompt_group_id("c") != rows[0].group_id
    assert rows[0].language == ""
    lines[2]["label"] = "maybe"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: field 'label'")):
        load_unpaired_jsonl(path)
    lines[2]["label"], lines[3]["language"] = 1, "Klingon"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: field 'language'")):
        load_unpaired_jsonl(path)
    path.write_text(json.dumps(lines[0]) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid JSON")):
        load_unpaired_jsonl(path)
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no preference rows"):
        load_unpaired_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_unpaired_jsonl(tmp_path / "missing.jsonl")
    # a UTF-8 byte-order mark (some editors write one) is accepted
    path.write_text("\ufeff" + json.dumps(lines[0]) + "\n", encoding="utf-8")
    assert [r.completion for r in load_unpaired_jsonl(path)] == ["x"]


def test_unpaired_jsonl_complete_field(tmp_path):
    """The optional "complete" field (false: the completion was cut by its generator)."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True, "source": "s", "complete": False})
                    + "\n" + json.dumps({"prompt": "q", "completion": "b", "label": False, "source": "s"}) + "\n",
                    encoding="utf-8")
    assert [r.complete for r in load_unpaired_jsonl(path)] == [False, True]
    path.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True, "source": "s", "complete": 1}),
                    encoding="utf-8")
    with pytest.raises(InputError, match="field 'complete' must be true or false"):
        load_unpaired_jsonl(path)


def test_polyrefuse_converter(shared_data):
    root = shared_data / "polyrefuse_completions"
    rows, counts = convert_polyrefuse_completions(root)
    # SOURCE.md table: 8 files x 572; 233 "neither", 1771 harmful answers, 2572 refusals in all. At the MultiJail
    # indices the files hold 19 refusals, 12 harmful answers and 1 "neither".
    assert counts["files"] == 8 and counts["records"] == 8 * 572
    assert counts["dropped_multijail"] == 8 * len(POLYREFUSE_MULTIJAIL_ROWS)
    assert counts["dropped_neither"] == 233 - 1
    assert counts["undesirable"] == 1771 - 12
    assert counts["desirable"] + counts["dropped_duplicate"] == 2572 - 19
    assert counts["desirable"] == sum(r.desirable for r in rows) and len(rows) == counts["desirable"] + 1759
    dropped = {f"polyrefuse/harmful_test/{i}" for i in POLYREFUSE_MULTIJAIL_ROWS}
    assert not any(r.group_id in dropped or int(r.origin.rsplit("#", 1)[1]) in POLYREFUSE_MULTIJAIL_ROWS
                   for r in rows)
    assert {r.language for r in rows} == {"en", "it", "zh", "ko"} and {r.source for r in rows} == {"safety"}
    assert len({(r.language, r.prompt, r.completion.strip()) for r in rows}) == len(rows)

    # labels agree with the raw WildGuard fields
    path = root / "Meta-Llama-3.1-8B-Instruct" / "ko" / "harmful_baseline_evaluations.no_tokens.json"
    raw = json.loads(path.read_text(encoding="utf-8"))["completions"]
    ko_rows = [r for r in rows if r.origin.startswith("Meta-Llama-3.1-8B-Instruct/ko/baseline#")]
    assert sum(not r.desirable for r in ko_rows) == 117
    for row in ko_rows:
        record = raw[int(row.origin.rsplit("#", 1)[1])]
        assert row.prompt == record["instruction"] and row.completion == record["response"]
        assert row.desirable == (record["wildguard"]["refusal"] == 1 and record["wildguard"]["response_harmful"] == 0)

    # translations share a group; filters select files
    en_rows, en_counts = convert_polyrefuse_completions(root, models=["Qwen2.5-7B-Instruct"], languages=["en"],
                                                        modes=["harm_ablation"])
    assert en_counts["files"] == 1 and en_counts["desirable"] == 0
    assert en_counts["undesirable"] == 529 - len(POLYREFUSE_MULTIJAIL_ROWS)
    zh_groups = {r.group_id for r in rows if r.language == "zh"}
    assert zh_groups & {r.group_id for r in en_rows}
    # language filters accept any spelling; a bare string is one model / mode, not a set of characters
    _, named_counts = convert_polyrefuse_completions(root, models="Qwen2.5-7B-Instruct", languages=["English"],
                                                     modes="harm_ablation")
    assert named_counts == en_counts
    with pytest.raises(FileNotFoundError):
        convert_polyrefuse_completions(root, languages=["sw"])


def test_generator_cut_answers_of_the_polyrefuse_completions(shared_data):
    """The completions keep no token ids; an answer whose text stops without a natural end was cut at the
    generator's 512 new tokens. Baseline refusals almost always end; refusal-ablated compliances mostly do not."""
    rows, counts = convert_polyrefuse_completions(shared_data / "polyrefuse_completions")
    assert counts["generator_cut"] == sum(not r.complete for r in rows) > 0
    for row in rows:
        assert row.complete == (row.completion.rstrip()[-1] in NATURAL_END_CHARS
                                or unicodedata.category(row.completion.rstrip()[-1]) == "So")
    cut = {mode: np.mean([not r.complete for r in rows if f"/{mode}#" in r.origin])
           for mode in ("baseline", "harm_ablation")}
    assert cut["baseline"] < 0.1 < 0.5 < cut["harm_ablation"]
    assert ends_naturally("Done.") and ends_naturally("真的吗") and ends_naturally("ok 🙏") and ends_naturally("(x)")
    assert not ends_naturally("and then the") and not ends_naturally("   ")


def test_the_run_family_selects_its_completions(shared_data):
    root = shared_data / "polyrefuse_completions"
    assert family_completion_models(root, "llama") == ["Meta-Llama-3.1-8B-Instruct"]
    assert family_completion_models(root, "qwen2") == family_completion_models(root, "qwen3") == [
        "Qwen2.5-7B-Instruct"]
    assert family_completion_models(root, "gemma2") is None
