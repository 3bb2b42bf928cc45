"""Loaders of the two preference file formats: the authors' paired JSON and unpaired JSONL -> `PreferenceRow`s."""
from __future__ import annotations

import os
from collections.abc import Mapping

from lasa_jax.data.preference.fields import (
    complete_field,
    completion_field,
    group_id_field,
    label_field,
    language_field,
    prompt_field,
    string_field,
)
from lasa_jax.data.preference.rows import PreferenceRow, prompt_group_id
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import iter_jsonl, read_json


def load_paired_preference_json(path: str | os.PathLike) -> list[PreferenceRow]:
    """The authors' paired format -> two unpaired rows per pair, (chosen, desirable) then (rejected, undesirable).

    File: a JSON list of {"prompt": [{role, content}, ...] or str, "chosen": [{"role": "assistant", "content"}]
    or str, "rejected": same, "source": str, optional "language", "category", "group_id"/"id"}. The group id is
    "group_id" (or "id") if present, else "<file name>:<record index>".
    """
    path = os.fspath(path)
    records = read_json(path, "preference file")
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of preference pairs, got {type(records).__name__}")
    rows = []
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, Mapping):
            raise InputError(f"{where}: expected an object, got {type(record).__name__}")
        prompt = prompt_field(record, where)
        source = string_field(record, "source", where)
        language = language_field(record, where)
        group_id = group_id_field(record, where, default=f"{os.path.basename(path)}:{index}")
        for field, desirable in (("chosen", True), ("rejected", False)):
            rows.append(PreferenceRow(prompt, completion_field(record, field, where), desirable, source, language,
                                      group_id, origin=f"{path}#{index}.{field}"))
    if not rows:
        raise InputError(f"{path}: no preference pairs")
    return rows


def load_unpaired_jsonl(path: str | os.PathLike) -> list[PreferenceRow]:
    """Unpaired JSONL, one {"prompt", "completion", "label", "source"} object per line.

    prompt: str or message list; completion: str or [{"role": "assistant", "content"}]; label: true/false,
    "desirable"/"undesirable" or 1/0; optional "language", "group_id" (default `prompt_group_id(prompt)`, so that
    the answers to one prompt form one group), "complete" (bool, default true; false: the completion was cut by its
    generator and gets no end-of-turn token).
    Blank lines are skipped; errors name "<path>:<line number>" and the field; a file without rows is an error.
    """
    path = os.fspath(path)
    rows = []
    for line_number, record in iter_jsonl(path, "preference JSONL file"):
        where = f"{path}:{line_number}"
        if not isinstance(record, Mapping):
            raise InputError(f"{where}: expected an object, got {type(record).__name__}")
        prompt = prompt_field(record, where)
        rows.append(PreferenceRow(
            prompt, completion_field(record, "completion", where),
            label_field(record, where), string_field(record, "source", where),
            language_field(record, where), group_id_field(record, where, default=prompt_group_id(prompt)),
            origin=f"{path}#{line_number}", complete=complete_field(record, where)))
    if not rows:
        raise InputError(f"{path}: no preference rows")
    return rows
