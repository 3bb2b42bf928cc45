"""Utility beside safety: per-language capability of a model (SIB-200 topic accuracy, FLORES per-token NLL).

Data: FLORES-200 sentences via SIB-200 (`lasa_jax.data.parallel.flores_sib200_rows`), per language. The sentences
scored are the same positions in every language (the files are row-aligned): `max_sentences` positions drawn once
with `np.random.default_rng(seed)` (the TSVs are grouped by topic, so a prefix would be one topic).

1. SIB-200 topic accuracy by label log-likelihood. The prompt of a sentence (raw text, encoded with the tokenizer's
   default special tokens) is
       "Topic classification. Topics: science/technology, travel, politics, sports, health, entertainment,
        geography.\n\n" + k shots "Sentence: <train sentence>\nTopic: <its topic>\n\n" + "Sentence: <text>\nTopic:"
   and each of the 7 English label words (`SIB200_TOPICS`) is encoded alone as " <label>" (no special tokens) and
   appended. Score of a label: log p(label tokens | prompt) summed over its tokens (`normalization="none"`, the
   default) or divided by its token count (`"token"`: mean log-probability per label token). Measured on
   SmolLM2-135M-Instruct: "token" predicted "science/technology" (3 tokens; "/technology" is nearly certain after
   "science") for every sentence, so the sum is the default; the summary holds both. Prediction: the
   argmax (ties: the first label in `SIB200_TOPICS` order). Accuracy per language with a Wilson interval
   (`lasa_jax.statistics.Rate`). Shots (`k_shot`, default 0) come from the train split of the same language
   (seeded, the same shots for every sentence of a language); the scored split is test (or dev), never train.
2. Per-token NLL: each sentence of `nll_split` (default dev), raw text with the tokenizer's default special tokens
   (SmolLM2/Qwen add none, Llama adds BOS); NLL (nats) of every token but the first (nothing predicts it). Per
   language: the mean over sentences of each sentence's mean NLL per scored token, with a Student-t interval over
   sentences; `pooled_nll` is the token-weighted value (all NLL / all scored tokens). Per-token NLL depends on how
   finely the tokenizer splits a script (byte-split scripts get many easy tokens), so compare systems within a
   language; `nll_per_byte` (all NLL / UTF-8 bytes of the sentences) is comparable across languages.

Computation (`utility_scoring`): each prompt runs once (left-padded, bucketed with
`models.capture.bucketed_batches`, so one compile per bucket length) and fills a KV cache; the 7 label continuations
then run as 7 rows per prompt against copies of that cache, all in the same jit program (`label_logprobs`). NLL
(`sentence_nll`) uses `models.logprobs.batch_logps` on right-padded buckets.
Comparing systems (`compare_utility`): the same sentences for every system; differences (system - baseline) have a
paired t interval over sentences (accuracy: per-sentence correct 0/1; NLL: per-sentence mean NLL).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.data.parallel import flores_sib200_rows
from lasa_jax.evaluate.settings import UtilityRunSettings, UtilitySettings
from lasa_jax.evaluate.utility_scoring import NORMALIZATIONS, label_logprobs, predict_labels, sentence_nll
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import write_jsonl
from lasa_jax.models.loading import load_model, load_tokenizer
from lasa_jax.statistics import Rate

log = logging.getLogger(__name__)

SIB200_TOPICS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
PROMPT_HEADER = "Topic classification. Topics: " + ", ".join(SIB200_TOPICS) + ".\n\n"
SHOT_TEMPLATE = "Sentence: {text}\nTopic: {label}\n\n"
QUERY_TEMPLATE = "Sentence: {text}\nTopic:"
FLORES_DIR = "flores200_sib200"


# ----------------------------------------------------------------------------------------------- data
def _sample_positions(count: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def load_utility_data(dataset_dir: str | os.PathLike, settings: UtilitySettings) -> dict[str, dict[str, list]]:
    """{language: {"classify": rows of `split`, "shots": k train rows, "nll": rows of `nll_split`}}; rows as
    `flores_sib200_rows`. InputError if a language misses sentences or a topic is not one of SIB200_TOPICS."""
    splits = tuple(dict.fromkeys(("train", settings.split, settings.nll_split)))
    rows = flores_sib200_rows(dataset_dir, settings.languages, splits)
    by_key: dict[tuple[str, str], list] = {}
    for row in rows:
        if row["category"] not in SIB200_TOPICS:
            raise InputError(f"{dataset_dir}: topic {row['category']!r} ({row['language']} {row['split']} "
                             f"{row['index_id']}) is not one of {SIB200_TOPICS}")
        by_key.setdefault((row["language"], row["split"]), []).append(row)
    missing = [lang for lang in settings.languages if (lang, settings.split) not in by_key]
    if missing:
        raise InputError(f"{dataset_dir}: no SIB-200 sentences for languages {missing}")
    data = {}
    for language in settings.languages:
        entry = {}
        for split, key in ((settings.split, "classify"), (settings.nll_split, "nll"), ("train", "shots")):
            split_rows = by_key[(language, split)]
            limit = settings.k_shot if key == "shots" else settings.max_sentences
            seed = settings.seed + (1 if key == "shots" else 0)
            entry[key] = [split_rows[i] for i in _sample_positions(len(split_rows), limit, seed)]
        data[language] = entry
    return data


def topic_prompt(text: str, shots: Sequence[Mapping[str, str]] = ()) -> str:
    """The classification prompt of one sentence (module docstring); the label follows after a space."""
    return (PROMPT_HEADER + "".join(SHOT_TEMPLATE.format(text=s["text"], label=s["category"]) for s in shots)
            + QUERY_TEMPLATE.format(text=text))


def encode_raw(tokenizer, text: str) -> np.ndarray:
    """Raw text with the tokenizer's default special tokens, int32."""
    return np.asarray(tokenizer(text, add_special_tokens=True)["input_ids"], np.int32)


