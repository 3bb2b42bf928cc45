"""Building a judge from its kind (the values of `judge.safety` / `judge.refusal`): the no-model judges, the
calibrated n-gram judge, and the LLM judges, whose models load once per model and generate with lasa_jax.

Kinds (`build_judge`): "auto" -> "calibrated" when the WildGuard-labelled responses exist, else "heuristic"
(`resolve_judge_kind`); "calibrated" (safety only): the n-gram judge trained on the even rows of the labelled
responses (`ngram_judge.cached_ngram_judge`); "heuristic": the approximate refusal-phrase judge; "llama_guard"
(safety only): Llama Guard 3 through its own chat template; "rubric": any chat model asked the MultiJail safety
rubric (safety) or the XSTest-style refusal rubric (refusal). The LLM judges' `GenerateFn` (`model_generate_fn`)
is lasa_jax's own generator: greedy, batched in length buckets, on the mesh.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.decoding.generate import generate_batched
from lasa_jax.decoding.stop_tokens import stop_token_ids
from lasa_jax.evaluate.calibration import LABELLED_SUBDIR, has_labelled_data
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.evaluate.judges import GenerateFn, LlamaGuard3Judge, RefusalRubricJudge, RubricJudge
from lasa_jax.evaluate.ngram_judge import cached_ngram_judge
from lasa_jax.evaluate.verdicts import REFUSAL_TASK, SAFETY_TASK, Judge
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.loading import ModelSettings, load_model, load_tokenizer

log = logging.getLogger(__name__)

JUDGE_KINDS = ("auto", "calibrated", "heuristic", "llama_guard", "rubric")
REFUSAL_JUDGE_KINDS = ("heuristic", "rubric", "none")
MODEL_JUDGE_KINDS = ("llama_guard", "rubric")  # the kinds that load a judge model


def model_generate_fn(model, tokenizer, *, batch_size: int = 8, max_new_tokens: int = 32,
                      eos_token_id: Sequence[int] | None = None, progress: bool = False) -> GenerateFn:
    """A judge `GenerateFn` backed by a lasa_jax model: rendered token-id prompts -> greedy completions.

    Prompts are generated in length buckets of `batch_size` rows (`generate_batched`); each completion stops at
    the first stop token (default: `decoding.stop_tokens.stop_token_ids`) and is decoded with special tokens skipped.
    """
    stop_ids = list(eos_token_id) if eos_token_id is not None else stop_token_ids(
        model.config, tokenizer, model_dir=getattr(model, "source_path", None))

    def generate_fn(prompt_token_ids: list[list[int]]) -> list[str]:
        outputs = generate_batched(model, prompt_token_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   eos_token_id=stop_ids, progress=progress)
        return [tokenizer.decode(tokens.tolist(), skip_special_tokens=True) for tokens, _ in outputs]

    return generate_fn


class JudgeModels:
    """Loads each judge model (and its tokenizer) once, onto `mesh`, with its `ModelSettings`' dtypes."""

    def __init__(self, mesh=None):
        self.mesh = mesh
        self._loaded: dict[ModelSettings, tuple[Any, Any]] = {}

    def get(self, settings: ModelSettings) -> tuple[Any, Any]:
        if not settings.path:
            raise InputError(f"an LLM judge needs {config_field('judge.model_path')} (a local Hugging Face model "
                             "directory)")
        if settings not in self._loaded:
            self._loaded[settings] = (load_model(settings, self.mesh), load_tokenizer(settings.path))
        return self._loaded[settings]


def resolve_judge_kind(kind: str, task: str, labelled: str) -> str:
    """"auto" (the default safety judge) -> "calibrated" when the labelled data exists, else "heuristic" (with a
    warning); the refusal task has no calibrated judge, so "auto" is "heuristic" there. Other kinds unchanged."""
    if kind != "auto":
        return kind
    if task == SAFETY_TASK and has_labelled_data(labelled):
        return "calibrated"
    if task == SAFETY_TASK:
        log.warning("no WildGuard-labelled responses at %r (%s/%s): the safety judge falls back to the refusal-phrase "
                    "heuristic", labelled, config_field("data_root"), LABELLED_SUBDIR)
    return "heuristic"


def build_judge(kind: str, task: str, *, models: JudgeModels | None = None, model: ModelSettings | None = None,
                batch_size: int = 8, max_new_tokens: int = 32, template_kwargs: Mapping[str, Any] | None = None,
                progress: bool = False, labelled: str = "") -> Judge:
    """A judge of `kind` (module docstring) for `task` ("safety" or "refusal").

    LLM kinds load `model` through `models` and generate `max_new_tokens` greedily in batches of `batch_size`,
    rendering with `template_kwargs`; `labelled`: the WildGuard-labelled response folder ("auto", "calibrated").
    """
    if task not in (SAFETY_TASK, REFUSAL_TASK):
        raise InputError(f"task must be {SAFETY_TASK!r} or {REFUSAL_TASK!r}, got {task!r}")
    kind = resolve_judge_kind(kind, task, labelled)
    if kind == "heuristic":
        return RefusalHeuristicJudge(task=task)
    if kind not in JUDGE_KINDS:
        raise InputError(f"judge kind must be one of {JUDGE_KINDS}, got {kind!r}")
    if kind in ("llama_guard", "calibrated") and task != SAFETY_TASK:
        what = "Llama Guard judges" if kind == "llama_guard" else "the calibrated n-gram judge judges"
        raise InputError(f"{what} safety only; use 'rubric' or 'heuristic' for the refusal judge")
    if kind == "calibrated":
        if not has_labelled_data(labelled):
            raise InputError(f"judge 'calibrated' needs the WildGuard-labelled responses: {labelled!r} has no "
                             f"<model>/<language>/harmful_<mode>_evaluations.no_tokens.json files (set "
                             f"{config_field('data_root')} to the shared data folder, or use judge 'heuristic')")
        return cached_ngram_judge(labelled)[0]
    if models is None or model is None:
        raise InputError(f"judge kind {kind!r} needs a judge model: models= (a JudgeModels loader) and model= (its "
                         "ModelSettings)")
    loaded, tokenizer = models.get(model)
    generate_fn = model_generate_fn(loaded, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    progress=progress)
    model_id = f"{model.path}@{loaded.fingerprint}" if loaded.fingerprint else model.path
    if kind == "llama_guard":
        cls = LlamaGuard3Judge
    else:
        cls = RubricJudge if task == SAFETY_TASK else RefusalRubricJudge
    return cls(generate_fn, tokenizer, model_id=model_id, chat_template_kwargs=dict(template_kwargs or {}))
