"""Unpaired preference rows for Latent KTO: loaders, latent labels, tokenisation, shuffled fixed-shape batches.

Pipeline (METHOD.md §5, with the fixes of §9 items 12-14):
  load rows (`load_paired_preference_json`, `load_unpaired_jsonl`, `convert_polyrefuse_completions`,
  `load_square_responses`) -> `assign_latent_labels` (is_unsafe: source-based proxy or SSI predictions)
  -> `tokenize_rows` (render_example with the conditional prefix iff is_unsafe; over-long completions are
  tail-truncated and, like completions cut by their generator (`ends_naturally`), get no end-of-turn token; counts
  per desirability, source and language) -> `balance_class_weights` (TRL's class-weight range check)
  -> `iterate_kto_batches` (seeded permutation per epoch, KL rows paired by a derangement that avoids the row's
  own group and its own prompt, fixed-shape padded arrays, resumable from a `DataPosition`).

Desirability: a safety refusal is desirable and a harmful compliance undesirable, with or without the prefix.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.chat import (
    CONDITIONAL_PREFIX,
    Prompt,
    RenderedExample,
    assemble_example,
    chat_messages,
    prompt_text,
    render_example,
)
from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.languages import normalize_language
from lasa_jax.errors import InputError
from lasa_jax.io_utils import iter_jsonl, read_json

log = logging.getLogger(__name__)

DEFAULT_UNSAFE_PROB_BY_SOURCE = {"safety": 0.5}
# `tokenize_rows` warns when more than this fraction of the desirable or of the undesirable rows is too long.
DROP_WARNING_FRACTION = 0.2
# Last characters of a text that ended where its author (model) stopped: sentence-final punctuation (Latin, CJK,
# Devanagari, Arabic, Thai), closing brackets and quotes, markup/code closers, and the Chinese question particles
# (questions written without a question mark). See `ends_naturally`.
NATURAL_END_CHARS = frozenset(".!?…;。！？；」』）】》)]}\"'”’»`*>|~।؟吗呢吧")
# model_type (config.json) -> the polyrefuse_completions model folder of that family (`family_completion_models`)
COMPLETION_FAMILIES = {"llama": ("Meta-Llama-3.1-8B-Instruct",),
                       "qwen2": ("Qwen2.5-7B-Instruct",), "qwen3": ("Qwen2.5-7B-Instruct",)}


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
    """One unpaired KTO row.

    prompt: user string or list of {role, content} messages ending with a user message.
    completion: the assistant answer (text). desirable: True for a good answer (e.g. a refusal of a harmful request).
    source: data source; selects the latent-label probability in "paper" mode (e.g. "safety", "ultrafeedback").
    language: ISO 639-1 code or "". group_id: identity of the underlying query; rows with equal group_id (the two
    answers of a pair, translations of one prompt) are never KL partners, and neither are rows with the same
    prompt messages, whatever their group_id. is_unsafe: latent label (1: train with the conditional prefix), None
    until `assign_latent_labels`. origin: provenance ("file#record"). complete: False when the completion was cut by
    its generator (e.g. at max_new_tokens; `ends_naturally`): it is rendered without an end-of-turn token.
    """

    prompt: Prompt
    completion: str
    desirable: bool
    source: str
    language: str = ""
    group_id: str = ""
    is_unsafe: int | None = None
    origin: str = ""
    complete: bool = True


def ends_naturally(text: str) -> bool:
    """Whether a generated answer looks finished: its last non-space character is in `NATURAL_END_CHARS`, or is an
    emoji / pictograph (So category). The polyrefuse_completions files (greedy, max_new_tokens 512) keep no token
    ids, so this is how an answer cut at the token cap is told apart; one that happens to be cut right after a
    full stop is not caught."""
    stripped = text.rstrip()
    if not stripped:
        return False
    last = stripped[-1]
    return last in NATURAL_END_CHARS or unicodedata.category(last) == "So"


def family_completion_models(root: str | os.PathLike, model_type: str) -> list[str] | None:
    """The polyrefuse_completions model folders of the family of `model_type` (config.json) that exist under
    `root`, or None when the family has none (the caller then decides; see `configs/kto.py`)."""
    wanted = COMPLETION_FAMILIES.get(str(model_type), ())
    present = [m for m in wanted if os.path.isdir(os.path.join(os.fspath(root), m))]
    return present or None


# ----------------------------------------------------------------------------------------------------- loaders
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
        prompt = _prompt_field(record, where)
        source = _string_field(record, "source", where)
        language = _language_field(record, where)
        group_id = _group_id(record, where, default=f"{os.path.basename(path)}:{index}")
        for field, desirable in (("chosen", True), ("rejected", False)):
            rows.append(PreferenceRow(prompt, _completion_field(record, field, where), desirable, source, language,
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
        prompt = _prompt_field(record, where)
        rows.append(PreferenceRow(
            prompt, _completion_field(record, "completion", where),
            _label_field(record, where), _string_field(record, "source", where),
            _language_field(record, where), _group_id(record, where, default=prompt_group_id(prompt)),
            origin=f"{path}#{line_number}", complete=_complete_field(record, where)))
    if not rows:
        raise InputError(f"{path}: no preference rows")
    return rows


COMPLETIONS_SUFFIX = "_evaluations.no_tokens.json"


def read_completions_file(path: str, what: str = "PolyRefuse completions file") -> tuple[str, str, str, list]:
    """(model, language (ISO 639-1), mode, completions list) of `<model>/<language>/harmful_<mode>` + the suffix."""
    model, language = _path_part(path, 3), _path_part(path, 2)
    mode = os.path.basename(path)[len("harmful_"):-len(COMPLETIONS_SUFFIX)]
    try:
        language = normalize_language(language)
    except ValueError as e:
        raise InputError(f"{path}: language folder: {e}") from None
    data = read_json(path, what)
    completions = data.get("completions") if isinstance(data, Mapping) else None
    if not isinstance(completions, list):
        raise InputError(f"{path}: expected an object with a 'completions' list")
    return model, language, mode, completions


def convert_polyrefuse_completions(
        root: str | os.PathLike, *, models: Sequence[str] | None = None, languages: Sequence[str] | None = None,
        modes: Sequence[str] = ("baseline", "harm_ablation"), source: str = "safety",
        drop_indices: Sequence[int] = tuple(sorted(POLYREFUSE_MULTIJAIL_ROWS)),
) -> tuple[list[PreferenceRow], dict[str, int]]:
    """WildGuard-labelled model answers to PolyRefuse harmful_test prompts -> unpaired KTO rows.

    Reads `<root>/<model>/<language>/harmful_<mode>_evaluations.no_tokens.json` (see the folder's SOURCE.md);
    `models` / `languages` select folders (languages in any spelling `normalize_language` accepts).
    Per completion record (index i in the file = harmful_test index i):
      - i in `drop_indices` (MultiJail overlap): dropped;
      - wildguard.response_harmful == 1: undesirable (a harmful compliance);
      - else wildguard.refusal == 1: desirable (a refusal);
      - else ("neither": no refusal, not harmful; evasive or off-topic answers): dropped, since it is neither the
        behaviour to reinforce nor the one to penalise;
      - empty responses and exact duplicates of an earlier (language, prompt, completion) are dropped;
      - complete = `ends_naturally(response)` (False: cut at the generator's max_new_tokens; no end-of-turn).
    All prompts are harmful by construction, whatever wildguard.request_harmful says. Rows get the prompt in the
    folder's language, language = the folder name (ISO 639-1), group_id "polyrefuse/harmful_test/<j>" with j the
    first index with the same English original (shared by translations and by harmful_test's 10 repeated
    prompts), origin "<model>/<language>/<mode>#<i>". The English original of index i must agree across files.

    Returns (rows, counts); counts has files, records, dropped_multijail, dropped_neither, dropped_empty,
    dropped_duplicate, desirable, undesirable, generator_cut (kept rows with complete=False).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: PolyRefuse completions directory not found")
    modes = [modes] if isinstance(modes, str) else list(modes)
    paths = []
    for mode in modes:
        paths += glob.glob(os.path.join(root, "*", "*", f"harmful_{mode}{COMPLETIONS_SUFFIX}"))
    models = [models] if isinstance(models, str) else models
    wanted_languages = None if languages is None else {
        normalize_language(lang) for lang in ([languages] if isinstance(languages, str) else languages)}
    paths = sorted(p for p in paths
                   if (models is None or _path_part(p, 3) in models)
                   and (wanted_languages is None or _folder_language(p) in wanted_languages))
    if not paths:
        raise FileNotFoundError(f"{root}: no harmful_<mode>_evaluations.no_tokens.json files for models={models}, "
                                f"languages={languages}, modes={modes}")
    drop = set(int(i) for i in drop_indices)
    counts = dict(files=len(paths), records=0, dropped_multijail=0, dropped_neither=0, dropped_empty=0,
                  dropped_duplicate=0, desirable=0, undesirable=0, generator_cut=0)
    english_by_index: dict[int, str] = {}
    group_index_by_english: dict[str, int] = {}
    seen: set[tuple[str, str, str]] = set()
    rows = []
    for path in paths:
        model, language, mode, completions = read_completions_file(path)
        for index, record in enumerate(completions):
            where = f"{path}: completions[{index}]"
            counts["records"] += 1
            if not isinstance(record, Mapping):
                raise InputError(f"{where}: expected an object, got {type(record).__name__}")
            instruction = _string_field(record, "instruction", where)
            english = _string_field(record, "instruction_en", where)
            response = record.get("response")
            if not isinstance(response, str):
                raise InputError(f"{where}: field 'response' must be a string, got {type(response).__name__}")
            wildguard = record.get("wildguard")
            if not isinstance(wildguard, Mapping):
                raise InputError(f"{where}: field 'wildguard' must be an object")
            refusal = _binary(wildguard, "refusal", where + ".wildguard")
            harmful = _binary(wildguard, "response_harmful", where + ".wildguard")
            if english_by_index.setdefault(index, english) != english:
                raise InputError(f"{where}: instruction_en differs from another file's record {index}; the files "
                                 "are not in harmful_test order")
            group_index = group_index_by_english.setdefault(english, index)
            if index in drop:
                counts["dropped_multijail"] += 1
                continue
            if not (harmful or refusal):
                counts["dropped_neither"] += 1
                continue
            if not response.strip():
                counts["dropped_empty"] += 1
                continue
            key = (language, instruction, response.strip())
            if key in seen:
                counts["dropped_duplicate"] += 1
                continue
            seen.add(key)
            desirable = not harmful
            counts["desirable" if desirable else "undesirable"] += 1
            complete = ends_naturally(response)
            counts["generator_cut"] += int(not complete)
            rows.append(PreferenceRow(instruction, response, desirable, source, language,
                                      f"polyrefuse/harmful_test/{group_index}",
                                      origin=f"{model}/{language}/{mode}#{index}", complete=complete))
    return rows, counts


def load_square_responses(path: str | os.PathLike, *, source: str = "square",
                          only_paired: bool = False) -> list[PreferenceRow]:
    """SQuARe (Korean) responses -> rows: acceptable? = 1 desirable, 0 undesirable; language "ko".

    path: `square_ko/data/SQuARe/response_test_ood.json`. The group id is "square/<sha1 of the question>[:12]".
    only_paired: keep only questions with both an acceptable and a non-acceptable response. These are contentious
    (not harmful) questions: "acceptable" means balanced, not a refusal.
    """
    path = os.fspath(path)
    records = read_json(path, "SQuARe responses file")
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of responses, got {type(records).__name__}")
    rows = []
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, Mapping):
            raise InputError(f"{where}: expected an object, got {type(record).__name__}")
        question = _string_field(record, "question", where)
        rows.append(PreferenceRow(question, _string_field(record, "response", where),
                                  bool(_binary(record, "acceptable?", where)), source, "ko",
                                  "square/" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12],
                                  origin=f"{path}#{index}"))
    if only_paired:
        labels_by_group: dict[str, set[bool]] = {}
        for row in rows:
            labels_by_group.setdefault(row.group_id, set()).add(row.desirable)
        rows = [row for row in rows if len(labels_by_group[row.group_id]) == 2]
    return rows


