"""Stage 1 (Locate): find the semantic bottleneck layer k* of a model (METHOD.md §3, §9 items 9-11).

    result = run_locate(config, workdir)          # config: configs/locate.py; returns a BottleneckResult

Steps:
1. Data (`load_locate_corpus(config.data, seed)`): parallel texts `ParallelText(text, language, group_id, source,
   label)`, group ids namespaced by source. `data.source`:
   - "default": `default_locate_corpus` under `data.root` (FLORES/SIB-200 + PolyRefuse train/val; no MultiJail);
   - "jsonl": a generic JSON Lines file `{text|prompt, language, group_id[, label, source, split]}` at `data.path`
     (e.g. lasa_jax/demo_data/prompts.jsonl); rows whose `split` is not in `data.splits` are dropped, rows without
     a `split` field are kept (() keeps every row);
   - "hub": the same row layout through `datasets.load_dataset(data.path, split=data.hub_split,
     data_files=data.hub_data_files, cache_dir=data.hub_cache_dir)` (e.g. data.path="json" with local files);
   - "translated_json": the reference code's `safety_train_translated.json` at `data.path` (harmful, label 1);
   - "multijail": MultiJail (`data.path`, default `<data.root>/multijail`). A held-out evaluation set: refused
     unless `data.allow_held_out=True`, and then loudly warned about.
   Unless `data.allow_held_out` is set, every source but "multijail" goes through the held-out guard
   (`lasa_jax.data.heldout.guard_inputs`): held-out source names are refused, and groups holding a prompt of
   MultiJail, XSTest, OR-Bench-hard-test or OKTest (files under `data.root`, required unless
   `data.allow_missing_held_out`) under any source name are dropped, counted and logged (normalised exact text or
   shingle Jaccard >= 0.6).
   Then: languages in `data.languages`, groups with >= `data.min_languages` of them, with
   `data.common_sources_only` only the sources present in every requested language (`keep_common_sources`), at
   most `data.max_groups_per_source` groups per source (0 = all), drawn with `config.seed`.
   Source confound: in the default corpus vi, bn, sw and jv come only from FLORES (benign news) while the other
   six languages also come from PolyRefuse (harmful/harmless requests), so S_lang partly measures source/domain
   (a language cluster is also a domain cluster) and S_sem mixes two kinds of groups. `data.common_sources_only`
   (default False, the paper's mixed data) removes the confound at the price of data (all ten languages: FLORES
   only). The texts per source and language are reported in activations.json and bottleneck.json ("corpus").
2. Tokenisation (`tokenize_prompts`): raw text with the tokenizer's default special tokens (the paper), or the chat
   template (`chat_template`, `template_kwargs` JSON); at most `max_length` tokens.
3. Capture: `capture(..., residual_index=None)`, every residual index 0..L in one forward pass per batch, pooled
   (`pooling`: last real token, the paper's feature, or mean) -> float32 (L+1, N, D).
   Stored as `<workdir>/activations.npz` (features + per-text columns language, group_id, source, label (-1 =
   unknown)) with `<workdir>/activations.json` beside it: the cache key (a SHA-256 over the model fingerprint and
   dtypes, pooling, tokenisation settings, the token ids and the corpus records) and a corpus summary. A rerun
   whose key matches loads the file instead of running the model (`reuse_activations`).
4. Selection (`select_bottleneck_layer`, `config.selection`): argmax over residual indices 1..L (the paper's
   candidates; `selection.include_embeddings` adds 0, `selection.include_final=False` drops L) of S_sem - S_lang
   on L2-normalised vectors, with a group bootstrap (interval and pick share per layer), seeded by `config.seed`,
   and the verdict: no bottleneck when diff < 0 at every candidate, k* at a range edge, or pick share < 0.5
   (bottleneck.json `bottleneck_found`, `reason`; a console warning).
5. Probe (`lasa_jax.layer_probe`, `config.probe`): from the same features, the validation AUROC of a
   harmful-vs-benign logistic probe at every residual index (split by query group; labelled rows only: PolyRefuse
   harmful 1 / harmless 0, FLORES 0). Null with a reason when the labels do not allow it or when
   `data.allow_held_out` is set (the probe uses non-held-out data only). Caveat: in the default corpus the benign
   class mixes FLORES news with PolyRefuse harmless requests, so part of the AUROC can be domain, not safety.
6. Report (`write_bottleneck_report`): bottleneck.json (with "model", the model's identity, and "corpus", the
   corpus summary and data notes), layers.csv, bottleneck_layers.png, and tsne_layer<k>.png for each of
   `report.tsne_layers`.

Multi-process runs: every process loads the data, runs the (sharded) capture and the selection; only process 0
writes files. The activation file is reused only if every process can read a matching one (a shared workdir).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lasa_jax import io_utils
from lasa_jax.activations import (
    POOLINGS,
    capture,
    default_batch_size,
    load_activations,
    save_activations,
    token_ids_digest,
    tokenize_prompts,
)
from lasa_jax.bottleneck import (
    BOOTSTRAP_MODES,
    METRICS,
    BottleneckResult,
    select_bottleneck_layer,
    write_bottleneck_report,
)
from lasa_jax.data.heldout import guard_inputs
from lasa_jax.data.languages import normalize_language
from lasa_jax.data.parallel import (
    ParallelText,
    _record_from_row,
    check_parallel_corpus,
    corpus_summary,
    default_locate_corpus,
    filter_parallel_groups,
    keep_common_sources,
    load_multijail,
    load_parallel_hub,
    load_translated_safety_json,
    subsample_groups,
)
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_write_json, iter_jsonl
from lasa_jax.layer_probe import ProbeResult, layer_probe_auroc
from lasa_jax.runtime import is_writer, load_model, load_tokenizer, template_kwargs

log = logging.getLogger(__name__)

DATA_SOURCES = ("default", "jsonl", "hub", "translated_json", "multijail")
ACTIVATIONS_FILE = "activations.npz"
ACTIVATIONS_META_FILE = "activations.json"
ACTIVATIONS_FORMAT = 1
UNKNOWN_LABEL = -1  # label column value of texts without a harmful/benign label
_TSNE_MIN_ITER = 250  # sklearn's lower bound for TSNE max_iter


# ------------------------------------------------------------------------------------------------- config checks


def _fail(flag: str, expected: str, value: Any) -> InputError:
    return InputError(f"--config.{flag} must be {expected}, got {value!r}")


def check_locate_config(config, model_given: bool = False) -> None:
    """ValueError naming the flag of the first bad value in a `configs/locate.py` config (before any work)."""
    if not model_given and not config.model_path:
        raise InputError("--config.model_path is required (a local Hugging Face model directory or a hub id)")
    if config.pooling not in POOLINGS:
        raise _fail("pooling", f"one of {POOLINGS}", config.pooling)
    if config.max_length < 1:
        raise _fail("max_length", "a positive number of tokens", config.max_length)
    if config.capture_batch_size < 0:
        raise _fail("capture_batch_size", "0 (auto) or a positive number of prompts", config.capture_batch_size)
    template_kwargs(config)
    data = config.data
    if data.source not in DATA_SOURCES:
        raise _fail("data.source", f"one of {DATA_SOURCES}", data.source)
    if data.max_groups_per_source < 0:
        raise _fail("data.max_groups_per_source", "0 (all groups) or a positive number", data.max_groups_per_source)
    if data.min_languages < 2:
        raise _fail("data.min_languages", "at least 2 (a group needs 2 languages to be parallel)", data.min_languages)
    _requested_languages(data.languages)
    selection = config.selection
    if selection.metric not in METRICS:
        raise _fail("selection.metric", f"one of {METRICS}", selection.metric)
    if selection.bootstrap not in BOOTSTRAP_MODES:
        raise _fail("selection.bootstrap", f"one of {BOOTSTRAP_MODES}", selection.bootstrap)
    if selection.num_bootstrap < 1:
        raise _fail("selection.num_bootstrap", "a number of group resamples >= 1", selection.num_bootstrap)
    if not 0.0 < selection.confidence < 1.0:
        raise _fail("selection.confidence", "in (0, 1)", selection.confidence)
    probe = config.get("probe")
    if probe is not None:
        if not 0.0 < probe.val_fraction < 1.0:
            raise _fail("probe.val_fraction", "in (0, 1)", probe.val_fraction)
        if not probe.c > 0:
            raise _fail("probe.c", "a positive inverse regularisation strength", probe.c)
        if probe.num_steps < 1:
            raise _fail("probe.num_steps", "a number of Newton steps >= 1", probe.num_steps)
    parse_tsne_layers(config.report.tsne_layers, best_layer=0)
    if config.report.tsne_max_iter < _TSNE_MIN_ITER:
        raise _fail("report.tsne_max_iter", f"an iteration count >= {_TSNE_MIN_ITER}", config.report.tsne_max_iter)


def _requested_languages(languages: Sequence[str]) -> tuple[str, ...]:
    """--config.data.languages as ISO codes (order kept, duplicates dropped); ValueError naming the flag."""
    if isinstance(languages, str):
        languages = [part for part in languages.split(",") if part.strip()]
    try:
        codes = tuple(dict.fromkeys(normalize_language(str(lang).strip()) for lang in languages))
    except ValueError as err:
        raise InputError(f"--config.data.languages: {err}") from err
    if len(codes) < 2:
        raise _fail("data.languages", "at least 2 language codes", languages)
    return codes


def parse_tsne_layers(value: str, best_layer: int, num_layers: int | None = None) -> tuple[int, ...]:
    """--config.report.tsne_layers: comma-separated residual indices and/or "best" (k*); "" = no t-SNE plot.

    Returns the distinct indices in the order given; with `num_layers`, each must lie in 0..num_layers.
    """
    layers = []
    for item in (part.strip() for part in str(value).split(",")):
        if not item:
            continue
        if item == "best":
            layers.append(best_layer)
        elif item.isdigit():
            layers.append(int(item))
        else:
            raise _fail("report.tsne_layers", 'comma-separated residual indices or "best" ("" = none)', value)
        if num_layers is not None and not 0 <= layers[-1] <= num_layers:
            raise _fail("report.tsne_layers", f"residual indices in 0..{num_layers} for this model", value)
    return tuple(dict.fromkeys(layers))


# --------------------------------------------------------------------------------------------------------- data


def load_parallel_jsonl_split(path: str | os.PathLike, splits: Sequence[str] = ("train",),
                              source: str | None = None) -> list[ParallelText]:
    """Generic JSON Lines parallel rows (layout of `lasa_jax.data.parallel.load_parallel_jsonl`), keeping rows
    whose `split` field is in `splits` and rows without one (an empty `splits` keeps every row). A row may carry
    both `text` and `prompt` (as the demo data does) when they are equal. group_id = "<source>:<group_id>",
    source defaults to the file stem. ValueError naming the file and line on a bad row."""
    path = pathlib.Path(path)
    keep = set(splits)
    records = []
    for line_number, row in iter_jsonl(path, "parallel JSONL file (--config.data.path of data.source='jsonl')"):
        where = f"{path}:{line_number}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        split = row.get("split")
        if keep and split is not None and split not in keep:
            continue
        records.append(_record_from_row(row, where, source or path.stem))
    if not records:
        raise InputError(f"{path}: no records" + (f" with split in {sorted(keep)}" if keep else ""))
    return records


def load_locate_corpus(data_config, seed: int) -> list[ParallelText]:
    """The Locate texts described by `config.data` (module docstring, step 1)."""
    return locate_corpus_with_notes(data_config, seed)[0]


def locate_corpus_with_notes(data_config, seed: int) -> tuple[list[ParallelText], dict[str, Any]]:
    """(`load_locate_corpus`'s texts, notes for the report: "source", "common_sources_only" and
    "held_out_content", what the held-out content guard checked and dropped)."""
    source = data_config.source
    if source not in DATA_SOURCES:
        raise _fail("data.source", f"one of {DATA_SOURCES}", source)
    languages = _requested_languages(data_config.languages)
    max_groups = data_config.max_groups_per_source or None
    common_sources_only = bool(data_config.common_sources_only)
    root = pathlib.Path(data_config.root) if data_config.root else None
    path = data_config.path
    notes: dict[str, Any] = {"source": source, "common_sources_only": common_sources_only}

    if source == "default":
        if root is None:
            raise InputError("--config.data.root is required for data.source='default' (the shared data folder "
                             "holding flores200_sib200/ and polyrefuse/)")
        records = default_locate_corpus(root, languages=languages, max_groups_per_source=max_groups, seed=seed,
                                        common_sources_only=common_sources_only)
        guarded, notes["held_out_content"] = guard_inputs({"corpus": records}, root, "Locate data (default)",
                                                          allow_missing=_allow_missing_held_out(data_config))
        return filter_parallel_groups(guarded["corpus"], languages, min_languages=data_config.min_languages), notes

    if source == "multijail":
        if not data_config.allow_held_out:
            raise InputError("data.source='multijail' is a held-out evaluation set: picking the layer with it "
                             "leaks the test set. Use data.source='default', or pass "
                             "--config.data.allow_held_out=True to analyse it deliberately")
        if not path and root is None:
            raise InputError("data.source='multijail' needs --config.data.path (MultiJail.csv) or --config.data.root")
        log.warning("!!! Locate runs on MultiJail, a HELD-OUT EVALUATION SET (--config.data.allow_held_out=True). "
                    "A layer chosen this way must not be used for results evaluated on MultiJail. !!!")
        notes["held_out_content"] = "not applied: data.source='multijail' (data.allow_held_out=True)"
        records = load_multijail(path or root / "multijail", languages=languages)
    else:
        if not path:
            raise InputError(f"--config.data.path is required for data.source={source!r}")
        if source == "jsonl":
            records = load_parallel_jsonl_split(path, splits=tuple(data_config.splits))
        elif source == "hub":
            records = load_parallel_hub(path, split=data_config.hub_split,
                                        data_files=data_config.hub_data_files or None,
                                        cache_dir=data_config.hub_cache_dir or None)
        else:
            records = load_translated_safety_json(path, label=1)
        if data_config.allow_held_out:
            notes["held_out_content"] = "not applied: data.allow_held_out=True"
        else:
            guarded, notes["held_out_content"] = guard_inputs({"corpus": records}, root,
                                                              f"Locate data ({source} {path})",
                                                              allow_missing=_allow_missing_held_out(data_config))
            records = guarded["corpus"]
    records = filter_parallel_groups(records, languages, min_languages=data_config.min_languages)
    if common_sources_only:
        records, notes["dropped_sources"] = keep_common_sources(records, languages)
        log.info("data.common_sources_only: dropped sources without texts in every language (their languages): %s",
                 notes["dropped_sources"])
    records = subsample_groups(records, max_groups, seed=seed)
    check_parallel_corpus(records, what=f"Locate data ({source}) after subsampling")
    return records, notes


def _allow_missing_held_out(data_config) -> bool:
    """`data.allow_missing_held_out`: run the held-out guard with whichever held-out files exist (the demo)."""
    return bool(data_config.get("allow_missing_held_out", False))


# -------------------------------------------------------------------------------------------------- activations


def _records_digest(records: Sequence[ParallelText]) -> str:
    """SHA-256 of the records' (text, language, group_id, source, label), in order."""
    rows = [[r.text, r.language, r.group_id, r.source, r.label] for r in records]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


