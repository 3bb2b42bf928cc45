"""Integrity of the bundled multilingual demo data (lasa_jax/demo_data/{prompts,kto}.jsonl).

The files are read with plain `json` so these checks do not depend on any project loader.
"""
import collections
import csv
import importlib.resources
import json
import re

import pytest

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES

DEMO_DATA = importlib.resources.files("lasa_jax") / "demo_data"
PROMPT_FIELDS = {"group_id", "language", "text", "prompt", "label", "split"}
KTO_FIELDS = {"prompt", "completion", "label", "source", "language", "group_id"}
MAX_PROMPT_WORDS_EN = 25
MAX_COMPLETION_WORDS_EN = 40


def _read_jsonl(name: str) -> list[dict]:
    raw = (DEMO_DATA / name).read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), f"{name} must be UTF-8 without BOM"
    rows = []
    for line_number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        assert line.strip(), f"{name}:{line_number} is blank"
        row = json.loads(line)
        assert isinstance(row, dict), f"{name}:{line_number} is not a JSON object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def prompt_rows() -> list[dict]:
    return _read_jsonl("prompts.jsonl")


@pytest.fixture(scope="module")
def kto_rows() -> list[dict]:
    return _read_jsonl("kto.jsonl")


@pytest.fixture(scope="module")
def groups(prompt_rows) -> dict[str, dict]:
    """group_id -> {"label", "split", "texts": {language: text}} (asserts per-group consistency)."""
    by_group: dict[str, dict] = {}
    for row in prompt_rows:
        group = by_group.setdefault(row["group_id"], {"label": row["label"], "split": row["split"], "texts": {}})
        assert row["label"] == group["label"], f"{row['group_id']}: label differs across languages"
        assert row["split"] == group["split"], f"{row['group_id']}: split differs across languages"
        assert row["language"] not in group["texts"], f"duplicate ({row['group_id']}, {row['language']})"
        group["texts"][row["language"]] = row["text"]
    return by_group


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def test_prompt_rows_schema(prompt_rows):
    assert len(prompt_rows) == 48 * len(MULTIJAIL_LANGUAGES)
    for row in prompt_rows:
        assert set(row) == PROMPT_FIELDS, row
        assert re.fullmatch(r"demo:[bh]\d\d", row["group_id"]), row["group_id"]
        assert row["language"] in MULTIJAIL_LANGUAGES, row
        assert isinstance(row["text"], str) and row["text"].strip(), row
        assert row["text"] == row["prompt"], row
        assert row["label"] in (0, 1) and not isinstance(row["label"], bool), row
        assert row["split"] in ("train", "eval"), row
        # group ids are self-describing: b = benign (0), h = harmful (1)
        assert row["label"] == (1 if row["group_id"].startswith("demo:h") else 0), row
        if row["language"] == "en":
            assert len(row["text"].split()) <= MAX_PROMPT_WORDS_EN, row


def test_every_group_has_all_languages_once(groups, prompt_rows):
    pairs = collections.Counter((row["group_id"], row["language"]) for row in prompt_rows)
    assert max(pairs.values()) == 1
    for group_id, group in groups.items():
        assert sorted(group["texts"]) == sorted(MULTIJAIL_LANGUAGES), group_id
        assert len(set(group["texts"].values())) == len(MULTIJAIL_LANGUAGES), f"{group_id}: repeated translation"


def test_label_and_split_counts(groups):
    counts = collections.Counter((group["label"], group["split"]) for group in groups.values())
    assert counts == {(0, "train"): 16, (1, "train"): 16, (0, "eval"): 8, (1, "eval"): 8}


def test_prompt_texts_are_unique_across_groups(prompt_rows):
    texts = collections.Counter(_normalize(row["text"]) for row in prompt_rows)
    repeated = [text for text, count in texts.items() if count > 1]
    assert not repeated, repeated


def test_kto_rows_schema(kto_rows, groups):
    assert kto_rows
    for row in kto_rows:
        assert set(row) == KTO_FIELDS, row
        assert isinstance(row["label"], bool), row
        for field in ("prompt", "completion", "source", "language", "group_id"):
            assert isinstance(row[field], str) and row[field].strip(), (field, row)
        group = groups.get(row["group_id"])
        assert group is not None, f"KTO row for unknown group {row['group_id']}"
        assert group["split"] == "train", f"KTO row for eval group {row['group_id']}"
        assert row["prompt"] == group["texts"][row["language"]], row
        assert row["source"] == ("safety" if group["label"] == 1 else "helpful"), row
        if row["language"] == "en":
            assert len(row["completion"].split()) <= MAX_COMPLETION_WORDS_EN, row


def test_kto_coverage(kto_rows, groups):
    kinds = collections.defaultdict(list)
    for row in kto_rows:
        kinds[(row["group_id"], row["language"])].append(row["label"])
    train_groups = [group_id for group_id, group in groups.items() if group["split"] == "train"]
    assert {key[0] for key in kinds} == set(train_groups)
    for group_id in train_groups:
        for language in MULTIJAIL_LANGUAGES:
            labels = kinds[(group_id, language)]
            # harmful: refusal (desirable) + compliance opener (undesirable);
            # benign: helpful answer (desirable) + over-refusal (undesirable)
            assert sorted(labels) == [False, True], (group_id, language, labels)


def test_kto_desirable_and_undesirable_completions_differ(kto_rows):
    by_pair = collections.defaultdict(dict)
    for row in kto_rows:
        by_pair[(row["group_id"], row["language"])][row["label"]] = row["completion"]
    for pair, completions in by_pair.items():
        if len(completions) == 2:
            assert completions[True] != completions[False], pair


def test_no_demo_prompt_copied_from_multijail(shared_data, prompt_rows):
    csv_path = shared_data / "multijail" / "MultiJail.csv"
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        multijail_rows = list(csv.DictReader(f))
    assert len(multijail_rows) == 315
    multijail_texts = [_normalize(row[language]) for row in multijail_rows for language in MULTIJAIL_LANGUAGES
                       if row.get(language)]
    assert len(multijail_texts) > 3000
    for row in prompt_rows:
        demo_text = _normalize(row["text"])
        copied = [text for text in multijail_texts if demo_text in text]
        assert not copied, (row["group_id"], row["language"], copied[:1])
