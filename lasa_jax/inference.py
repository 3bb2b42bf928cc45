"""LASA, prefix-only and baseline inference over evaluation prompts -> one JSONL record per prompt.

LASA (METHOD.md §6, without the reference's defects §9.1, 8, 13, 15):
  1. the SSI scores every prompt on the frozen BASE model at the residual index recorded in its artifact
     (`lasa_jax.ssi.SSIScorer`; any object with `score(list[str]) -> (probs (N,), flags (N,) bool)` works here);
  2. prompts flagged harmful get the conditional prefix right after the assistant header, through
     `lasa_jax.chat.render_prompt` (the rendering KTO training used); the others get the plain chat prompt;
  3. the ALIGNED (KTO) model generates; the response is the continuation only (the prefix is not part of it).
Prefix-only (an ablation: the gate and the prefix without KTO): steps 1 and 2 as in LASA, but the BASE model (the
one the SSI reads) generates. Baseline: the same rendering without SSI and without prefix (a scorer, if given, is
only recorded). Chat template variables (e.g. Qwen3 `enable_thinking`) are applied identically in every mode.

Record (JSON object per line, input order):
  {"id", "language", "prompt", "response", "reasoning", "ssi_score" (float or null), "prefix_used" (bool),
   "source", "expected", "category", "mode", "finish_reason" ("eos" | "length"), "num_new_tokens" (EOS included)}.
The continuation is decoded with special tokens skipped. A leading "<think>...</think>" block (Qwen3 with thinking
on) goes to "reasoning" and "response" is the answer after it (empty if the block never closed), so judges see
the answer only; "reasoning" is null otherwise. Files are written atomically; a long run appends finished chunks
to "<output>.partial" and resumes from it (ids already there, generated in the same mode with the same prompt and
prefix decision, are not generated again).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from lasa_jax import io_utils
from lasa_jax.chat import CONDITIONAL_PREFIX, RenderedPrompt, end_of_turn_ids, render_prompt
from lasa_jax.data import eval_sets
from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.errors import InputError
from lasa_jax.generate import generate_batched
from lasa_jax.io_utils import append_durably, atomic_write_json, iter_jsonl, write_jsonl
from lasa_jax.runtime import comma_list, is_writer, load_model, load_tokenizer
from lasa_jax.runtime import template_kwargs as config_template_kwargs

log = logging.getLogger(__name__)

MODES = ("lasa", "baseline", "prefix_only")
GATED_MODES = ("lasa", "prefix_only")  # modes in which the SSI decides the prefix
RECORD_FIELDS = ("id", "language", "prompt", "response", "reasoning", "ssi_score", "prefix_used", "source",
                 "expected", "category", "mode", "finish_reason", "num_new_tokens")
PARTIAL_SUFFIX = ".partial"


class PromptScorer(Protocol):
    """The SSI interface inference needs: prompt strings -> (harmful probability (N,) float, flag (N,) bool)."""

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ...


# ----------------------------------------------------------------------------------------------- eval prompts
STANDARD_SETS = ("multijail", "xstest_safe", "xstest_unsafe", "xstest", "or_bench_hard_test", "oktest")


@dataclasses.dataclass(frozen=True)
class HubSetOptions:
    """How rows of a `hub:<id>` eval set map to EvalPrompts (see `eval_sets.load_hf_dataset`)."""

    name: str | None = None
    split: str = "test"
    expected: str | None = None
    language: str | None = None
    field_map: Mapping[str, str] | None = None


def load_eval_prompts(specs: Sequence[str], *, data_root: str | os.PathLike = "",
                      languages: Sequence[str] | None = None, max_per_language: int = 0,
                      hub: HubSetOptions = HubSetOptions(),
                      limit_sets: Sequence[str] | None = None) -> list[EvalPrompt]:
    """Evaluation prompts of several sets, concatenated in the order of `specs`.

    specs: "multijail", "xstest_safe", "xstest_unsafe", "xstest" (both), "or_bench_hard_test", "oktest" (files
      under `data_root`, the shared data layout), "jsonl:<path>" (generic JSONL, `eval_sets.load_jsonl`) or
      "hub:<dataset id or local builder>" (rows mapped by `hub`).
    languages: MultiJail languages (None = all ten).
    max_per_language: keep the first n prompts of each (source, language) in file order (0 = all). MultiJail
      is row-major, so the same n queries are kept in every language.
    limit_sets: the specs (entries of `specs`) that max_per_language bounds; None = all of them. E.g. ["multijail"]
      keeps all of XSTest (English, ordered by prompt type, so its first n rows would be one or two types).
    Ids must be unique across all sets.
    """
    if max_per_language < 0:
        raise InputError(f"max_per_language must be >= 0 (0 = all), got {max_per_language}")
    root = os.fspath(data_root)
    prompts: list[EvalPrompt] = []
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("jsonl:"):
            loaded = eval_sets.load_jsonl(spec[len("jsonl:"):])
        elif spec.startswith("hub:"):
            loaded = eval_sets.load_hf_dataset(spec[len("hub:"):], name=hub.name, split=hub.split,
                                               expected=hub.expected, language=hub.language,
                                               field_map=hub.field_map)
        elif spec in STANDARD_SETS:
            if not root:
                raise InputError(f"eval set {spec!r} needs the shared data root (--config.data_root)")
            if spec == "multijail":
                loaded = eval_sets.load_multijail(os.path.join(root, eval_sets.MULTIJAIL_CSV), languages)
            elif spec.startswith("xstest"):
                split = {"xstest": "all", "xstest_safe": "safe", "xstest_unsafe": "unsafe"}[spec]
                loaded = eval_sets.load_xstest(os.path.join(root, eval_sets.XSTEST_CSV), split)
            elif spec == "or_bench_hard_test":
                loaded = eval_sets.load_or_bench_hard_test(os.path.join(root, eval_sets.OR_BENCH_HARD_TEST_JSON))
            else:
                loaded = eval_sets.load_oktest(os.path.join(root, eval_sets.OKTEST_JSON))
        else:
            raise InputError(f"unknown eval set {spec!r}: expected one of {STANDARD_SETS}, 'jsonl:<path>' or "
                             "'hub:<dataset id>'")
        if max_per_language and (limit_sets is None or spec in limit_sets):
            kept: dict[tuple[str, str], int] = {}
            limited = []
            for p in loaded:
                key = (p.source, p.language)
                if kept.get(key, 0) < max_per_language:
                    kept[key] = kept.get(key, 0) + 1
                    limited.append(p)
            loaded = limited
        prompts.extend(loaded)
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise InputError(f"eval sets {list(specs)}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
    return prompts


# ----------------------------------------------------------------------------------------------- SSI decisions
def prefix_decisions(mode: str, prompts: Sequence[EvalPrompt],
                     scorer: PromptScorer | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(SSI scores float32 (N,) or None, prefix flags bool (N,)) for `mode`.

    "lasa" / "prefix_only": the scorer decides (required); "baseline": no prefix, scores recorded only if a scorer
    is given.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    n = len(prompts)
    if scorer is None:
        if mode in GATED_MODES:
            raise InputError(f"mode {mode!r} needs an SSI scorer (--config.ssi_dir and --config.base_model_path)")
        return None, np.zeros(n, bool)
    probs, flags = scorer.score([p.prompt for p in prompts])
    probs, flags = np.asarray(probs, np.float32), np.asarray(flags)
    if probs.shape != (n,) or flags.shape != (n,) or flags.dtype != bool:
        raise ValueError(f"scorer.score must return (probs (N,), flags (N,) bool) for N={n} prompts, got shapes "
                         f"{probs.shape}, {flags.shape} and flag dtype {flags.dtype}")
    return probs, (flags if mode in GATED_MODES else np.zeros(n, bool))


# ----------------------------------------------------------------------------------------------- rendering
def render_inputs(tokenizer, prompts: Sequence[EvalPrompt], prefix_flags: Sequence[bool], *,
                  prefix: str = CONDITIONAL_PREFIX, template_kwargs: Mapping[str, Any] | None = None,
                  max_prompt_length: int | None = None) -> list[RenderedPrompt]:
    """Model inputs: chat template with generation prompt, plus `prefix` where the flag is set (`render_prompt`)."""
    if len(prefix_flags) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prefix_flags)} prefix flags")
    rendered = []
    for p, flag in zip(prompts, prefix_flags):
        try:
            rendered.append(render_prompt(tokenizer, p.prompt, prefix=prefix if flag else None,
                                          template_kwargs=template_kwargs, max_prompt_length=max_prompt_length))
        except ValueError as e:
            raise InputError(f"prompt {p.id!r}: {e}") from e
    return rendered


GENERATION_CONFIG = "generation_config.json"


def generation_config_eos_ids(model_dir: str | os.PathLike | None) -> list[int]:
    """The eos_token_id(s) of `<model_dir>/generation_config.json` (an int or a list; Qwen lists `<|im_end|>` and
    `<|endoftext|>`); [] when there is no such file or field. A malformed file -> InputError naming it."""
    if not model_dir:
        return []
    path = os.path.join(os.fspath(model_dir), GENERATION_CONFIG)
    if not io_utils.isfile(path):
        return []
    try:
        with io_utils.open_file(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: expected a JSON object, got unparsable text ({e})") from None
    eos = data.get("eos_token_id") if isinstance(data, dict) else None
    values = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InputError(f"{path}: field 'eos_token_id' must be a token id or a list of token ids, got {eos!r}")
    return [int(v) for v in values]


def stop_token_ids(model_config, tokenizer, template_kwargs: Mapping[str, Any] | None = None, *,
                   model_dir: str | os.PathLike | None = None) -> list[int]:
    """Tokens that end generation: the model config's eos ids, the eos ids of `<model_dir>/generation_config.json`
    (e.g. Qwen's `<|endoftext|>` beside `<|im_end|>`), the tokenizer's eos token and the chat template's end-of-turn
    token (Llama-3 `<|eot_id|>`, Qwen `<|im_end|>`), when the template reveals one."""
    ids = set(model_config.eos_token_ids) | set(generation_config_eos_ids(model_dir))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        try:
            ids.add(int(end_of_turn_ids(tokenizer, template_kwargs)[-1]))
        except ValueError as e:  # templates that rewrite assistant content (e.g. guard models): config ids only
            log.info("no end-of-turn token from the chat template (%s); stopping on %s", e, sorted(ids))
    if not ids:
        raise InputError("no stop token: the model config has no eos_token_id and the tokenizer no eos_token")
    return sorted(ids)


# ----------------------------------------------------------------------------------------------- generation
def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a decoded continuation: a leading <think>...</think> block is the reasoning
    (stripped) and the answer is the text after it, stripped of leading whitespace; an unclosed block gives an
    empty answer; text without the block is the answer itself (reasoning None)."""
    body = text.lstrip()
    if not body.startswith("<think>"):
        return None, text
    inner, closed, answer = body[len("<think>"):].partition("</think>")
    return inner.strip(), answer.lstrip() if closed else ""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Decoding settings of a run (see `lasa_jax.generate`); temperature 0 = greedy. Sampling keys: the chunk of
    prompts starting at position s of the to-do list uses seed + s, its batch j `fold_in(PRNGKey(seed + s), j)`."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8


def generate_responses(model, tokenizer, prompts: Sequence[EvalPrompt], *, mode: str,
                       ssi_scores: np.ndarray | None, prefix_flags: np.ndarray, decoding: Decoding = Decoding(),
                       prefix: str = CONDITIONAL_PREFIX, template_kwargs: Mapping[str, Any] | None = None,
                       max_prompt_length: int | None = None, eos_token_id: Sequence[int] | None = None,
                       partial_path: str | os.PathLike | None = None, resume: bool = True,
                       chunk_size: int = 256, progress: bool = False) -> list[dict[str, Any]]:
    """Generate one response per prompt with `model` (the aligned model for LASA) and return the records.

    prefix_flags[i] puts `prefix` after the assistant header of prompt i; ssi_scores (or None) are recorded.
    eos_token_id: stop tokens (default `stop_token_ids`, with the generation_config.json of the model's directory).
    partial_path: resume file (module docstring); chunks of
    `chunk_size` prompts are generated and appended to it (process 0 writes) before the next chunk starts;
    resume=False ignores and overwrites an existing one.
    Returns records (module docstring) in the order of `prompts`.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    n = len(prompts)
    flags = np.asarray(prefix_flags, bool)
    if flags.shape != (n,) or (ssi_scores is not None and np.shape(ssi_scores) != (n,)):
        raise ValueError(f"prefix_flags and ssi_scores need shape ({n},), got {flags.shape} and "
                         f"{None if ssi_scores is None else np.shape(ssi_scores)}")
    if mode not in GATED_MODES and flags.any():
        raise ValueError("baseline mode never injects the prefix, but some prefix_flags are set")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    stop_ids = list(eos_token_id) if eos_token_id is not None else stop_token_ids(
        model.config, tokenizer, template_kwargs, model_dir=getattr(model, "source_path", None))
    done = read_partial(partial_path) if partial_path is not None and resume else {}
    if partial_path is not None and not resume and is_writer() and io_utils.exists(partial_path):
        io_utils.remove(partial_path)
    for i, p in enumerate(prompts):
        old = done.get(p.id)
        if old is not None and (old["mode"], old["prompt"], old["prefix_used"]) != (mode, p.prompt, bool(flags[i])):
            raise InputError(f"{partial_path}: record {p.id!r} was generated with mode {old['mode']!r}, prefix_used "
                             f"{old['prefix_used']} or another prompt text; this run has mode {mode!r}, prefix_used "
                             f"{bool(flags[i])}: delete the file or disable resuming")
    todo = [i for i, p in enumerate(prompts) if p.id not in done]
    if done:
        log.info("resuming from %s: %d of %d prompts already generated", partial_path, n - len(todo), n)
    rendered = render_inputs(tokenizer, [prompts[i] for i in todo], flags[todo], prefix=prefix,
                             template_kwargs=template_kwargs, max_prompt_length=max_prompt_length)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        outputs = generate_batched(model, [r.input_ids for r in rendered[start:start + chunk_size]],
                                   batch_size=decoding.batch_size, max_new_tokens=decoding.max_new_tokens,
                                   temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
                                   eos_token_id=stop_ids, seed=decoding.seed + start, progress=progress)
        records = []
        for i, (tokens, finished) in zip(chunk, outputs):
            p = prompts[i]
            reasoning, response = split_reasoning(tokenizer.decode(tokens.tolist(), skip_special_tokens=True))
            records.append({
                "id": p.id, "language": p.language, "prompt": p.prompt, "response": response, "reasoning": reasoning,
                "ssi_score": None if ssi_scores is None else float(ssi_scores[i]),
                "prefix_used": bool(flags[i]), "source": p.source, "expected": p.expected,
                "category": p.category, "mode": mode, "finish_reason": "eos" if finished else "length",
                "num_new_tokens": int(tokens.size)})
        done.update((r["id"], r) for r in records)
        if partial_path is not None:
            _append_records(partial_path, records)
    return [done[p.id] for p in prompts]


def run_inference(model, tokenizer, prompts: Sequence[EvalPrompt], *, mode: str, scorer: PromptScorer | None = None,
                  **kwargs) -> list[dict[str, Any]]:
    """`prefix_decisions` then `generate_responses` (keyword arguments as there) with both models in memory."""
    scores, flags = prefix_decisions(mode, prompts, scorer)
    return generate_responses(model, tokenizer, prompts, mode=mode, ssi_scores=scores, prefix_flags=flags, **kwargs)


# ----------------------------------------------------------------------------------------------- JSONL files
def _append_records(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    if not is_writer() or not records:
        return
    append_durably(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


def read_partial(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records of a resume file by id; a truncated last line (interrupted write) is dropped and cut off."""
    if not io_utils.exists(path):
        return {}
    with io_utils.open_file(path, "rb") as f:
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data) and is_writer():
        io_utils.truncate(path, len(complete))
    records = {}
    for line_number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_number}: not valid JSON ({e})") from None
            record = _checked_record(record, f"{path}:{line_number}")
            records[record["id"]] = record
    return records