# ----------------------------------------------------------------------------------------------- latent labels
def assign_latent_labels(rows: Sequence[PreferenceRow], mode: str = "paper",
                         unsafe_prob_by_source: Mapping[str, float] | None = None, default_prob: float = 0.0,
                         seed: int = 42,
                         ssi_flags: Sequence[bool] | np.ndarray | Callable[[list[str]], np.ndarray] | None = None,
                         ) -> list[PreferenceRow]:
    """Return copies of `rows` with `is_unsafe` set (METHOD.md §5 step 3; §9 item 14).

    mode "paper": each row is unsafe with probability unsafe_prob_by_source[row.source] (else default_prob),
      drawn from a numpy Generator seeded by (seed, SHA-256 of the row's content: source, group_id, prompt,
      completion, desirable). The label of a row therefore depends on the row only, not on its position, the
      order of the rows or how they are split across workers; the two answers of a pair are drawn independently.
      (The reference drew from one Python RNG in dataset order; the per-row draws are not those numbers.)
    mode "ssi": is_unsafe = SSI prediction for the row's prompt. ssi_flags is either a (num_rows,) sequence of
      bools / 0-1 aligned with rows, or a callable mapping a list of prompt texts (the last user message of each
      distinct prompt) to an array of harmful flags; it is called once with the distinct prompts.
    """
    if mode == "paper":
        if ssi_flags is not None:
            raise InputError("ssi_flags is only used with mode='ssi'")
        probs = dict(DEFAULT_UNSAFE_PROB_BY_SOURCE if unsafe_prob_by_source is None else unsafe_prob_by_source)
        for name, p in [*probs.items(), ("default_prob", default_prob)]:
            if not 0.0 <= float(p) <= 1.0:
                raise InputError(f"unsafe probability for {name!r} must be in [0, 1], got {p}")
        labels = []
        for row in rows:
            p = float(probs.get(row.source, default_prob))
            generator = np.random.default_rng(np.random.SeedSequence([int(seed), *_row_hash_words(row)]))
            labels.append(int(generator.random() < p))
    elif mode == "ssi":
        if ssi_flags is None:
            raise InputError("mode='ssi' needs ssi_flags: per-row flags or a callable scoring prompt texts")
        if callable(ssi_flags):
            texts = [prompt_text(row.prompt) for row in rows]
            distinct = sorted(set(texts))
            flags = _binary_array(ssi_flags(distinct), len(distinct), "the SSI callable's output")
            by_text = dict(zip(distinct, flags))
            labels = [int(by_text[text]) for text in texts]
        else:
            labels = [int(f) for f in _binary_array(ssi_flags, len(rows), "ssi_flags")]
    else:
        raise InputError(f"latent-label mode must be 'paper' or 'ssi', got {mode!r}")
    return [dataclasses.replace(row, is_unsafe=label) for row, label in zip(rows, labels)]


