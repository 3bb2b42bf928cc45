"""The SSI stage's data: train / val splits and evaluation sets (`load_ssi_data`, from the data settings
`lasa_jax.ssi.settings.data_settings` reads from `config.data`; `data.<field>` below names those fields).

Data (`data.source`):
- "polyrefuse" (default; `data.root` = the shared data folder): train = PolyRefuse harmful/harmless train,
  val = PolyRefuse val, both in `train_languages` (en, zh, ko). Val groups whose English text nearly duplicates a
  train group (token Jaccard >= `dedup_jaccard`) are dropped; PolyRefuse shares no identical English instruction
  between harmful_train and harmful_val, but 3 val rows are paraphrases of train rows at 0.6. Evaluation sets:
  "test_in_distribution" = PolyRefuse test in the train languages, "test_cross_lingual" = PolyRefuse test in the
  `test_languages` that have it (it, ar, th of the MultiJail languages) (test groups nearly duplicating a train/val
  group are dropped the same way; harmful_test rows 345, 405, 530, 548 are MultiJail prompts and always dropped),
  and "benign_flores" = FLORES-200 test sentences (via SIB-200, benign) in all train and test languages, an
  out-of-domain false-positive check (it is the only benign data here for vi, bn, sw, jv).
- "jsonl": a generic file (`data.jsonl_path`, `lasa_jax.data.labelled.load_labelled_jsonl`), rows whose
  `split` is in `data.jsonl_splits` (rows without one count as "train"); their groups are split
  train/val/test by `val_fraction`/`test_fraction` (stratified by label). Train and val use the train languages;
  "test_in_distribution" = test groups in the train languages, "test_cross_lingual" = test groups in the other
  languages (`test_languages`, or every other language when empty). With `data.root`, "benign_flores" too.
  The near-duplicate filter applies as for PolyRefuse.
- "authors": the reference code's harmful `unsafe_train.json` (`unsafe_train_path`) + benign UltraFeedback files
  (`ultrafeedback_dir`, first `ultrafeedback_per_language` rows per language), grouped split as for "jsonl".
Held-out sets: `lasa_jax.data.heldout.guard_inputs` checks every split and evaluation set above by source name, and
drops (counts, logs) the train/val groups holding a prompt of MultiJail, XSTest, OR-Bench-hard-test or OKTest
under any source name (normalised exact text or shingle Jaccard >= 0.6), recorded under notes "held_out_content";
the four files under `data.root` are required unless `data.allow_missing_held_out`.
MultiJail itself enters only as "multijail_harmful" (`data.eval_multijail`, when the file exists): its prompts in
the train and test languages, harmful only, for per-language TPR in the unseen languages (the only harmful data
for vi, bn, sw, jv). It is an evaluation-only set (`SSIData.held_out_evaluation`): its features are computed and
scored only after training, early stopping and threshold selection are finished, and nothing is chosen with it.
`max_groups_per_split` (0 = all) keeps at most that many groups per label in every split and set (quick runs).

"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

from lasa_jax.data.eval_sets import MULTIJAIL_CSV
from lasa_jax.data.groups import check_disjoint_groups, grouped_split, limit_groups
from lasa_jax.data.heldout import check_source_names, guard_inputs
from lasa_jax.data.labelled import (
    LabelledPrompt,
    drop_near_duplicate_groups,
    load_flores_benign,
    load_labelled_jsonl,
    load_multijail_prompts,
    load_polyrefuse_prompts,
    load_ultrafeedback_prompts,
    load_unsafe_train_json,
    select_languages,
    split_summary,
)
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.ssi.settings import SSIDataSettings

log = logging.getLogger(__name__)
MULTIJAIL_SET = "multijail_harmful"  # name of the evaluation-only MultiJail set in metrics.json and the plot


@dataclasses.dataclass
class SSIData:
    """train / val records, named evaluation sets, and notes on what was dropped (for metrics.json).

    held_out_evaluation: named held-out sets (MultiJail) that are only scored once the SSI is final: never
    features of training, early stopping or threshold selection.
    """

    train: list[LabelledPrompt]
    val: list[LabelledPrompt]
    evaluation: dict[str, list[LabelledPrompt]]
    notes: dict[str, Any]
    held_out_evaluation: dict[str, list[LabelledPrompt]] = dataclasses.field(default_factory=dict)


def _polyrefuse_splits(root: pathlib.Path, train_languages, test_languages, notes):
    """(train, val, test, cross-lingual test languages) of PolyRefuse under `root`."""
    polyrefuse = root / "polyrefuse"
    train = load_polyrefuse_prompts(polyrefuse, ("train",), train_languages)
    val = load_polyrefuse_prompts(polyrefuse, ("val",), train_languages)
    test = load_polyrefuse_prompts(polyrefuse, ("test",), train_languages + test_languages)
    cross_languages = tuple(lang for lang in test_languages if any(r.language == lang for r in test))
    notes["polyrefuse_test_languages_missing"] = [lang for lang in test_languages if lang not in cross_languages]
    return train, val, test, cross_languages


def _grouped_source_records(data: SSIDataSettings) -> list[LabelledPrompt]:
    """The records of data.source "jsonl" or "authors", before the grouped split."""
    if data.source == "jsonl":
        keep = set(data.jsonl_splits)
        return load_labelled_jsonl(data.jsonl_path, splits=keep | ({None} if "train" in keep else set()))
    records = load_unsafe_train_json(data.unsafe_train_path)
    return records + load_ultrafeedback_prompts(data.ultrafeedback_dir,
                                                max_per_language=data.ultrafeedback_per_language or None)


def _grouped_splits(data: SSIDataSettings, seed: int):
    """(train, val, test, cross-lingual test languages) of a grouped split of the "jsonl" / "authors" records."""
    records = _grouped_source_records(data)
    fractions = {"train": 1.0 - data.val_fraction - data.test_fraction, "val": data.val_fraction,
                 "test": data.test_fraction}
    parts = grouped_split(records, fractions, seed=seed)
    train_languages = data.train_languages
    cross_languages = data.test_languages or tuple(sorted({r.language for r in records} - set(train_languages)))
    return (select_languages(parts["train"], train_languages), select_languages(parts["val"], train_languages),
            select_languages(parts["test"], train_languages + cross_languages), cross_languages)


def _check_splits(train, val, evaluation, held_out_evaluation) -> None:
    """Source names known, train/val/evaluation groups disjoint, both labels in train and val (else InputError)."""
    for name, records in [("train", train), ("val", val), *evaluation.items()]:
        check_source_names(records, what=f"SSI {name} split")
    # evaluation sets may share groups with each other (one query in several languages), never with train or val
    check_disjoint_groups({"train": train, "val": val, "evaluation": [r for rs in evaluation.values() for r in rs],
                           "held_out_evaluation": [r for rs in held_out_evaluation.values() for r in rs]})
    for name, records in (("train", train), ("val", val)):
        if len({r.label for r in records}) < 2:
            raise InputError(f"the SSI {name} split needs harmful and benign prompts; got {split_summary(records)}")


def load_ssi_data(data: SSIDataSettings, seed: int) -> SSIData:
    """Assemble the splits and evaluation sets described in the module docstring; `seed` orders the grouped split
    and the group limit."""
    train_languages, test_languages = data.train_languages, data.test_languages
    root = pathlib.Path(data.root) if data.root else None
    notes: dict[str, Any] = {"source": data.source, "train_languages": list(train_languages)}
    if data.source == "polyrefuse":
        train, val, test, cross_languages = _polyrefuse_splits(root, train_languages, test_languages, notes)
    else:
        train, val, test, cross_languages = _grouped_splits(data, seed)
    guarded, notes["held_out_content"] = guard_inputs(
        {"train": train, "val": val}, root, "SSI data", allow_missing=data.allow_missing_held_out)
    train, val = guarded["train"], guarded["val"]
    val, test = _drop_near_duplicates(train, val, test, data, notes)
    evaluation = {"test_in_distribution": select_languages(test, train_languages),
                  "test_cross_lingual": select_languages(test, cross_languages)}
    evaluation_languages = train_languages + (test_languages or cross_languages)
    if root is not None and data.include_flores:
        evaluation["benign_flores"] = load_flores_benign(root / "flores200_sib200", evaluation_languages,
                                                         splits=(data.flores_split,))
    held_out_evaluation = _multijail_evaluation(data, root, evaluation_languages, notes)
    limit = data.max_groups_per_split
    train, val = limit_groups(train, limit, seed), limit_groups(val, limit, seed)
    evaluation = {name: limit_groups(records, limit, seed) for name, records in evaluation.items() if records}
    held_out_evaluation = {name: limit_groups(records, limit, seed) for name, records in held_out_evaluation.items()}
    _check_splits(train, val, evaluation, held_out_evaluation)
    return SSIData(train, val, evaluation, notes, held_out_evaluation)


def _multijail_evaluation(data: SSIDataSettings, root, languages, notes) -> dict[str, list[LabelledPrompt]]:
    """{MULTIJAIL_SET: MultiJail prompts in `languages`} when `data.eval_multijail` and the file exists, else {}
    (with the reason in notes["multijail_evaluation"])."""
    if not data.eval_multijail:
        notes["multijail_evaluation"] = "off (data.eval_multijail=False)"
        return {}
    path = root / MULTIJAIL_CSV if root is not None else None
    multijail_languages = [lang for lang in languages if lang in MULTIJAIL_LANGUAGES]
    if path is None or not path.is_file() or not multijail_languages:
        reason = (f"no {config_field('data.root')}" if path is None else f"{path} not found" if not path.is_file()
                  else f"no MultiJail language among {list(languages)}")
        log.warning("evaluation-only MultiJail set skipped: %s", reason)
        notes["multijail_evaluation"] = f"skipped: {reason}"
        return {}
    notes["multijail_evaluation"] = {"path": str(path), "languages": multijail_languages,
                                     "use": "evaluation only, scored after training and threshold selection"}
    return {MULTIJAIL_SET: load_multijail_prompts(path, multijail_languages)}


def _drop_near_duplicates(train, val, test, data: SSIDataSettings, notes):
    """(val, test) without the groups whose `dedup_language` text nearly duplicates an earlier split's."""
    threshold = data.dedup_jaccard
    if not threshold:
        return val, test
    language = data.dedup_language
    val, dropped_val = drop_near_duplicate_groups(val, train, language=language, threshold=threshold)
    test, dropped_test = drop_near_duplicate_groups(test, train + val, language=language, threshold=threshold)
    notes["near_duplicates"] = {"language": language, "jaccard_threshold": threshold,
                                "dropped_val_groups": dropped_val, "dropped_test_groups": dropped_test}
    log.info("near-duplicate filter: dropped %d val and %d test groups", len(dropped_val), len(dropped_test))
    return val, test
