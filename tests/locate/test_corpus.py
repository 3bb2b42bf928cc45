"""Locate's corpus (lasa_jax/locate/corpus.py): the default corpus on the shared data (never MultiJail, the source
confound and its filter), group filters and checks, each data.source, and the held-out guard on all of them."""
import json

import pytest

from lasa_jax.data.labelled import load_multijail_prompts
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.data.parallel import ParallelText, load_multijail
from lasa_jax.locate import stage as locate
from lasa_jax.locate.corpus import (
    check_parallel_corpus,
    corpus_summary,
    default_locate_corpus,
    filter_parallel_groups,
    keep_common_sources,
    load_locate_corpus,
    locate_corpus_with_notes,
)
from lasa_jax.locate.settings import data_settings

POLYREFUSE_IN_MULTIJAIL = {"en", "zh", "it", "ar", "ko", "th"}


def test_multijail_is_never_in_the_default_corpus(shared_data):
    multijail = load_multijail(shared_data / "multijail")
    corpus = default_locate_corpus(shared_data, max_groups_per_source=None)
    assert not any(r.source.startswith("multijail") for r in corpus)
    assert not {r.text for r in multijail} & {r.text for r in corpus}
    assert not any(r.source.endswith("_test") for r in corpus)


def test_default_locate_corpus(shared_data):
    corpus = default_locate_corpus(shared_data)
    summary = corpus_summary(corpus)
    assert summary["num_groups"] == 100 + 100 + 39 + 100 + 100
    assert summary["num_texts"] == 100 * 10 + 339 * 6
    assert set(summary["texts_per_language"]) == set(MULTIJAIL_LANGUAGES)
    languages_per_group = {}
    for r in corpus:
        languages_per_group.setdefault(r.group_id, set()).add(r.language)
    assert min(len(v) for v in languages_per_group.values()) >= 2
    assert corpus == default_locate_corpus(shared_data)  # deterministic for a seed
    assert {r.group_id for r in corpus} != {r.group_id for r in default_locate_corpus(shared_data, seed=1)}
    assert corpus_summary(default_locate_corpus(shared_data, max_groups_per_source=None))["num_groups"] == 1703

    sw_jv = default_locate_corpus(shared_data, languages=["sw", "jv"], max_groups_per_source=None)
    assert {r.source for r in sw_jv} == {"flores"} and len(sw_jv) == 2 * 1004

    # the source confound, visible in the summary: vi, bn, sw, jv have FLORES texts only
    per_source_language = summary["texts_per_source_language"]
    assert per_source_language["flores"] == {lang: 100 for lang in sorted(MULTIJAIL_LANGUAGES)}
    for source in ("polyrefuse/harmful_train", "polyrefuse/harmless_train", "polyrefuse/harmful_val",
                   "polyrefuse/harmless_val"):
        assert set(per_source_language[source]) == POLYREFUSE_IN_MULTIJAIL
    assert sum(sum(counts.values()) for counts in per_source_language.values()) == summary["num_texts"]


def test_default_locate_corpus_common_sources_only(shared_data):
    common = default_locate_corpus(shared_data, common_sources_only=True)
    summary = corpus_summary(common)
    assert summary["texts_per_source_language"] == {"flores": {lang: 100 for lang in sorted(MULTIJAIL_LANGUAGES)}}
    assert summary["num_groups"] == 100 and summary["num_texts"] == 1000
    # languages all sources cover: nothing to drop, the same corpus as without the option
    six = sorted(POLYREFUSE_IN_MULTIJAIL)
    assert default_locate_corpus(shared_data, six, common_sources_only=True) == default_locate_corpus(shared_data, six)