# ------------------------------------------------------------------------------------------------ tokenisation
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


def prompt_group_id(prompt: Prompt) -> str:
    """"prompt/<24 hex of the SHA-256 of the prompt's chat messages>": one id per distinct prompt (a str prompt and
    the equivalent one-user-message list get the same id)."""
    return "prompt/" + _content_hash(chat_messages(prompt))[:24]


def tokenize_rows(rows: Sequence[PreferenceRow], tokenizer, *, prefix: str = CONDITIONAL_PREFIX,
                  max_length: int = 512, max_prompt_length: int | None = None,
                  template_kwargs: Mapping[str, Any] | None = None,
                  truncate_completions: bool = True) -> tuple[list[KTOExample], dict[str, Any]]:
    """Render every labelled row with `render_example` (prefix iff is_unsafe == 1, end-of-turn iff row.complete).

    Over-long completions are tail-truncated to fit `max_length` (`lasa_jax.chat` truncation rule; the cut row has no
    end-of-turn token); a row is dropped only when even its cut prompt leaves no room (or, with
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
        if rendered is None:
            continue
        counts["with_prefix"] += int(row.is_unsafe)
        prompt_key = prompt_group_id(row.prompt)
        examples.append(KTOExample(rendered, bool(row.desirable), row.group_id or prompt_key, index, prompt_key))
    _warn_about_drops(counts, max_length)
    return examples, counts


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
                    "maximum length (--config.data.max_length) or shorten the prompts.",
                    tally["dropped_too_long"], tally["rows"], label, 100.0 * tally["dropped_too_long"] / tally["rows"],
                    by_source, max_length, kept["desirable"], kept["undesirable"])


# ------------------------------------------------------------------------------------------------ class weights
# TRL's KTOTrainer (trl 1.16, Eq. (8) of the KTO paper): n_d * w_d / (n_u * w_u) should lie in [1, 4/3]
# (TRL's bounds: 1 and 1.33, rounded to 2 decimals).
WEIGHT_RATIO_RANGE = (1.0, 1.33)
AUTO_WEIGHT_RATIO = 7.0 / 6.0  # the ratio `balance_class_weights` aims at: inside the range, away from its ends
BALANCE_MODES = ("", "undesirable", "desirable")


def trl_weight_check(num_desirable: int, num_undesirable: int, desirable_weight: float,
                     undesirable_weight: float) -> str | None:
    """TRL's check of the class weights (KTOTrainer, trl 1.16): None when they are fine, else TRL's warning text.

    With n_d != n_u, fine iff desirable_weight lies in [n_u w_u / n_d, 1.33 n_u w_u / n_d] or undesirable_weight in
    [n_d w_d / (1.33 n_u), n_d w_d / n_u], each bound rounded to 2 decimals (counts below 1 count as 1).
    """
    n_d, n_u = max(int(num_desirable), 1), max(int(num_undesirable), 1)
    if n_d == n_u:
        return None
    d_low, d_high = round(n_u * undesirable_weight / n_d, 2), round(n_u * undesirable_weight / n_d * 1.33, 2)
    u_low, u_high = round(n_d * desirable_weight / n_u / 1.33, 2), round(n_d * desirable_weight / n_u, 2)
    if d_low <= desirable_weight <= d_high or u_low <= undesirable_weight <= u_high:
        return None
    return ("You have different amounts of desirable/positive and undesirable/negative examples but the weights on "
            "the desirable and undesirable losses don't seem to be in an ideal range. Based on your data, we "
            f"recommend EITHER desirable_weight in [{d_low}, {d_high}] or undesirable_weight in [{u_low}, {u_high}] "
            "(but NOT BOTH).")


def balance_class_weights(num_desirable: int, num_undesirable: int, desirable_weight: float,
                          undesirable_weight: float, mode: str = "undesirable") -> dict[str, Any]:
    """The class weights a run uses, and the record of TRL's check.

    mode "": the given weights. "undesirable" / "desirable": when TRL's check fails for the given weights, that
    class's weight is replaced so that n_d w_d / (n_u w_u) = AUTO_WEIGHT_RATIO (inside TRL's range), the other
    kept; weights that pass are used as given. Returns {"desirable_weight",
    "undesirable_weight", "ratio" (n_d w_d / (n_u w_u)), "mode", "configured": [w_d, w_u], "counts": [n_d, n_u],
    "trl_warning" (None or the text, for the weights used)}; the warning is logged.
    """
    if mode not in BALANCE_MODES:
        raise InputError(f"--config.train.balance_weights: expected one of {BALANCE_MODES}, got {mode!r}")
    n_d, n_u = int(num_desirable), int(num_undesirable)
    w_d, w_u = float(desirable_weight), float(undesirable_weight)
    if mode and n_d > 0 and n_u > 0 and trl_weight_check(n_d, n_u, w_d, w_u) is not None:
        if mode == "undesirable":
            w_u = n_d * w_d / (n_u * AUTO_WEIGHT_RATIO)
        else:
            w_d = AUTO_WEIGHT_RATIO * n_u * w_u / n_d
    warning = trl_weight_check(n_d, n_u, w_d, w_u)
    ratio = n_d * w_d / (n_u * w_u) if n_u and w_u else float("inf")
    if warning:
        log.warning("KTO class weights: %d desirable x %.4g : %d undesirable x %.4g (ratio %.3f, TRL's range "
                    "[1, 4/3]). TRL: %s Set --config.train.balance_weights=undesirable to rescale.",
                    n_d, w_d, n_u, w_u, ratio, warning)
    else:
        log.info("KTO class weights: %d desirable x %.4g : %d undesirable x %.4g (ratio %.3f; balance_weights=%r)",
                 n_d, w_d, n_u, w_u, ratio, mode)
    return {"desirable_weight": w_d, "undesirable_weight": w_u, "ratio": ratio, "mode": mode,
            "configured": [float(desirable_weight), float(undesirable_weight)], "counts": [n_d, n_u],
            "trl_warning": warning}


# ----------------------------------------------------------------------------------------- order and KL pairing
def epoch_permutation(num_rows: int, epoch: int, seed: int) -> np.ndarray:
    """The row order of `epoch`: a permutation of range(num_rows), int64, a pure function of (seed, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0, int(epoch)])).permutation(num_rows)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) without fixed points (n >= 2), by rejection sampling.

    A random permutation is a derangement with probability ≈ 1/e, so this takes about e draws on average.
    """
    if n < 2:
        raise InputError(f"a derangement needs n >= 2, got {n}")
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


def kl_partners(group_ids: Sequence[str], rng: np.random.Generator, max_tries: int = 1000,
                prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """partner[i] != i such that rows i and partner[i] share neither group_ids nor prompt_keys (if given) where
    possible: row i's KL row pairs its prompt with row partner[i]'s completion.

    Uniform derangements are drawn until one has no clash (a pair of the same group or the same prompt); if none is
    found in `max_tries` draws (e.g. most rows share one prompt), the draw with the fewest clashing pairs is
    returned (see `kl_clashes`).
    """
    codes = _key_codes(group_ids, prompt_keys)
    best, best_clashes = None, None
    for _ in range(max_tries):
        partner = derangement(len(group_ids), rng)
        clashes = int(_clashes(codes, partner).sum())
        if best is None or clashes < best_clashes:
            best, best_clashes = partner, clashes
        if clashes == 0:
            break
    return best


def kl_clashes(group_ids: Sequence[str], partner: np.ndarray, prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool: row i and its KL partner partner[i] share a group id or (if given) a prompt key."""
    return _clashes(_key_codes(group_ids, prompt_keys), partner)