def label_token_ids(tokenizer, labels: Sequence[str] = SIB200_TOPICS) -> list[np.ndarray]:
    """Each label encoded alone as " <label>", no special tokens."""
    return [np.asarray(tokenizer(" " + label, add_special_tokens=False)["input_ids"], np.int32) for label in labels]


# ----------------------------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], z: float = 1.96) -> dict[str, Any]:
    """Mean of `values` with a two-sided Student-t interval at the confidence of normal quantile z
    (mean +- t_{(1+conf)/2, n-1} * s / sqrt(n), s the n-1 standard deviation). n < 2: interval None."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else None
    if n < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": n}
    confidence = math.erf(z / math.sqrt(2.0))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


# ----------------------------------------------------------------------------------------------- one model
def evaluate_utility(model, tokenizer, data: Mapping[str, Mapping[str, list]],
                     settings: UtilitySettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both metrics of one model on `load_utility_data` output. Returns (summary, per-sentence rows).

    summary: {"per_language": {language: {"accuracy": Rate JSON, "accuracy_by_normalization": {norm: Rate JSON},
    "nll": t_interval JSON (mean NLL per token, nats), "pooled_nll", "nll_tokens", "nll_per_byte"}},
    "macro_accuracy", "pooled_accuracy" (Rate JSON), "macro_nll", "wall_s"}.
    rows: {"metric": "sib200" | "nll", "language", "index_id", ...} (topic, predicted, correct, label_logps | nll,
    tokens).
    """
    start = time.perf_counter()
    labels = label_token_ids(tokenizer)
    languages = list(data)
    contexts, nll_ids, rows = [], [], []
    for language in languages:
        shots = data[language]["shots"]
        contexts += [encode_raw(tokenizer, topic_prompt(r["text"], shots)) for r in data[language]["classify"]]
        nll_ids += [encode_raw(tokenizer, r["text"]) for r in data[language]["nll"]]
    logps = label_logprobs(model, contexts, labels, batch_size=settings.batch_size)
    by_normalization = {norm: predict_labels(logps, [len(label) for label in labels], norm)
                        for norm in NORMALIZATIONS}
    predicted = by_normalization[settings.normalization]
    nll, tokens = sentence_nll(model, nll_ids, batch_size=settings.batch_size)
    per_language, i, j = {}, 0, 0
    for language in languages:
        correct, first = [], i
        for r in data[language]["classify"]:
            guess = SIB200_TOPICS[int(predicted[i])]
            correct.append(guess == r["category"])
            rows.append({"metric": "sib200", "language": language, "index_id": r["index_id"], "topic": r["category"],
                         "predicted": guess, "correct": correct[-1], "label_logps": logps[i].tolist()})
            i += 1
        n = len(data[language]["nll"])
        lang_nll, lang_tokens = nll[j:j + n], tokens[j:j + n]
        for r, value, count in zip(data[language]["nll"], lang_nll, lang_tokens):
            rows.append({"metric": "nll", "language": language, "index_id": r["index_id"], "nll": float(value),
                         "tokens": int(count)})
        j += n
        topics = np.asarray([SIB200_TOPICS.index(r["category"]) for r in data[language]["classify"]])
        num_bytes = sum(len(r["text"].encode("utf-8")) for r in data[language]["nll"])
        per_language[language] = {
            "accuracy": Rate(int(sum(correct)), len(correct), settings.z).to_json(),
            "accuracy_by_normalization": {
                norm: Rate(int((pred[first:i] == topics).sum()), len(topics), settings.z).to_json()
                for norm, pred in by_normalization.items()},
            "nll": t_interval(lang_nll / lang_tokens, settings.z),
            "pooled_nll": float(lang_nll.sum() / lang_tokens.sum()), "nll_tokens": int(lang_tokens.sum()),
            "nll_per_byte": float(lang_nll.sum() / num_bytes)}
    accuracies = [g["accuracy"]["rate"] for g in per_language.values()]
    summary = {"per_language": per_language, "macro_accuracy": float(np.mean(accuracies)),
               "pooled_accuracy": Rate(int(sum(r["correct"] for r in rows if r["metric"] == "sib200")),
                                       len(contexts), settings.z).to_json(),
               "macro_nll": float(np.mean([g["nll"]["mean"] for g in per_language.values()])),
               "wall_s": time.perf_counter() - start}
    return summary, rows


