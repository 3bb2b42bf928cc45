"""Per-device memory plan of the KTO step and of generation on a preset, checked before the first stage runs.

`kto_plan` / `generation_plan` add up, in bytes per device (one chip), what the step holds at its peak:
  KTO: parameters, AdamW moments (mu, nu: optax keeps them in the parameter dtype), the micro-batch gradient,
    the float32 gradient accumulator (`kto_step.train_step` always scans micro-batches into a float32 sum), the
    online reference (none when precomputed; "auto" is planned as precomputed, `resolve_reference_mode`), the
    FSDP-gathered weights of one block (and the next, prefetched) with the block's full float32 gradient before its
    reduce-scatter, the embedding / LM head as XLA materialises them (below), the logits chunk (`sequence_logps`)
    and the activations under the remat policy. Sequence length: `data.max_length`, the longest length bucket
    (`train.length_buckets`): the worst case, compiled as soon as one batch holds a row that long.
    Embedding / LM head (measured on CPU, 8 devices, by the change of XLA's buffers with the vocabulary size):
    the lookup runs on the sharded table (`blocks.embed_tokens`: no gather), but its gradient is a scatter-add
    into the whole (V, D) table, all-reduced; the LM head is gathered whole for the logits with its whole float32
    gradient. Untied, the two are not live together (the head's comes at the loss, the table's at the end of the
    backward pass): max(head gathered + its gradient, table gradient), ~2 tables of float32; tied, one gradient
    buffer carries both uses through the backward pass: their sum, ~3 tables.
  Generation (`lasa_jax.decoding.continuous`): the model's weights as loaded (FSDP, stage dtype) stay alive while
    `decode_params` re-lays them for decoding: replicated when the whole model is at most
    `continuous.REPLICATE_MAX_BYTES`, else tensor-parallel (the rules table with `embed` unsharded; on a mesh with
    tensor=1, as every preset's, that is replicated too). Splitting the stacked block weights per layer holds the
    stacked and the split copies at once (a transient before the cache exists). Then the per-layer KV cache, L x
    (B, S, K, hd) keys and values in the compute dtype (B = batch_size rounded up to the batch shards, rows and K
    sharded as `continuous._CACHE_AXES`; S = P + max_new_tokens, P = the planned prompt length rounded up to
    `continuous.PROMPT_ROUND`), and the larger working set of the prefill (`_prefill_rows` builds a group's own
    (k <= B, P) cache rows, `_insert` writes them at dynamic slots: planned as ~cache x batch shards, the whole-batch
    gather measured on CPU with 8 devices for the earlier one-slot prefill; the test checks the total against
    both programs) and `_decode_block` (one layer's cache, scores, logits).
Every parameter is counted as actually sharded: `lasa_jax.sharding.logical_to_spec` on an abstract mesh of the
preset's size, so a mesh axis that does not divide a dimension (or has size 1, e.g. `vocab -> tensor`) leaves it
replicated. Activation terms are estimates of XLA's buffers (stated per term); `tests/train/test_memory_plan.py` checks
the KTO and generation totals against `jax.jit(...).lower(...).compile().memory_analysis()` on a small model and 8
CPU devices.

A plan fits when its total is at most `HBM_USABLE_SHARE` of the preset's HBM per device. `check_pipeline` raises one
`InputError` naming the preset, the numbers and a setting or preset that fits (`suggest_kto` / `suggest_generation`);
the pipeline config's `memory_plan` field ("check" | "warn" | "off") turns the refusal into a warning or skips it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.config import ModelConfig
from lasa_jax.presets import CPU_PRESET, GIB, TPU_PRESETS, TPUPreset

# share of a chip's HBM the plan may fill (the rest: XLA's runtime reservations, fragmentation, collectives buffers)
HBM_USABLE_SHARE = 0.9
REMAT_POLICIES = ("none", "minimal", "full")
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def itemsize(dtype: str) -> int:
    if dtype not in _ITEMSIZE:
        raise InputError(f"dtype: expected one of {sorted(_ITEMSIZE)}, got {dtype!r}")
    return _ITEMSIZE[dtype]


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of one stage on one preset: `parts` (name -> bytes), `total`, `budget` (usable bytes)."""

    stage: str
    preset: str
    hbm_bytes: float
    parts: dict[str, float]
    settings: dict[str, Any]

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def budget(self) -> float:
        return HBM_USABLE_SHARE * self.hbm_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in self.parts.items() if value >= 0.05 * GIB)
        return (f"{self.stage} on preset {self.preset}: {self.total / GIB:.1f} GiB per device of "
                f"{self.budget / GIB:.1f} usable ({HBM_USABLE_SHARE:.0%} of {self.hbm_bytes / GIB:.0f} GiB HBM) "
                f"[{parts}]")