def _key_codes(*key_lists: Sequence[str] | None) -> list[np.ndarray]:
    """Each given list of N keys as (N,) integer codes (equal keys, equal codes)."""
    return [np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1] for keys in key_lists
            if keys is not None]


def _clashes(codes: Sequence[np.ndarray], partner: np.ndarray) -> np.ndarray:
    """(N,) bool: row i and row partner[i] have equal codes in any of `codes`."""
    return np.logical_or.reduce([c[partner] == c for c in codes])


# ----------------------------------------------------------------------------------------------------- batches
@dataclasses.dataclass(frozen=True)
class KTOBatch:
    """A fixed-shape global batch (B = batch_size rows, S = seq_len positions, right padding).

    input_ids, attention_mask, loss_mask: int32 (B, S), the policy rows (loss_mask as in `completion_logps`).
    kl_input_ids, kl_attention_mask, kl_loss_mask: int32 (B, S), KL row i = prompt part of row i (with row i's
    prefix choice) + completion part of row kl_partner[i].
    is_desirable, valid: bool (B,). Padding rows (valid False) repeat row 0's tokens with zero loss_mask, so no
    row is fully masked. row_index: int64 (B,), index into the rows given to `tokenize_rows` (-1 for padding).
    kl_partner: int32 (B,), batch position of the completion used by KL row i (-1 for padding).
    num_kl_truncated: KL rows whose completion tail had to be cut to fit seq_len (they only estimate z0).
    num_kl_same_group: KL rows that pair a prompt with an answer of its own group or to the same prompt messages
    (0 unless unavoidable).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    kl_input_ids: np.ndarray
    kl_attention_mask: np.ndarray
    kl_loss_mask: np.ndarray
    is_desirable: np.ndarray
    valid: np.ndarray
    row_index: np.ndarray
    kl_partner: np.ndarray
    num_kl_truncated: int
    num_kl_same_group: int

    def device_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a training step consumes."""
        names = ("input_ids", "attention_mask", "loss_mask", "kl_input_ids", "kl_attention_mask", "kl_loss_mask",
                 "is_desirable", "valid")
        return {name: getattr(self, name) for name in names}


