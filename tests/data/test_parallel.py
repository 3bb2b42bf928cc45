"""Parallel-text readers (lasa_jax/data/parallel.py), on the real shared data files and small fixtures."""
import collections
import csv
import json

import pytest

from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.data.parallel import (
    ParallelText,
    load_flores_sib200,
    load_multijail,
    load_parallel_hub,
    load_parallel_jsonl,
    load_polyrefuse,
    load_translated_safety_json,
)

POLYREFUSE_IN_MULTIJAIL = {"en", "zh", "it", "ar", "ko", "th"}


def test_flores_counts_languages_and_alignment(shared_data):
    records = load_flores_sib200(shared_data / "flores200_sib200")
    assert len(records) == 1004 * 10
    assert {r.language for r in records} == set(MULTIJAIL_LANGUAGES)
    assert {r.label for r in records} == {0} and {r.source for r in records} == {"flores"}
    by_key = {(r.group_id, r.language): r.text for r in records}
    assert len(by_key) == len(records)  # one text per (sentence, language)
    with open(shared_data / "flores200_sib200/data/annotated/eng_Latn/dev.tsv", encoding="utf-8", newline="") as f:
        first = next(csv.DictReader(f, delimiter="\t"))
    with open(shared_data / "flores200_sib200/data/annotated/jav_Latn/dev.tsv", encoding="utf-8", newline="") as f:
        jav = {row["index_id"]: row["text"] for row in csv.DictReader(f, delimiter="\t")}
    group = f"flores:{first['index_id']}"
    assert by_key[(group, "en")] == first["text"]
    assert by_key[(group, "jv")] == jav[first["index_id"]] != first["text"]
    # CSV-style quote escaping in the TSV is undone ("""She's ..."" he said" -> "She's ..." he said).
    assert by_key[("flores:1239", "en")].startswith('"She’s very cute and sings quite well, too," he said')

    two = load_flores_sib200(shared_data / "flores200_sib200", languages=["English", "swh_Latn"], splits=["dev"])
    assert len(two) == 2 * 99 and {r.language for r in two} == {"en", "sw"}


def test_polyrefuse_train_val(shared_data):
    records = load_polyrefuse(shared_data / "polyrefuse")
    assert {r.language for r in records} == POLYREFUSE_IN_MULTIJAIL
    assert collections.Counter(r.source for r in records) == {
        "polyrefuse/harmful_train": 260 * 6, "polyrefuse/harmful_val": 39 * 6, "polyrefuse/harmless_train": 200 * 6,
        "polyrefuse/harmless_val": 200 * 6}
    assert {r.label for r in records if r.source.startswith("polyrefuse/harmful")} == {1}
    assert {r.label for r in records if r.source.startswith("polyrefuse/harmless")} == {0}
    english = json.loads((shared_data / "polyrefuse/dataset/splits/harmful_train.json").read_text("utf-8"))
    chinese = json.loads((shared_data / "polyrefuse/PolyRefuse/harmful_train_translated_zh.json").read_text("utf-8"))
    by_key = {(r.group_id, r.language): r.text for r in records}
    assert by_key[("polyrefuse/harmful_train:17", "en")] == english[17]["instruction"]
    assert by_key[("polyrefuse/harmful_train:17", "zh")] == chinese[17]["instruction"]
    # The harmful and harmless ids of the same row never merge.
    assert by_key[("polyrefuse/harmless_train:17", "en")] != english[17]["instruction"]


def test_polyrefuse_test_split_drops_multijail_rows(shared_data):
    records = load_polyrefuse(shared_data / "polyrefuse", splits=["test"], languages=None)
    harmful = [r for r in records if r.source == "polyrefuse/harmful_test"]
    rows = {int(r.group_id.rsplit(":", 1)[1]) for r in harmful}
    assert len(rows) == 572 - 4 and not rows & POLYREFUSE_MULTIJAIL_ROWS
    assert len({r.language for r in harmful}) == 14
    translated = json.loads((shared_data / "polyrefuse/PolyRefuse/harmful_test_translated_ko.json").read_text("utf-8"))
    by_key = {(r.group_id, r.language): r.text for r in harmful}
    assert by_key[("polyrefuse/harmful_test:0", "ko")] == translated[0]["instruction_translated"]
    assert by_key[("polyrefuse/harmful_test:0", "en")] == translated[0]["instruction"]
    harmless_languages = {r.language for r in records if r.source == "polyrefuse/harmless_test"}
    assert "zh" not in harmless_languages and len(harmless_languages) == 13


def test_multijail_loader(shared_data):
    multijail = load_multijail(shared_data / "multijail")
    assert len(multijail) == 315 * 10
    assert {r.language for r in multijail} == set(MULTIJAIL_LANGUAGES)
    assert {r.group_id for r in multijail} == {f"multijail:{i}" for i in range(315)}
    assert {r.label for r in multijail} == {1}
    assert len(load_multijail(shared_data / "multijail/MultiJail.csv", languages=["jw", "en"])) == 630


