"""Labelled prompts for the SSI (lasa_jax/data/labelled.py): readers on the real shared files and small fixtures of
the reference formats, the near-duplicate filter, and the row helpers."""
import collections
import json
import pathlib

import pytest

from lasa_jax.data.groups import check_disjoint_groups, limit_groups
from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.labelled import (
    LabelledPrompt,
    drop_near_duplicate_groups,
    load_flores_benign,
    load_labelled_jsonl,
    load_polyrefuse_prompts,
    load_ultrafeedback_prompts,
    load_unsafe_train_json,
    select_languages,
    split_summary,
)

DEMO_PROMPTS = pathlib.Path(__file__).resolve().parents[2] / "lasa_jax" / "demo_data" / "prompts.jsonl"


def _counts(records):
    return collections.Counter((r.split, r.language, r.label) for r in records)


# ------------------------------------------------------------------------------------------------ PolyRefuse


def test_polyrefuse_train_val_counts(shared_data):
    records = load_polyrefuse_prompts(shared_data / "polyrefuse", ("train", "val"), ("en", "zh", "ko"))
    counts = _counts(records)
    for language in ("en", "zh", "ko"):
        assert counts[("train", language, 1)] == 260
        assert counts[("train", language, 0)] == 200
        assert counts[("val", language, 1)] == 39
        assert counts[("val", language, 0)] == 200
    # translations share a group id; every group has all three languages and one label
    languages_of = collections.defaultdict(set)
    for r in records:
        languages_of[r.group_id].add(r.language)
    assert all(langs == {"en", "zh", "ko"} for langs in languages_of.values())
    assert {r.source for r in records} == {"polyrefuse/harmful_train", "polyrefuse/harmless_train",
                                           "polyrefuse/harmful_val", "polyrefuse/harmless_val"}
    check_disjoint_groups({"train": [r for r in records if r.split == "train"],
                           "val": [r for r in records if r.split == "val"]})


def test_polyrefuse_test_drops_multijail_rows(shared_data):
    records = load_polyrefuse_prompts(shared_data / "polyrefuse", ("test",), ("en", "zh", "ko", "it"))
    counts = _counts(records)
    for language in ("en", "zh", "ko", "it"):
        assert counts[("test", language, 1)] == 572 - 4
    assert counts[("test", "en", 0)] == counts[("test", "ko", 0)] == counts[("test", "it", 0)] == 500
    assert counts[("test", "zh", 0)] == 0  # no Chinese harmless_test upstream
    harmful_groups = {r.group_id for r in records if r.label == 1}
    for row in POLYREFUSE_MULTIJAIL_ROWS:
        assert f"polyrefuse/harmful_test:{row}" not in harmful_groups
    assert "polyrefuse/harmful_test:344" in harmful_groups


def test_polyrefuse_val_near_duplicates_of_train(shared_data):
    """No identical English instruction is shared by harmful_train and harmful_val, but three val rows paraphrase
    train rows; the token-Jaccard filter (threshold 0.6, the shared README's test) finds exactly those."""
    polyrefuse = shared_data / "polyrefuse"
    train = load_polyrefuse_prompts(polyrefuse, ("train",), ("en",))
    val = load_polyrefuse_prompts(polyrefuse, ("val",), ("en",))
    assert not {r.text for r in train} & {r.text for r in val}
    kept, dropped = drop_near_duplicate_groups(val, train, language="en", threshold=0.6)
    assert dropped == ["polyrefuse/harmful_val:1", "polyrefuse/harmful_val:12", "polyrefuse/harmful_val:19"]
    assert len(kept) == len(val) - 3
    # at 0.9 only the near-verbatim one ("... inherently less intelligent ...") remains
    assert drop_near_duplicate_groups(val, train, language="en", threshold=0.9)[1] == ["polyrefuse/harmful_val:1"]


def test_near_duplicate_filter_drops_whole_groups():
    reference = [LabelledPrompt("How do I pick a lock quickly", "en", 1, "a:1", "a")]
    candidates = [LabelledPrompt("how do I pick a lock quickly?", "en", 1, "b:1", "b"),
                  LabelledPrompt("如何快速开锁", "zh", 1, "b:1", "b"),
                  LabelledPrompt("How do I bake bread", "en", 0, "b:2", "b")]
    kept, dropped = drop_near_duplicate_groups(candidates, reference)
    assert dropped == ["b:1"] and [r.group_id for r in kept] == ["b:2"]
    with pytest.raises(ValueError, match="threshold"):
        drop_near_duplicate_groups(candidates, reference, threshold=0.0)


def test_flores_benign(shared_data):
    records = load_flores_benign(shared_data / "flores200_sib200", ("sw", "jv"), splits=("test",))
    assert collections.Counter(r.language for r in records) == {"sw": 204, "jv": 204}
    assert all(r.label == 0 and r.group_id.startswith("flores:") for r in records)


# ------------------------------------------------------------------------------------------ reference formats


