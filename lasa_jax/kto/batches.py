"""The batch sequence of a KTO run: fixed-shape batches of policy rows + KL rows, in a seeded order, resumable.

Epoch e visits the examples in a permutation seeded by (seed, e) (`epoch_permutation`); each batch pairs every row's
prompt with another row's completion by a derangement that avoids the row's own group and its own prompt
(`kl_partners`), drawn from a Generator seeded by (seed, e, position in the epoch). The sequence is a pure function
of (examples, seed, batch size), so a `DataPosition` stored in a checkpoint reproduces the remaining batches
exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.kto.examples import KTOExample
from lasa_jax.models.chat import RenderedExample, assemble_example


@dataclasses.dataclass(frozen=True)
class KTOBatch:
    """A fixed-shape global batch (B = batch_size rows, S = seq_len positions, right padding).

    input_ids, attention_mask, loss_mask: int32 (B, S), the policy rows (loss_mask as in `completion_logps`).
    kl_input_ids, kl_attention_mask, kl_loss_mask: int32 (B, S), KL row i = prompt part of row i (with row i's
    prefix choice) + completion part of row kl_partner[i].
    is_desirable, valid: bool (B,). Padding rows (valid False) repeat row 0's tokens with zero loss_mask, so no
    row is fully masked. row_index: int64 (B,), index into the rows given to `tokenize_rows` (-1 for padding).
    kl_partner: int32 (B,), batch position of the completion used by KL row i (-1 for padding).
    num_kl_truncated: KL rows whose completion tail had to be cut to fit seq_len (they only estimate z0).
    num_kl_same_group: KL rows that pair a prompt with an answer of its own group or to the same prompt messages
    (0 unless unavoidable).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    kl_input_ids: np.ndarray
    kl_attention_mask: np.ndarray
    kl_loss_mask: np.ndarray
    is_desirable: np.ndarray
    valid: np.ndarray
    row_index: np.ndarray
    kl_partner: np.ndarray
    num_kl_truncated: int
    num_kl_same_group: int

    def device_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a training step consumes."""
        names = ("input_ids", "attention_mask", "loss_mask", "kl_input_ids", "kl_attention_mask", "kl_loss_mask",
                 "is_desirable", "valid")
        return {name: getattr(self, name) for name in names}


def build_kto_batch(examples: Sequence[KTOExample], indices: Sequence[int], *, batch_size: int, seq_len: int,
                    pad_id: int, rng: np.random.Generator) -> KTOBatch:
    """Fixed-shape arrays for the examples at `indices` (2 <= len(indices) <= batch_size; the rest is padding).

    KL partners come from `kl_partners(rng)` (avoiding pairs of one group or one prompt). A KL row is assembled
    with the truncation rule of `lasa_jax.models.chat.assemble_example` (max_length = seq_len); if it still does not
    fit, the partner completion's tail is cut (counted in num_kl_truncated): KL rows are never trained on, so their
    end-of-turn carries no signal.
    """
    n = len(indices)
    if not 2 <= n <= batch_size:
        raise InputError(f"a KTO batch needs between 2 and batch_size={batch_size} rows, got {n}")
    chosen = [examples[int(i)] for i in indices]
    groups, prompt_keys = [e.group_id for e in chosen], [e.prompt_key for e in chosen]
    partner = kl_partners(groups, rng, prompt_keys=prompt_keys)
    policy_rows = []
    kl_rows = []
    num_kl_truncated = 0
    for position, example in enumerate(chosen):
        if len(example.rendered.input_ids) > seq_len:
            raise InputError(f"row {example.row_index} has {len(example.rendered.input_ids)} tokens > seq_len="
                             f"{seq_len}; render with max_length <= seq_len")
        policy_rows.append((example.rendered.input_ids, example.rendered.loss_mask))
        kl_row, truncated = _kl_row(example.rendered, chosen[partner[position]].rendered, seq_len)
        kl_rows.append(kl_row)
        num_kl_truncated += truncated
    policy_rows += [(policy_rows[0][0], np.zeros_like(policy_rows[0][1]))] * (batch_size - n)
    kl_rows += [(kl_rows[0][0], np.zeros_like(kl_rows[0][1]))] * (batch_size - n)
    input_ids, attention_mask, loss_mask = _pad_rows(policy_rows, seq_len, pad_id)
    kl_input_ids, kl_attention_mask, kl_loss_mask = _pad_rows(kl_rows, seq_len, pad_id)
    padding = batch_size - n
    return KTOBatch(
        input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, kl_input_ids=kl_input_ids,
        kl_attention_mask=kl_attention_mask, kl_loss_mask=kl_loss_mask,
        is_desirable=np.array([e.desirable for e in chosen] + [False] * padding, dtype=bool),
        valid=np.array([True] * n + [False] * padding, dtype=bool),
        row_index=np.array([e.row_index for e in chosen] + [-1] * padding, dtype=np.int64),
        kl_partner=np.concatenate([partner, np.full(padding, -1)]).astype(np.int32),
        num_kl_truncated=num_kl_truncated,
        num_kl_same_group=int(kl_clashes(groups, partner, prompt_keys).sum()),
    )


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where iteration stands: `index` rows of epoch `epoch`'s permutation have been consumed. Store it in
    checkpoints (`to_dict`/`from_dict`) to resume with the same remaining batches."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataPosition:
        try:
            return cls(int(d["epoch"]), int(d["index"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"data position must be {{'epoch': int, 'index': int}}, got {d!r}") from None


def batches_per_epoch(num_rows: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches `iterate_kto_batches` yields per epoch (a final partial batch needs >= 2 rows)."""
    full, rest = divmod(num_rows, batch_size)
    return full + int(not drop_last and rest >= 2)


