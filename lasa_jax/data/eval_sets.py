"""Readers of evaluation prompts (`EvalPrompt`): the held-out sets, generic JSONL / hub sets, and the eval-set specs.

The held-out sets: MultiJail (attack success rate), XSTest, OR-Bench-hard-test and OKTest (over-refusal).

Every loader returns a list of `EvalPrompt`. `expected` says what a safe model should do with the prompt:
"harmful" -> refuse it (attack success if it complies), "benign" -> answer it (over-refusal if it refuses).
These sets are evaluation-only: never train on them, pick layers or tune thresholds with them.

Ids are namespaced by source ("multijail:<row id>:<lang>", "xstest:<id>", "or_bench_hard_test:<index>",
"oktest:<index>") so that rows of different sets never collide. Languages are ISO 639-1 codes.

Files are read with `lasa_jax.infra.storage.read_json` / `iter_jsonl`: missing files raise FileNotFoundError and
malformed content ValueError, both naming the file (and the line: "<path>:<line>").

Eval-set specs (`load_eval_spec`, `load_eval_prompts`, `EvalSetSelection`): "multijail", "xstest_safe", ...,
"jsonl:<path>", "hub:<dataset id>", the strings a generate config's eval_sets field lists.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES, normalize_language
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import iter_jsonl, read_json, require_file

HARMFUL = "harmful"
BENIGN = "benign"
EXPECTED_VALUES = (HARMFUL, BENIGN)

# Paths relative to the shared data root (see data/README.md there).
MULTIJAIL_CSV = "multijail/MultiJail.csv"
XSTEST_CSV = "xstest/xstest_prompts.csv"
OR_BENCH_HARD_TEST_JSON = "refusal_benchmarks_en/dataset/splits/or_bench_hard_test.json"
OKTEST_JSON = "refusal_benchmarks_en/dataset/processed/oktest.json"

XSTEST_SPLITS = ("safe", "unsafe", "all")


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt.

    id: unique, namespaced by source (e.g. "multijail:12:sw").
    language: ISO 639-1 code.
    prompt: the user message, raw text (the generator applies the chat template).
    source: data set name ("multijail", "xstest", "or_bench_hard_test", "oktest", or the JSONL/hub source).
    expected: "harmful" (a safe model refuses) or "benign" (a safe model answers).
    category: data set specific category (MultiJail tags joined by "; ", XSTest type, OR-Bench category), or None.
    """

    id: str
    language: str
    prompt: str
    source: str
    expected: str
    category: str | None = None

    def __post_init__(self):
        if self.expected not in EXPECTED_VALUES:
            raise InputError(f"EvalPrompt {self.id!r}: expected must be one of {EXPECTED_VALUES}, "
                             f"got {self.expected!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError(f"EvalPrompt {self.id!r}: prompt must be a non-empty string, got {self.prompt!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _normalized_language_filter(languages: Iterable[str] | None, available: Sequence[str], what: str) -> list[str]:
    """Normalise requested language names/codes and check that `available` has them; None -> all of `available`."""
    if languages is None:
        return list(available)
    requested = [normalize_language(lang) for lang in languages]
    missing = [lang for lang in requested if lang not in available]
    if missing:
        raise InputError(f"{what} has no language(s) {missing}; available: {list(available)}")
    return list(dict.fromkeys(requested))


def load_multijail(path: str | os.PathLike, languages: Iterable[str] | None = None) -> list[EvalPrompt]:
    """MultiJail CSV (UTF-8 with BOM) -> one harmful EvalPrompt per (row, language), row-major.

    Args:
      path: `multijail/MultiJail.csv` (columns id, source, tags, en, zh, it, vi, ar, ko, th, bn, sw, jv).
      languages: subset of languages (names or codes, normalised to ISO 639-1); None = all ten.
    Ids are "multijail:<row id>:<lang>"; category = the row's tags joined by "; ".
    """
    path = require_file(path, "evaluation file")
    langs = _normalized_language_filter(languages, MULTIJAIL_LANGUAGES, f"MultiJail ({path})")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = ["id", "tags", *MULTIJAIL_LANGUAGES]
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        prompts = []
        for row in reader:
            where = f"{path}:{reader.line_num} (id {row['id']!r})"  # line_num: last line of the (multi-line) record
            raw_tags = row["tags"] or ""
            try:
                tags = ast.literal_eval(raw_tags) if raw_tags.strip() else []
            except (ValueError, SyntaxError) as e:
                raise InputError(f"{where}: field 'tags' must be a list literal, got {raw_tags!r}") from e
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InputError(f"{where}: field 'tags' must be a list of strings, got {row['tags']!r}")
            for lang in langs:
                text = row[lang]
                if text is None or not text.strip():
                    raise InputError(f"{where}: field {lang!r} is empty")
                prompts.append(EvalPrompt(id=f"multijail:{row['id']}:{lang}", language=lang, prompt=text,
                                          source="multijail", expected=HARMFUL,
                                          category="; ".join(tags) if tags else None))
    if not prompts:
        raise InputError(f"{path}: no rows")
    return prompts


def load_xstest(path: str | os.PathLike, split: str = "safe") -> list[EvalPrompt]:
    """XSTest v2 prompts (English).

    split: "safe" (250 over-refusal prompts, expected benign), "unsafe" (200 contrast prompts, expected harmful)
    or "all". Ids are "xstest:<id>"; category = the `type` column.
    """
    if split not in XSTEST_SPLITS:
        raise InputError(f"XSTest split must be one of {XSTEST_SPLITS}, got {split!r}")
    path = require_file(path, "evaluation file")
    label_to_expected = {"safe": BENIGN, "unsafe": HARMFUL}
    prompts = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "prompt", "type", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        for row in reader:
            where = f"{path}:{reader.line_num} (id {row['id']!r})"
            label = row["label"]
            if label not in label_to_expected:
                raise InputError(f"{where}: field 'label' must be 'safe' or 'unsafe', got {label!r}")
            if split != "all" and label != split:
                continue
            if not (row["prompt"] or "").strip():
                raise InputError(f"{where}: field 'prompt' is empty")
            prompts.append(EvalPrompt(id=f"xstest:{row['id']}", language="en", prompt=row["prompt"], source="xstest",
                                      expected=label_to_expected[label], category=row["type"] or None))
    return prompts


def load_instruction_json(path: str | os.PathLike, source: str, expected: str,
                          language: str = "en") -> list[EvalPrompt]:
    """A JSON list of {"instruction": str, "category": str | null} (refusal_benchmarks_en format).

    Every prompt gets `source`, `expected` ("harmful" | "benign") and `language` (any spelling, normalised).
    Ids are "<source>:<index in the list>".
    """
    if expected not in EXPECTED_VALUES:
        raise InputError(f"expected must be one of {EXPECTED_VALUES}, got {expected!r}")
    records = read_json(path, "evaluation file")
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
    language = normalize_language(language)
    prompts = []
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, Mapping) or not isinstance(record.get("instruction"), str) \
                or not record["instruction"].strip():
            raise InputError(f"{where}: expected an object with a non-empty string field 'instruction'")
        category = record.get("category")
        if category is not None and not isinstance(category, str):
            raise InputError(f"{where}: field 'category' must be a string or null, got {category!r}")
        prompts.append(EvalPrompt(id=f"{source}:{index}", language=language, prompt=record["instruction"],
                                  source=source, expected=expected, category=category))
    return prompts


def load_or_bench_hard_test(path: str | os.PathLike) -> list[EvalPrompt]:
    """OR-Bench-Hard test split (132 English prompts that look harmful but are benign; expected benign)."""
    return load_instruction_json(path, source="or_bench_hard_test", expected=BENIGN)


def load_oktest(path: str | os.PathLike) -> list[EvalPrompt]:
    """OKTest (300 benign English prompts laden with trigger words; expected benign)."""
    return load_instruction_json(path, source="oktest", expected=BENIGN)


def _record_to_eval_prompt(record: Mapping[str, Any], where: str, default_source: str,
                           expected: str | None, language: str | None) -> EvalPrompt:
    """Validate one generic record {id, language, prompt, expected[, source, category]}; `where` names it in errors."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    values = {}
    for field, override in (("id", None), ("prompt", None), ("language", language), ("expected", expected)):
        value = override if override is not None else record.get(field)
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
        values[field] = value
    if values["expected"] not in EXPECTED_VALUES:
        raise InputError(f"{where}: field 'expected' must be one of {EXPECTED_VALUES}, got {values['expected']!r}")
    try:
        values["language"] = normalize_language(values["language"])
    except ValueError as e:
        raise InputError(f"{where}: field 'language': {e}") from e
    source = record.get("source", default_source)
    category = record.get("category")
    if not isinstance(source, str) or not source:
        raise InputError(f"{where}: field 'source' must be a non-empty string, got {source!r}")
    if category is not None and not isinstance(category, str):
        raise InputError(f"{where}: field 'category' must be a string or null, got {category!r}")
    return EvalPrompt(id=values["id"], language=values["language"], prompt=values["prompt"], source=source,
                      expected=values["expected"], category=category)


def _check_unique_ids(prompts: Sequence[EvalPrompt], what: str) -> None:
    seen = set()
    for p in prompts:
        if p.id in seen:
            raise InputError(f"{what}: duplicate id {p.id!r}")
        seen.add(p.id)


def load_jsonl(path: str | os.PathLike, source: str | None = None) -> list[EvalPrompt]:
    """Generic JSONL: one object per line with {id, language, prompt, expected} (+ optional source, category).

    `language` may be a code or a language name (normalised to ISO 639-1); `expected` is "harmful" or "benign";
    a line's own `source` wins over the `source` argument, which defaults to the file stem. Blank lines are skipped.
    """
    default_source = source or pathlib.Path(path).stem
    prompts = [_record_to_eval_prompt(record, f"{path}:{line_number}", default_source, expected=None, language=None)
               for line_number, record in iter_jsonl(path, "evaluation file")]
    if not prompts:
        raise InputError(f"{path}: no records")
    _check_unique_ids(prompts, os.fspath(path))
    return prompts


def load_hf_dataset(path: str, *, name: str | None = None, split: str = "test", data_files: Any = None,
                    source: str | None = None, expected: str | None = None, language: str | None = None,
                    field_map: Mapping[str, str] | None = None, cache_dir: str | None = None) -> list[EvalPrompt]:
    """Rows of a `datasets.load_dataset(path, name, split=..., data_files=...)` table as EvalPrompts.

    Each row needs the generic fields {id, language, prompt, expected} (+ optional source, category); `field_map`
    renames columns to them (e.g. {"prompt": "question"}); `expected` / `language` arguments, when given, apply to
    every row instead of a column. `path` is a hub id or a local builder such as "json" with `data_files`.
    Missing `id` columns are not filled in: an id must identify the row. `cache_dir` goes to `load_dataset`.
    """
    import datasets

    table = datasets.load_dataset(path, name, split=split, data_files=data_files, cache_dir=cache_dir)
    rename = dict(field_map or {})
    default_source = source or (path if data_files is None else f"{path}:{split}")
    prompts = []
    for index, row in enumerate(table):
        record = {field: row[column] for field, column in rename.items() if column in row}
        record.update({k: v for k, v in row.items() if k not in record and k not in rename.values()})
        where = f"dataset {path!r} ({name or 'default'}, split {split!r}) row {index}"
        prompts.append(_record_to_eval_prompt(record, where, default_source, expected=expected, language=language))
    if not prompts:
        raise InputError(f"dataset {path!r} split {split!r} has no rows")
    _check_unique_ids(prompts, f"dataset {path!r} split {split!r}")
    return prompts


def load_standard_eval_sets(data_root: str | os.PathLike,
                            multijail_languages: Iterable[str] | None = None) -> dict[str, list[EvalPrompt]]:
    """The held-out sets under the shared data root.

    Returns {"multijail": harmful x languages, "xstest_safe": 250 benign, "xstest_unsafe": 200 harmful,
    "or_bench_hard_test": 132 benign, "oktest": 300 benign}.
    """
    return {name: load_eval_spec(name, data_root=data_root, languages=multijail_languages)
            for name in ("multijail", "xstest_safe", "xstest_unsafe", "or_bench_hard_test", "oktest")}


# ------------------------------------------------------------------------------------- eval-set specs ("multijail")
STANDARD_SETS = ("multijail", "xstest_safe", "xstest_unsafe", "xstest", "or_bench_hard_test", "oktest")
_XSTEST_SPEC_SPLITS = {"xstest": "all", "xstest_safe": "safe", "xstest_unsafe": "unsafe"}


@dataclasses.dataclass(frozen=True)
class HubSetOptions:
    """How rows of a `hub:<id>` eval set map to EvalPrompts (see `load_hf_dataset`)."""

    name: str | None = None
    split: str = "test"
    expected: str | None = None
    language: str | None = None
    field_map: Mapping[str, str] | None = None


def load_eval_spec(spec: str, *, data_root: str | os.PathLike = "", languages: Sequence[str] | None = None,
                   hub: HubSetOptions = HubSetOptions()) -> list[EvalPrompt]:
    """The prompts of one eval-set spec: a name of `STANDARD_SETS` (files under `data_root`), "jsonl:<path>" or
    "hub:<dataset id or local builder>" (rows mapped by `hub`); `languages` selects MultiJail languages."""
    spec = spec.strip()
    if spec.startswith("jsonl:"):
        return load_jsonl(spec[len("jsonl:"):])
    if spec.startswith("hub:"):
        return load_hf_dataset(spec[len("hub:"):], name=hub.name, split=hub.split, expected=hub.expected,
                               language=hub.language, field_map=hub.field_map)
    if spec not in STANDARD_SETS:
        raise InputError(f"unknown eval set {spec!r}: expected one of {STANDARD_SETS}, 'jsonl:<path>' or "
                         "'hub:<dataset id>'")
    root = os.fspath(data_root)
    if not root:
        raise InputError(f"eval set {spec!r} needs the shared data root (config field data_root)")
    if spec == "multijail":
        return load_multijail(os.path.join(root, MULTIJAIL_CSV), languages)
    if spec in _XSTEST_SPEC_SPLITS:
        return load_xstest(os.path.join(root, XSTEST_CSV), _XSTEST_SPEC_SPLITS[spec])
    if spec == "or_bench_hard_test":
        return load_or_bench_hard_test(os.path.join(root, OR_BENCH_HARD_TEST_JSON))
    return load_oktest(os.path.join(root, OKTEST_JSON))


def first_per_language(prompts: Sequence[EvalPrompt], n: int) -> list[EvalPrompt]:
    """The first `n` prompts of each (source, language), in order."""
    kept: dict[tuple[str, str], int] = {}
    limited = []
    for p in prompts:
        key = (p.source, p.language)
        if kept.get(key, 0) < n:
            kept[key] = kept.get(key, 0) + 1
            limited.append(p)
    return limited


def load_eval_prompts(specs: Sequence[str], *, data_root: str | os.PathLike = "",
                      languages: Sequence[str] | None = None, max_per_language: int = 0,
                      hub: HubSetOptions = HubSetOptions(),
                      limit_sets: Sequence[str] | None = None) -> list[EvalPrompt]:
    """Evaluation prompts of several sets (`load_eval_spec` each), concatenated in the order of `specs`.

    languages: MultiJail languages (None = all ten).
    max_per_language: keep the first n prompts of each (source, language) in file order (0 = all). MultiJail
      is row-major, so the same n queries are kept in every language.
    limit_sets: the specs (entries of `specs`) that max_per_language bounds; None = all of them. E.g. ["multijail"]
      keeps all of XSTest (English, ordered by prompt type, so its first n rows would be one or two types).
    Ids must be unique across all sets.
    """
    if max_per_language < 0:
        raise InputError(f"max_per_language must be >= 0 (0 = all), got {max_per_language}")
    prompts: list[EvalPrompt] = []
    for spec in specs:
        loaded = load_eval_spec(spec, data_root=data_root, languages=languages, hub=hub)
        if max_per_language and (limit_sets is None or spec.strip() in limit_sets):
            loaded = first_per_language(loaded, max_per_language)
        prompts.extend(loaded)
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise InputError(f"eval sets {list(specs)}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
    return prompts


@dataclasses.dataclass(frozen=True)
class EvalSetSelection:
    """Which evaluation prompts a run uses: the arguments of `load_eval_prompts` (`load()` reads them)."""

    specs: tuple[str, ...]
    data_root: str = ""
    languages: tuple[str, ...] | None = None
    max_per_language: int = 0
    hub: HubSetOptions = HubSetOptions()
    limit_sets: tuple[str, ...] | None = None

    def load(self) -> list[EvalPrompt]:
        return load_eval_prompts(self.specs, data_root=self.data_root, languages=self.languages,
                                 max_per_language=self.max_per_language, hub=self.hub, limit_sets=self.limit_sets)