def compare_utility(rows_by_system: Mapping[str, Sequence[Mapping[str, Any]]], reference: str,
                    z: float = 1.96) -> dict[str, Any]:
    """{system: {"per_language": {language: {"accuracy", "nll"}}, "all": {...}}}: paired t intervals of
    system - reference over the same sentences (accuracy: correct 0/1; nll: mean NLL per token of a sentence)."""
    def values(rows):
        out = {}
        for r in rows:
            value = float(r["correct"]) if r["metric"] == "sib200" else r["nll"] / r["tokens"]
            out[(r["metric"], r["language"], r["index_id"])] = value
        return out

    base = values(rows_by_system[reference])
    result = {}
    for system, rows in rows_by_system.items():
        if system == reference:
            continue
        other = values(rows)
        if other.keys() != base.keys():
            raise InputError(f"compare_utility: {system!r} and {reference!r} were scored on different sentences")
        diff: dict[str, dict[str, list]] = {}
        for (metric, language, _), value in other.items():
            key = "accuracy" if metric == "sib200" else "nll"
            delta = value - base[(metric, language, _)]
            diff.setdefault(language, {"accuracy": [], "nll": []})[key].append(delta)
            diff.setdefault("all", {"accuracy": [], "nll": []})[key].append(delta)
        result[system] = {
            "per_language": {lang: {k: t_interval(v, z) for k, v in d.items()} for lang, d in diff.items()
                             if lang != "all"},
            "all": {k: t_interval(v, z) for k, v in diff["all"].items()}}
    return result


# ----------------------------------------------------------------------------------------------- the stage hook
TOKENISATION_NOTE = ("raw text with the tokenizer's default special tokens; labels encoded alone as ' <label>' "
                     "without special tokens; NLL on every token but the first")


def not_run(reason: str) -> dict[str, Any]:
    log.warning("utility: not run: %s", reason)
    return {"status": "not run", "reason": reason}


def run_utility(settings: UtilityRunSettings, mesh=None, out_dir: str | None = None) -> dict[str, Any]:
    """The utility section of the evaluate stage: every system of `settings.models` is loaded (its dtypes, onto
    `mesh`), scored on the same sentences, and compared with "baseline" when present.

    Returns {"status": "ran", "settings", "systems": {name: summary}, "reference", "differences"} or
    {"status": "not run", "reason"} (disabled, no data_root, no FLORES/SIB-200 under it, no model paths).
    With `out_dir` (process 0), per-sentence rows go to utility_<system>.jsonl.
    """
    if not settings.enabled:
        return not_run("disabled (--config.utility.enabled=False)")
    if not settings.data_root:
        return not_run("no --config.utility.data_root (the folder holding flores200_sib200/)")
    dataset_dir = os.path.join(settings.data_root, FLORES_DIR)
    if not os.path.isdir(os.path.join(dataset_dir, "data", "annotated")):
        return not_run(f"no FLORES/SIB-200 data at {dataset_dir}/data/annotated")
    if not settings.models:
        return not_run("no model paths in --config.utility.models")
    metric = settings.metric
    data = load_utility_data(dataset_dir, metric)
    tokenizer = load_tokenizer(settings.tokenizer_path)
    summaries, rows = {}, {}
    for name, model_settings in settings.models.items():
        model = load_model(model_settings, mesh)
        summaries[name], rows[name] = evaluate_utility(model, tokenizer, data, metric)
        summaries[name]["model_path"] = storage.absolute(model_settings.path)
        del model
        log.info("utility %s: macro SIB-200 accuracy %.3f, macro NLL/token %.3f (%.0f s)", name,
                 summaries[name]["macro_accuracy"], summaries[name]["macro_nll"], summaries[name]["wall_s"])
        if out_dir and is_writer():
            write_jsonl(os.path.join(out_dir, f"utility_{name}.jsonl"), rows[name])
    reference = "baseline" if "baseline" in rows else None
    return {"status": "ran", "settings": {**dataclasses.asdict(metric), "prompt": topic_prompt("<text>"),
                                          "labels": list(SIB200_TOPICS), "tokenisation": TOKENISATION_NOTE,
                                          "tokenizer": storage.absolute(settings.tokenizer_path),
                                          "data": dataset_dir},
            "languages": list(metric.languages), "systems": summaries, "reference": reference,
            "differences": compare_utility(rows, reference, metric.z) if reference else {}}