def activation_key_description(model, token_ids: Sequence[np.ndarray], records: Sequence[ParallelText], *,
                               pooling: str, chat_template: bool, max_length: int,
                               template_kwargs: dict) -> dict[str, Any]:
    """Everything the stored activations depend on (the cache key is the SHA-256 of its canonical JSON)."""
    config = model.config
    return {"format": ACTIVATIONS_FORMAT, "model_fingerprint": model.fingerprint,
            "param_dtype": config.param_dtype, "compute_dtype": config.compute_dtype,
            "num_layers": config.num_layers, "hidden_size": config.hidden_size, "pooling": pooling,
            "chat_template": bool(chat_template), "template_kwargs": dict(template_kwargs),
            "max_length": int(max_length), "token_ids_sha256": token_ids_digest(token_ids),
            "records_sha256": _records_digest(records)}


def _key_of(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def _columns(records: Sequence[ParallelText]) -> dict[str, np.ndarray]:
    return {"language": np.array([r.language for r in records]),
            "group_id": np.array([r.group_id for r in records]),
            "source": np.array([r.source for r in records]),
            "label": np.array([UNKNOWN_LABEL if r.label is None else r.label for r in records], np.int32)}


def _read_matching_activations(workdir: pathlib.Path, key: str, shape: tuple[int, int, int],
                               columns: dict[str, np.ndarray]) -> np.ndarray | None:
    """The stored features if `<workdir>/activations.{json,npz}` match `key`, shape and columns, else None."""
    meta_path, npz_path = workdir / ACTIVATIONS_META_FILE, workdir / ACTIVATIONS_FILE
    if not meta_path.is_file() or not npz_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("ignoring %s: not valid JSON", meta_path)
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        log.info("stored activations in %s were made with other inputs; capturing again", workdir)
        return None
    stored = load_activations(npz_path)
    if stored.get("features") is None or stored["features"].shape != shape or any(
            name not in stored or not np.array_equal(stored[name], values) for name, values in columns.items()):
        log.warning("ignoring %s: its contents do not match %s; capturing again", npz_path, meta_path)
        return None
    return stored["features"]


def _all_processes_agree(flag: bool) -> bool:
    """True iff `flag` is True on every process (collective in multi-process runs)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.array(flag, np.int32))))


def locate_activations(config, workdir: pathlib.Path, model, tokenizer,
                       records: Sequence[ParallelText]) -> np.ndarray:
    """(L+1, N, D) float32 pooled features of `records` (module docstring, steps 2-3), reused from `workdir` when
    the stored key matches, else captured and stored (process 0)."""
    chat_kwargs = template_kwargs(config)
    token_ids = tokenize_prompts(tokenizer, [r.text for r in records], use_chat_template=config.chat_template,
                                 max_length=config.max_length, template_kwargs=chat_kwargs)
    description = activation_key_description(model, token_ids, records, pooling=config.pooling,
                                             chat_template=config.chat_template, max_length=config.max_length,
                                             template_kwargs=chat_kwargs)
    key = _key_of(description)
    columns = _columns(records)
    shape = (model.config.num_layers + 1, len(records), model.config.hidden_size)
    cacheable = model.fingerprint is not None
    if not cacheable:
        log.warning("activation reuse disabled: the model has no fingerprint (load it with from_pretrained)")
    features = None
    if cacheable and config.reuse_activations:
        features = _read_matching_activations(workdir, key, shape, columns)
        if not _all_processes_agree(features is not None):
            features = None
    if features is not None:
        log.info("reusing activations from %s (key %s): %d texts x %d residual indices", workdir / ACTIVATIONS_FILE,
                 key[:16], shape[1], shape[0])
        return features

    lengths = np.array([len(ids) for ids in token_ids])
    log.info("capturing %d residual indices for %d texts (tokens per text: median %d, max %d, max_length %d)",
             shape[0], shape[1], int(np.median(lengths)), int(lengths.max()), config.max_length)
    features = capture(model, token_ids, pooling=config.pooling, residual_index=None,
                       batch_size=default_batch_size(model, config.capture_batch_size), progress=config.progress)
    if is_writer():
        meta_path = workdir / ACTIVATIONS_META_FILE
        meta_path.unlink(missing_ok=True)  # never a stale key next to new features
        save_activations(workdir / ACTIVATIONS_FILE, features, **columns)
        atomic_write_json(meta_path, {"key": key, "description": description, "shape": list(shape),
                                      "corpus": corpus_summary(records)})
        log.info("saved activations to %s (key %s)", workdir / ACTIVATIONS_FILE, key[:16])
    return features


# ------------------------------------------------------------------------------------------------------ the stage


def summary_line(result: BottleneckResult) -> str:
    """One human-readable line: k*, its depth, S_sem - S_lang with its interval, the pick share, the verdict and the
    probe's best residual index."""
    k = result.best_layer
    line = (f"semantic bottleneck k* = {k} of L = {result.num_layers} ({100 * k / result.num_layers:.0f}% depth; "
            f"residual index, 0 = embeddings): S_sem - S_lang = {result.diff[k]:.4f} "
            f"(S_sem {result.s_sem[k]:.4f}, S_lang {result.s_lang[k]:.4f}), "
            f"{100 * result.confidence:g}% group-bootstrap interval [{result.diff_lo[k]:.4f}, "
            f"{result.diff_hi[k]:.4f}], picked in {100 * result.pick_share[k]:.0f}% of {result.num_bootstrap} "
            f"resamples; {result.num_points} texts, {result.num_groups} groups, "
            f"languages {','.join(result.languages)}, candidates {result.selection_range[0]}.."
            f"{result.selection_range[1]}")
    if not result.bottleneck_found:
        line += "; NO semantic bottleneck found: " + "; ".join(message for _, message in result.reasons)
    best_probe = result.best_probe_layer
    if best_probe is not None:
        line += (f"; probe val AUROC {result.probe_auroc[k]:.3f} at k*, best {result.probe_auroc[best_probe]:.3f} "
                 f"at residual index {best_probe}")
    elif result.probe and result.probe.get("reason"):
        line += f"; probe AUROC unavailable: {result.probe['reason']}"
    return line


def locate_probe(config, features: np.ndarray, records: Sequence[ParallelText]) -> ProbeResult:
    """The per-residual-index probe AUROC of step 5 (module docstring) for the captured `features` (L+1, N, D)."""
    probe = config.get("probe")
    labels = np.array([UNKNOWN_LABEL if r.label is None else r.label for r in records], np.int32)
    if probe is None or not probe.enabled:
        return ProbeResult(None, "disabled (--config.probe.enabled=False)", {})
    if config.data.allow_held_out:
        return ProbeResult(None, "not computed: data.allow_held_out=True (the probe uses non-held-out data only)",
                           {})
    return layer_probe_auroc(features, labels, [r.group_id for r in records], seed=config.seed,
                             val_fraction=probe.val_fraction, c=probe.c, num_steps=probe.num_steps)


def run_locate(config, workdir: str | os.PathLike, model=None, mesh=None) -> BottleneckResult:
    """Run Stage 1 with a `configs/locate.py` config (module docstring) and write its files into `workdir`.

    model: an already loaded `Decoder` (e.g. from a pipeline); None loads `config.model_path` on `mesh`. Its
    tokenizer is read from `config.model_path` (or the model's `source_path`). Returns the BottleneckResult.
    """
    check_locate_config(config, model_given=model is not None)
    workdir = io_utils.to_path(workdir)
    records, notes = locate_corpus_with_notes(config.data, seed=config.seed)
    summary = corpus_summary(records)
    log.info("Locate data (%s): %d texts, %d groups; texts per language %s; per source and language %s",
             config.data.source, summary["num_texts"], summary["num_groups"], summary["texts_per_language"],
             summary["texts_per_source_language"])

    if model is None:
        model = load_model(config, mesh)
    tokenizer_path = config.model_path or model.source_path
    if not tokenizer_path:
        raise InputError("--config.model_path is required to load the tokenizer of the given model")
    tsne_layers_value = config.report.tsne_layers
    parse_tsne_layers(tsne_layers_value, best_layer=0, num_layers=model.config.num_layers)
    if is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
    features = locate_activations(config, workdir, model, load_tokenizer(str(tokenizer_path)), records)

    languages = [r.language for r in records]
    group_ids = [r.group_id for r in records]
    selection = config.selection
    result = select_bottleneck_layer(features, languages, group_ids, metric=selection.metric,
                                     include_embeddings=selection.include_embeddings,
                                     include_final=selection.include_final, num_bootstrap=selection.num_bootstrap,
                                     bootstrap=selection.bootstrap, confidence=selection.confidence,
                                     seed=config.seed)
    probe = locate_probe(config, features, records)
    settings = {key: value for key, value in probe.to_json_dict().items() if key != "auroc"}
    result = dataclasses.replace(result, probe_auroc=probe.auroc, probe=settings)
    if probe.reason:
        log.warning("Locate probe AUROC not computed: %s", probe.reason)
    for row in result.layer_rows():
        auroc = "  n/a" if row["probe_auroc"] is None else f"{row['probe_auroc']:.3f}"
        log.info("residual index %2d: S_lang %.4f  S_sem %.4f  diff %.4f  [%.4f, %.4f]  pick share %.2f  "
                 "probe AUROC %s", row["layer"], row["s_lang"], row["s_sem"], row["diff"], row["diff_lo"],
                 row["diff_hi"], row["pick_share"], auroc)
    if is_writer():
        tsne_layers = parse_tsne_layers(tsne_layers_value, result.best_layer, model.config.num_layers)
        paths = write_bottleneck_report(result, workdir, features=features if tsne_layers else None,
                                        languages=languages, group_ids=group_ids, tsne_layers=tsne_layers,
                                        tsne_max_iter=config.report.tsne_max_iter,
                                        metadata={"model": model.identity(), "corpus": {**summary, "notes": notes}})
        log.info("wrote %s", ", ".join(sorted(paths.values())))
    if result.bottleneck_found:
        log.info("Locate: %s", summary_line(result))
    else:
        log.warning("Locate: %s. Later stages that read k* from this workdir (residual_index=-1) will use index "
                    "%d anyway; set their residual_index explicitly to choose another.", summary_line(result),
                    result.best_layer)
    return result
