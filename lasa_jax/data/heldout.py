"""The held-out guard: no evaluation prompt (MultiJail, XSTest, OR-Bench-hard-test, OKTest) enters Locate, SSI or KTO.

One module for every stage, two checks:
- by source name (`check_source_names`): a record whose `source` names a held-out set is an `InputError`;
- by content (`guard_held_out`): every text of every input record is compared with ALL prompts of the four held-out
  files (`HELD_OUT_FILES`, paths relative to the shared data root; MultiJail: all ten language columns). A record
  matches when
    * its normalised text (`normalize_text`: NFKC, case-folded, punctuation/symbols -> space, whitespace runs
      collapsed) equals a held-out prompt's, in any language, or
    * it nearly duplicates one: Jaccard similarity of their shingle sets (`shingles`) >= `NEAR_DUPLICATE_JACCARD`
      (0.6, the shared data README's MultiJail disjointness test). Shingles are the normalised words; inside words
      of scripts written without spaces (Chinese, Japanese kana, Thai) they are character bigrams instead, so the
      test means the same in those languages. Texts of any language are compared with held-out texts of any
      language (a prompt filed under the wrong language is still caught).
  A match drops the record's whole group (`group_id`: all translations of one query, both answers of a pair).
  Dropped rows are counted per split, per source and per held-out set, and logged.

Speed: exact matches are one hash lookup. Near duplicates use an inverted index over the held-out shingles with
prefix filtering (a query can only reach Jaccard t with a reference it shares one of its
|A| - ceil(t·|A|) + 1 rarest shingles with), then exact verification of the few candidates: thousands of rows against
the ~4,000 held-out prompts take about a second.

A missing held-out file is an `InputError` naming it and the waiver flag, unless the caller passes
`allow_missing=True` (config field `data.allow_missing_held_out`, set by the offline demo, which runs without the
shared data): then the files that exist are still checked and the notes say which were missing.

Also here: `POLYREFUSE_MULTIJAIL_ROWS`, the PolyRefuse harmful_test rows that are MultiJail prompts (one list for
every loader).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.data.eval_sets import (
    MULTIJAIL_CSV,
    OKTEST_JSON,
    OR_BENCH_HARD_TEST_JSON,
    XSTEST_CSV,
    load_multijail,
    load_oktest,
    load_or_bench_hard_test,
    load_xstest,
)
from lasa_jax.infra.errors import InputError, config_field

log = logging.getLogger(__name__)

# 0-based rows of PolyRefuse harmful_test (and of the polyrefuse_completions files, which follow its order) that are
# MultiJail prompts (MultiJail ids 305, 306, 307, 312, via StrongREJECT): never trained on.
POLYREFUSE_MULTIJAIL_ROWS = frozenset({345, 405, 530, 548})
# held-out set -> path relative to the shared data root
HELD_OUT_FILES = {
    "multijail": MULTIJAIL_CSV,
    "xstest": XSTEST_CSV,
    "or_bench_hard_test": OR_BENCH_HARD_TEST_JSON,
    "oktest": OKTEST_JSON,
}
HELD_OUT_SOURCES = tuple(HELD_OUT_FILES)
NEAR_DUPLICATE_JACCARD = 0.6
WAIVER_FIELD = "data.allow_missing_held_out"
_LOADERS = {"multijail": load_multijail, "xstest": lambda p: load_xstest(p, "all"),
            "or_bench_hard_test": load_or_bench_hard_test, "oktest": load_oktest}
# scripts written without spaces between words: shingled as character bigrams
_CONTINUOUS = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


# ------------------------------------------------------------------------------------------------ text forms
@functools.lru_cache(maxsize=1)
def _separator_table() -> dict[int, str]:
    """str.translate table mapping every BMP punctuation, symbol, separator and control character to a space."""
    return {i: " " for i in range(0x10000) if unicodedata.category(chr(i))[0] in "PSZC"}


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation/symbols/controls -> space, whitespace runs collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_separator_table()).split())


def shingles(text: str) -> frozenset[str]:
    """The near-duplicate units of a text: normalised words, with runs of space-less scripts (CJK, kana, Thai) as
    character bigrams (a single such character stays a unigram)."""
    units = set()
    for word in normalize_text(text).split():
        last = 0
        for run in _CONTINUOUS.finditer(word):
            if run.start() > last:
                units.add(word[last:run.start()])
            chars = run.group()
            units.update(chars[i:i + 2] for i in range(max(len(chars) - 1, 1)))
            last = run.end()
        if last < len(word):
            units.add(word[last:])
    return frozenset(units)


# ----------------------------------------------------------------------------------------------------- index
class TextIndex:
    """Exact (normalised) and near-duplicate (shingle Jaccard) lookup of query texts among reference texts.

    references: the reference texts; labels: one label per reference (e.g. "multijail:12:ko"), reported on a hit.
    """

    def __init__(self, references: Sequence[str], labels: Sequence[str]):
        if len(references) != len(labels):
            raise InputError(f"{len(references)} reference texts but {len(labels)} labels")
        self.labels = list(labels)
        self._exact: dict[str, int] = {}
        for i, text in enumerate(references):
            self._exact.setdefault(normalize_text(text), i)
        self._sets = [shingles(text) for text in references]
        postings: dict[str, list[int]] = {}
        for i, units in enumerate(self._sets):
            for unit in units:
                postings.setdefault(unit, []).append(i)
        self._postings = {unit: np.asarray(ids, dtype=np.int64) for unit, ids in postings.items()}

    def __len__(self) -> int:
        return len(self.labels)

    def exact(self, text: str) -> int | None:
        """Index of a reference whose normalised text equals `text`'s, or None."""
        form = normalize_text(text)
        return self._exact.get(form) if form else None

    def near(self, text: str, threshold: float = NEAR_DUPLICATE_JACCARD) -> tuple[int, float] | None:
        """(index, Jaccard) of the most similar reference with shingle Jaccard >= threshold, or None."""
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        units = shingles(text)
        if not units:
            return None
        # unknown units first (document frequency 0), then the rarest: the first |A| - ceil(t|A|) + 1 units must
        # contain a unit shared with any reference at Jaccard >= t (pigeonhole, since |A ∪ B| >= |A|)
        ordered = sorted(units, key=lambda u: (len(self._postings.get(u, ())), u))
        prefix = ordered[:len(units) - math.ceil(threshold * len(units) - 1e-9) + 1]
        probes = [self._postings[u] for u in prefix if u in self._postings]
        if not probes:
            return None
        best = None
        for i in np.unique(np.concatenate(probes)).tolist():
            other = self._sets[i]
            shared = len(units & other)
            score = shared / (len(units) + len(other) - shared)
            if score >= threshold - 1e-12 and (best is None or score > best[1]):
                best = (i, score)
        return best

    def match(self, text: str, threshold: float = NEAR_DUPLICATE_JACCARD) -> tuple[str, str] | None:
        """("exact" | "near", label of the matched reference) or None."""
        i = self.exact(text)
        if i is not None:
            return "exact", self.labels[i]
        hit = self.near(text, threshold)
        return None if hit is None else ("near", self.labels[hit[0]])