def build_kto_batch(examples: Sequence[KTOExample], indices: Sequence[int], *, batch_size: int, seq_len: int,
                    pad_id: int, rng: np.random.Generator) -> KTOBatch:
    """Fixed-shape arrays for the examples at `indices` (2 <= len(indices) <= batch_size; the rest is padding).

    KL partners come from `kl_partners(rng)` (avoiding pairs of one group or one prompt). A KL row is assembled
    with the truncation rule of `lasa_jax.chat.assemble_example` (max_length = seq_len); if it still does not fit,
    the partner completion's tail is cut (counted in num_kl_truncated): KL rows are never trained on, so their
    end-of-turn carries no signal.
    """
    n = len(indices)
    if not 2 <= n <= batch_size:
        raise InputError(f"a KTO batch needs between 2 and batch_size={batch_size} rows, got {n}")
    chosen = [examples[int(i)] for i in indices]
    groups, prompt_keys = [e.group_id for e in chosen], [e.prompt_key for e in chosen]
    partner = kl_partners(groups, rng, prompt_keys=prompt_keys)
    policy_rows = []
    kl_rows = []
    num_kl_truncated = 0
    for position, example in enumerate(chosen):
        if len(example.rendered.input_ids) > seq_len:
            raise InputError(f"row {example.row_index} has {len(example.rendered.input_ids)} tokens > seq_len="
                             f"{seq_len}; render with max_length <= seq_len")
        policy_rows.append((example.rendered.input_ids, example.rendered.loss_mask))
        kl_row, truncated = _kl_row(example.rendered, chosen[partner[position]].rendered, seq_len)
        kl_rows.append(kl_row)
        num_kl_truncated += truncated
    policy_rows += [(policy_rows[0][0], np.zeros_like(policy_rows[0][1]))] * (batch_size - n)
    kl_rows += [(kl_rows[0][0], np.zeros_like(kl_rows[0][1]))] * (batch_size - n)
    input_ids, attention_mask, loss_mask = _pad_rows(policy_rows, seq_len, pad_id)
    kl_input_ids, kl_attention_mask, kl_loss_mask = _pad_rows(kl_rows, seq_len, pad_id)
    padding = batch_size - n
    return KTOBatch(
        input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, kl_input_ids=kl_input_ids,
        kl_attention_mask=kl_attention_mask, kl_loss_mask=kl_loss_mask,
        is_desirable=np.array([e.desirable for e in chosen] + [False] * padding, dtype=bool),
        valid=np.array([True] * n + [False] * padding, dtype=bool),
        row_index=np.array([e.row_index for e in chosen] + [-1] * padding, dtype=np.int64),
        kl_partner=np.concatenate([partner, np.full(padding, -1)]).astype(np.int32),
        num_kl_truncated=num_kl_truncated,
        num_kl_same_group=int(kl_clashes(groups, partner, prompt_keys).sum()),
    )


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where iteration stands: `index` rows of epoch `epoch`'s permutation have been consumed. Store it in
    checkpoints (`to_dict`/`from_dict`) to resume with the same remaining batches."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataPosition:
        try:
            return cls(int(d["epoch"]), int(d["index"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"data position must be {{'epoch': int, 'index': int}}, got {d!r}") from None


def batches_per_epoch(num_rows: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches `iterate_kto_batches` yields per epoch (a final partial batch needs >= 2 rows)."""
    full, rest = divmod(num_rows, batch_size)
    return full + int(not drop_last and rest >= 2)


def iterate_kto_batches(examples: Sequence[KTOExample], *, batch_size: int, seq_len: int, pad_id: int, seed: int,
                        start: DataPosition = DataPosition(), num_epochs: int | None = None,
                        drop_last: bool = True) -> Iterator[tuple[KTOBatch, DataPosition]]:
    """Yield (batch, position after it) from `start` on, for epochs start.epoch .. num_epochs - 1 (forever if None).

    Epoch e visits the examples in `epoch_permutation(len(examples), e, seed)` order, batch_size at a time. The KL
    pairing of the batch starting at (e, i) uses a Generator seeded by (seed, e, i), so resuming at any yielded
    position reproduces the remaining batches exactly. drop_last=False pads a final partial batch (valid mask);
    a final single row is always skipped (no KL partner).
    """
    if batch_size < 2:
        raise InputError(f"batch_size must be >= 2 (KL rows need a partner), got {batch_size}")
    num_rows = len(examples)
    if batches_per_epoch(num_rows, batch_size, drop_last) == 0:
        raise InputError(f"{num_rows} examples give no batch of size {batch_size} (drop_last={drop_last})")
    epoch, index = start.epoch, start.index
    if epoch < 0 or not 0 <= index <= num_rows:
        raise InputError(f"data position {start} does not fit {num_rows} examples (need epoch >= 0 and "
                         f"0 <= index <= {num_rows}); was the checkpoint written for other data?")
    while num_epochs is None or epoch < num_epochs:
        order = epoch_permutation(num_rows, epoch, seed)
        while True:
            stop = min(index + batch_size, num_rows)
            if stop - index < (batch_size if drop_last else 2):
                break
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1, epoch, index]))
            batch = build_kto_batch(examples, order[index:stop], batch_size=batch_size, seq_len=seq_len,
                                    pad_id=pad_id, rng=rng)
            index = stop
            yield batch, DataPosition(epoch, index)
        epoch, index = epoch + 1, 0


# ----------------------------------------------------------------------------------------------------- helpers
def _kl_row(prompt_source: RenderedExample, completion_source: RenderedExample,
            seq_len: int) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """((input_ids, loss_mask), whether the completion was cut) for prompt of one example + completion of another."""
    joined = assemble_example(prompt_source.prompt, completion_source.completion_ids, max_length=seq_len)
    if joined is not None:
        return (joined.input_ids, joined.loss_mask), False
    prompt = prompt_source.prompt
    prompt = prompt.drop_content_front(prompt.max_droppable)
    completion = completion_source.completion_ids[:seq_len - len(prompt.input_ids)]
    input_ids = np.concatenate([prompt.input_ids, completion]).astype(np.int32)
    loss_mask = np.zeros_like(input_ids)
    loss_mask[len(prompt.input_ids):] = 1
    return (input_ids, loss_mask), True


def _pad_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad (ids, loss_mask) rows to (B, seq_len) int32 input_ids, attention_mask, loss_mask."""
    input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), seq_len), dtype=np.int32)
    loss_mask = np.zeros((len(rows), seq_len), dtype=np.int32)
    for b, (ids, mask) in enumerate(rows):
        input_ids[b, :len(ids)] = ids
        attention_mask[b, :len(ids)] = 1
        loss_mask[b, :len(ids)] = mask
    return input_ids, attention_mask, loss_mask


