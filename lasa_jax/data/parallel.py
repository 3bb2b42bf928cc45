"""Readers of parallel text (the same meaning written in several languages) -> `ParallelText` records.

A record's `group_id` identifies its meaning ("query id") and is always namespaced by its source (`"flores:1239"`,
`"polyrefuse/harmful_train:17"`, `"multijail:12"`), so the ids of two data sets never merge. `language` is an ISO
639-1 code (`lasa_jax.data.languages.normalize_language`).

Readers (paths are the dataset folders of the shared data, see each folder's SOURCE.md):
- `load_flores_sib200`: FLORES-200 sentences via SIB-200, benign (label 0), joined across languages by `index_id`
  (`flores_sib200_rows`: the raw TSV rows with their SIB-200 topic, for the utility metric).
- `load_polyrefuse`: PolyRefuse harmful (label 1) / harmless (label 0) prompts, row-aligned within a split.
- `load_multijail`: MultiJail, harmful (label 1). HELD OUT: evaluation only, never part of the Locate data.
- `load_translated_safety_json`: the reference code's `safety_train_translated.json` layout.
- `load_parallel_jsonl` / `load_parallel_hub`: generic rows `{text|prompt, language, group_id[, label, source,
  split]}`.
Grouping them into Locate's corpus (filters, the default corpus, its summary) is `lasa_jax.locate.corpus`.
"""
from __future__ import annotations

import csv
import dataclasses
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
from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import iter_jsonl

PathLike = str | os.PathLike

_POLYREFUSE_ENGLISH_SPLITS = {
    ("harmful", "train"): "harmful_train.json",
    ("harmful", "val"): "harmful_val.json",
    ("harmless", "train"): "harmless_train_200_sampled.json",
    ("harmless", "val"): "harmless_val_200_sampled.json",
}
_FLORES_SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class ParallelText:
    """One text of a parallel corpus.

    text: the prompt/sentence. language: ISO 639-1 code. group_id: "<source>:<id>", shared by all translations of
    one meaning. source: data set (and split) name. label: 0 benign, 1 harmful, None when unknown.
    """

    text: str
    language: str
    group_id: str
    source: str
    label: int | None = None


def _no_languages_error(what: str, available: Iterable[str], requested: frozenset[str] | None) -> InputError:
    return InputError(f"{what}: none of the requested languages {sorted(requested or ())} is available "
                      f"(available: {sorted(available)})")


# ---------------------------------------------------------------------------------------------------- loaders


def load_multijail(path: PathLike, languages: Iterable[str] | None = MULTIJAIL_LANGUAGES) -> list[ParallelText]:
    """MultiJail (`MultiJail.csv`, or the folder holding it): 315 harmful prompts x 10 languages, label 1.

    HELD OUT for evaluation: never train on it or pick layers with it (the default Locate data excludes it).
    group_id = "multijail:<id>". Returns records in row order, languages in column order.
    """
    path = pathlib.Path(path)
    csv_path = path / "MultiJail.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found (expected MultiJail.csv)")
    requested = language_set(languages)
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "id" not in header:
            raise InputError(f"{csv_path}: missing column 'id' (header: {header})")
        language_columns = {}
        for column in header:
            if column in ("id", "source", "tags"):
                continue
            language = language_code(column, f"{csv_path}: column {column!r}")
            if requested is None or language in requested:
                language_columns[column] = language
        if not language_columns:
            raise _no_languages_error(str(csv_path), [c for c in header if c not in ("id", "source", "tags")],
                                      requested)
        records = []
        for line_index, row in enumerate(reader):
            where = f"{csv_path} row {line_index + 1}"
            row_id = require_text(row.get("id"), where, "id").strip()
            for column, language in language_columns.items():
                text = require_text(row.get(column), where, column)
                records.append(ParallelText(text, language, f"multijail:{row_id}", "multijail", 1))
    return records