# ------------------------------------------------------------------------------------------------- reference
@dataclasses.dataclass(frozen=True)
class HeldOutReference:
    """The held-out prompts that were found: `index` over all of them (labels are EvalPrompt ids, namespaced by
    set), `files` {set: {"path", "prompts"}}, `missing` {set: path} (only with the waiver)."""

    index: TextIndex
    files: dict[str, dict[str, Any]]
    missing: dict[str, str]

    def notes(self) -> dict[str, Any]:
        return {"references": self.files, "missing": self.missing, "exact": "normalize_text equality",
                "near_duplicate": f"shingle Jaccard >= {NEAR_DUPLICATE_JACCARD}"}


def load_held_out_reference(data_root: str | os.PathLike | None, *, allow_missing: bool = False,
                            what: str = "data") -> HeldOutReference | None:
    """The four held-out files under `data_root` as one `HeldOutReference` (cached per root and file mtimes).

    A missing root or file is an `InputError` (naming the file and `WAIVER_FIELD`) unless allow_missing; then the
    files present are used, and None is returned when there are none.
    """
    root = pathlib.Path(data_root) if data_root else None
    paths = {name: (root / rel if root is not None else None) for name, rel in HELD_OUT_FILES.items()}
    missing = {name: str(p) if p is not None else f"<no data root>/{HELD_OUT_FILES[name]}"
               for name, p in paths.items() if p is None or not p.is_file()}
    if missing and not allow_missing:
        raise InputError(f"{what}: held-out reference file(s) not found: {sorted(missing.values())}; the held-out "
                         f"guard needs the shared data root (the stage's {config_field('data.root')}) holding "
                         f"{sorted(HELD_OUT_FILES.values())}. Set {config_field(WAIVER_FIELD)}=True to run without "
                         "them (e.g. the offline demo)")
    present = tuple(sorted((name, str(p), os.stat(p).st_mtime_ns) for name, p in paths.items() if name not in missing))
    if not present:
        return None
    index, files = _load_reference(present)
    return HeldOutReference(index, files, missing)


@functools.lru_cache(maxsize=4)
def _load_reference(present: tuple[tuple[str, str, int], ...]) -> tuple[TextIndex, dict[str, dict[str, Any]]]:
    texts, labels, files = [], [], {}
    for name, path, _ in present:
        prompts = _LOADERS[name](path)
        texts += [p.prompt for p in prompts]
        labels += [p.id for p in prompts]
        files[name] = {"path": path, "prompts": len(prompts)}
    return TextIndex(texts, labels), files


