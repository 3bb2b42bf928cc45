"""Locate's corpus: the parallel texts `config.data` describes (step 1 of `lasa_jax.locate.stage`), with report notes.

Accepts the `config.data` section or its `LocateData` settings (`lasa_jax.locate.settings.data_settings`).
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from lasa_jax.data.groups import sample_groups
from lasa_jax.data.heldout import guard_inputs
from lasa_jax.data.parallel import (
    ParallelText,
    load_multijail,
    load_parallel_hub,
    load_translated_safety_json,
    record_from_row,
)
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import iter_jsonl
from lasa_jax.locate.corpus_filters import (
    check_parallel_corpus,
    default_locate_corpus,
    filter_parallel_groups,
    keep_common_sources,
)
from lasa_jax.locate.settings import LocateData, data_settings
from lasa_jax.stage import as_settings

log = logging.getLogger("lasa_jax.locate.stage")  # the stage's logger (its messages are Locate's)


def load_parallel_jsonl_split(path: str | os.PathLike, splits: Sequence[str] = ("train",),
                              source: str | None = None) -> list[ParallelText]:
    """Generic JSON Lines parallel rows (layout of `lasa_jax.data.parallel.load_parallel_jsonl`), keeping rows
    whose `split` field is in `splits` and rows without one (an empty `splits` keeps every row). A row may carry
    both `text` and `prompt` (as the demo data does) when they are equal. group_id = "<source>:<group_id>",
    source defaults to the file stem. ValueError naming the file and line on a bad row."""
    path = pathlib.Path(path)
    keep = set(splits)
    records = []
    what = f"parallel JSONL file ({config_field('data.path')} of data.source='jsonl')"
    for line_number, row in iter_jsonl(path, what):
        where = f"{path}:{line_number}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        split = row.get("split")
        if keep and split is not None and split not in keep:
            continue
        records.append(record_from_row(row, where, source or path.stem))
    if not records:
        raise InputError(f"{path}: no records" + (f" with split in {sorted(keep)}" if keep else ""))
    return records


def load_locate_corpus(data_config, seed: int) -> list[ParallelText]:
    """The Locate texts described by `config.data` (module docstring, step 1)."""
    return locate_corpus_with_notes(data_config, seed)[0]


def locate_corpus_with_notes(data_config, seed: int) -> tuple[list[ParallelText], dict[str, Any]]:
    """(`load_locate_corpus`'s texts, notes for the report: "source", "common_sources_only" and
    "held_out_content", what the held-out content guard checked and dropped)."""
    data = as_settings(data_config, LocateData, data_settings)
    root = pathlib.Path(data.root) if data.root else None
    notes: dict[str, Any] = {"source": data.source, "common_sources_only": data.common_sources_only}
    if data.source == "default":
        if root is None:
            raise InputError(f"{config_field('data.root')} is required for data.source='default' (the shared data "
                             "folder holding flores200_sib200/ and polyrefuse/)")
        records = default_locate_corpus(root, languages=data.languages, seed=seed,
                                        max_groups_per_source=data.max_groups_per_source or None,
                                        common_sources_only=data.common_sources_only)
        guarded, notes["held_out_content"] = guard_inputs({"corpus": records}, root, "Locate data (default)",
                                                          allow_missing=data.allow_missing_held_out)
        return filter_parallel_groups(guarded["corpus"], data.languages, min_languages=data.min_languages), notes
    records = _load_source(data, root, notes)
    records = filter_parallel_groups(records, data.languages, min_languages=data.min_languages)
    if data.common_sources_only:
        records, notes["dropped_sources"] = keep_common_sources(records, data.languages)
        log.info("data.common_sources_only: dropped sources without texts in every language (their languages): %s",
                 notes["dropped_sources"])
    records = sample_groups(records, data.max_groups_per_source, stratum=lambda r: r.source, seed=seed,
                            candidates="first_seen", what=config_field("data.max_groups_per_source"))
    check_parallel_corpus(records, what=f"Locate data ({data.source}) after subsampling")
    return records, notes


def _load_source(data: LocateData, root: pathlib.Path | None, notes: dict[str, Any]) -> list[ParallelText]:
    """The records of a non-default source, through the held-out guard unless data.allow_held_out."""
    source, path = data.source, data.path
    if source == "multijail":
        if not data.allow_held_out:
            raise InputError("data.source='multijail' is a held-out evaluation set: picking the layer with it "
                             "leaks the test set. Use data.source='default', or set "
                             f"{config_field('data.allow_held_out')}=True to analyse it deliberately")
        if not path and root is None:
            raise InputError(f"data.source='multijail' needs {config_field('data.path')} (MultiJail.csv) or "
                             f"{config_field('data.root')}")
        log.warning("!!! Locate runs on MultiJail, a HELD-OUT EVALUATION SET (data.allow_held_out=True). "
                    "A layer chosen this way must not be used for results evaluated on MultiJail. !!!")
        notes["held_out_content"] = "not applied: data.source='multijail' (data.allow_held_out=True)"
        return load_multijail(path or root / "multijail", languages=data.languages)
    if not path:
        raise InputError(f"{config_field('data.path')} is required for data.source={source!r}")
    if source == "jsonl":
        records = load_parallel_jsonl_split(path, splits=data.splits)
    elif source == "hub":
        records = load_parallel_hub(path, split=data.hub_split, data_files=data.hub_data_files or None,
                                    cache_dir=data.hub_cache_dir or None)
    else:
        records = load_translated_safety_json(path, label=1)
    if data.allow_held_out:
        notes["held_out_content"] = "not applied: data.allow_held_out=True"
        return records
    guarded, notes["held_out_content"] = guard_inputs({"corpus": records}, root, f"Locate data ({source} {path})",
                                                      allow_missing=data.allow_missing_held_out)
    return guarded["corpus"]