def load_flores_sib200(dataset_dir: PathLike, languages: Iterable[str] | None = MULTIJAIL_LANGUAGES,
                       splits: Sequence[str] = _FLORES_SPLITS) -> list[ParallelText]:
    """FLORES-200 via SIB-200 (`<dataset_dir>/data/annotated/<flores_code>/<split>.tsv`): benign, label 0.

    group_id = "flores:<index_id>" (the FLORES sentence id, the join key across languages). Loads the requested
    languages that exist (all of them when `languages` is None); ValueError if none does.
    """
    return [ParallelText(row["text"], row["language"], f"flores:{row['index_id']}", "flores", 0)
            for row in flores_sib200_rows(dataset_dir, languages, splits)]


def flores_sib200_rows(dataset_dir: PathLike, languages: Iterable[str] | None = MULTIJAIL_LANGUAGES,
                       splits: Sequence[str] = _FLORES_SPLITS) -> list[dict[str, str]]:
    """The rows of the SIB-200 TSVs, `{"language", "split", "index_id", "category", "text"}` (category: one of the
    7 SIB-200 topics), languages in folder order, then splits in the given order, then file order.
    Errors as `load_flores_sib200`."""
    annotated = pathlib.Path(dataset_dir) / "data" / "annotated"
    if not annotated.is_dir():
        raise FileNotFoundError(f"{annotated} not found (expected <flores200_sib200>/data/annotated/<flores_code>/)")
    unknown_splits = set(splits) - set(_FLORES_SPLITS)
    if unknown_splits:
        raise InputError(f"unknown FLORES/SIB-200 splits {sorted(unknown_splits)}; "
                         f"expected a subset of {_FLORES_SPLITS}")
    requested = language_set(languages)
    folders = sorted(p for p in annotated.iterdir() if p.is_dir())
    selected = [(p, language_code(p.name, f"{annotated}: folder {p.name!r}")) for p in folders]
    selected = [(p, lang) for p, lang in selected if requested is None or lang in requested]
    if not selected:
        raise _no_languages_error(str(annotated), [p.name for p in folders], requested)
    rows = []
    for folder, language in selected:
        for split in splits:
            tsv = folder / f"{split}.tsv"
            if not tsv.is_file():
                raise FileNotFoundError(f"{tsv} not found")
            with open(tsv, encoding="utf-8", newline="") as f:  # CSV-style quote escaping, tab-delimited
                reader = csv.DictReader(f, delimiter="\t")
                for field in ("index_id", "category", "text"):
                    if field not in (reader.fieldnames or []):
                        raise InputError(f"{tsv}: missing column {field!r} (header: {reader.fieldnames})")
                for line_index, row in enumerate(reader):
                    where = f"{tsv} line {line_index + 2}"
                    rows.append({"language": language, "split": split,
                                 "index_id": require_text(row["index_id"], where, "index_id").strip(),
                                 "category": require_text(row["category"], where, "category").strip(),
                                 "text": require_text(row["text"], where, "text")})
    return rows