# ----------------------------------------------------------------------------------------------------- checks
def check_source_names(records: Iterable, what: str) -> None:
    """InputError if a record's `source` (lower-cased, '-' -> '_') contains a held-out set's name."""
    for r in records:
        name = str(r.source).lower().replace("-", "_")
        hit = next((h for h in HELD_OUT_SOURCES if h in name), None)
        if hit is not None:
            raise InputError(f"{what}: source {r.source!r} is the held-out evaluation set {hit!r}; held-out sets are "
                             "for evaluation only, never for training, layer or threshold selection")


def _record_texts(record) -> list[str]:
    """The texts of a record: `.text` (LabelledPrompt, ParallelText), else every message of `.prompt`."""
    if hasattr(record, "text"):
        return [record.text]
    prompt = record.prompt
    return [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]


def guard_held_out(splits: Mapping[str, Sequence], reference: HeldOutReference | None, what: str, *,
                   texts: Callable[[Any], list[str]] = _record_texts,
                   threshold: float = NEAR_DUPLICATE_JACCARD) -> tuple[dict[str, list], dict[str, Any]]:
    """Drop the groups of each split holding a held-out prompt (module docstring); log and count them.

    splits: name -> records with `group_id`, `source` and text (`texts(record)`; default `.text` or the prompt
    messages). reference: from `load_held_out_reference` (None: nothing to compare with, splits unchanged).
    Returns (kept records per split, in order; notes {"checked", "references", "missing", ..., "dropped": {split:
    {"groups": sorted ids, "rows", "by_source": {source: rows}, "by_set": {held-out set: groups},
    "examples": [...]}}}).
    """
    if reference is None:
        log.warning("%s: held-out content guard not applied: no held-out reference file found (waived by %s)",
                    what, WAIVER_FIELD)
        return {name: list(records) for name, records in splits.items()}, {
            "checked": False, "reason": f"no held-out reference file (waived by {WAIVER_FIELD})"}
    if reference.missing:
        log.warning("%s: held-out reference files missing (waived by %s): %s", what, WAIVER_FIELD, reference.missing)
    kept_splits, dropped = {}, {}
    memo: dict[str, tuple[str, str] | None] = {}
    for name, records in splits.items():
        keys = [r.group_id or f"{name}#{i}" for i, r in enumerate(records)]  # a record without a group: itself
        hits: dict[str, tuple[str, str]] = {}
        for key, r in zip(keys, records):
            if key in hits:
                continue
            for text in texts(r):
                if text not in memo:
                    memo[text] = reference.index.match(text, threshold)
                if memo[text] is not None:
                    hits[key] = memo[text]
                    break
        kept_splits[name] = [r for key, r in zip(keys, records) if key not in hits]
        by_source: dict[str, int] = {}
        for key, r in zip(keys, records):
            if key in hits:
                by_source[r.source] = by_source.get(r.source, 0) + 1
        by_set: dict[str, int] = {}
        for _, label in hits.values():
            by_set[label.split(":", 1)[0]] = by_set.get(label.split(":", 1)[0], 0) + 1
        dropped[name] = {"groups": sorted(hits), "rows": len(records) - len(kept_splits[name]),
                         "by_source": dict(sorted(by_source.items())), "by_set": dict(sorted(by_set.items())),
                         "examples": [f"{g} ~ {kind}:{label}" for g, (kind, label) in sorted(hits.items())[:5]]}
        log.log(logging.WARNING if hits else logging.INFO,
                "%s, %s: held-out guard dropped %d groups (%d rows; by source %s; by held-out set %s)%s", what, name,
                len(hits), dropped[name]["rows"], dropped[name]["by_source"], dropped[name]["by_set"],
                f", e.g. {dropped[name]['examples']}" if hits else "")
    return kept_splits, {"checked": True, **reference.notes(), "dropped": dropped}


def guard_inputs(splits: Mapping[str, Sequence], data_root: str | os.PathLike | None, what: str, *,
                 allow_missing: bool = False, check_names: bool = True,
                 texts: Callable[[Any], list[str]] = _record_texts) -> tuple[dict[str, list], dict[str, Any]]:
    """The guard as the stages call it: source names (`check_source_names`), then content (`guard_held_out`)
    against the held-out files under `data_root` (`load_held_out_reference`: missing files are an error unless
    allow_missing)."""
    if check_names:
        for name, records in splits.items():
            check_source_names(records, f"{what}, {name}")
    reference = load_held_out_reference(data_root, allow_missing=allow_missing, what=what)
    return guard_held_out(splits, reference, what, texts=texts)
