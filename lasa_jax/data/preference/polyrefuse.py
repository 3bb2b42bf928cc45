"""The polyrefuse_completions data format: WildGuard-labelled model answers to PolyRefuse harmful_test prompts ->
unpaired KTO rows (`convert_polyrefuse_completions`), and the model folders of a model family."""
from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.languages import normalize_language
from lasa_jax.data.preference.fields import binary_field, string_field
from lasa_jax.data.preference.rows import PreferenceRow, ends_naturally
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import read_json

COMPLETIONS_SUFFIX = "_evaluations.no_tokens.json"
# model_type (config.json) -> the polyrefuse_completions model folder of that family (`family_completion_models`)
COMPLETION_FAMILIES = {"llama": ("Meta-Llama-3.1-8B-Instruct",),
                       "qwen2": ("Qwen2.5-7B-Instruct",), "qwen3": ("Qwen2.5-7B-Instruct",)}


def family_completion_models(root: str | os.PathLike, model_type: str) -> list[str] | None:
    """The polyrefuse_completions model folders of the family of `model_type` (config.json) that exist under
    `root`, or None when the family has none (the caller then decides; see `configs/kto.py`)."""
    wanted = COMPLETION_FAMILIES.get(str(model_type), ())
    present = [m for m in wanted if os.path.isdir(os.path.join(os.fspath(root), m))]
    return present or None


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


def completion_files(root: str, models: Sequence[str] | str | None, languages: Sequence[str] | str | None,
                     modes: Sequence[str] | str) -> list[str]:
    """Sorted `<root>/<model>/<language>/harmful_<mode>_evaluations.no_tokens.json` paths of the selected models
    (None: all), languages (any spelling `normalize_language` accepts; None: all) and modes; FileNotFoundError
    when `root` is missing or nothing is selected."""
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
    return paths


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
    paths = completion_files(os.fspath(root), models, languages, modes)
    conversion = _Conversion(source, {int(i) for i in drop_indices}, dict(
        files=len(paths), records=0, dropped_multijail=0, dropped_neither=0, dropped_empty=0, dropped_duplicate=0,
        desirable=0, undesirable=0, generator_cut=0))
    for path in paths:
        model, language, mode, completions = read_completions_file(path)
        for index, record in enumerate(completions):
            conversion.add(record, index, f"{path}: completions[{index}]", language,
                           origin=f"{model}/{language}/{mode}#{index}")
    return conversion.rows, conversion.counts


@dataclasses.dataclass
class _Conversion:
    """The state of one `convert_polyrefuse_completions` call across its files (in path order)."""

    source: str
    drop: set[int]
    counts: dict[str, int]
    rows: list[PreferenceRow] = dataclasses.field(default_factory=list)
    english_by_index: dict[int, str] = dataclasses.field(default_factory=dict)
    group_index_by_english: dict[str, int] = dataclasses.field(default_factory=dict)
    seen: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)

    def add(self, record: Any, index: int, where: str, language: str, origin: str) -> None:
        """Check completion record `index` of a file; keep its row or count why it is dropped."""
        self.counts["records"] += 1
        instruction, english, response, refusal, harmful = _checked_record(record, where)
        if self.english_by_index.setdefault(index, english) != english:
            raise InputError(f"{where}: instruction_en differs from another file's record {index}; the files "
                             "are not in harmful_test order")
        group_index = self.group_index_by_english.setdefault(english, index)
        reason = self._drop_reason(index, (language, instruction, response.strip()), refusal, harmful)
        if reason is not None:
            self.counts[reason] += 1
            return
        desirable = not harmful
        self.counts["desirable" if desirable else "undesirable"] += 1
        complete = ends_naturally(response)
        self.counts["generator_cut"] += int(not complete)
        self.rows.append(PreferenceRow(instruction, response, desirable, self.source, language,
                                       f"polyrefuse/harmful_test/{group_index}", origin=origin, complete=complete))

    def _drop_reason(self, index: int, key: tuple[str, str, str], refusal: int, harmful: int) -> str | None:
        """The counts key of why the record is dropped, or None (then its key is remembered for deduplication)."""
        if index in self.drop:
            return "dropped_multijail"
        if not (harmful or refusal):
            return "dropped_neither"
        if not key[2]:
            return "dropped_empty"
        if key in self.seen:
            return "dropped_duplicate"
        self.seen.add(key)
        return None


def _checked_record(record: Any, where: str) -> tuple[str, str, str, int, int]:
    """(instruction, instruction_en, response, wildguard.refusal, wildguard.response_harmful) of a record."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected an object, got {type(record).__name__}")
    instruction = string_field(record, "instruction", where)
    english = string_field(record, "instruction_en", where)
    response = record.get("response")
    if not isinstance(response, str):
        raise InputError(f"{where}: field 'response' must be a string, got {type(response).__name__}")
    wildguard = record.get("wildguard")
    if not isinstance(wildguard, Mapping):
        raise InputError(f"{where}: field 'wildguard' must be an object")
    refusal = binary_field(wildguard, "refusal", where + ".wildguard")
    harmful = binary_field(wildguard, "response_harmful", where + ".wildguard")
    return instruction, english, response, refusal, harmful


def _path_part(path: str, from_end: int) -> str:
    """Component `from_end` of a path counted from its end (1 = the file name)."""
    return os.path.normpath(path).split(os.sep)[-from_end]


def _folder_language(path: str) -> str | None:
    """ISO 639-1 code of a PolyRefuse file's language folder; None when the folder name is not a language."""
    try:
        return normalize_language(_path_part(path, 2))
    except ValueError:
        return None