def _path_part(path: str, from_end: int) -> str:
    """Component `from_end` of a path counted from its end (1 = the file name)."""
    return os.path.normpath(path).split(os.sep)[-from_end]


def _folder_language(path: str) -> str | None:
    """ISO 639-1 code of a PolyRefuse file's language folder; None when the folder name is not a language."""
    try:
        return normalize_language(_path_part(path, 2))
    except ValueError:
        return None


def _string_field(record: Mapping, field: str, where: str, required: bool = True) -> str:
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InputError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    return value.strip() if field == "source" else value


def _language_field(record: Mapping, where: str) -> str:
    """Optional "language": ISO 639-1 code via `normalize_language`; "" when absent or empty."""
    value = _string_field(record, "language", where, required=False)
    if not value.strip():
        return ""
    try:
        return normalize_language(value)
    except ValueError as e:
        raise InputError(f"{where}: field 'language': {e}") from None


def _prompt_field(record: Mapping, where: str) -> Prompt:
    prompt = record.get("prompt")
    try:
        messages = chat_messages(prompt)
    except ValueError as e:
        raise InputError(f"{where}: field 'prompt': {e}") from None
    if not messages[-1]["content"].strip():
        raise InputError(f"{where}: field 'prompt' has an empty user message")
    return prompt if isinstance(prompt, str) else messages