def preset_named(name: str) -> TPUPreset:
    if name == "cpu":
        return CPU_PRESET
    if name not in TPU_PRESETS:
        raise InputError(f"{config_field('preset')}: expected cpu or one of {sorted(TPU_PRESETS)}, got {name!r}")
    return TPU_PRESETS[name]


def mesh_sizes(mesh: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """{"data", "fsdp", "tensor"} sizes with the one -1 resolved to the remaining of `num_devices` devices."""
    from lasa_jax.sharding import MESH_AXES

    sizes = {a: int(mesh.get(a, 1)) for a in MESH_AXES}
    known = math.prod(v for v in sizes.values() if v != -1)
    resolved = {a: (num_devices // max(known, 1) if v == -1 else v) for a, v in sizes.items()}
    # a mesh without -1 names its own device count (e.g. 8 simulated CPU devices under the 1-device cpu preset)
    if min(resolved.values()) < 1 or (-1 in sizes.values() and math.prod(resolved.values()) != num_devices):
        raise InputError(f"{config_field('mesh')}: {dict(mesh)} does not split the preset's {num_devices} devices")
    return resolved


def sharded_params(config: ModelConfig, sizes: Mapping[str, int], decode: bool = False
                   ) -> list[tuple[str, int, int, bool]]:
    """(name, elements, shards, is_block) of every parameter under `LOGICAL_AXIS_RULES` on a mesh of `sizes`
    (decode=True: the tensor-parallel decode layout of `continuous.decode_params`, `embed` unsharded)."""
    return _sharded_params(config, tuple(sorted(sizes.items())), decode)


@functools.lru_cache(maxsize=64)
def _sharded_params(config: ModelConfig, sizes_items: tuple, decode: bool) -> list[tuple[str, int, int, bool]]:
    sizes = dict(sizes_items)
    import numpy as np
    from flax import nnx
    from jax.sharding import AbstractMesh

    from lasa_jax.models.decoder import abstract_decoder
    from lasa_jax.sharding import LOGICAL_AXIS_RULES, MESH_AXES, logical_to_spec

    mesh = AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)
    rules = {**LOGICAL_AXIS_RULES, "embed": None} if decode else LOGICAL_AXIS_RULES
    out = []
    for path, var in nnx.to_flat_state(nnx.state(abstract_decoder(config), nnx.Param)):
        shape = var.get_value().shape
        spec = logical_to_spec(var.get_metadata()["axes"], shape, mesh, rules)
        shards = 1
        for entry in spec:
            for axis in ((entry,) if isinstance(entry, str) else (entry or ())):
                shards *= sizes[axis]
        out.append((".".join(str(p) for p in path), int(np.prod(shape)), shards, path[0] == "layers"))
    return out


def _rows_per_device(rows: int, sizes: Mapping[str, int]) -> int:
    return max(1, -(-rows // mesh_batch_shards(sizes)))


def mesh_batch_shards(sizes: Mapping[str, int]) -> int:
    """`lasa_jax.sharding.batch_shards` of a mesh of `sizes`."""
    from lasa_jax.sharding import LOGICAL_AXIS_RULES

    return math.prod(sizes[a] for a in (LOGICAL_AXIS_RULES["batch"] or ()))


def _block_activations(config: ModelConfig, rows: int, length: int, keys: int, cb: int) -> float:
    """Bytes of every intermediate of one block's forward for `rows` x `length` queries over `keys` keys: the
    projections, MLP and norms in the compute dtype (cb bytes) and float32 attention scores and probabilities."""
    c = config
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per_token = (4 * c.hidden_size + 2 * qkv + 3 * c.intermediate_size) * cb
    scores = c.num_heads * keys * 4 * 2
    return float(rows * length * (per_token + scores))


def _weights(params, itemsize_bytes: int) -> tuple[float, float, float, float]:
    """(sharded bytes of all parameters, one block's full bytes, embedding full elements, LM head full elements)."""
    sharded = sum(n / s for _, n, s, _ in params) * itemsize_bytes
    layer_elems = sum(n for _, n, _, block in params if block)
    embed = next((n for name, n, _, _ in params if name == "embed"), 0)
    head = next((n for name, n, _, _ in params if name == "lm_head"), 0)
    return sharded, float(layer_elems), float(embed), float(head)


# A precomputed reference keeps one float per policy row and per KL row of every step in host memory (Python
# dicts, ~100 bytes an entry): beyond this many KL rows (batch_size x steps) "auto" keeps the reference online.
MAX_PRECOMPUTED_KL_ROWS = 20_000_000


def resolve_reference_mode(mode: str, *, total_steps: int, batch_size: int) -> str:
    """The KTO reference mode a run uses for `reference.mode` = mode ("auto" | "online" | "precomputed").

    "auto" is "precomputed" wherever precomputation is possible: it never needs more device memory than online
    (the reference runs alone before the policy is created, then is freed; the step carries no reference weights)
    and computes the same numbers up to float reassociation, with fewer reference forwards (each policy row once).
    It stays "online" only when the host table would exceed `MAX_PRECOMPUTED_KL_ROWS` entries.
    """
    if mode != "auto":
        return mode
    return "online" if total_steps * batch_size > MAX_PRECOMPUTED_KL_ROWS else "precomputed"


def kto_plan(config: ModelConfig, preset_name: str, *, mesh: Mapping[str, int] | None = None, batch_size: int,
             grad_accum_steps: int, max_length: int, param_dtype: str = "float32", compute_dtype: str = "bfloat16",
             reference_mode: str = "online", reference_dtype: str = "bfloat16", remat_policy: str = "full",
             logits_chunk_size: int = 128) -> MemoryPlan:
    """Per-device bytes of one KTO update (module docstring); batch_size = global rows per update."""
    preset = preset_named(preset_name)
    sizes = mesh_sizes(mesh if mesh is not None else preset.mesh, preset.num_devices)
    if remat_policy not in REMAT_POLICIES:
        raise InputError(f"{config_field('kto.remat_policy')}: expected one of {REMAT_POLICIES}, got {remat_policy!r}")
    pb, cb, rb = itemsize(param_dtype), itemsize(compute_dtype or param_dtype), itemsize(reference_dtype or param_dtype)
    params = sharded_params(config, sizes)
    sharded_elems = sum(n / s for _, n, s, _ in params)
    _, layer_elems, embed, head = _weights(params, pb)
    L, D, T = config.num_layers, config.hidden_size, max_length
    rows = _rows_per_device(batch_size // max(grad_accum_steps, 1), sizes)
    per_layer = layer_elems / L
    # activations kept for the backward pass of the policy rows: the block inputs (full remat), plus the weight
    # matmul outputs (minimal), or every intermediate (none); plus one block's recomputed working set and its
    # cotangents during the backward pass
    c = config
    saved_dots = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + 2 * D + 2 * c.intermediate_size
    saved_per_token = {"full": D * cb, "minimal": (D + saved_dots) * cb}.get(remat_policy)
    block = _block_activations(config, rows, T, T, cb)
    saved = L * (rows * T * saved_per_token if saved_per_token is not None else block)
    chunk = min(logits_chunk_size + 1 if 0 < logits_chunk_size < T else T, T)
    head_elems = head or embed
    parts = {
        "parameters": sharded_elems * pb,
        "optimizer state (AdamW mu, nu)": 2 * sharded_elems * pb,
        "gradient": sharded_elems * pb,
        "float32 gradient accumulator": sharded_elems * 4,
        # "auto" is planned as precomputed (`resolve_reference_mode`; online only for > 20M KL rows per run)
        "reference": sharded_elems * rb if reference_mode == "online" else 0.0,
        "gathered block weights + block gradient": per_layer * (2 * cb + 4),
        # module docstring: the lookup gathers nothing; the table's gradient (scatter-add) and the gathered head
        # with its gradient are live together only when tied
        "embedding/LM head (head gathered + gradients)": (head_elems * (cb + 4) + embed * pb if not head
                                                          else max(head_elems * (cb + 4), embed * pb)),
        "logits chunk": rows * chunk * c.vocab_size * 4 * 3,
        f"activations (remat {remat_policy})": saved + 2 * block,
    }
    settings = dict(batch_size=batch_size, grad_accum_steps=grad_accum_steps, max_length=max_length,
                    param_dtype=param_dtype, compute_dtype=compute_dtype, reference_mode=reference_mode,
                    reference_dtype=reference_dtype, remat_policy=remat_policy, logits_chunk_size=logits_chunk_size,
                    rows_per_device=rows, mesh=sizes)
    return MemoryPlan("KTO", preset_name, preset.hbm_bytes_per_device, parts, settings)


def generation_plan(config: ModelConfig, preset_name: str, *, mesh: Mapping[str, int] | None = None,
                    batch_size: int, prompt_length: int, max_new_tokens: int, dtype: str = "bfloat16",
                    compute_dtype: str = "", replicate_max_bytes: int | None = None) -> MemoryPlan:
    """Per-device bytes of continuous-batching generation (module docstring); batch_size = decode slots (global),
    prompt_length = the longest prompt planned for; replicate_max_bytes as `continuous.decode_params`."""
    from lasa_jax.decoding import continuous

    preset = preset_named(preset_name)
    sizes = mesh_sizes(mesh if mesh is not None else preset.mesh, preset.num_devices)
    pb, cb = itemsize(dtype), itemsize(compute_dtype or dtype)
    c, shards = config, mesh_batch_shards(sizes)
    loaded = sharded_params(config, sizes)
    limit = continuous.REPLICATE_MAX_BYTES if replicate_max_bytes is None else replicate_max_bytes
    replicated = sum(n for _, n, _, _ in loaded) * pb <= limit
    layout = [(name, n, 1, block) for name, n, _, block in loaded] if replicated else sharded_params(config, sizes,
                                                                                                  decode=True)
    decode, full = sum(n / s for _, n, s, _ in layout) * pb, sum(n for _, n, _, _ in layout) * pb
    stacked = sum(n / s for _, n, s, block in layout if block) * pb  # split_layers: stacked + per-layer copies
    rows = -(-batch_size // shards)  # slots per device (B rounded up to the batch shards)
    slots = -(-prompt_length // continuous.PROMPT_ROUND) * continuous.PROMPT_ROUND + max_new_tokens
    tensor = sizes["tensor"]
    kv = c.num_kv_heads / tensor if c.num_kv_heads % tensor == 0 else c.num_kv_heads
    heads = c.num_heads / tensor if c.num_heads % tensor == 0 else c.num_heads
    cache = 2.0 * c.num_layers * rows * slots * kv * c.head_dim * cb
    chunk = continuous.PREFILL_CHUNK
    prefill = cache * shards + _block_activations(config, 1, chunk, slots, cb) + c.vocab_size * 4 * 2
    step = cache / c.num_layers + rows * (heads * slots * 4 * 2 + c.vocab_size * 4 * 2)
    working = max(prefill, step)
    parts = {
        "weights as loaded (FSDP)": sum(n / s for _, n, s, _ in loaded) * pb,
        f"decode weights ({'replicated' if decode >= full else 'tensor-parallel'})": decode,
        "KV cache": cache,
        "working set (prefill: whole-batch cache gathered)" if prefill >= step else "working set (decode step)":
            working,
        "re-layout peak beyond decoding (stacked + per-layer block weights)": max(0.0, stacked - cache - working),
    }
    settings = dict(batch_size=batch_size, prompt_length=prompt_length, max_new_tokens=max_new_tokens, dtype=dtype,
                    compute_dtype=compute_dtype, replicate_max_bytes=replicate_max_bytes, cache_slots=slots,
                    rows_per_device=rows, mesh=sizes)
    return MemoryPlan("generation", preset_name, preset.hbm_bytes_per_device, parts, settings)