def _checked_record(record: Any, where: str) -> dict[str, Any]:
    missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
    if missing:
        raise InputError(f"{where}: generation record lacks field(s) {missing}")
    if not isinstance(record["response"], str) or not isinstance(record["id"], str):
        raise InputError(f"{where}: fields 'id' and 'response' must be strings")
    return record


def write_generations(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Write generation records as JSONL, atomically (process 0 only)."""
    if is_writer():
        write_jsonl(path, records)


def read_generations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a generation JSONL file, validated (every field of `RECORD_FIELDS`, unique ids)."""
    records = [_checked_record(record, f"{path}:{line_number}")
               for line_number, record in iter_jsonl(path, "generation file")]
    if not records:
        raise InputError(f"{path}: no generation records")
    seen: set[str] = set()
    for record in records:
        if record["id"] in seen:
            raise InputError(f"{path}: duplicate id {record['id']!r}")
        seen.add(record["id"])
    return records


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per (source, language): prompts, prefix used, finished at EOS; mean SSI score where recorded."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(f"{r['source']}/{r['language']}", {"prompts": 0, "prefix_used": 0, "eos": 0,
                                                                  "ssi_scores": []})
        g["prompts"] += 1
        g["prefix_used"] += int(r["prefix_used"])
        g["eos"] += int(r["finish_reason"] == "eos")
        if r["ssi_score"] is not None:
            g["ssi_scores"].append(r["ssi_score"])
    for g in groups.values():
        scores = g.pop("ssi_scores")
        g["mean_ssi_score"] = float(np.mean(scores)) if scores else None
    total = len(records)
    return {"prompts": total, "prefix_used": sum(g["prefix_used"] for g in groups.values()),
            "finished_at_eos": sum(g["eos"] for g in groups.values()), "by_source_language": groups,
            "prefix_rate": sum(g["prefix_used"] for g in groups.values()) / total if total else None}


