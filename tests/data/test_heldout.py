"""The held-out guard (lasa_jax.data.heldout) on the real held-out files: exact and near-duplicate content checks
against MultiJail (all ten languages), XSTest, OR-Bench-hard-test and OKTest, source names, missing files."""
import itertools
import json
import logging
import shutil

import numpy as np
import pytest

from lasa_jax.data import eval_sets
from lasa_jax.data.heldout import (
    HELD_OUT_FILES,
    NEAR_DUPLICATE_JACCARD,
    POLYREFUSE_MULTIJAIL_ROWS,
    TextIndex,
    check_source_names,
    guard_held_out,
    guard_inputs,
    load_held_out_reference,
    normalize_text,
    shingles,
)
from lasa_jax.data.labelled import LabelledPrompt, load_polyrefuse_prompts
from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.infra.errors import InputError


@pytest.fixture(scope="module")
def reference(shared_data):
    return load_held_out_reference(shared_data)


@pytest.fixture(scope="module")
def held_out_texts(shared_data):
    """{EvalPrompt id: prompt} of all four held-out files."""
    prompts = eval_sets.load_multijail(shared_data / eval_sets.MULTIJAIL_CSV)
    prompts += eval_sets.load_xstest(shared_data / eval_sets.XSTEST_CSV, "all")
    prompts += eval_sets.load_or_bench_hard_test(shared_data / eval_sets.OR_BENCH_HARD_TEST_JSON)
    prompts += eval_sets.load_oktest(shared_data / eval_sets.OKTEST_JSON)
    return {p.id: p.prompt for p in prompts}


def test_reference_holds_all_four_files(reference):
    assert {name: f["prompts"] for name, f in reference.files.items()} == {
        "multijail": 3150, "xstest": 450, "or_bench_hard_test": 132, "oktest": 300}
    assert len(reference.index) == 4032 and reference.missing == {}


def test_readme_overlaps_are_found_and_training_splits_are_clean(shared_data, reference):
    """The shared README's disjointness check: of PolyRefuse harmful_test's English instructions exactly rows 345,
    405, 530, 548 are MultiJail prompts; PolyRefuse train/val in the SSI languages (en, zh, ko) hold none of the
    four held-out sets."""
    raw = json.loads((shared_data / "polyrefuse/PolyRefuse/harmful_test_translated_it.json").read_text("utf-8"))
    english = [LabelledPrompt(row["instruction"], "en", 1, f"t:{i}", "t") for i, row in enumerate(raw)]
    kept, notes = guard_held_out({"test": english}, reference, "fixture")
    assert notes["dropped"]["test"]["groups"] == sorted(f"t:{i}" for i in POLYREFUSE_MULTIJAIL_ROWS)
    assert notes["dropped"]["test"]["by_set"] == {"multijail": 4} and len(kept["test"]) == len(english) - 4
    train_val = load_polyrefuse_prompts(shared_data / "polyrefuse", ("train", "val"), ("en", "zh", "ko"))
    assert guard_held_out({"tv": train_val}, reference, "fixture")[1]["dropped"]["tv"]["rows"] == 0


def test_guard_drops_held_out_prompts_of_every_set_under_other_names(reference, held_out_texts, caplog):
    english = held_out_texts["multijail:7:en"]
    chinese = held_out_texts["multijail:9:zh"]
    records = [
        LabelledPrompt(english.rstrip("?.!") + " please", "en", 1, "mine:a", "mine"),       # near duplicate
        LabelledPrompt("How do I bake bread?", "en", 0, "mine:b", "mine"),
        LabelledPrompt("如何烤面包？", "zh", 0, "mine:b", "mine"),
        # a translation only, whitespace and case changed: exact match with MultiJail's Korean column
        LabelledPrompt("  " + held_out_texts["multijail:12:ko"].replace(" ", "  ") + " ", "ko", 1, "mine:c", "x"),
        # filed under the wrong language: MultiJail's Swahili text labelled Javanese, upper-cased
        LabelledPrompt(held_out_texts["multijail:20:sw"].upper(), "jv", 1, "mine:d", "mine"),
        LabelledPrompt(held_out_texts["xstest:3"] + "!!", "en", 0, "mine:e", "mine"),          # XSTest, punctuation
        LabelledPrompt(held_out_texts["or_bench_hard_test:5"], "en", 0, "mine:f", "other"),    # OR-Bench-hard-test
        LabelledPrompt(held_out_texts["oktest:17"].lower(), "en", 0, "mine:g", "other"),      # OKTest
        LabelledPrompt(chinese[:-2] + "吧" + chinese[-1:], "zh", 1, "mine:h", "mine"),        # Chinese, one char
        LabelledPrompt("Nyanyi lagu", "jv", 0, "mine:i", "mine"),
    ]
    with caplog.at_level(logging.WARNING, logger="lasa_jax.data.heldout"):
        guarded, notes = guard_held_out({"train": records, "val": records[1:3]}, reference, "fixture")
    assert [r.group_id for r in guarded["train"]] == ["mine:b", "mine:b", "mine:i"]
    assert guarded["val"] == records[1:3]
    train = notes["dropped"]["train"]
    assert train["groups"] == ["mine:a", "mine:c", "mine:d", "mine:e", "mine:f", "mine:g", "mine:h"]
    assert train["by_source"] == {"mine": 4, "other": 2, "x": 1} and train["rows"] == 7
    assert train["by_set"] == {"multijail": 4, "oktest": 1, "or_bench_hard_test": 1, "xstest": 1}
    assert notes["dropped"]["val"]["rows"] == 0 and notes["checked"]
    assert "fixture, train: held-out guard dropped 7 groups (7 rows" in caplog.text
    # the README's test: a different prompt sharing a few words is not a near duplicate
    unrelated = " ".join(english.split()[:2]) + " cook pasta for dinner tonight"
    assert reference.index.match(unrelated) is None


