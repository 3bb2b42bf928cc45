"""Locate's corpus: the parallel texts `data.source` names, held-out guarded, kept to parallel groups, subsampled.

Readers of the files are `lasa_jax.data.parallel`; here they become the one corpus Locate analyses
(`locate_corpus_with_notes(LocateData, seed)`, step 1 of `lasa_jax.locate.stage`), with its checks
(`filter_parallel_groups`, `check_parallel_corpus`), the default corpus (`default_locate_corpus`), the source filter
(`keep_common_sources`) and the summary that goes into activations.json and bottleneck.json (`corpus_summary`).

Source confound: in the default corpus vi, bn, sw and jv come only from FLORES (benign news sentences) while en, zh,
it, ar, ko and th also come from PolyRefuse (harmful/harmless requests), so language and source/domain are partly
aligned and a silhouette by language partly measures source. `keep_common_sources` (`data.common_sources_only`)
keeps only the sources present in every requested language; `corpus_summary` reports texts per source and
language so the mix is visible.
"""
from __future__ import annotations

import collections
import logging
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

from lasa_jax.data.fields import language_set
from lasa_jax.data.groups import sample_groups
from lasa_jax.data.heldout import guard_inputs
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
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.locate.settings import LocateData

log = logging.getLogger("lasa_jax.locate.stage")  # the stage's logger (its messages are Locate's)


# ------------------------------------------------------------------------------------------ groups and checks


def filter_parallel_groups(records: Sequence[ParallelText], languages: Iterable[str] | None = None,
                           min_languages: int = 2) -> list[ParallelText]:
    """Keep records in `languages` (all when None) whose group has texts in >= `min_languages` of them.

    Raises InputError if fewer than 2 languages or fewer than 2 groups remain (silhouettes need both).
    """
    requested = language_set(languages)
    kept = [r for r in records if requested is None or r.language in requested]
    group_languages = collections.defaultdict(set)
    for r in kept:
        group_languages[r.group_id].add(r.language)
    kept = [r for r in kept if len(group_languages[r.group_id]) >= min_languages]
    check_parallel_corpus(kept, what=f"after keeping groups with >= {min_languages} languages")
    return kept


def check_parallel_corpus(records: Sequence[ParallelText], what: str = "parallel corpus") -> None:
    """InputError unless the records span >= 2 languages and >= 2 groups."""
    languages = sorted({r.language for r in records})
    groups = {r.group_id for r in records}
    if len(languages) < 2 or len(groups) < 2:
        raise InputError(f"{what}: need at least 2 languages and 2 groups, got {len(languages)} languages "
                         f"{languages} and {len(groups)} groups ({len(records)} texts)")


def keep_common_sources(records: Sequence[ParallelText], languages: Iterable[str],
                        ) -> tuple[list[ParallelText], dict[str, list[str]]]:
    """Keep the records of sources that have texts in every one of `languages` (so no language is represented by
    a source, or domain, the others lack). Returns (kept records in order, {dropped source: its languages among
    `languages`}). InputError if no source covers every language."""
    requested = language_set(languages)
    covered = collections.defaultdict(set)
    for r in records:
        covered[r.source].update({r.language} & requested)
    dropped = {source: sorted(langs) for source, langs in sorted(covered.items()) if langs != requested}
    kept = [r for r in records if r.source not in dropped]
    if not kept:
        raise InputError(f"no source has texts in every requested language {sorted(requested)}; languages per "
                         f"source: {dropped}")
    return kept, dropped


def corpus_summary(records: Sequence[ParallelText]) -> dict:
    """Counts for logs and reports: texts, groups, texts per language, per source, and per source and language
    ({source: {language: texts}}, which shows whether language and source are confounded)."""
    per_source_language = collections.defaultdict(collections.Counter)
    for r in records:
        per_source_language[r.source][r.language] += 1
    return {
        "num_texts": len(records),
        "num_groups": len({r.group_id for r in records}),
        "texts_per_language": dict(collections.Counter(r.language for r in records)),
        "texts_per_source": dict(collections.Counter(r.source for r in records)),
        "texts_per_source_language": {source: dict(sorted(counts.items()))
                                      for source, counts in sorted(per_source_language.items())},
    }


# ------------------------------------------------------------------------------------------------ the corpus


def default_locate_corpus(data_root: str | os.PathLike, languages: Iterable[str] = MULTIJAIL_LANGUAGES,
                          max_groups_per_source: int | None = 100, seed: int = 0,
                          common_sources_only: bool = False) -> list[ParallelText]:
    """Default Locate data under `data_root` (the shared data folder): benign FLORES/SIB-200 (all three splits)
    plus PolyRefuse harmful and harmless train/val (never the test split, never MultiJail), restricted to
    `languages`, groups with >= 2 of them, with `common_sources_only` only the sources present in every one of
    `languages` (`keep_common_sources`), then at most `max_groups_per_source` groups per source
    (sources: flores, polyrefuse/{harmful,harmless}_{train,val}).

    With the defaults: 100 FLORES groups x 10 languages + 339 PolyRefuse groups x 6 languages (en zh it ar ko th)
    = 439 groups, 3,034 texts; vi, bn, sw and jv come from FLORES only (the source confound of the module
    docstring). With `common_sources_only` and all ten languages: FLORES only, 100 groups x 10 languages.
    """
    data_root = pathlib.Path(data_root)
    # Load every language, then restrict: a requested language may exist in one source only (sw, jv: FLORES).
    records = load_flores_sib200(data_root / "flores200_sib200", languages=None)
    records += load_polyrefuse(data_root / "polyrefuse", splits=("train", "val"), languages=None)
    records = filter_parallel_groups(records, languages=languages, min_languages=2)
    if common_sources_only:
        records, _ = keep_common_sources(records, languages)
    records = sample_groups(records, max_groups_per_source, stratum=lambda r: r.source, seed=seed,
                            candidates="first_seen", what="max_groups_per_source")
    check_parallel_corpus(records, what=f"default Locate corpus under {data_root}")
    return records


def load_locate_corpus(data: LocateData, seed: int) -> list[ParallelText]:
    """The Locate texts `data` describes (`locate_corpus_with_notes` without the notes)."""
    return locate_corpus_with_notes(data, seed)[0]


def locate_corpus_with_notes(data: LocateData, seed: int) -> tuple[list[ParallelText], dict[str, Any]]:
    """The Locate texts `data` (the settings of `config.data`) describes, drawn with `seed` (step 1 of
    `lasa_jax.locate.stage`), and notes for the report: "source", "common_sources_only", "held_out_content" (what
    the held-out content guard checked and dropped) and, with common_sources_only on a non-default source,
    "dropped_sources"."""
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
        # rows whose `split` is not in data.splits are dropped, rows without one kept; () keeps every row
        records = load_parallel_jsonl(path, splits=data.splits,
                                      what=f"parallel JSONL file ({config_field('data.path')} of data.source='jsonl')")
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