def test_keep_common_sources():
    records = [ParallelText("a", "en", "s:1", "s"), ParallelText("b", "zh", "s:1", "s"),
               ParallelText("c", "sw", "s:2", "s"), ParallelText("d", "en", "s:2", "s"),
               ParallelText("e", "en", "t:1", "t"), ParallelText("f", "zh", "t:1", "t"),
               ParallelText("g", "fr", "u:1", "u")]
    kept, dropped = keep_common_sources(records, ["en", "zh", "Swahili"])
    assert [r.text for r in kept] == ["a", "b", "c", "d"] and dropped == {"t": ["en", "zh"], "u": []}
    assert keep_common_sources(records, ["en", "zh"]) == (records[:6], {"u": []})
    with pytest.raises(ValueError, match=r"no source has texts in every requested language \['en', 'fr'\]"):
        keep_common_sources(records, ["en", "fr"])


def test_filter_and_check_parallel_groups():
    records = [ParallelText("a", "en", "s:1", "s"), ParallelText("b", "zh", "s:1", "s"),
               ParallelText("c", "en", "s:2", "s"), ParallelText("d", "ko", "s:2", "s"),
               ParallelText("e", "en", "s:3", "s")]
    kept = filter_parallel_groups(records)
    assert [r.text for r in kept] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"need at least 2 languages and 2 groups, got 2 languages .* and 1 groups"):
        filter_parallel_groups(records, languages=["en", "zh"])
    with pytest.raises(ValueError, match=r"got 1 languages"):
        check_parallel_corpus([r for r in records if r.language == "en"])


def test_default_source_needs_the_data_root(locate_config):
    config = locate_config
    config.data.root = ""
    with pytest.raises(ValueError, match="config field data.root"):
        load_locate_corpus(data_settings(config.data), seed=0)


def test_multijail_needs_the_explicit_held_out_flag(locate_config, shared_data, caplog):
    config = locate_config
    config.model_path = "unused"
    config.data.source = "multijail"
    config.data.root = str(shared_data)
    config.data.max_groups_per_source = 5
    with pytest.raises(ValueError, match="allow_held_out"):
        locate.run(config, "/nonexistent/never-created")
    config.data.allow_held_out = True
    with caplog.at_level("WARNING", logger="lasa_jax.locate.stage"):
        records = load_locate_corpus(data_settings(config.data), seed=0)
    assert "HELD-OUT" in caplog.text
    assert {r.source for r in records} == {"multijail"} and len({r.group_id for r in records}) == 5
    assert {r.language for r in records} == set(config.data.languages)


def _write_rows(path, source=None):
    rows = [{"text": f"text {g} {lang}", "language": lang, "group_id": g, "label": g % 2}
            for g in range(3) for lang in ("en", "zh")]
    if source is not None:
        rows = [{**row, "source": source} for row in rows]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def test_jsonl_naming_a_held_out_source_is_refused(locate_config, tmp_path):
    config = locate_config
    config.data.source = "jsonl"
    config.data.path = str(_write_rows(tmp_path / "rows.jsonl", source="MultiJail-copy"))
    with pytest.raises(ValueError, match="held-out"):
        load_locate_corpus(data_settings(config.data), seed=0)
    config.data.allow_held_out = True
    assert len(load_locate_corpus(data_settings(config.data), seed=0)) == 6


def test_non_default_sources_drop_multijail_prompts_under_other_names(locate_config, tmp_path, shared_data, caplog):
    multijail = {(r.group_id, r.language): r.text for r in load_multijail_prompts(shared_data / "multijail")}
    rows = [{"text": f"text {g} {lang}", "language": lang, "group_id": g, "label": 0, "source": "mine"}
            for g in range(3) for lang in ("en", "zh")]
    rows += [{"text": multijail[("multijail:3", "en")], "language": "en", "group_id": 3, "label": 1},
             {"text": "translated elsewhere", "language": "zh", "group_id": 3, "label": 1},
             {"text": "an English original", "language": "en", "group_id": 4, "label": 1},
             {"text": multijail[("multijail:9", "zh")], "language": "zh", "group_id": 4, "label": 1}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), encoding="utf-8")
    config = locate_config
    config.data.source = "jsonl"
    config.data.path = str(path)
    config.data.root = str(shared_data)
    config.data.languages = ("en", "zh")
    with caplog.at_level("WARNING"):
        records, notes = locate_corpus_with_notes(data_settings(config.data), seed=0)
    assert {r.group_id for r in records} == {"mine:0", "mine:1", "mine:2"}
    dropped = notes["held_out_content"]["dropped"]["corpus"]
    assert (dropped["groups"], dropped["rows"], dropped["by_set"]) == (["mine:3", "mine:4"], 4, {"multijail": 2})
    assert "corpus: held-out guard dropped 2 groups (4 rows" in caplog.text
    config.data.allow_held_out = True  # deliberate analysis: nothing dropped
    assert len(load_locate_corpus(data_settings(config.data), seed=0)) == len(rows)