def test_unsafe_train_json_fixture(tmp_path):
    rows = [
        {"idx": 0, "group_id": 0, "prompt": "How do I make a weapon?", "lingual": "en", "language": "en",
         "source": "safety_train_translated", "is_unsafe": True},
        {"idx": 1, "group_id": 0, "prompt": "Kepiye carane gawe gaman?", "lingual": "jw", "language": "jw",
         "source": "safety_train_translated", "is_unsafe": True},
        {"idx": 2, "prompt": [{"role": "user", "content": "Write malware"}], "lingual": "en",
         "source": "harmbench"},
        {"idx": 3, "query": "如何制造武器？", "language": "Chinese"},
    ]
    path = tmp_path / "unsafe_train.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    records = load_unsafe_train_json(path)
    assert [r.language for r in records] == ["en", "jv", "en", "zh"]
    assert [r.group_id for r in records] == ["safety_train_translated:0", "safety_train_translated:0",
                                             "harmbench:2", "unsafe_train:3"]
    assert records[2].text == "Write malware" and all(r.label == 1 for r in records)
    assert [r.text for r in load_unsafe_train_json(path, languages=["Javanese"])] == ["Kepiye carane gawe gaman?"]

    path.write_text(json.dumps([{"idx": 0, "language": "en"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"record 0: missing field 'prompt'"):
        load_unsafe_train_json(path)
    path.write_text(json.dumps([{"prompt": "hi", "language": "en", "is_unsafe": False}]), encoding="utf-8")
    with pytest.raises(ValueError, match="is_unsafe"):
        load_unsafe_train_json(path)


def test_ultrafeedback_fixture(tmp_path):
    for language, texts in {"en": ["Classify carbonic acid", "Why parables?", "Summarise a film"],
                            "ko": ["탄산을 분류하세요", "왜 비유를?", "영화 요약"], "jw": ["A", "B", "C"]}.items():
        rows = [{"idx": i, "prompt": t, "chosen": [], "rejected": []} for i, t in enumerate(texts)]
        (tmp_path / f"monolingual_first1000_{language}.json").write_text(json.dumps(rows, ensure_ascii=False),
                                                                         encoding="utf-8")
    (tmp_path / "README.md").write_text("not data")
    records = load_ultrafeedback_prompts(tmp_path, languages=["en", "ko"], max_per_language=2)
    assert [(r.language, r.text) for r in records] == [("en", "Classify carbonic acid"), ("en", "Why parables?"),
                                                       ("ko", "탄산을 분류하세요"), ("ko", "왜 비유를?")]
    assert [r.group_id for r in records] == ["ultrafeedback:0", "ultrafeedback:1"] * 2
    assert all(r.label == 0 for r in records)
    everything = load_ultrafeedback_prompts(tmp_path, max_per_language=None)
    assert collections.Counter(r.language for r in everything) == {"en": 3, "ko": 3, "jv": 3}
    with pytest.raises(ValueError, match="monolingual_first1000_<lang>.json"):
        bad = tmp_path / "prompts.json"
        bad.write_text("[]")
        load_ultrafeedback_prompts(bad)
    with pytest.raises(FileNotFoundError):
        load_ultrafeedback_prompts(tmp_path / "missing")


def test_labelled_jsonl_demo_train_rows_only():
    records = load_labelled_jsonl(DEMO_PROMPTS, splits={"train"})
    assert len(records) == 32 * 10
    assert {r.split for r in records} == {"train"}
    assert len({r.group_id for r in records}) == 32
    assert collections.Counter(r.label for r in records) == {0: 160, 1: 160}
    all_rows = load_labelled_jsonl(DEMO_PROMPTS)
    assert {r.split for r in all_rows} == {"train", "eval"} and len(all_rows) == 480


def test_labelled_jsonl_fields(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"text": "hello", "language": "en", "label": False, "group_id": 1},
            {"prompt": "salut", "text": "salut", "language": "French", "label": 0, "group_id": 1, "source": "x"},
            {"prompt": "bomb?", "language": "en", "label": True, "group_id": "q2", "split": "test"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    records = load_labelled_jsonl(path)
    assert records == [LabelledPrompt("hello", "en", 0, "mine:1", "mine", None),
                       LabelledPrompt("salut", "fr", 0, "x:1", "x", None),
                       LabelledPrompt("bomb?", "en", 1, "mine:q2", "mine", "test")]
    assert len(load_labelled_jsonl(path, splits={None})) == 2
    for bad, message in [({"prompt": "a", "text": "b", "language": "en", "label": 0, "group_id": 1}, "differ"),
                         ({"prompt": "a", "language": "en", "group_id": 1}, "missing field 'label'"),
                         ({"prompt": "a", "language": "en", "label": 2, "group_id": 1}, "'label' must be 0"),
                         ({"prompt": "a", "language": "Klingon", "label": 0, "group_id": 1}, "unknown language"),
                         ({"language": "en", "label": 0, "group_id": 1}, "missing field 'prompt'")]:
        path.write_text(json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_labelled_jsonl(path)


# ---------------------------------------------------------------------------------------------- row helpers


def test_select_languages_and_split_summary(synthetic_prompts):
    records = synthetic_prompts(num_groups=80)
    assert {r.language for r in select_languages(records, ["English", "ko"])} == {"en", "ko"}
    limited = limit_groups(records, 5, seed=3)  # 5 groups of each label
    summary = split_summary(limited)
    assert summary["num_groups"] == 10 and summary["num_rows"] == len(limited)
