"""Token-level chat sequences, built by one code path for KTO training and for inference.

LASA injects a fixed conditional prefix at the start of the assistant turn of prompts flagged unsafe, in KTO
training and at inference. The authors' code tokenised the prefix alone in training but as part of the template text
at inference, cut EOS tokens on truncation and appended a second EOS for Qwen. Here every sequence is a
concatenation of token ids, identical in training and inference:

    prompt part      = template ids (chat template, generation prompt, ends with the assistant header)
                       + prefix ids (the prefix tokenised alone, no special tokens; empty when no prefix)
    completion part  = completion ids (completion text, stripped, tokenised alone, no special tokens)
                       + end-of-turn ids (derived from the chat template, see `end_of_turn_ids`)

`render_prompt` returns the prompt part (what inference feeds to the model), `render_example` the whole training
sequence; the former is an exact prefix of the latter for the same prompt and prefix. The prefix is followed
directly by the completion, no separator (as in the reference).

Special tokens: the template text is tokenised with `add_special_tokens=False`, so a BOS emitted by the template
(Llama-3 `<|begin_of_text|>`) appears exactly once; if the tokenizer adds a BOS by default but the template emits
none, one BOS is prepended. Qwen tokenizers have no BOS and get none.

End of turn: what the template writes right after an assistant message's content, up to and including the first
special (added, `special=True`) token: Llama-3 `<|eot_id|>`, Qwen `<|im_end|>`. The newline Qwen's template writes
after `<|im_end|>` is not part of the completion (generation stops at `<|im_end|>`, so it is never scored).

Truncation rule (`assemble_example`, and `render_prompt` with `max_prompt_length`). Let P = len(prompt part),
C = len(completion part). First the whole completion, end-of-turn included, is kept: the prompt budget is
min(max_prompt_length, max_length - C) (max_prompt_length counts the prefix: it bounds everything before the
completion). If P exceeds the budget, tokens are dropped from the front of the content of the last user message
(its oldest tokens), keeping the BOS, the system block, earlier turns, the assistant header and the prefix intact,
and keeping at least one content token. Only tokens lying entirely inside the user content (by character offsets)
are ever dropped. If that is not enough: without `truncate_completion` the example cannot fit and `None` is
returned (the caller drops and counts the row); with it, the prompt is cut (as above, as far as it can be) to at most
min(max_prompt_length, max_length // 2) tokens and the completion keeps its first max_length - P tokens (TRL's
keep-start truncation of the completion) and gets NO end-of-turn token: the answer did not end there.

A completion that its generator cut (`complete=False`, e.g. it hit max_new_tokens) gets no end-of-turn token
either, whether or not it is cut again here (`RenderedExample.ends_turn`).

Qwen3 thinking: pass the same `template_kwargs` in training and at inference (e.g. {"enable_thinking": False}, whose
generation prompt ends with an empty think block, so the prefix follows it). With thinking on, the generation
prompt ends at the assistant header and the training sequence is header + prefix + answer, without the empty think
block that Qwen3's template writes before a final assistant message (the reference's completion had one after the
prefix).

Cost: per prompt, one template render and one encode, plus a sentinel render to locate the user content. Values
that depend only on the tokenizer, its chat template and `template_kwargs` (end-of-turn ids, BOS behaviour, prefix
ids, sentinel renders of a conversation history) are cached per tokenizer object and recomputed when its
vocabulary size or chat template changes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.models.chat_template import (
    SENTINEL,
    apply_template,
    cached_encode,
    encode_plain,
    kwargs_key,
    special_ids,
    template_ids,
    token_span,
    tokenizer_memo,
)

CONDITIONAL_PREFIX = (
    "Harmful query detected. I should refuse this request and provide a safe response in the user's language.")

# Stand-in for message content when locating things in rendered templates; contains no whitespace, so that
# templates that `trim` content leave it unchanged.

Prompt = str | Sequence[Mapping[str, str]]


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """A prompt part: chat template (ending with the assistant header) then the optional prefix.

    input_ids: int32 (P,). The prefix occupies input_ids[prefix_start:prefix_end] and ends the sequence
    (prefix_end == P; prefix_start == prefix_end when there is no prefix). input_ids[content_start:content_end] are
    the droppable tokens of the last user message's content (empty span when none). num_dropped: content tokens
    already removed by truncation.
    """

    input_ids: np.ndarray
    prefix_start: int
    prefix_end: int
    content_start: int
    content_end: int
    num_dropped: int = 0

    def drop_content_front(self, num_tokens: int) -> RenderedPrompt:
        """Remove the `num_tokens` oldest tokens of the user content (caller checks `max_droppable`)."""
        if num_tokens <= 0:
            return self
        if num_tokens > self.max_droppable:
            raise ValueError(f"cannot drop {num_tokens} user-content tokens; at most {self.max_droppable} droppable")
        ids = np.concatenate([self.input_ids[:self.content_start],
                              self.input_ids[self.content_start + num_tokens:]]).astype(np.int32)
        return RenderedPrompt(ids, self.prefix_start - num_tokens, self.prefix_end - num_tokens, self.content_start,
                              self.content_end - num_tokens, self.num_dropped + num_tokens)

    @property
    def max_droppable(self) -> int:
        """How many user-content tokens truncation may still drop (one content token always stays)."""
        return max(self.content_end - self.content_start - 1, 0)


@dataclasses.dataclass(frozen=True)
class RenderedExample:
    """A training sequence: prompt part then completion part (completion tokens and end-of-turn).

    input_ids, loss_mask: int32 (T,). loss_mask[t] = 1 iff token t belongs to the completion part (completion
    tokens and the end-of-turn token), 0 on template and prefix. The completion starts at `prefix_end`.
    ends_turn: whether the sequence ends with the end-of-turn token(s). num_completion_cut: completion tokens cut off
    its tail to fit max_length (then ends_turn is False).
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    prefix_start: int
    prefix_end: int
    content_start: int
    content_end: int
    num_dropped: int = 0
    ends_turn: bool = True
    num_completion_cut: int = 0

    @property
    def prompt(self) -> RenderedPrompt:
        """The prompt part (template + prefix) as a `RenderedPrompt`."""
        return RenderedPrompt(self.input_ids[:self.prefix_end], self.prefix_start, self.prefix_end,
                              self.content_start, self.content_end, self.num_dropped)

    @property
    def completion_ids(self) -> np.ndarray:
        """The completion part: int32 (C,), completion tokens then the end-of-turn token(s)."""
        return self.input_ids[self.prefix_end:]


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A user string, or a list of {role, content} messages ending with a user message, as a message list."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise InputError(f"prompt must be a string or a non-empty list of chat messages, got {type(prompt).__name__}")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InputError(f"prompt message {i} must be a mapping with string 'role' and 'content', got {message!r}")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise InputError(f"the last prompt message must have role 'user', got {messages[-1]['role']!r}")
    return messages


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: the string itself, or the content of the last (user) message."""
    return chat_messages(prompt)[-1]["content"]


def end_of_turn_ids(tokenizer, template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """Token ids that close an assistant turn, read off the chat template (see module docstring).

    Falls back to `[tokenizer.eos_token_id]` when the template writes no special token after assistant content.
    Cached per (tokenizer, template_kwargs).
    """
    memo = tokenizer_memo(tokenizer)
    key = ("end_of_turn", kwargs_key(template_kwargs))
    if key not in memo:
        memo[key] = tuple(_end_of_turn_ids(tokenizer, template_kwargs))
    return list(memo[key])


def _end_of_turn_ids(tokenizer, template_kwargs: Mapping[str, Any] | None) -> list[int]:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}]
    text = apply_template(tokenizer, messages, add_generation_prompt=False, template_kwargs=template_kwargs)
    position = text.rfind(SENTINEL)
    if position < 0:
        raise InputError("the chat template does not reproduce assistant content verbatim; cannot find the "
                         "end-of-turn token")
    suffix_ids = tokenizer(text[position + len(SENTINEL):], add_special_tokens=False)["input_ids"]
    special = special_ids(tokenizer)
    for i, token in enumerate(suffix_ids):
        if token in special:
            return [int(t) for t in suffix_ids[:i + 1]]
    if tokenizer.eos_token_id is None:
        raise InputError("the chat template writes no special token after assistant content and the tokenizer "
                         "has no eos_token; cannot determine the end-of-turn token")
    return [int(tokenizer.eos_token_id)]


def render_prompt(tokenizer, prompt: Prompt, *, prefix: str | None = None, use_chat_template: bool = True,
                  template_kwargs: Mapping[str, Any] | None = None,
                  max_prompt_length: int | None = None) -> RenderedPrompt:
    """Token ids that start the assistant turn: chat template with generation prompt, then the prefix tokens.

    Args:
      tokenizer: a Hugging Face (fast) tokenizer with a chat template.
      prompt: the user string, or a list of chat messages ending with a user message.
      prefix: text to start the assistant turn with (e.g. `CONDITIONAL_PREFIX`), tokenised alone; None for none.
      use_chat_template: False: `prompt` (a string) is encoded as raw text with the tokenizer's default special
        tokens, then the prefix is appended.
      template_kwargs: extra chat-template variables (e.g. {"enable_thinking": False} for Qwen3).
      max_prompt_length: if given, drop the oldest user-content tokens until the result (prefix included) has at
        most this many tokens; ValueError if that needs more than the droppable tokens.
    """
    if use_chat_template:
        ids, content_start, content_end = template_ids(tokenizer, chat_messages(prompt), template_kwargs)
    else:
        if not isinstance(prompt, str):
            raise InputError("use_chat_template=False needs the prompt as a string, got a message list")
        encoding = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        content_start, content_end = token_span(encoding["offset_mapping"], 0, len(prompt))
    prefix_ids = cached_encode(tokenizer, prefix) if prefix else []
    rendered = RenderedPrompt(np.asarray(ids + prefix_ids, dtype=np.int32), len(ids), len(ids) + len(prefix_ids),
                              content_start, content_end)
    if max_prompt_length is not None:
        excess = len(rendered.input_ids) - max_prompt_length
        if excess > rendered.max_droppable:
            raise InputError(f"the prompt has {len(rendered.input_ids)} tokens and at most {rendered.max_droppable} "
                             f"user-content tokens can be dropped: it cannot be cut to max_prompt_length="
                             f"{max_prompt_length}")
        rendered = rendered.drop_content_front(excess)
    return rendered


def assemble_example(prompt: RenderedPrompt, completion_ids: Sequence[int] | np.ndarray, *, max_length: int,
                     max_prompt_length: int | None = None, end_of_turn: Sequence[int] = (),
                     truncate_completion: bool = False) -> RenderedExample | None:
    """Join a prompt part and a completion part (completion_ids + end_of_turn) under the truncation rule.

    completion_ids: the completion tokens (callers that join a finished completion part pass it whole, with
    end_of_turn empty). Returns None when the row cannot fit: the completion part plus the shortest allowed prompt
    exceeds `max_length` (or the prompt cannot be cut to `max_prompt_length`) and truncate_completion is False, or
    even the cut prompt leaves no room for one completion token.
    """
    completion_ids = np.asarray(completion_ids, dtype=np.int32)
    end_of_turn = np.asarray(end_of_turn, dtype=np.int32)
    if completion_ids.ndim != 1 or completion_ids.size == 0:
        raise ValueError(f"completion_ids must be a non-empty 1-D sequence, got shape {completion_ids.shape}")
    whole = np.concatenate([completion_ids, end_of_turn])
    budget = max_length - whole.size
    if max_prompt_length is not None:
        budget = min(budget, max_prompt_length)
    excess = len(prompt.input_ids) - budget
    if excess <= prompt.max_droppable:
        return _joined(prompt.drop_content_front(excess), whole, ends_turn=end_of_turn.size > 0, num_cut=0)
    shortest_prompt = len(prompt.input_ids) - prompt.max_droppable
    if not truncate_completion or (max_prompt_length is not None and shortest_prompt > max_prompt_length):
        return None  # (the second: inference could not render this prompt either)
    budget = max_length // 2 if max_prompt_length is None else min(max_length // 2, max_prompt_length)
    prompt = prompt.drop_content_front(min(max(len(prompt.input_ids) - budget, 0), prompt.max_droppable))
    room = max_length - len(prompt.input_ids)
    if room < 1:
        return None
    if whole.size <= room:  # the cut prompt leaves room for the whole completion part
        return _joined(prompt, whole, ends_turn=end_of_turn.size > 0, num_cut=0)
    return _joined(prompt, completion_ids[:room], ends_turn=False, num_cut=max(completion_ids.size - room, 0))


def _joined(prompt: RenderedPrompt, completion: np.ndarray, *, ends_turn: bool, num_cut: int) -> RenderedExample:
    input_ids = np.concatenate([prompt.input_ids, completion]).astype(np.int32)
    loss_mask = np.zeros(input_ids.shape, dtype=np.int32)
    loss_mask[prompt.prefix_end:] = 1
    return RenderedExample(input_ids, loss_mask, prompt.prefix_start, prompt.prefix_end, prompt.content_start,
                           prompt.content_end, prompt.num_dropped, ends_turn, num_cut)


def render_example(tokenizer, prompt: Prompt, completion: str, *, prefix: str | None = None, max_length: int = 512,
                   max_prompt_length: int | None = None, template_kwargs: Mapping[str, Any] | None = None,
                   complete: bool = True, truncate_completion: bool = False) -> RenderedExample | None:
    """Training sequence: `render_prompt(prompt, prefix)` ids + completion ids + end-of-turn ids exactly once.

    The completion text is stripped of surrounding whitespace (chat templates such as Llama-3's trim message
    content) and must not be empty. complete=False (the completion was cut by its generator): no end-of-turn.
    truncate_completion: cut an over-long completion's tail (no end-of-turn) instead of returning None. Returns
    None when the row cannot fit (module docstring: truncation rule).
    """
    if not isinstance(completion, str) or not completion.strip():
        raise InputError(f"completion must be a non-empty string, got {completion!r}")
    rendered_prompt = render_prompt(tokenizer, prompt, prefix=prefix, template_kwargs=template_kwargs)
    end_of_turn = end_of_turn_ids(tokenizer, template_kwargs) if complete else []
    return assemble_example(rendered_prompt, encode_plain(tokenizer, completion.strip()), max_length=max_length,
                            max_prompt_length=max_prompt_length, end_of_turn=end_of_turn,
                            truncate_completion=truncate_completion)
