"""Parallel corpora from the loaders of `lasa_jax.data.parallel`: group filtering, checks, the default Locate corpus.

Source confound: in the default corpus vi, bn, sw and jv come only from FLORES (benign news sentences) while en, zh,
it, ar, ko and th also come from PolyRefuse (harmful/harmless requests), so language and source/domain are partly
aligned and a silhouette by language partly measures source. `keep_common_sources` (`common_sources_only=True`)
keeps only the sources present in every requested language; `corpus_summary` reports texts per source and
language so the mix is visible.
"""
from __future__ import annotations

import collections
import pathlib
from collections.abc import Iterable, Sequence

from lasa_jax.data.groups import sample_groups
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.data.parallel import ParallelText, PathLike, load_flores_sib200, load_polyrefuse, requested_languages
from lasa_jax.infra.errors import InputError


def filter_parallel_groups(records: Sequence[ParallelText], languages: Iterable[str] | None = None,
                           min_languages: int = 2) -> list[ParallelText]:
    """Keep records in `languages` (all when None) whose group has texts in >= `min_languages` of them.

    Raises ValueError if fewer than 2 languages or fewer than 2 groups remain (silhouettes need both).
    """
    requested = requested_languages(languages)
    kept = [r for r in records if requested is None or r.language in requested]
    group_languages = collections.defaultdict(set)
    for r in kept:
        group_languages[r.group_id].add(r.language)
    kept = [r for r in kept if len(group_languages[r.group_id]) >= min_languages]
    check_parallel_corpus(kept, what=f"after keeping groups with >= {min_languages} languages")
    return kept


def check_parallel_corpus(records: Sequence[ParallelText], what: str = "parallel corpus") -> None:
    """ValueError unless the records span >= 2 languages and >= 2 groups."""
    languages = sorted({r.language for r in records})
    groups = {r.group_id for r in records}
    if len(languages) < 2 or len(groups) < 2:
        raise InputError(f"{what}: need at least 2 languages and 2 groups, got {len(languages)} languages "
                         f"{languages} and {len(groups)} groups ({len(records)} texts)")


def keep_common_sources(records: Sequence[ParallelText], languages: Iterable[str],
                        ) -> tuple[list[ParallelText], dict[str, list[str]]]:
    """Keep the records of sources that have texts in every one of `languages` (so no language is represented by
    a source, or domain, the others lack). Returns (kept records in order, {dropped source: its languages among
    `languages`}). ValueError if no source covers every language."""
    requested = requested_languages(languages)
    covered = collections.defaultdict(set)
    for r in records:
        covered[r.source].update({r.language} & requested)
    dropped = {source: sorted(langs) for source, langs in sorted(covered.items()) if langs != requested}
    kept = [r for r in records if r.source not in dropped]
    if not kept:
        raise InputError(f"no source has texts in every requested language {sorted(requested)}; languages per "
                         f"source: {dropped}")
    return kept, dropped


def default_locate_corpus(data_root: PathLike, languages: Iterable[str] = MULTIJAIL_LANGUAGES,
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
