"""Answers to evaluation prompts as generation records: chat rendering (with or without the conditional prefix), the
resumable generation loop, and the generations.jsonl record format that the evaluation reads.

`generate_responses(model, tokenizer, prompts, mode=..., ssi_scores=..., prefix_flags=...)` renders every prompt
through `lasa_jax.models.chat.render_prompt` (the rendering KTO training used): the chat template with the
generation prompt, plus the conditional prefix right after the assistant header where the prompt's flag is set.
It generates with `lasa_jax.decoding.generate.generate_batched` and returns one record per prompt; the response is
the continuation only (the prefix is not part of it). Who decides the flags is the caller's business (the generate
stage's SSI gate, `lasa_jax.generate.gate`; KTO's benign answers set none). Chat template variables (e.g. Qwen3
`enable_thinking`) are applied identically in every mode.

Modes, recorded in every record: "lasa" (prefix where the SSI flags the prompt, the aligned model generates),
"prefix_only" (the same gate, the base model generates) and "baseline" (never a prefix; an SSI score may be
recorded). GATED_MODES are those in which the SSI decides the prefix.

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.decoding.continuous import decode_params, prompt_slots
from lasa_jax.decoding.generate import generate_batched
from lasa_jax.decoding.stop_tokens import stop_token_ids
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import append_durably, iter_jsonl, write_jsonl
from lasa_jax.models.chat import CONDITIONAL_PREFIX, RenderedPrompt, render_prompt

log = logging.getLogger(__name__)

MODES = ("lasa", "baseline", "prefix_only")
GATED_MODES = ("lasa", "prefix_only")  # modes in which the SSI decides the prefix
RECORD_FIELDS = ("id", "language", "prompt", "response", "reasoning", "ssi_score", "prefix_used", "source",
                 "expected", "category", "mode", "finish_reason", "num_new_tokens")
PARTIAL_SUFFIX = ".partial"


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
    """Decoding settings of a run (see `lasa_jax.decoding.generate`); temperature 0 = greedy. Sampling keys: the chunk
    of prompts starting at position s of the to-do list uses seed + s, its batch j `fold_in(PRNGKey(seed + s), j)`."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8


def _resumed_records(partial_path, resume: bool, prompts: Sequence[EvalPrompt], flags: np.ndarray,
                     mode: str) -> dict[str, dict[str, Any]]:
    """The records of the resume file by id (after checking each was generated as this run would), or {} (and the
    file removed, by process 0) when not resuming."""
    if partial_path is None:
        return {}
    if not resume:
        if is_writer() and storage.exists(partial_path):
            storage.remove(partial_path)
        return {}
    done = read_partial(partial_path)
    for i, p in enumerate(prompts):
        old = done.get(p.id)
        if old is not None and (old["mode"], old["prompt"], old["prefix_used"]) != (mode, p.prompt, bool(flags[i])):
            raise InputError(f"{partial_path}: record {p.id!r} was generated with mode {old['mode']!r}, prefix_used "
                             f"{old['prefix_used']} or another prompt text; this run has mode {mode!r}, prefix_used "
                             f"{bool(flags[i])}: delete the file or disable resuming")
    return done


def generate_responses(model, tokenizer, prompts: Sequence[EvalPrompt], *, mode: str,
                       ssi_scores: np.ndarray | None, prefix_flags: np.ndarray, decoding: Decoding = Decoding(),
                       prefix: str = CONDITIONAL_PREFIX, template_kwargs: Mapping[str, Any] | None = None,
                       max_prompt_length: int | None = None, eos_token_id: Sequence[int] | None = None,
                       partial_path: str | os.PathLike | None = None, resume: bool = True,
                       chunk_size: int = 256, progress: bool = False) -> list[dict[str, Any]]:
    """Generate one response per prompt with `model` (the aligned model for LASA) and return the records.

    prefix_flags[i] puts `prefix` after the assistant header of prompt i; ssi_scores (or None) are recorded.
    eos_token_id: stop tokens (default `stop_token_ids`, with the generation_config.json of the model's directory).
    partial_path: resume file (module docstring); chunks of `chunk_size` prompts are generated and appended to it
    (process 0 writes) before the next chunk starts; resume=False ignores and overwrites an existing one.
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
    done = _resumed_records(partial_path, resume, prompts, flags, mode)
    todo = [i for i, p in enumerate(prompts) if p.id not in done]
    if done:
        log.info("resuming from %s: %d of %d prompts already generated", partial_path, n - len(todo), n)
    rendered = render_inputs(tokenizer, [prompts[i] for i in todo], flags[todo], prefix=prefix,
                             template_kwargs=template_kwargs, max_prompt_length=max_prompt_length)
    # one weight layout and one prompt length for every chunk: the chunks share the compiled programs
    layout = decode_params(model) if rendered else None
    prompt_length = prompt_slots([r.input_ids for r in rendered]) if rendered else None
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        outputs = generate_batched(model, [r.input_ids for r in rendered[start:start + chunk_size]],
                                   batch_size=decoding.batch_size, max_new_tokens=decoding.max_new_tokens,
                                   temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
                                   eos_token_id=stop_ids, seed=decoding.seed + start, progress=progress,
                                   decode_layout=layout, prompt_length=prompt_length)
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


# ----------------------------------------------------------------------------------------------- JSONL files
def _append_records(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    if not is_writer() or not records:
        return
    append_durably(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


def read_partial(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records of a resume file by id; a truncated last line (interrupted write) is dropped and cut off."""
    if not storage.exists(path):
        return {}
    with storage.open_file(path, "rb") as f:
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data) and is_writer():
        storage.truncate(path, len(complete))
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