# ----------------------------------------------------------------------------------------------- stage entry point
def eval_prompts_from_config(config) -> list[EvalPrompt]:
    """`load_eval_prompts` with the config's eval_sets, data_root, languages, max_per_language(_sets) and hub
    fields."""
    hub = config.hub
    field_map = json.loads(hub.field_map) if hub.field_map else None
    if field_map is not None and not isinstance(field_map, dict):
        raise InputError(f"--config.hub.field_map must be a JSON object, got {hub.field_map!r}")
    specs = comma_list(config.eval_sets)
    if not specs:
        raise InputError("--config.eval_sets is empty")
    limit_sets = comma_list(config.get("max_per_language_sets", "")) or None
    unknown = sorted(set(limit_sets or ()) - set(specs))
    if unknown:
        raise InputError(f"--config.max_per_language_sets: {unknown} not in --config.eval_sets {specs}")
    return load_eval_prompts(specs, data_root=config.data_root, languages=comma_list(config.languages) or None,
                             max_per_language=int(config.max_per_language),
                             hub=HubSetOptions(name=hub.name or None, split=hub.split,
                                               expected=hub.expected or None, language=hub.language or None,
                                               field_map=field_map), limit_sets=limit_sets)


def _generation_model_paths(config) -> tuple[str, str]:
    """(model that generates, base model the SSI reads or "") of a generate config; prefix_only generates with the
    base model, so base_model_path defaults to model_path there and the two must not differ."""
    if config.mode not in MODES:
        raise InputError(f"--config.mode: expected one of {MODES}, got {config.mode!r}")
    base = config.base_model_path
    if config.mode == "prefix_only":
        base = base or config.model_path
        if config.model_path and os.path.abspath(config.model_path) != os.path.abspath(base):
            raise InputError(f"--config.mode=prefix_only generates with the base model the SSI reads: "
                             f"--config.model_path ({config.model_path!r}) must be empty or equal to "
                             f"--config.base_model_path ({config.base_model_path!r})")
        return base, base
    return config.model_path, base