def _completion_field(record: Mapping, field: str, where: str) -> str:
    """A completion given as a string or as a one-message list [{"role": "assistant", "content": str}]."""
    value = record.get(field)
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
            raise InputError(f"{where}: field {field!r} must be a string or a list of exactly one assistant "
                             f"message, got {value!r:.200}")
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {field!r} must hold non-empty text, got {value!r:.200}")
    return value


def _complete_field(record: Mapping, where: str) -> bool:
    value = record.get("complete", True)
    if not isinstance(value, bool):
        raise InputError(f"{where}: field 'complete' must be true or false, got {value!r}")
    return value


def _label_field(record: Mapping, where: str) -> bool:
    label = record.get("label")
    if isinstance(label, bool):
        return label
    if isinstance(label, int) and label in (0, 1):
        return bool(label)
    if isinstance(label, str) and label.strip().lower() in ("desirable", "undesirable"):
        return label.strip().lower() == "desirable"
    raise InputError(f"{where}: field 'label' must be true/false, 1/0 or 'desirable'/'undesirable', got {label!r}")


def _group_id(record: Mapping, where: str, default: str) -> str:
    for field in ("group_id", "id"):
        value = record.get(field)
        if value is not None:
            if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
                raise InputError(f"{where}: field {field!r} must be a non-empty string or an integer, got {value!r}")
            return str(value)
    return default


def _binary(record: Mapping, field: str, where: str) -> int:
    value = record.get(field)
    if isinstance(value, bool) or value not in (0, 1):
        raise InputError(f"{where}: field {field!r} must be 0 or 1, got {value!r}")
    return int(value)


def _binary_array(values, n: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {array.shape}")
    if array.dtype != bool and not np.all((array == 0) | (array == 1)):
        raise InputError(f"{name} must hold booleans or 0/1 flags, got values {np.unique(array)[:5]}")
    return array.astype(bool)


def _content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _row_hash_words(row: PreferenceRow) -> list[int]:
    """The row's content hash as eight 32-bit words (SeedSequence entropy)."""
    digest = bytes.fromhex(_content_hash([row.source, row.group_id, chat_messages(row.prompt), row.completion,
                                          bool(row.desirable)]))
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]
