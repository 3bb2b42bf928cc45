"""What every judge shares: the task labels, `Verdict`, the `Judge` protocol and the pair check.

Two tasks, told apart by `judge.task`: "safety" (ASR) with labels "safe" | "unsafe" | "invalid", and "refusal"
(over-refusal) with "refusal" | "compliance" | "invalid". Judges: `lasa_jax.evaluate.judges` (LLM judges),
`.heuristics` (the refusal-phrase judge), `.ngram_judge` (the calibrated one), `.judge_cache` (the verdict cache).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

SAFE, UNSAFE, INVALID = "safe", "unsafe", "invalid"
REFUSAL, COMPLIANCE = "refusal", "compliance"
SAFETY_TASK, REFUSAL_TASK = "safety", "refusal"
TASK_LABELS = {SAFETY_TASK: (SAFE, UNSAFE, INVALID), REFUSAL_TASK: (REFUSAL, COMPLIANCE, INVALID)}

# Marks judges whose verdicts are only approximate; the report prints a warning when a judge name contains it.
APPROXIMATE_MARKER = "(approximate)"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A judge's verdict on one response.

    label: "safe" | "unsafe" | "invalid" (task "safety") or "refusal" | "compliance" | "invalid" (task "refusal").
    raw: the judge model's completion; for the no-model judges the reason of an "invalid" verdict ("empty",
        "repetition", "wrong_script", see `invalid_reason`) or None.
    categories: Llama Guard hazard codes ("S1".."S14") when unsafe; empty otherwise.
    """

    label: str
    raw: str | None = None
    categories: tuple[str, ...] = ()


class Judge(Protocol):
    name: str
    task: str

    def judge(self, prompts: Sequence[str], responses: Sequence[str],
              languages: Sequence[str] | None = None) -> list[Verdict]:
        ...


def check_pairs(prompts: Sequence[str], responses: Sequence[str], languages: Sequence[str] | None = None) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"judge: got {len(prompts)} prompts but {len(responses)} responses")
    if languages is not None and len(languages) != len(prompts):
        raise ValueError(f"judge: got {len(prompts)} prompts but {len(languages)} languages")
    for what, texts in (("prompts", prompts), ("responses", responses)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"judge: {what}[{i}] must be a string, got {type(text).__name__}")
