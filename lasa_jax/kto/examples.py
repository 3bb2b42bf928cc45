"""Tokenisation of labelled rows into `KTOExample`s: the chat rendering (prefix iff unsafe), completion truncation and
the kept/dropped counts per desirability, source and language."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.preference.rows import PreferenceRow, prompt_group_id
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.chat import CONDITIONAL_PREFIX, RenderedExample, render_example

log = logging.getLogger(__name__)

# `tokenize_rows` warns when more than this fraction of the desirable or of the undesirable rows is too long.
DROP_WARNING_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class KTOExample:
    """A tokenised row: the rendered sequence (with the prefix iff the row is unsafe) and what batching needs.

    row_index: position of the row in the list given to `tokenize_rows`. group_id: KL-pairing key (the row's
    group_id, or `prompt_group_id` of its prompt when empty). prompt_key: `prompt_group_id` of the row's prompt
    messages (without the prefix); rows with equal prompt_key are never KL partners either.
    """

    rendered: RenderedExample
    desirable: bool
    group_id: str
    row_index: int
    prompt_key: str


def tokenize_rows(rows: Sequence[PreferenceRow], tokenizer, *, prefix: str = CONDITIONAL_PREFIX,
                  max_length: int = 512, max_prompt_length: int | None = None,
                  template_kwargs: Mapping[str, Any] | None = None,
                  truncate_completions: bool = True) -> tuple[list[KTOExample], dict[str, Any]]:
    """Render every labelled row with `render_example` (prefix iff is_unsafe == 1, end-of-turn iff row.complete).

    Over-long completions are tail-truncated to fit `max_length` (`lasa_jax.models.chat` truncation rule; the cut row
    has no end-of-turn token); a row is dropped only when even its cut prompt leaves no room (or, with
    truncate_completions=False, the old rule: whenever the whole completion cannot fit).
    Returns (examples, counts). counts: rows, kept, truncated (completion cut here), no_end_of_turn (kept rows
    without end-of-turn: cut by their generator or here), dropped_too_long, with_prefix (kept rows with the prefix),
    and the same {rows, kept, truncated, no_end_of_turn, dropped_too_long} tallies by_class {"desirable" |
    "undesirable": ...}, by_source {source: {class: ...}} and by_language {language: {class: ...}} (classes
    without rows left out). A WARNING is logged for each class that loses more than `DROP_WARNING_FRACTION`.
    """
    examples = []
    counts: dict[str, Any] = dict(rows=len(rows), kept=0, truncated=0, no_end_of_turn=0, dropped_too_long=0,
                                  with_prefix=0, by_class={}, by_source={}, by_language={})
    for index, row in enumerate(rows):
        if row.is_unsafe not in (0, 1):
            raise InputError(f"row {index} ({row.origin or row.group_id}): is_unsafe is {row.is_unsafe!r}; run "
                             "assign_latent_labels first")
        rendered = render_example(tokenizer, row.prompt, row.completion, prefix=prefix if row.is_unsafe else None,
                                  max_length=max_length, max_prompt_length=max_prompt_length,
                                  template_kwargs=template_kwargs, complete=row.complete,
                                  truncate_completion=truncate_completions)
        _count(counts, row, rendered)
        if rendered is None:
            continue
        counts["with_prefix"] += int(row.is_unsafe)
        prompt_key = prompt_group_id(row.prompt)
        examples.append(KTOExample(rendered, bool(row.desirable), row.group_id or prompt_key, index, prompt_key))
    _warn_about_drops(counts, max_length)
    return examples, counts


def _count(counts: dict[str, Any], row: PreferenceRow, rendered: RenderedExample | None) -> None:
    """Add the outcome of one row (kept / truncated / no_end_of_turn, or dropped_too_long) to `counts` and to its
    class's tallies overall, by source and by language."""
    label = _class_name(row.desirable)
    outcomes = ["dropped_too_long"] if rendered is None else ["kept"] + (
        ["truncated"] if rendered.num_completion_cut else []) + ([] if rendered.ends_turn else ["no_end_of_turn"])
    tallies = [counts, _tally(counts["by_class"], label),
               _tally(counts["by_source"].setdefault(row.source, {}), label),
               _tally(counts["by_language"].setdefault(row.language or "?", {}), label)]
    for tally in tallies:
        tally["rows"] += int(tally is not counts)  # counts["rows"] is preset
        for outcome in outcomes:
            tally[outcome] += 1


def _class_name(desirable: bool) -> str:
    return "desirable" if desirable else "undesirable"


def _tally(by_class: dict[str, dict[str, int]], label: str) -> dict[str, int]:
    """The {rows, kept, truncated, no_end_of_turn, dropped_too_long} counter of class `label`, created at zero."""
    return by_class.setdefault(label, dict(rows=0, kept=0, truncated=0, no_end_of_turn=0, dropped_too_long=0))


def _warn_about_drops(counts: Mapping[str, Any], max_length: int) -> None:
    """Log a WARNING for each class of `tokenize_rows` counts that lost more than DROP_WARNING_FRACTION of its rows."""
    for label, tally in counts["by_class"].items():
        if tally["dropped_too_long"] <= DROP_WARNING_FRACTION * tally["rows"]:
            continue
        by_source = ", ".join(f"{source} {classes[label]['dropped_too_long']}/{classes[label]['rows']}"
                              for source, classes in sorted(counts["by_source"].items()) if label in classes)
        kept = {name: counts["by_class"].get(name, {}).get("kept", 0) for name in ("desirable", "undesirable")}
        log.warning("%d of %d %s rows (%.0f%%; by source: %s) do not fit max_length=%d and were dropped, so the "
                    "kept data is %d desirable : %d undesirable, another class balance than the rows'. Raise the "
                    "maximum length (%s) or shorten the prompts.",
                    tally["dropped_too_long"], tally["rows"], label, 100.0 * tally["dropped_too_long"] / tally["rows"],
                    by_source, max_length, kept["desirable"], kept["undesirable"], config_field("kto.data.max_length"))