def test_common_sources_only_removes_the_source_confound(locate_config, tmp_path, shared_data):
    config = locate_config
    config.data.root = str(shared_data)
    config.data.max_groups_per_source = 5
    mixed = load_locate_corpus(data_settings(config.data), seed=0)  # all ten languages: PolyRefuse lacks vi, bn, sw, jv
    assert {r.source for r in mixed} == {"flores", "polyrefuse/harmful_train", "polyrefuse/harmless_train",
                                         "polyrefuse/harmful_val", "polyrefuse/harmless_val"}
    config.data.common_sources_only = True
    common, notes = locate_corpus_with_notes(data_settings(config.data), seed=0)
    assert corpus_summary(common)["texts_per_source_language"] == {"flores": {lang: 5 for lang in
                                                                              sorted(config.data.languages)}}
    assert notes["common_sources_only"] is True
    # non-default sources: the dropped sources are listed with the languages they have
    rows = [{"text": f"{source} {g} {lang}", "language": lang, "group_id": g, "source": source}
            for source, languages in (("both", ("en", "zh")), ("english_chinese_korean", ("en", "zh", "ko")),
                                      ("korean_only", ("ko", "en"))) for g in range(3) for lang in languages]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    config.data.source, config.data.path, config.data.languages = "jsonl", str(path), ("en", "zh", "ko")
    records, notes = locate_corpus_with_notes(data_settings(config.data), seed=0)
    assert {r.source for r in records} == {"english_chinese_korean"}
    assert notes["dropped_sources"] == {"both": ["en", "zh"], "korean_only": ["en", "ko"]}


def test_hub_source_reads_local_files_through_datasets(locate_config, tmp_path, shared_data):
    config = locate_config
    config.data.root = str(shared_data)  # the held-out guard checks the rows
    config.data.source = "hub"
    config.data.path = "json"
    config.data.hub_data_files = str(_write_rows(tmp_path / "rows.jsonl"))
    config.data.hub_cache_dir = str(tmp_path / "cache")
    records = load_locate_corpus(data_settings(config.data), seed=0)
    assert [(r.group_id, r.language, r.label) for r in records[:3]] == [("rows:0", "en", 0), ("rows:0", "zh", 0),
                                                                          ("rows:1", "en", 1)]
    assert len(records) == 6 and (tmp_path / "cache").is_dir()


def test_translated_json_source_reads_the_reference_layout(locate_config, tmp_path, shared_data):
    rows = [{"idx": i, "original_query": f"query {i}", "translations": {"Chinese": f"查询 {i}", "Javanese": f"q {i}"}}
            for i in range(4)]
    (tmp_path / "safety_train_translated.json").write_text(json.dumps(rows, ensure_ascii=False))
    config = locate_config
    config.data.root = str(shared_data)
    config.data.source = "translated_json"
    config.data.path = str(tmp_path / "safety_train_translated.json")
    config.data.languages = ("en", "zh", "jv")
    config.data.max_groups_per_source = 3
    records = load_locate_corpus(data_settings(config.data), seed=0)
    assert {r.language for r in records} == {"en", "zh", "jv"} and {r.label for r in records} == {1}
    assert len(records) == 9 and len({r.group_id for r in records}) == 3