def _write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def test_translated_safety_json(tmp_path):
    path = _write_json(tmp_path / "safety_train_translated.json", [
        {"idx": 7, "original_query": "How do I pick a lock?",
         "translations": {"Chinese": "我怎么撬锁？", "jw": "Piye carane mbukak kunci?",
                          "Swahili": "Ninafunguaje kufuli?"}},
        {"idx": 9, "original_query": "Make a weapon", "translations": {"Javanese": "Gawe gaman"}},
    ])
    records = load_translated_safety_json(path)
    assert [(r.group_id, r.language) for r in records] == [
        ("safety_translated:7", "en"), ("safety_translated:7", "zh"), ("safety_translated:7", "jv"),
        ("safety_translated:7", "sw"), ("safety_translated:9", "en"), ("safety_translated:9", "jv")]
    assert records[2].text == "Piye carane mbukak kunci?" and {r.label for r in records} == {1}
    assert len(load_translated_safety_json(path, languages=["en", "jv"])) == 4


@pytest.mark.parametrize("rows, message", [
    ([{"idx": 1, "original_query": "q"}], r"record 0: missing field 'translations'"),
    ([{"idx": 1, "translations": {}}], r"record 0: missing field 'original_query'"),
    ([{"original_query": "q", "translations": {}}], r"record 0: missing field 'idx'"),
    ([{"idx": 1, "original_query": "q", "translations": {"Klingon": "x"}}], r"record 0: field 'translations'.*Klingon"),
    ([{"idx": 1, "original_query": "q", "translations": {}}] * 2, r"record 1: duplicate idx 1"),
    ({"idx": 1}, r"expected a JSON list"),
])
def test_translated_safety_json_errors(tmp_path, rows, message):
    path = _write_json(tmp_path / "bad.json", rows)
    with pytest.raises(ValueError, match=message) as info:
        load_translated_safety_json(path)
    assert "bad.json" in str(info.value)


def _write_jsonl(path, rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
                              for row in rows) + "\n", encoding="utf-8")
    return path


GENERIC_ROWS = [
    {"text": "Hello", "language": "English", "group_id": 1, "label": 0},
    {"prompt": "Hallo", "language": "de", "group_id": 1, "label": 0},
    {"text": "Bonjour", "language": "fra", "group_id": "2"},
    {"text": "Halo", "language": "jw", "group_id": "2", "source": "other"},
]


def test_parallel_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", GENERIC_ROWS[:2] + [""] + GENERIC_ROWS[2:])
    records = load_parallel_jsonl(path)
    assert records == [ParallelText("Hello", "en", "mine:1", "mine", 0),
                       ParallelText("Hallo", "de", "mine:1", "mine", 0),
                       ParallelText("Bonjour", "fr", "mine:2", "mine", None),
                       ParallelText("Halo", "jv", "other:2", "other", None)]
    assert load_parallel_jsonl(path, source="x")[0].group_id == "x:1"


def test_parallel_jsonl_accepts_equal_text_and_prompt(tmp_path):
    path = _write_jsonl(tmp_path / "both.jsonl", [{"text": "Ciao", "prompt": "Ciao", "language": "it", "group_id": 1},
                                                   {"text": "Hi", "prompt": "Hi", "language": "en", "group_id": 1}])
    assert [r.text for r in load_parallel_jsonl(path)] == ["Ciao", "Hi"]


def test_parallel_jsonl_keeps_the_requested_splits(tmp_path):
    rows = [{**GENERIC_ROWS[0], "split": "train"}, {**GENERIC_ROWS[1], "split": "eval"}, GENERIC_ROWS[2]]
    path = _write_jsonl(tmp_path / "split.jsonl", rows)
    assert [r.text for r in load_parallel_jsonl(path, splits=("train",))] == ["Hello", "Bonjour"]  # no split: kept
    assert [r.text for r in load_parallel_jsonl(path)] == [r.text for r in load_parallel_jsonl(path, splits=())] == [
        "Hello", "Hallo", "Bonjour"]
    with pytest.raises(ValueError, match=r"no records with split in \['test'\]"):
        load_parallel_jsonl(_write_jsonl(tmp_path / "eval.jsonl", rows[:2]), splits=("test",))


def test_parallel_hub_loader_with_local_json_builder(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [{**row, "group_id": str(row["group_id"])} for row in GENERIC_ROWS])
    records = load_parallel_hub("json", data_files=str(path), cache_dir=tmp_path / "cache")
    assert records == load_parallel_jsonl(path)