def run_generation(config, workdir: str, mesh=None) -> str:
    """The generate stage (`python -m lasa_jax.scripts.generate`): eval prompts -> SSI decisions on the base model
    (lasa / prefix_only mode) -> generation (lasa: the aligned model, loaded after the base model is freed;
    prefix_only: the same base model; baseline: model_path) -> `<workdir>/<config.output>` plus
    `<output>.meta.json` (models, fingerprints, decoding, counts, timings). Returns the output path."""
    import gc

    model_path, base_model_path = _generation_model_paths(config)
    output = os.path.join(workdir, config.output)
    prompts = eval_prompts_from_config(config)
    chat_kwargs = config_template_kwargs(config)
    meta: dict[str, Any] = {"mode": config.mode, "model_path": model_path, "eval_sets": config.eval_sets,
                            "template_kwargs": chat_kwargs, "prefix": config.prefix}
    log.info("%d prompts from %s, mode %s", len(prompts), config.eval_sets, config.mode)
    start = time.perf_counter()
    model = None
    if config.mode in GATED_MODES or config.ssi_dir:
        if not config.ssi_dir or not base_model_path:
            raise InputError(f"mode {config.mode!r} (or recording SSI scores) needs --config.ssi_dir and "
                             "--config.base_model_path (the frozen base model the SSI reads)")
        from lasa_jax.ssi import SSIScorer, load_ssi

        base = load_model(config, mesh, path=base_model_path)
        scorer = SSIScorer(base, load_ssi(config.ssi_dir), batch_size=int(config.decoding.batch_size),
                           progress=bool(config.progress))
        meta.update(base_model_path=base_model_path, base_fingerprint=base.fingerprint,
                    ssi_dir=config.ssi_dir, ssi_threshold=scorer.threshold,
                    ssi_threshold_logit=getattr(scorer, "threshold_logit", None),
                    ssi_residual_index=scorer.ssi.config.residual_index)
        scores, flags = prefix_decisions(config.mode, prompts, scorer)
        if config.mode == "prefix_only":
            model = base  # the base model generates too: loaded once
        del base, scorer  # otherwise free the base model before the generating model is loaded
        gc.collect()
    else:
        scores, flags = prefix_decisions(config.mode, prompts)
    meta["ssi_seconds"] = time.perf_counter() - start
    if model is None:
        model = load_model(config, mesh, path=model_path)
    tokenizer = load_tokenizer(config.tokenizer_path or model_path)
    stop_ids = ([int(i) for i in comma_list(config.eos_token_ids)] or
                stop_token_ids(model.config, tokenizer, chat_kwargs, model_dir=getattr(model, "source_path", None)))
    d = config.decoding
    decoding = Decoding(max_new_tokens=int(d.max_new_tokens), temperature=float(d.temperature),
                        top_p=float(d.top_p), top_k=int(d.top_k), seed=int(config.seed),
                        batch_size=int(d.batch_size))
    meta.update(fingerprint=model.fingerprint, decoding=dataclasses.asdict(decoding), eos_token_ids=stop_ids,
                max_prompt_length=int(config.max_prompt_length) or None)
    partial = output + PARTIAL_SUFFIX
    start = time.perf_counter()
    records = generate_responses(model, tokenizer, prompts, mode=config.mode, ssi_scores=scores, prefix_flags=flags,
                                 decoding=decoding, prefix=config.prefix, template_kwargs=chat_kwargs,
                                 max_prompt_length=int(config.max_prompt_length) or None, eos_token_id=stop_ids,
                                 partial_path=partial, resume=bool(config.resume), chunk_size=int(config.chunk_size),
                                 progress=bool(config.progress))
    seconds = time.perf_counter() - start
    new_tokens = sum(r["num_new_tokens"] for r in records)
    meta.update(generation_seconds=seconds, new_tokens=new_tokens, summary=summarize(records))
    write_generations(output, records)
    if is_writer():
        atomic_write_json(output + ".meta.json", meta)
        if io_utils.exists(partial):
            io_utils.remove(partial)
    log.info("wrote %d records to %s (%d new tokens in %.1f s; prefix used on %d)", len(records), output,
             new_tokens, seconds, int(flags.sum()))
    return output
