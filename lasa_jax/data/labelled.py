"""Labelled prompts for the SSI (`LabelledPrompt`, harmful 1 / benign 0): their readers and the SSI's row helpers.

A `LabelledPrompt` carries the prompt text, its ISO 639-1 language, its label, a query-group id shared by all
translations of one query, and the split its source assigns (None when the source has none). Group ids are
namespaced by source ("polyrefuse/harmful_train:17", "ultrafeedback:3"), so the ids of two data sets never merge;
splits made by group (`lasa_jax.data.groups.grouped_split`) keep all translations of one query in one split.

Loaders and the fields they assume:
- `load_polyrefuse_prompts`: PolyRefuse harmful/harmless JSON (via `lasa_jax.data.parallel.load_polyrefuse`); the
  official train/val/test split is kept in `split`; harmful_test rows 345, 405, 530, 548 (MultiJail prompts) are
  dropped.
- `load_flores_benign`: FLORES-200 sentences via SIB-200, benign (out-of-domain negatives for FPR checks).
- `load_unsafe_train_json`: the reference code's `data/ssi/unsafe_train.json`, harmful. A JSON list of objects with
  `prompt` (a string, or a chat message list whose first message's `content` is used; alias `query`), `language`
  (or `lingual`; names and legacy codes such as "jw" are normalised), optional `group_id` (falls back to `idx`,
  then to the record's position) and optional `source` (default "unsafe_train"); group id = "<source>:<group_id>".
  Rows with `is_unsafe` false are rejected (the file is harmful-only).
- `load_ultrafeedback_prompts`: the reference code's `data/ultrafeedback/monolingual_first1000_<lang>.json`,
  benign. A JSON list of objects with `idx` and `prompt` (alias `instruction`); the language comes from the file
  name. Rows with the same `idx` are translations of one prompt in the released files, so group id =
  "ultrafeedback:<idx>" (if they were not aligned, grouping by idx would only make groups coarser, never leak).
  The reference uses the first 200 rows per language (`max_per_language`).
- `load_labelled_jsonl`: generic JSON Lines `{"prompt" (alias "text"), "language", "label" (0/1 or false/true),
  "group_id"}` plus optional `"source"` and `"split"`; e.g. `lasa_jax/demo_data/prompts.jsonl`.

Held-out evaluation sets (MultiJail, XSTest, OR-Bench-hard-test, OKTest) are never SSI training data: the stages
run `lasa_jax.data.heldout.guard_inputs` (source names and content against all four files) on their inputs.
`load_multijail_prompts` reads MultiJail for the SSI's evaluation-only harmful set (scored after training and
threshold selection); nothing else may use it.

Also here, the SSI's operations on these records: `select_languages`, `drop_near_duplicate_groups` (groups that
nearly duplicate another split's text) and `split_summary` (counts for its report).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from lasa_jax.data.fields import (
    group_id_field,
    language_code,
    language_field,
    language_set,
    read_json_list,
    require_field,
    require_text,
)
from lasa_jax.data.heldout import NEAR_DUPLICATE_JACCARD, TextIndex
from lasa_jax.data.languages import normalize_language
from lasa_jax.data.parallel import load_flores_sib200, load_multijail, load_polyrefuse
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import iter_jsonl

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
SPLITS = ("train", "val", "test")
_ULTRAFEEDBACK_FILE = re.compile(r"^monolingual_first1000_(.+)\.json$")


@dataclasses.dataclass(frozen=True)
class LabelledPrompt:
    """One prompt of the SSI data.

    text: the user prompt. language: ISO 639-1 code. label: 0 benign, 1 harmful. group_id: "<source>:<id>",
    shared by every translation of one query. source: data set name. split: "train"/"val"/"test" when the source
    defines one (PolyRefuse, a JSONL `split` field), else None.
    """

    text: str
    language: str
    label: int
    group_id: str
    source: str
    split: str | None = None


# ------------------------------------------------------------------------------------------------------ loaders


def load_polyrefuse_prompts(dataset_dir: PathLike, splits: Sequence[str] = ("train", "val"),
                            languages: Iterable[str] | None = None) -> list[LabelledPrompt]:
    """PolyRefuse harmful (1) and harmless (0) prompts of the given official splits, `split` set accordingly.

    dataset_dir: the `polyrefuse` folder of the shared data. languages: None = every language with a file.
    Requested languages without a file are skipped (e.g. there is no Chinese harmless_test); ValueError if a
    (kind, split) has none of them.
    """
    records = []
    for split in splits:
        if split not in SPLITS:
            raise InputError(f"unknown PolyRefuse split {split!r}; expected one of {SPLITS}")
        for kind in ("harmful", "harmless"):
            for text in load_polyrefuse(dataset_dir, kinds=(kind,), splits=(split,), languages=languages):
                records.append(LabelledPrompt(text.text, text.language, int(text.label), text.group_id,
                                              text.source, split))
    return records


def load_flores_benign(dataset_dir: PathLike, languages: Iterable[str] | None,
                       splits: Sequence[str] = ("test",)) -> list[LabelledPrompt]:
    """FLORES-200 sentences (via SIB-200) as benign prompts (label 0), group id "flores:<index_id>", split None.

    dataset_dir: the `flores200_sib200` folder. splits: FLORES/SIB-200 splits among train/dev/test.
    """
    return [LabelledPrompt(t.text, t.language, 0, t.group_id, "flores", None)
            for t in load_flores_sib200(dataset_dir, languages=languages, splits=splits)]


def load_multijail_prompts(path: PathLike, languages: Iterable[str] | None = None) -> list[LabelledPrompt]:
    """MultiJail (`MultiJail.csv` or its folder) as harmful prompts (label 1), group id "multijail:<id>", source
    "multijail", split "test"; languages None = all ten. HELD OUT: evaluation only (the SSI's evaluation-only
    harmful set), never training, validation or threshold data."""
    return [LabelledPrompt(t.text, t.language, 1, t.group_id, "multijail", "test")
            for t in load_multijail(path, languages=languages)]


def load_unsafe_train_json(path: PathLike, languages: Iterable[str] | None = None) -> list[LabelledPrompt]:
    """The reference code's `unsafe_train.json` (harmful, label 1); fields: see the module docstring."""
    path = pathlib.Path(path)
    requested = language_set(languages)
    records = []
    for i, row in enumerate(read_json_list(path)):
        where = f"{path} record {i}"
        text = _prompt_text(row, where, ("prompt", "query"))
        language = language_field(row, where, ("language", "lingual"))
        if row.get("is_unsafe") is False:
            raise InputError(f"{where}: 'is_unsafe' is false; unsafe_train.json is expected to hold harmful "
                             f"prompts only")
        source = require_text(row.get("source") or "unsafe_train", where, "source")
        group = row.get("group_id", row.get("idx", i))
        if isinstance(group, bool) or not isinstance(group, (int, str)) or str(group).strip() == "":
            raise InputError(f"{where}: field 'group_id' (or 'idx') must be a string or an integer, got {group!r}")
        if requested is None or language in requested:
            records.append(LabelledPrompt(text, language, 1, f"{source}:{group}", source, None))
    if not records:
        raise InputError(f"{path}: no records in the requested languages {sorted(requested or ())}")
    return records