def iterate_kto_batches(examples: Sequence[KTOExample], *, batch_size: int, seq_len: int, pad_id: int, seed: int,
                        start: DataPosition = DataPosition(), num_epochs: int | None = None,
                        drop_last: bool = True) -> Iterator[tuple[KTOBatch, DataPosition]]:
    """Yield (batch, position after it) from `start` on, for epochs start.epoch .. num_epochs - 1 (forever if None).

    Epoch e visits the examples in `epoch_permutation(len(examples), e, seed)` order, batch_size at a time. The KL
    pairing of the batch starting at (e, i) uses a Generator seeded by (seed, e, i), so resuming at any yielded
    position reproduces the remaining batches exactly. drop_last=False pads a final partial batch (valid mask);
    a final single row is always skipped (no KL partner).
    """
    if batch_size < 2:
        raise InputError(f"batch_size must be >= 2 (KL rows need a partner), got {batch_size}")
    num_rows = len(examples)
    if batches_per_epoch(num_rows, batch_size, drop_last) == 0:
        raise InputError(f"{num_rows} examples give no batch of size {batch_size} (drop_last={drop_last})")
    epoch, index = start.epoch, start.index
    if epoch < 0 or not 0 <= index <= num_rows:
        raise InputError(f"data position {start} does not fit {num_rows} examples (need epoch >= 0 and "
                         f"0 <= index <= {num_rows}); was the checkpoint written for other data?")
    while num_epochs is None or epoch < num_epochs:
        order = epoch_permutation(num_rows, epoch, seed)
        while True:
            stop = min(index + batch_size, num_rows)
            if stop - index < (batch_size if drop_last else 2):
                break
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1, epoch, index]))
            batch = build_kto_batch(examples, order[index:stop], batch_size=batch_size, seq_len=seq_len,
                                    pad_id=pad_id, rng=rng)
            index = stop
            yield batch, DataPosition(epoch, index)
        epoch, index = epoch + 1, 0


# ----------------------------------------------------------------------------------------------- order and pairing
def epoch_permutation(num_rows: int, epoch: int, seed: int) -> np.ndarray:
    """The row order of `epoch`: a permutation of range(num_rows), int64, a pure function of (seed, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0, int(epoch)])).permutation(num_rows)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) without fixed points (n >= 2), by rejection sampling.

    A random permutation is a derangement with probability ≈ 1/e, so this takes about e draws on average.
    """
    if n < 2:
        raise InputError(f"a derangement needs n >= 2, got {n}")
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


def kl_partners(group_ids: Sequence[str], rng: np.random.Generator, max_tries: int = 1000,
                prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """partner[i] != i such that rows i and partner[i] share neither group_ids nor prompt_keys (if given) where
    possible: row i's KL row pairs its prompt with row partner[i]'s completion.

    Uniform derangements are drawn until one has no clash (a pair of the same group or the same prompt); if none is
    found in `max_tries` draws (e.g. most rows share one prompt), the draw with the fewest clashing pairs is
    returned (see `kl_clashes`).
    """
    codes = _key_codes(group_ids, prompt_keys)
    best, best_clashes = None, None
    for _ in range(max_tries):
        partner = derangement(len(group_ids), rng)
        clashes = int(_clashes(codes, partner).sum())
        if best is None or clashes < best_clashes:
            best, best_clashes = partner, clashes
        if clashes == 0:
            break
    return best


def kl_clashes(group_ids: Sequence[str], partner: np.ndarray, prompt_keys: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool: row i and its KL partner partner[i] share a group id or (if given) a prompt key."""
    return _clashes(_key_codes(group_ids, prompt_keys), partner)


def _key_codes(*key_lists: Sequence[str] | None) -> list[np.ndarray]:
    """Each given list of N keys as (N,) integer codes (equal keys, equal codes)."""
    return [np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1] for keys in key_lists
            if keys is not None]


def _clashes(codes: Sequence[np.ndarray], partner: np.ndarray) -> np.ndarray:
    """(N,) bool: row i and row partner[i] have equal codes in any of `codes`."""
    return np.logical_or.reduce([c[partner] == c for c in codes])


# ----------------------------------------------------------------------------------------------- arrays
def _kl_row(prompt_source: RenderedExample, completion_source: RenderedExample,
            seq_len: int) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """((input_ids, loss_mask), whether the completion was cut) for prompt of one example + completion of another."""
    joined = assemble_example(prompt_source.prompt, completion_source.completion_ids, max_length=seq_len)
    if joined is not None:
        return (joined.input_ids, joined.loss_mask), False
    prompt = prompt_source.prompt
    prompt = prompt.drop_content_front(prompt.max_droppable)
    completion = completion_source.completion_ids[:seq_len - len(prompt.input_ids)]
    input_ids = np.concatenate([prompt.input_ids, completion]).astype(np.int32)
    loss_mask = np.zeros_like(input_ids)
    loss_mask[len(prompt.input_ids):] = 1
    return (input_ids, loss_mask), True


def _pad_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad (ids, loss_mask) rows to (B, seq_len) int32 input_ids, attention_mask, loss_mask."""
    input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), seq_len), dtype=np.int32)
    loss_mask = np.zeros((len(rows), seq_len), dtype=np.int32)
    for b, (ids, mask) in enumerate(rows):
        input_ids[b, :len(ids)] = ids
        attention_mask[b, :len(ids)] = 1
        loss_mask[b, :len(ids)] = mask
    return input_ids, attention_mask, loss_mask
