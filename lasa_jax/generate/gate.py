"""The generate stage's gate: which evaluation prompts get the conditional prefix, decided per mode by the SSI.

LASA at inference:
  1. the SSI scores every prompt on the frozen BASE model at the residual index recorded in its artifact
     (`lasa_jax.ssi.SSIScorer`; any object with `score(list[str]) -> (probs (N,), flags (N,) bool)` works here);
  2. prompts it flags harmful get the conditional prefix right after the assistant header, the others the plain
     chat prompt (`lasa_jax.decoding.answers.generate_responses` renders both);
  3. the ALIGNED (KTO) model generates.
"prefix_only" (an ablation: the gate and the prefix without KTO) decides as LASA, but the BASE model generates.
"baseline" never injects the prefix; a scorer, if given, only has its scores recorded.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.decoding.answers import GATED_MODES, MODES, generate_responses
from lasa_jax.infra.errors import InputError, config_field


class PromptScorer(Protocol):
    """What the gate needs of an SSI: prompt strings -> (harmful probability (N,) float, flag (N,) bool)."""

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ...


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
            raise InputError(f"mode {mode!r} needs an SSI scorer ({config_field('ssi_dir')} and "
                             f"{config_field('base_model_path')})")
        return None, np.zeros(n, bool)
    probs, flags = scorer.score([p.prompt for p in prompts])
    probs, flags = np.asarray(probs, np.float32), np.asarray(flags)
    if probs.shape != (n,) or flags.shape != (n,) or flags.dtype != bool:
        raise ValueError(f"scorer.score must return (probs (N,), flags (N,) bool) for N={n} prompts, got shapes "
                         f"{probs.shape}, {flags.shape} and flag dtype {flags.dtype}")
    return probs, (flags if mode in GATED_MODES else np.zeros(n, bool))


def run_inference(model, tokenizer, prompts: Sequence[EvalPrompt], *, mode: str, scorer: PromptScorer | None = None,
                  **kwargs) -> list[dict[str, Any]]:
    """`prefix_decisions` then `generate_responses` (keyword arguments as there) with the scorer's model and the
    generating model both in memory (the stage frees the base model first where they differ)."""
    scores, flags = prefix_decisions(mode, prompts, scorer)
    return generate_responses(model, tokenizer, prompts, mode=mode, ssi_scores=scores, prefix_flags=flags, **kwargs)