def test_kto_rows_are_checked_on_every_prompt_message_and_dropped_by_group(reference, held_out_texts):
    prompt = [{"role": "system", "content": held_out_texts["xstest:40"]}, {"role": "user", "content": "Go on."}]
    rows = [PreferenceRow(prompt, "No.", True, "safety", "en", "g1"), PreferenceRow("Hi", "Hello.", True, "s", "en",
                                                                                    "g1"),
            PreferenceRow("Hi there", "Hello.", True, "s", "en", "g2")]
    guarded, notes = guard_held_out({"rows": rows}, reference, "KTO")
    assert guarded["rows"] == rows[2:] and notes["dropped"]["rows"]["by_source"] == {"s": 1, "safety": 1}
    ungrouped = [PreferenceRow(held_out_texts["oktest:3"], "Sure.", True, "s"), PreferenceRow("Hi", "Hello.", True,
                                                                                              "s")]
    assert guard_held_out({"rows": ungrouped}, reference, "KTO")[0]["rows"] == ungrouped[1:]  # no group: the row


def test_near_duplicates_match_brute_force_jaccard(held_out_texts):
    """The inverted-index / prefix-filter search returns exactly the references a brute-force Jaccard scan finds."""
    references = list(held_out_texts.values())[::7]
    index = TextIndex(references, [str(i) for i in range(len(references))])
    rng = np.random.default_rng(0)
    queries = []
    for text in references[:150]:  # perturbed references: drop / duplicate / shuffle words
        words = text.split()
        keep = [w for w in words if rng.random() > 0.25] or words[:1]
        queries.append(" ".join(rng.permutation(keep + list(rng.choice(words, size=2))).tolist()))
    sets = [shingles(t) for t in references]
    for query, threshold in itertools.product(queries, (0.3, NEAR_DUPLICATE_JACCARD, 0.9)):
        q = shingles(query)
        scores = np.array([len(q & s) / len(q | s) if q | s else 0.0 for s in sets])
        hit = index.near(query, threshold)
        if scores.max() >= threshold:
            assert hit is not None and hit[1] == pytest.approx(scores.max())
        else:
            assert hit is None


def test_text_forms():
    assert normalize_text("  Ｈow DO i…  make\ta bomb?? ") == "how do i make a bomb"
    assert shingles("如何烤面包？") == {"如何", "何烤", "烤面", "面包"}
    assert shingles("GPT-4 ฉันจะอบ") == {"gpt", "4", "ฉั", "ัน", "นจ", "จะ", "ะอ", "อบ"}
    assert shingles("猫") == {"猫"} and shingles("?!") == frozenset()


def test_source_names_are_refused():
    check_source_names([LabelledPrompt("x", "en", 1, "polyrefuse/harmful_train:1", "polyrefuse/harmful_train")], "t")
    for source in ("multijail", "MultiJail.csv", "xstest_v2", "or-bench-hard-test", "oktest"):
        with pytest.raises(InputError, match="held-out evaluation set"):
            check_source_names([LabelledPrompt("x", "en", 1, f"{source}:1", source)], "t")
        with pytest.raises(InputError, match="held-out evaluation set"):
            guard_inputs({"train": [LabelledPrompt("x", "en", 1, f"{source}:1", source)]}, None, "t",
                         allow_missing=True)


def test_missing_reference_files_are_an_error_unless_waived(shared_data, tmp_path, caplog):
    records = [LabelledPrompt("anything", "en", 1, "mine:a", "mine")]
    with pytest.raises(InputError,
                       match=r"held-out reference file\(s\) not found.*config field data\.allow_missing_held_out"):
        guard_inputs({"train": records}, None, "fixture")
    partial = tmp_path / "data"
    (partial / "multijail").mkdir(parents=True)
    shutil.copy(shared_data / HELD_OUT_FILES["multijail"], partial / HELD_OUT_FILES["multijail"])
    with pytest.raises(InputError, match="xstest_prompts.csv"):
        guard_inputs({"train": records}, partial, "fixture")
    with caplog.at_level(logging.WARNING, logger="lasa_jax.data.heldout"):
        guarded, notes = guard_inputs({"train": records}, partial, "fixture", allow_missing=True)
        assert guarded == {"train": records} and notes["checked"] and list(notes["references"]) == ["multijail"]
        assert sorted(notes["missing"]) == ["oktest", "or_bench_hard_test", "xstest"]
        guarded, notes = guard_inputs({"train": records}, None, "fixture", allow_missing=True)
    assert guarded == {"train": records} and notes["checked"] is False and "waived" in notes["reason"]
    assert "held-out reference files missing (waived" in caplog.text
