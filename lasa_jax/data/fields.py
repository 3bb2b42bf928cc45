"""Checked fields of one data-file record, shared by the readers of `lasa_jax.data`: each returns the value or
raises an `InputError` naming `where` (the file and its record or line) and the field."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lasa_jax.data.languages import normalize_language
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import read_json


def require_field(row: Any, field: str, where: str) -> Any:
    """row[field]; the row must be a JSON object and the field present and not null."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if field not in row or row[field] is None:
        raise InputError(f"{where}: missing field {field!r}")
    return row[field]


def require_text(value: Any, where: str, field: str) -> str:
    """`value` of `field`, which must be a string that is not blank."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def group_id_field(row: Mapping, where: str) -> str | int:
    """The row's "group_id": a non-empty string or an integer (not a bool), as given (callers namespace it)."""
    group = require_field(row, "group_id", where)
    if isinstance(group, bool) or not isinstance(group, (str, int)) or str(group).strip() == "":
        raise InputError(f"{where}: field 'group_id' must be a non-empty string or an integer, got {group!r}")
    return group


def language_code(label: Any, where: str) -> str:
    """`normalize_language(label)` (an ISO 639-1 code), its error prefixed by `where` the label was found."""
    try:
        return normalize_language(label)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from err


def language_field(row: Mapping, where: str, fields: Sequence[str] = ("language",)) -> str:
    """The ISO 639-1 code of the first of `fields` the row has (aliases, e.g. ("language", "lingual"))."""
    field = next((f for f in fields if row.get(f) is not None), None)
    if field is None:
        raise InputError(f"{where}: missing field {' or '.join(map(repr, fields))}")
    return language_code(row[field], f"{where}: field {field!r}")


def language_set(languages: Iterable[str] | None) -> frozenset[str] | None:
    """Requested languages (any spelling `normalize_language` accepts) as a set of ISO codes; None = all."""
    return None if languages is None else frozenset(normalize_language(lang) for lang in languages)


def read_json_list(path: str | os.PathLike) -> list:
    """The records of a JSON file holding one list (`read_json`: missing file, bad JSON named)."""
    rows = read_json(path, "JSON data file")
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    return rows