def load_polyrefuse(dataset_dir: PathLike, kinds: Sequence[str] = ("harmful", "harmless"),
                    splits: Sequence[str] = ("train", "val"),
                    languages: Iterable[str] | None = MULTIJAIL_LANGUAGES) -> list[ParallelText]:
    """PolyRefuse parallel prompts: harmful -> label 1, harmless -> label 0.

    Files: `<dataset_dir>/PolyRefuse/<kind>_<split>_translated_<lang>.json`. Train/val files store the translated
    text in `instruction` and English comes from `<dataset_dir>/dataset/splits/*.json`; test files store it in
    `instruction_translated` (English original in `instruction`, checked to agree with the English file; the
    English harmful_test file has only `instruction`). Rows are aligned by position within a split:
    group_id = "polyrefuse/<kind>_<split>:<row>", source = "polyrefuse/<kind>_<split>". harmful_test rows
    345, 405, 530, 548 (MultiJail prompts) are always dropped. Keep `splits` to train/val for anything that trains
    or selects; test is the SSI's held-out test. Requested languages without a file are skipped (harmless_test
    has no zh); ValueError if no requested language has a file at all.
    """
    root = pathlib.Path(dataset_dir)
    translated_dir = root / "PolyRefuse"
    if not translated_dir.is_dir():
        raise FileNotFoundError(f"{translated_dir} not found (expected <polyrefuse>/PolyRefuse/*_translated_<l>.json)")
    requested = language_set(languages)
    records = []
    for kind in kinds:
        if kind not in ("harmful", "harmless"):
            raise InputError(f"unknown PolyRefuse kind {kind!r}; expected 'harmful' or 'harmless'")
        for split in splits:
            if split not in ("train", "val", "test"):
                raise InputError(f"unknown PolyRefuse split {split!r}; expected 'train', 'val' or 'test'")
            records.extend(_load_polyrefuse_split(root, kind, split, requested))
    if not records:
        raise InputError(f"{translated_dir}: none of the requested languages {sorted(requested or ())} has a "
                         f"file for kinds {list(kinds)} and splits {list(splits)}")
    return records


def _load_polyrefuse_split(root: pathlib.Path, kind: str, split: str,
                           requested: frozenset[str] | None) -> list[ParallelText]:
    source = f"polyrefuse/{kind}_{split}"
    pattern = re.compile(rf"^{kind}_{split}_translated_(.+)\.json$")
    files = {}  # ISO code -> file
    for path in sorted((root / "PolyRefuse").iterdir()):
        match = pattern.match(path.name)
        if match:
            files[language_code(match.group(1), f"{path}: file-name language code")] = path
    english_file = _POLYREFUSE_ENGLISH_SPLITS.get((kind, split))
    if english_file is not None:
        files["en"] = root / "dataset" / "splits" / english_file
    selected = {lang: path for lang, path in files.items() if requested is None or lang in requested}
    if not selected:
        return []

    english_originals = None  # test files: `instruction` must be the same English prompt in every language
    if split == "test" and "en" in files:
        english_originals = [require_field(row, "instruction", f"{files['en']} record {i}")
                             for i, row in enumerate(read_json_list(files["en"]))]
    rows_by_language = {}
    for language, path in selected.items():
        rows = read_json_list(path)
        texts = []
        for i, row in enumerate(rows):
            where = f"{path} record {i}"
            field = "instruction_translated" if split == "test" and language != "en" else "instruction"
            texts.append(require_text(require_field(row, field, where), where, field))
            if english_originals is not None and i < len(english_originals):
                original = require_field(row, "instruction", where)
                if original != english_originals[i]:
                    raise InputError(f"{where}: 'instruction' differs from record {i} of {files['en']}; "
                                     f"the files are not row-aligned")
        rows_by_language[language] = (path, texts)
    lengths = {path.name: len(texts) for path, texts in rows_by_language.values()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"{source}: files are not row-aligned, row counts differ: {lengths}")

    label = 1 if kind == "harmful" else 0
    dropped = POLYREFUSE_MULTIJAIL_ROWS if (kind, split) == ("harmful", "test") else frozenset()
    return [ParallelText(text, language, f"{source}:{row}", source, label)
            for language, (_, texts) in rows_by_language.items()
            for row, text in enumerate(texts) if row not in dropped]