def load_ultrafeedback_prompts(path: PathLike, languages: Iterable[str] | None = None,
                               max_per_language: int | None = 200) -> list[LabelledPrompt]:
    """Benign UltraFeedback prompts (label 0) from `monolingual_first1000_<lang>.json` files.

    path: one such file, or the directory holding them (all matching files, filtered by `languages`).
    max_per_language: keep the first N rows of each file (the reference's 200); None keeps all.
    """
    path = pathlib.Path(path)
    requested = language_set(languages)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _ULTRAFEEDBACK_FILE.match(p.name))
        if not files:
            raise FileNotFoundError(f"{path}: no monolingual_first1000_<lang>.json files")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path} not found (expected a monolingual_first1000_<lang>.json file or its folder)")
    records = []
    for file in files:
        match = _ULTRAFEEDBACK_FILE.match(file.name)
        if not match:
            raise InputError(f"{file}: expected a file name monolingual_first1000_<lang>.json")
        language = language_code(match.group(1), f"{file}: file-name language code")
        if requested is not None and language not in requested:
            continue
        rows = read_json_list(file)
        for i, row in enumerate(rows[:max_per_language] if max_per_language is not None else rows):
            where = f"{file} record {i}"
            text = _prompt_text(row, where, ("prompt", "instruction"))
            idx = require_field(row, "idx", where)
            records.append(LabelledPrompt(text, language, 0, f"ultrafeedback:{idx}", "ultrafeedback", None))
    if not records:
        raise InputError(f"{path}: no UltraFeedback prompts in the requested languages {sorted(requested or ())}")
    return records