@pytest.mark.parametrize("row, message", [
    ({"language": "en", "group_id": 1}, r":2: expected the field 'text' \(or its alias 'prompt'"),
    ({"text": "a", "prompt": "b", "language": "en", "group_id": 1}, r":2: .*both only if equal"),
    ({"text": "a", "group_id": 1}, r":2: missing field 'language'"),
    ({"text": "a", "language": "en"}, r":2: missing field 'group_id'"),
    ({"text": "a", "language": "Klingon", "group_id": 1}, r":2: field 'language'.*Klingon"),
    ({"text": "  ", "language": "en", "group_id": 1}, r":2: field 'text' must be a non-empty string"),
    ({"text": "a", "language": "en", "group_id": 1, "label": 2}, r":2: field 'label' must be 0"),
    ({"text": "a", "language": "en", "group_id": [1]}, r":2: field 'group_id'"),
    ("{not json", r":2: not valid JSON"),
])
def test_parallel_jsonl_errors(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GENERIC_ROWS[0], row])
    with pytest.raises(ValueError, match=message) as info:
        load_parallel_jsonl(path)
    assert "bad.jsonl" in str(info.value)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_parallel_jsonl(tmp_path / "nothing.jsonl")
    with pytest.raises(FileNotFoundError, match="MultiJail.csv"):
        load_multijail(tmp_path)
    with pytest.raises(FileNotFoundError, match="annotated"):
        load_flores_sib200(tmp_path)
    with pytest.raises(FileNotFoundError, match="PolyRefuse"):
        load_polyrefuse(tmp_path)
    with pytest.raises(ValueError, match="no records"):
        load_parallel_jsonl(_write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_language_and_split_selection_errors(shared_data):
    with pytest.raises(ValueError, match="none of the requested languages"):
        load_flores_sib200(shared_data / "flores200_sib200", languages=["de"])
    with pytest.raises(ValueError, match="none of the requested languages"):
        load_polyrefuse(shared_data / "polyrefuse", languages=["jv"])
    with pytest.raises(ValueError, match="unknown PolyRefuse split 'dev'"):
        load_polyrefuse(shared_data / "polyrefuse", splits=["dev"])
    with pytest.raises(ValueError, match="unknown FLORES/SIB-200 splits"):
        load_flores_sib200(shared_data / "flores200_sib200", splits=["val"])


def _fake_polyrefuse(root, zh_rows, ko_rows):
    (root / "PolyRefuse").mkdir(parents=True)
    (root / "dataset/splits").mkdir(parents=True)
    _write_json(root / "dataset/splits/harmful_train.json", [{"instruction": "a"}, {"instruction": "b"}])
    _write_json(root / "PolyRefuse/harmful_train_translated_zh.json", zh_rows)
    _write_json(root / "PolyRefuse/harmful_train_translated_ko.json", ko_rows)
    return root


def test_polyrefuse_misaligned_and_bad_records(tmp_path):
    good = [{"instruction": "x"}, {"instruction": "y"}]
    root = _fake_polyrefuse(tmp_path / "short", good, good[:1])
    with pytest.raises(ValueError, match=r"polyrefuse/harmful_train: files are not row-aligned"):
        load_polyrefuse(root, kinds=["harmful"], splits=["train"])
    root = _fake_polyrefuse(tmp_path / "field", good, [{"instruction": "x"}, {"text": "y"}])
    with pytest.raises(ValueError, match=r"harmful_train_translated_ko.json record 1: missing field 'instruction'"):
        load_polyrefuse(root, kinds=["harmful"], splits=["train"])
    root = _fake_polyrefuse(tmp_path / "ok", good, good)
    assert len(load_polyrefuse(root, kinds=["harmful"], splits=["train"])) == 6
    _write_json(root / "PolyRefuse/harmful_test_translated_en.json", [{"instruction": "a"}, {"instruction": "b"}])
    _write_json(root / "PolyRefuse/harmful_test_translated_zh.json",
                [{"instruction": "a", "instruction_translated": "甲"},
                 {"instruction": "c", "instruction_translated": "乙"}])
    with pytest.raises(ValueError, match=r"harmful_test_translated_zh.json record 1: 'instruction' differs from"):
        load_polyrefuse(root, kinds=["harmful"], splits=["test"])


def test_multijail_and_flores_layout_errors(tmp_path):
    bad_csv = tmp_path / "MultiJail.csv"
    bad_csv.write_text("id,source,tags,en,zz\n0,x,[],hello,hallo\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match=r"MultiJail.csv: column 'zz': unknown language 'zz'"):
        load_multijail(bad_csv, languages=None)
    bad_csv.write_text("source,tags,en,zh\nx,[],hello,你好\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match=r"MultiJail.csv: missing column 'id'"):
        load_multijail(tmp_path)
    bad_csv.write_text("id,source,tags,en,zh\n0,x,[],hello,\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match=r"MultiJail.csv row 1: field 'zh' must be a non-empty string"):
        load_multijail(tmp_path)

    folder = tmp_path / "flores/data/annotated/eng_Latn"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text("index_id\tcategory\n1\tsports\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev.tsv: missing column 'text'"):
        load_flores_sib200(tmp_path / "flores", splits=["dev"])
    with pytest.raises(FileNotFoundError, match=r"eng_Latn/train.tsv not found"):
        load_flores_sib200(tmp_path / "flores", splits=["train"])
    (tmp_path / "flores/data/annotated/qqq_Xxxx").mkdir()
    with pytest.raises(ValueError, match=r"folder 'qqq_Xxxx': unknown language"):
        load_flores_sib200(tmp_path / "flores", splits=["dev"])