def load_translated_safety_json(path: PathLike, source: str = "safety_translated",
                                label: int | None = 1,
                                languages: Iterable[str] | None = None) -> list[ParallelText]:
    """The reference code's `safety_train_translated.json`: a JSON list of
    `{"idx": id, "original_query": English text, "translations": {language name or code: text}}`.

    English comes from `original_query`; translation keys go through `normalize_language` ("Javanese", "jw" -> "jv").
    group_id = "<source>:<idx>".
    """
    path = pathlib.Path(path)
    requested = language_set(languages)
    records, seen_ids = [], set()
    for i, row in enumerate(read_json_list(path)):
        where = f"{path} record {i}"
        idx = require_field(row, "idx", where)
        if idx in seen_ids:
            raise InputError(f"{where}: duplicate idx {idx!r}")
        seen_ids.add(idx)
        group_id = f"{source}:{idx}"
        texts = {"en": require_text(require_field(row, "original_query", where), where, "original_query")}
        translations = require_field(row, "translations", where)
        if not isinstance(translations, dict):
            raise InputError(f"{where}: field 'translations' must be an object {{language: text}}")
        for name, text in translations.items():
            language = language_code(name, f"{where}: field 'translations'")
            texts[language] = require_text(text, where, f"translations.{name}")
        records.extend(ParallelText(text, language, group_id, source, label)
                       for language, text in texts.items() if requested is None or language in requested)
    return records


def _generic_record(row: Any, where: str, default_source: str) -> ParallelText:
    """One row of the generic layout (`load_parallel_jsonl`) as a `ParallelText`."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    present = [field for field in ("text", "prompt") if row.get(field) is not None]
    if not present or (len(present) == 2 and row["text"] != row["prompt"]):
        raise InputError(f"{where}: expected the field 'text' (or its alias 'prompt'; both only if equal), "
                         f"got {present}")
    text = require_text(row[present[0]], where, present[0])
    language = language_field(row, where)
    group = group_id_field(row, where)
    source = row.get("source") if row.get("source") is not None else default_source
    source = require_text(source, where, "source")
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        raise InputError(f"{where}: field 'label' must be 0 (benign) or 1 (harmful), got {label!r}")
    return ParallelText(text, language, f"{source}:{group}", source, label)


def load_parallel_jsonl(path: PathLike, source: str | None = None, splits: Sequence[str] | None = None,
                        what: str = "parallel JSONL file") -> list[ParallelText]:
    """Generic JSON Lines file, one object per line: `{"text" (or "prompt"; both only when equal), "language",
    "group_id"}` plus optional `"label"` (0/1), `"source"` and `"split"`. group_id becomes "<source>:<group_id>";
    source defaults to the file stem.

    splits: keep the rows whose `split` is one of these and the rows without a `split`; None or () keeps every row.
    Blank lines are skipped; a bad line raises an InputError naming the file, line and field; `what` names the
    file's role when it is missing.
    """
    path = pathlib.Path(path)
    default_source = source or path.stem
    keep = set(splits or ())
    records = []
    for line_number, row in iter_jsonl(path, what):
        if keep and isinstance(row, dict) and row.get("split") is not None and row["split"] not in keep:
            continue
        records.append(_generic_record(row, f"{path}:{line_number}", default_source))
    if not records:
        raise InputError(f"{path}: no records" + (f" with split in {sorted(keep)}" if keep else ""))
    return records


def load_parallel_hub(dataset_id: str, split: str = "train", data_files: Any = None, source: str | None = None,
                      cache_dir: str | os.PathLike | None = None) -> list[ParallelText]:
    """Rows of the generic layout (see `load_parallel_jsonl`) through `datasets.load_dataset(dataset_id, split=...,
    data_files=..., cache_dir=...)`: a hub data set id, or a builder name such as "json" with local `data_files`.
    source defaults to `dataset_id` (for builder "json": the stem of the single data file).
    """
    import datasets  # imported lazily: only this loader needs it

    if source is None:
        source = dataset_id
        if dataset_id == "json" and isinstance(data_files, (str, os.PathLike)):
            source = pathlib.Path(data_files).stem
    dataset = datasets.load_dataset(dataset_id, split=split, data_files=data_files,
                                     cache_dir=None if cache_dir is None else os.fspath(cache_dir))
    records = [_generic_record(row, f"{dataset_id} ({split}) record {i}", source) for i, row in enumerate(dataset)]
    if not records:
        raise InputError(f"{dataset_id} ({split}): no records")
    return records