def load_labelled_jsonl(path: PathLike, source: str | None = None,
                        splits: Iterable[str | None] | None = None) -> list[LabelledPrompt]:
    """Generic JSON Lines file (fields: see the module docstring); source defaults to the file stem.

    splits: keep only rows whose `split` field is in this set (None in the set keeps rows without the field);
    None keeps every row. When both `prompt` and `text` are present they must be equal.
    """
    path = pathlib.Path(path)
    keep = None if splits is None else set(splits)
    records = []
    for line_number, row in iter_jsonl(path, "labelled JSONL file"):
        record = _jsonl_record(row, f"{path}:{line_number}", source or path.stem)
        if keep is None or record.split in keep:
            records.append(record)
    if not records:
        raise InputError(f"{path}: no records" + ("" if keep is None else f" with split in {sorted(map(str, keep))}"))
    return records


def _jsonl_record(row: Any, where: str, default_source: str) -> LabelledPrompt:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    present = [field for field in ("prompt", "text") if row.get(field) is not None]
    if not present:
        raise InputError(f"{where}: missing field 'prompt' (or its alias 'text')")
    if len(present) == 2 and row["prompt"] != row["text"]:
        raise InputError(f"{where}: fields 'prompt' and 'text' differ; give one of them")
    text = require_text(row[present[0]], where, present[0])
    language = language_field(row, where)
    label = require_field(row, "label", where)
    if label not in (0, 1):  # True/False compare equal to 1/0
        raise InputError(f"{where}: field 'label' must be 0 (benign) or 1 (harmful), got {label!r}")
    group = group_id_field(row, where)
    source = require_text(row.get("source") or default_source, where, "source")
    split = row.get("split")
    if split is not None and not isinstance(split, str):
        raise InputError(f"{where}: field 'split' must be a string, got {split!r}")
    return LabelledPrompt(text, language, int(label), f"{source}:{group}", source, split)


def _prompt_text(row: Any, where: str, fields: Sequence[str]) -> str:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    field = next((f for f in fields if row.get(f) is not None), None)
    if field is None:
        raise InputError(f"{where}: missing field {fields[0]!r}" + (f" (or {fields[1:]})" if len(fields) > 1 else ""))
    value = row[field]
    if isinstance(value, list):  # chat messages: the first message's content
        if not value or not isinstance(value[0], dict) or "content" not in value[0]:
            raise InputError(f"{where}: field {field!r} is a list but not of chat messages with 'content'")
        value = value[0]["content"]
    return require_text(value, where, field)


# ------------------------------------------------------------------------------------------ selection and splits


def select_languages(records: Sequence[LabelledPrompt], languages: Iterable[str] | None) -> list[LabelledPrompt]:
    """Records in `languages` (ISO codes or any spelling `normalize_language` accepts); None keeps all."""
    wanted = language_set(languages)
    return [r for r in records if wanted is None or r.language in wanted]


def drop_near_duplicate_groups(candidates: Sequence, reference: Sequence, *, language: str = "en",
                               threshold: float = NEAR_DUPLICATE_JACCARD) -> tuple[list, list[str]]:
    """Drop candidate groups whose text in `language` nearly duplicates a reference text in that language.

    candidates, reference: records with `text`, `language` and `group_id` (LabelledPrompt or ParallelText).
    Near duplicate: shingle Jaccard similarity >= threshold (`lasa_jax.data.heldout.TextIndex.near`; lower-cased
    words for English, the test the shared data's README uses for its MultiJail disjointness check). Returns (kept
    records, sorted dropped group ids).
    Example: PolyRefuse harmful_val has no English instruction identical to a harmful_train one, but 3 val rows are
    paraphrases of train rows at this threshold (e.g. "...women being inherently less intelligent than men").
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    language = normalize_language(language)
    texts = [r.text for r in reference if r.language == language]
    index = TextIndex(texts, [str(i) for i in range(len(texts))])
    dropped = set()
    for r in candidates:
        if r.language == language and r.group_id not in dropped and index.near(r.text, threshold) is not None:
            dropped.add(r.group_id)
    return [r for r in candidates if r.group_id not in dropped], sorted(dropped)


def split_summary(records: Sequence[LabelledPrompt]) -> dict:
    """Counts for reports: rows, groups, and rows per language and label ("<lang>": {"benign": n, "harmful": n})."""
    per_language: dict[str, dict[str, int]] = {}
    for r in records:
        entry = per_language.setdefault(r.language, {"benign": 0, "harmful": 0})
        entry["harmful" if r.label else "benign"] += 1
    return {"num_rows": len(records), "num_groups": len({r.group_id for r in records}),
            "num_harmful": sum(r.label for r in records), "per_language": dict(sorted(per_language.items())),
            "sources": dict(sorted(collections.Counter(r.source for r in records).items()))}
