"""Stage 1 (Locate): silhouette scores and semantic-bottleneck layer selection (METHOD.md §3, §9.10-11).

Conventions
-----------
- Features are pooled last-token vectors, one per prompt: `x` is (N, D) for one layer, or (L+1, N, D) for all
  residual indices 0..L (0 = token embeddings, k in 1..L-1 = after block k, L = last block AFTER the final norm).
- Candidates for k* (`select_bottleneck_layer`): 1..L by default, the paper's `select_best_layer` (embeddings out,
  the post-norm entry L in); `include_embeddings` adds 0, `include_final=False` drops L.
- Verdict (`no_bottleneck_reasons`): no semantic bottleneck is found when S_sem - S_lang < 0 at every candidate,
  or k* is at an edge of the candidate range, or k* wins in < 50% of the bootstrap resamples (MIN_PICK_SHARE);
  bottleneck.json records `bottleneck_found`, `reason` (every reason that applies, "; "-joined; null when found)
  and `reason_codes` (NO_BOTTLENECK_REASONS). k* is still the argmax, so later stages can run, but it is then
  only the least language-clustered candidate, not a bottleneck.
- Labels are arbitrary hashable values (ints or strings); they are factorised on the host with `np.unique`, so the
  cluster order is the sorted order of the unique labels.
- Silhouette (Rousseeuw 1987, as `sklearn.metrics.silhouette_score`): for point i in cluster A,
  a_i = mean distance to the other members of A, b_i = min over clusters B != A of the mean distance to B,
  s_i = (b_i - a_i) / max(a_i, b_i); s_i = 0 for a point alone in its cluster (and where 0/0); the score is the mean.
- "cosine" distance is 1 - cos(x, y) for any vectors (it is scale invariant, so vectors are L2-normalised inside).
  "euclidean" is the L2 distance of the (optionally L2-normalised) vectors.

How it is computed (no N x N matrix for cosine)
-----------------------------------------------
Everything goes through cluster distance sums S[c, i] = sum_{j in c} d(x_i, x_j) (self pair included).
- cosine, unit rows u: S[c, i] = |c| - u_i . G_c with G_c = sum_{j in c} u_j (METHOD.md Appendix): one segment sum
  (k, D) and one (k, D) x (D, N) product, O(N D k). The self pair contributes 1 - u_i . u_i (~0), removed from a_i.
  Memory is O(N D + k N): a few (k, N) float32 buffers, so it stays small while k << N (N = 20,000, D = 4,096:
  1.7 GB peak with k = 2,000 groups, 5.1 GB with k = 10,000; measured).
- euclidean: row blocks of `block_size` points; each block's (N, block) distance matrix is segment-summed into
  (k, block), so memory is O(N * block_size) (N = 20,000, D = 4,096: x 0.33 GB + a 82 MB block at 1,024).
Then a_i = (S[A_i, i] - d(x_i, x_i)) / (|A_i| - 1) and b_i = min_{c != A_i, |c| > 0} S[c, i] / |c|; empty label
slots (|c| = 0) are ignored and singleton clusters give 0.

Group bootstrap (`select_bottleneck_layer`, `layer_silhouettes`)
------------------------------------------------------------------
A resample draws the G query groups with replacement; multiplicity m_g = times group g was drawn (row 0 of every
multiplicity matrix is all ones: the point estimate, equal to `silhouette_score`). Point i carries weight m_{g_i}.
Two resampling schemes:

bootstrap="points" (default): per-point silhouettes s_i are computed once per layer on the full data; a resample's
  score is the weighted mean sum_i m_{g_i} s_i / sum_i m_{g_i} (a cluster bootstrap of the mean over queries).
  The resample distribution is centred on the point estimate; it holds the geometry fixed (clusters are not
  re-formed). Cost per layer: two cluster-sum passes (k = L and k = G); memory 4 x (R + G) x N bytes.
bootstrap="expanded": the exact silhouettes of the "expanded" data set in which each point of group g appears m_g
  times and all copies of a group keep its id (they merge into one cluster), from per-layer sums without copies:
  - Per layer, once: pair sums T[g, l, i] = sum_{j in group g, language l} d(x_i, x_j) and pair counts C[g, l]
    (one cluster-sum pass with the (group, language) pair as the cluster).
  - Groups in resample m: S_m[g, i] = m_g * sum_l T[g, l, i], |g|_m = m_g * |g|. The mean distance to another group,
    S_m[h, i] / |h|_m, does not depend on m_h (only on whether m_h > 0).
  - Languages in resample m: S_m[l, i] = sum_g m_g T[g, l, i], |l|_m = sum_g m_g C[g, l]: one (R, G) x (G, L*N)
    product for all R resamples.
  - A copy of point i has m_{g_i} - 1 duplicates at distance d(x_i, x_i) = 0. copies_are_neighbours=True keeps
    them in its own clusters (the literal expanded data set; equals sklearn on materialised copies); False (default)
    removes all m_{g_i} copies from its own-cluster sum and count, so duplicates never shrink a_i.
  Caveat, measured: this distribution is NOT centred on the point estimate. With ~37% of the groups absent from a
  resample, b_i (a min over the groups present) grows, so S_sem is biased upwards (copies_are_neighbours=True adds
  a second upward bias through a_i). At 315 groups x 10 languages (synthetic, d = 512) the 95% interval of
  S_sem - S_lang lay strictly above the point estimate at every layer; "points" does not have this bias.
  Memory per layer: 4 bytes x N x (P + G*L) for the pair sums (P = distinct (group, language) pairs <= N),
  4 x R x L x N for the language sums and 4 x batch_size x G x N in the semantic pass; at N = 3,150,
  G*L = P = 3,150, R = 201, L = 10, batch_size = 16: about 170 MB (at N = 14,234, G = 1,703: about 3.4 GB).
  Cost per layer: one (P, D) x (D, N) product (~0.5 s on 2 CPU cores at N = 3,150, D = 4,096) plus O(R N (G + L)).
Both schemes use the same resamples for every layer, so pick_share measures how stable the argmax is.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lasa_jax import io_utils
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_path, atomic_write_json, atomic_write_text

METRICS = ("cosine", "euclidean")
BOOTSTRAP_MODES = ("points", "expanded")
BOTTLENECK_FILE = "bottleneck.json"
LAYER_FIELDS = ("layer", "s_lang", "s_sem", "diff", "diff_lo", "diff_hi", "pick_share")  # required per layer
PROBE_FIELD = "probe_auroc"  # per layer, optional (null: no probe); files written before it lack it
CSV_FIELDS = LAYER_FIELDS + (PROBE_FIELD,)
MIN_PICK_SHARE = 0.5
NO_BOTTLENECK_REASONS = ("diff_negative_everywhere", "argmax_at_range_edge", "unstable_argmax")
_TINY = 1e-12
_HOST_CHUNK_BYTES = 16 << 20


# ------------------------------------------------------------------------------------------------ jitted core


def _unit_rows(x: jax.Array) -> jax.Array:
    """(N, D) -> (N, D) rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _TINY)


def _scaled_segment_sum(x: jax.Array, scales: jax.Array, codes: jax.Array, num_segments: int,
                        chunk: int = 256) -> jax.Array:
    """sum_{j: codes_j = c} scales_j * x_j -> (num_segments, D), in row chunks so no scaled (N, D) copy is made."""
    n = x.shape[0]
    num_chunks = n // chunk

    def chunk_sum(rows, chunk_scales, chunk_codes):
        return jax.ops.segment_sum(rows * chunk_scales[:, None], chunk_codes, num_segments)

    def body(index, total):
        take = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=index * chunk, slice_size=chunk)
        return total + chunk_sum(take(x), take(scales), take(codes))

    total = jnp.zeros((num_segments, x.shape[1]), x.dtype)
    if num_chunks:  # static: the loop body is traced even for zero trips
        total = jax.lax.fori_loop(0, num_chunks, body, total)
    tail = num_chunks * chunk
    return total + chunk_sum(x[tail:], scales[tail:], codes[tail:])


def _concat_rows(chunks: tuple[jax.Array, ...]) -> jax.Array:
    return chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks, axis=0)


def _cluster_distance_sums(chunks: tuple[jax.Array, ...], codes: jax.Array, num_clusters: int, metric: str,
                           block_size: int) -> tuple[jax.Array, jax.Array]:
    """Cluster distance sums S (k, N), S[c, i] = sum_{j: codes_j = c} d(x_i, x_j) (self pair included), and the
    self distance d(x_i, x_i) (N,) that S contains. chunks: row chunks of x (N, D) float32 (see `_device_chunks`);
    codes: (N,) int32 in [0, num_clusters)."""
    if metric == "cosine":
        return _cosine_cluster_distance_sums(chunks, codes, num_clusters)
    return _euclidean_cluster_distance_sums(_concat_rows(chunks), codes, num_clusters, block_size)


def _cosine_cluster_distance_sums(chunks, codes, num_clusters):
    # Scale by 1/|x_i| on the (k, D) and (k, N) sides instead of writing normalised (N, D) rows: on CPU a fresh
    # (N, D) buffer costs more than the whole segment sum.
    offsets = np.cumsum([0] + [chunk.shape[0] for chunk in chunks])
    unit_sums = jnp.zeros((num_clusters, chunks[0].shape[1]), jnp.float32)  # G (k, D)
    inv_norms, self_dists = [], []
    for chunk, start, stop in zip(chunks, offsets[:-1], offsets[1:]):
        sq_norms = jnp.einsum("nd,nd->n", chunk, chunk)
        inv_norm = jax.lax.rsqrt(jnp.maximum(sq_norms, _TINY * _TINY))  # all-zero rows: x * inv_norm = 0
        unit_sums = unit_sums + _scaled_segment_sum(chunk, inv_norm, codes[start:stop], num_clusters)
        inv_norms.append(inv_norm)
        self_dists.append(1.0 - sq_norms * inv_norm * inv_norm)
    # (k, D) x (D, rows): this orientation of the product runs fastest on CPU (bench/silhouette.py).
    similarity_sums = jnp.concatenate([(unit_sums @ chunk.T) * inv_norm[None, :]
                                       for chunk, inv_norm in zip(chunks, inv_norms)], axis=1)
    cluster_sizes = jax.ops.segment_sum(jnp.ones(codes.shape, jnp.float32), codes, num_clusters)
    return cluster_sizes[:, None] - similarity_sums, jnp.concatenate(self_dists)


def _euclidean_cluster_distance_sums(x, codes, num_clusters, block_size):
    n = x.shape[0]
    centred = x - jnp.mean(x, axis=0)  # distances are translation invariant; centring reduces cancellation
    sq_norms = jnp.sum(centred * centred, axis=-1)
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n
    blocks = jnp.pad(centred, ((0, pad), (0, 0))).reshape(num_blocks, block_size, -1)
    block_sq = jnp.pad(sq_norms, (0, pad)).reshape(num_blocks, block_size)
    starts = jnp.arange(num_blocks) * block_size

    def block_sums(args):
        block, sq_block, start = args
        sq_dist = sq_norms[:, None] + sq_block[None, :] - 2.0 * (centred @ block.T)  # (N, block)
        dist = jnp.sqrt(jnp.maximum(sq_dist, 0.0))
        is_self = jnp.arange(n)[:, None] == (start + jnp.arange(block_size))[None, :]
        dist = jnp.where(is_self, 0.0, dist)  # exact zero on the diagonal, as sklearn
        return jax.ops.segment_sum(dist, codes, num_clusters)  # (k, block)

    sums = jax.lax.map(block_sums, (blocks, block_sq, starts))  # (num_blocks, k, block)
    sums = jnp.moveaxis(sums, 0, 1).reshape(num_clusters, -1)[:, :n]
    return sums, jnp.zeros((n,), jnp.float32)


def _silhouette_values(dist_sums: jax.Array, sizes: jax.Array, codes: jax.Array, self_dist: jax.Array,
                       self_copies: jax.Array | float = 1.0) -> jax.Array:
    """Per-point silhouettes (N,) from cluster distance sums.

    dist_sums (k, N): (weighted) summed distance of point i to all members of cluster c, self pairs included;
    sizes (k,): (weighted) cluster sizes (0 = empty slot, ignored); codes (N,): own cluster; self_dist (N,):
    d(x_i, x_i); self_copies (N,) or scalar: copies of point i that are not its neighbours, removed from its own
    cluster (1 = just itself, as sklearn).
    """
    n = codes.shape[0]
    own_count = sizes[codes] - self_copies
    own_sum = dist_sums[codes, jnp.arange(n)] - self_copies * self_dist
    a = own_sum / jnp.where(own_count > 0, own_count, 1.0)
    is_own = jnp.arange(sizes.shape[0])[:, None] == codes[None, :]
    mean_dist = dist_sums / jnp.where(sizes > 0, sizes, 1.0)[:, None]
    b = jnp.min(jnp.where(is_own | (sizes[:, None] <= 0), jnp.inf, mean_dist), axis=0)
    s = (b - a) / jnp.maximum(a, b)
    return jnp.where((own_count > 0) & jnp.isfinite(s), s, 0.0)


def _as_float32(chunks) -> tuple[jax.Array, ...]:
    return tuple(chunk.astype(jnp.float32) for chunk in chunks)


@functools.partial(jax.jit, static_argnames=("num_clusters", "metric", "block_size"))
def _silhouette_samples_jit(chunks, codes, *, num_clusters, metric, block_size):
    """Per-point silhouettes (N,) of the row chunks of x under codes (N,)."""
    sums, self_dist = _cluster_distance_sums(_as_float32(chunks), codes, num_clusters, metric, block_size)
    sizes = jax.ops.segment_sum(jnp.ones(codes.shape, jnp.float32), codes, num_clusters)
    return _silhouette_values(sums, sizes, codes, self_dist)


@functools.partial(jax.jit, static_argnames=("num_clusters", "metric", "block_size"))
def _layerwise_scores_jit(x_layers, codes, *, num_clusters, metric, block_size):
    """Silhouette score of every layer of a device array x_layers (n_layers, N, D), one jitted lax.map."""
    def layer_score(x):
        return jnp.mean(_silhouette_samples_jit((x,), codes, num_clusters=num_clusters, metric=metric,
                                                block_size=block_size))

    return jax.lax.map(layer_score, x_layers)


def _prepared_chunks(chunks, metric: str, normalize: bool) -> tuple[jax.Array, ...]:
    """float32 chunks; L2-normalised rows for euclidean with `normalize` (cosine is scale invariant already)."""
    chunks = _as_float32(chunks)
    if normalize and metric == "euclidean":
        chunks = (_unit_rows(_concat_rows(chunks)),)
    return chunks


def _weighted_means(values: jax.Array, point_weights: jax.Array) -> jax.Array:
    """(R, N) or (N,) values, (R, N) weights -> (R,) weighted means."""
    return jnp.sum(point_weights * values, axis=-1) / jnp.sum(point_weights, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_languages", "num_groups", "metric", "normalize", "block_size"))
def _point_bootstrap_jit(chunks, language_codes, group_codes, multiplicities, *, num_languages, num_groups, metric,
                         normalize, block_size):
    """bootstrap="points": weighted means of the full-data per-point silhouettes. Returns (s_lang (R,), s_sem (R,))."""
    chunks = _prepared_chunks(chunks, metric, normalize)
    s_lang = _silhouette_samples_jit(chunks, language_codes, num_clusters=num_languages, metric=metric,
                                     block_size=block_size)
    s_sem = _silhouette_samples_jit(chunks, group_codes, num_clusters=num_groups, metric=metric,
                                    block_size=block_size)
    point_weights = multiplicities.astype(jnp.float32)[:, group_codes]  # (R, N)
    return _weighted_means(s_lang, point_weights), _weighted_means(s_sem, point_weights)


@functools.partial(jax.jit, static_argnames=("num_languages", "num_groups", "num_pairs", "metric", "normalize",
                                             "copies_are_neighbours", "block_size", "batch_size"))
def _expanded_bootstrap_jit(chunks, language_codes, group_codes, pair_codes, pair_slots, multiplicities, *,
                            num_languages, num_groups, num_pairs, metric, normalize, copies_are_neighbours,
                            block_size, batch_size):
    """bootstrap="expanded": language and semantic silhouettes of the expanded data set of each multiplicity row.

    chunks: row chunks of x (N, D); language_codes, group_codes, pair_codes (N,) int32; pair_slots (P,) =
    group * L + language of each compact pair; multiplicities (R, G). Returns (s_lang (R,), s_sem (R,)).
    """
    chunks = _prepared_chunks(chunks, metric, normalize)
    n = language_codes.shape[0]
    compact_sums, self_dist = _cluster_distance_sums(chunks, pair_codes, num_pairs, metric, block_size)  # (P, N)
    compact_counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), pair_codes, num_pairs)
    dense_slots = num_groups * num_languages
    pair_sums = jnp.zeros((dense_slots, n), jnp.float32).at[pair_slots].set(compact_sums)
    pair_sums = pair_sums.reshape(num_groups, num_languages, n)  # T[g, l, i]
    pair_counts = jnp.zeros((dense_slots,), jnp.float32).at[pair_slots].set(compact_counts)
    pair_counts = pair_counts.reshape(num_groups, num_languages)  # C[g, l]

    weights = multiplicities.astype(jnp.float32)  # (R, G)
    point_weights = weights[:, group_codes]  # (R, N)
    self_copies = jnp.ones_like(point_weights) if copies_are_neighbours else point_weights  # (R, N)

    language_sums = jnp.einsum("rg,gln->rln", weights, pair_sums)  # (R, L, N)
    language_sizes = weights @ pair_counts  # (R, L)
    s_lang = jax.vmap(_silhouette_values, in_axes=(0, 0, None, None, 0))(
        language_sums, language_sizes, language_codes, self_dist, self_copies)

    group_sums = jnp.sum(pair_sums, axis=1)  # (G, N)
    group_sizes = jnp.sum(pair_counts, axis=1)  # (G,)

    def semantic_values(args):  # (G,), (N,) -> (N,)
        group_weights, copies = args
        return _silhouette_values(group_sums * group_weights[:, None], group_sizes * group_weights, group_codes,
                                  self_dist, copies)

    s_sem = jax.lax.map(semantic_values, (weights, self_copies), batch_size=batch_size)
    return _weighted_means(s_lang, point_weights), _weighted_means(s_sem, point_weights)


# --------------------------------------------------------------------------------------------- host wrappers


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _factorize(labels: Sequence[Any], num_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Host factorisation: (codes (N,) int32 into the sorted unique labels, unique labels)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_points:
        raise ValueError(f"{what} must be a 1-D sequence of {num_points} labels (one per point), "
                         f"got shape {labels.shape}")
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int32), uniques


def _check_num_labels(num_labels: int, num_points: int, what: str) -> None:
    if not 2 <= num_labels <= num_points - 1:
        raise ValueError(f"silhouette needs 2 <= number of distinct {what} <= number of points - 1; "
                         f"got {num_labels} distinct {what} for {num_points} points")


def _check_points(x: Any, ndim: int, what: str) -> np.ndarray | jax.Array:
    """x as a JAX array (unchanged) or a NumPy array (np.asarray: no copy for NumPy input) of `ndim` dimensions."""
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{what} must be a {ndim}-D array, got shape {x.shape}")
    return x


def _device_chunks(x: Any) -> tuple[jax.Array, ...]:
    """x (N, D) as device row chunks for the jitted core. A JAX array passes through as one chunk. A host array
    goes over in chunks of <= 16 MiB: on CPU one fresh N x D buffer costs more in page faults than the whole
    cosine segment sum (bench/silhouette.py), while chunk-sized buffers are recycled by the allocator.
    may_alias: an aligned host chunk is used in place; the alias lives only during the call."""
    if isinstance(x, jax.Array):
        return (x,)
    rows = max(1, _HOST_CHUNK_BYTES // max(1, x.shape[1] * x.dtype.itemsize))
    return tuple(jax.device_put(x[start:start + rows], may_alias=True) for start in range(0, x.shape[0], rows))


def silhouette_samples(x: Any, labels: Sequence[Any], metric: str = "cosine", *,
                       block_size: int = 1024) -> np.ndarray:
    """Per-point silhouettes (N,) of x (N, D) under `labels` (N,), as `sklearn.metrics.silhouette_samples`."""
    _check_metric(metric)
    x = _check_points(x, 2, "x")
    codes, uniques = _factorize(labels, x.shape[0], "labels")
    _check_num_labels(len(uniques), x.shape[0], "labels")
    values = _silhouette_samples_jit(_device_chunks(x), jnp.asarray(codes), num_clusters=len(uniques),
                                     metric=metric, block_size=min(block_size, x.shape[0]))
    return np.asarray(values)


def silhouette_score(x: Any, labels: Sequence[Any], metric: str = "cosine", *, block_size: int = 1024) -> float:
    """Mean silhouette of x (N, D) under `labels` (N,): equals `sklearn.metrics.silhouette_score(x, labels,
    metric=metric)` (float32 arithmetic) for metric "cosine" or "euclidean"."""
    return float(np.mean(silhouette_samples(x, labels, metric, block_size=block_size)))


def layerwise_silhouette_scores(x_layers: Any, labels: Sequence[Any], metric: str = "cosine", *,
                                block_size: int = 1024) -> np.ndarray:
    """Silhouette score of every layer: x_layers (n_layers, N, D) -> (n_layers,). A JAX array is scored in one
    jitted lax.map over layers; a host array one layer at a time (only one layer on the device at once)."""
    _check_metric(metric)
    x_layers = _check_points(x_layers, 3, "x_layers")
    num_points = x_layers.shape[1]
    codes, uniques = _factorize(labels, num_points, "labels")
    _check_num_labels(len(uniques), num_points, "labels")
    static = dict(num_clusters=len(uniques), metric=metric, block_size=min(block_size, num_points))
    codes = jnp.asarray(codes)
    if isinstance(x_layers, jax.Array):
        return np.asarray(_layerwise_scores_jit(x_layers, codes, **static))
    return np.array([float(jnp.mean(_silhouette_samples_jit(_device_chunks(x), codes, **static)))
                     for x in x_layers])


def group_bootstrap_multiplicities(num_groups: int, num_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(num_bootstrap, num_groups) int32: how often each group is drawn when `num_groups` groups are resampled
    with replacement, one row per resample (`np.random.default_rng(seed)`)."""
    draws = np.random.default_rng(seed).integers(0, num_groups, size=(num_bootstrap, num_groups))
    counts = np.zeros((num_bootstrap, num_groups), np.int32)
    np.add.at(counts, (np.arange(num_bootstrap)[:, None], draws), 1)
    return counts


@dataclasses.dataclass(frozen=True)
class _PointLabels:
    """Host factorisation of per-point language and group labels, shared by all layers."""

    language_codes: np.ndarray  # (N,) into `languages`
    group_codes: np.ndarray  # (N,) into `groups`
    pair_codes: np.ndarray  # (N,) compact (group, language) pair index
    pair_slots: np.ndarray  # (P,) group * num_languages + language of each compact pair
    languages: np.ndarray  # sorted unique languages
    groups: np.ndarray  # sorted unique group ids

    @classmethod
    def build(cls, languages: Sequence[Any], group_ids: Sequence[Any], num_points: int) -> _PointLabels:
        language_codes, unique_languages = _factorize(languages, num_points, "languages")
        group_codes, unique_groups = _factorize(group_ids, num_points, "group_ids")
        _check_num_labels(len(unique_languages), num_points, "languages")
        _check_num_labels(len(unique_groups), num_points, "group ids")
        dense = group_codes.astype(np.int64) * len(unique_languages) + language_codes
        pair_slots, pair_codes = np.unique(dense, return_inverse=True)
        return cls(language_codes, group_codes, pair_codes.astype(np.int32), pair_slots.astype(np.int32),
                   unique_languages, unique_groups)

    def bootstrap_silhouettes(self, x: Any, multiplicities: np.ndarray, *, bootstrap: str, metric: str,
                              normalize: bool, copies_are_neighbours: bool, block_size: int,
                              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(s_lang (R,), s_sem (R,)) of one layer x (N, D) for multiplicity rows (R, G)."""
        common = (_device_chunks(x), jnp.asarray(self.language_codes), jnp.asarray(self.group_codes))
        static = dict(num_languages=len(self.languages), num_groups=len(self.groups), metric=metric,
                      normalize=normalize, block_size=min(block_size, x.shape[0]))
        if bootstrap == "points":
            s_lang, s_sem = _point_bootstrap_jit(*common, jnp.asarray(multiplicities), **static)
        else:
            s_lang, s_sem = _expanded_bootstrap_jit(
                *common, jnp.asarray(self.pair_codes), jnp.asarray(self.pair_slots), jnp.asarray(multiplicities),
                num_pairs=len(self.pair_slots), copies_are_neighbours=copies_are_neighbours, batch_size=batch_size,
                **static)
        return np.asarray(s_lang), np.asarray(s_sem)


def _check_bootstrap(bootstrap: str) -> None:
    if bootstrap not in BOOTSTRAP_MODES:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAP_MODES}, got {bootstrap!r}")


def layer_silhouettes(x: Any, languages: Sequence[Any], group_ids: Sequence[Any],
                      multiplicities: np.ndarray | None = None, metric: str = "cosine", *,
                      bootstrap: str = "points", normalize: bool = True, copies_are_neighbours: bool = False,
                      block_size: int = 1024, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(s_lang (R,), s_sem (R,)) of one layer x (N, D) for each group-multiplicity row (R, G) (groups in sorted
    order of the unique `group_ids`) under the `bootstrap` scheme of the module docstring; None = one row of ones,
    the plain silhouettes. normalize: L2-normalise the vectors first (no effect on cosine). copies_are_neighbours
    (expanded only): duplicates of a point count as its neighbours. batch_size (expanded only): resamples
    processed together in the semantic pass."""
    _check_metric(metric)
    _check_bootstrap(bootstrap)
    x = _check_points(x, 2, "x")
    labels = _PointLabels.build(languages, group_ids, x.shape[0])
    if multiplicities is None:
        multiplicities = np.ones((1, len(labels.groups)), np.int32)
    multiplicities = np.asarray(multiplicities)
    if multiplicities.ndim != 2 or multiplicities.shape[1] != len(labels.groups):
        raise ValueError(f"multiplicities must have shape (R, {len(labels.groups)}), got {multiplicities.shape}")
    return labels.bootstrap_silhouettes(x, multiplicities, bootstrap=bootstrap, metric=metric, normalize=normalize,
                                        copies_are_neighbours=copies_are_neighbours, block_size=block_size,
                                        batch_size=batch_size)


# ------------------------------------------------------------------------------------------- layer selection


def no_bottleneck_reasons(diff: Sequence[float], pick_share: Sequence[float], best_layer: int,
                          selection_range: Sequence[int], num_bootstrap: int | None = None) -> list[tuple[str, str]]:
    """Every reason (code of NO_BOTTLENECK_REASONS, message) why k* = `best_layer` is not a semantic bottleneck
    (module docstring, "Verdict"); [] when it is one. diff, pick_share: per residual index 0..L."""
    first, last = int(selection_range[0]), int(selection_range[1])
    candidates = np.asarray(diff, np.float64)[first:last + 1]
    reasons = []
    if (candidates < 0).all():
        reasons.append(("diff_negative_everywhere",
                        f"S_sem - S_lang < 0 at every candidate residual index {first}..{last} (from "
                        f"{candidates.min():.4f} to {candidates.max():.4f}): language clusters dominate everywhere"))
    if best_layer in (first, last):
        reasons.append(("argmax_at_range_edge",
                        f"the argmax k* = {best_layer} is at the edge of the candidate range {first}..{last}"))
    share = float(pick_share[best_layer])
    if share < MIN_PICK_SHARE:
        of = f" of {num_bootstrap}" if num_bootstrap else ""
        reasons.append(("unstable_argmax", f"k* = {best_layer} is the argmax in only {100 * share:.0f}%{of} "
                                           f"bootstrap resamples (< {100 * MIN_PICK_SHARE:.0f}%)"))
    return reasons


@dataclasses.dataclass(frozen=True)
class BottleneckResult:
    """Per-residual-index silhouettes and the selected bottleneck layer.

    Arrays have shape (num_layers + 1,), indexed by residual index 0..L. diff = s_sem - s_lang;
    diff_lo/diff_hi: percentile interval of diff over group-bootstrap resamples; pick_share: share of resamples
    whose argmax over `selection_range` (inclusive) is that index. best_layer = argmax of diff over
    `selection_range`, ties -> lowest index. probe_auroc: validation AUROC of the harmful-vs-benign probe per
    index (`lasa_jax.layer_probe`), None when not computed; probe: its settings and, when unavailable, its reason.
    """

    best_layer: int
    num_layers: int
    s_lang: np.ndarray
    s_sem: np.ndarray
    diff: np.ndarray
    diff_lo: np.ndarray
    diff_hi: np.ndarray
    pick_share: np.ndarray
    languages: tuple[str, ...]
    num_groups: int
    num_points: int
    selection_range: tuple[int, int]
    metric: str
    num_bootstrap: int
    bootstrap: str
    confidence: float
    seed: int
    probe_auroc: np.ndarray | None = None
    probe: Mapping[str, Any] | None = None

    @property
    def reasons(self) -> list[tuple[str, str]]:
        """(code, message) of every reason that k* is not a bottleneck (`no_bottleneck_reasons`)."""
        return no_bottleneck_reasons(self.diff, self.pick_share, self.best_layer, self.selection_range,
                                     self.num_bootstrap)

    @property
    def bottleneck_found(self) -> bool:
        return not self.reasons

    @property
    def best_probe_layer(self) -> int | None:
        """Residual index of the highest probe AUROC (ties -> lowest), or None without a probe."""
        if self.probe_auroc is None or not np.isfinite(self.probe_auroc).any():
            return None
        return int(np.nanargmax(self.probe_auroc))

    def layer_rows(self) -> list[dict]:
        """One dict per residual index with the keys of CSV_FIELDS (probe_auroc None without a probe)."""
        def probe_value(k):
            if self.probe_auroc is None or not np.isfinite(self.probe_auroc[k]):
                return None
            return float(self.probe_auroc[k])

        return [{"layer": k, "s_lang": float(self.s_lang[k]), "s_sem": float(self.s_sem[k]),
                 "diff": float(self.diff[k]), "diff_lo": float(self.diff_lo[k]), "diff_hi": float(self.diff_hi[k]),
                 "pick_share": float(self.pick_share[k]), PROBE_FIELD: probe_value(k)}
                for k in range(self.num_layers + 1)]

    def to_json_dict(self) -> dict:
        """The `bottleneck.json` content."""
        reasons = self.reasons
        probe = dict(self.probe) if self.probe is not None else {
            "reason": "not computed (no labels were passed to the report)"}
        probe["best_layer"] = self.best_probe_layer
        probe["best_auroc"] = None if self.best_probe_layer is None else float(self.probe_auroc[self.best_probe_layer])
        return {
            "best_layer": self.best_layer,
            "num_layers": self.num_layers,
            "layers": self.layer_rows(),
            "languages": list(self.languages),
            "num_groups": self.num_groups,
            "num_points": self.num_points,
            "selection_range": list(self.selection_range),
            "bottleneck_found": not reasons,
            "reason": "; ".join(message for _, message in reasons) or None,
            "reason_codes": [code for code, _ in reasons],
            "probe": probe,
            "metric": self.metric,
            "num_bootstrap": self.num_bootstrap,
            "bootstrap": self.bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "residual_index_convention": "0 = token embeddings, k in 1..L-1 = after block k, "
                                         "L = last block output after the final norm",
        }


def select_bottleneck_layer(features: Any, languages: Sequence[Any], group_ids: Sequence[Any], *,
                            metric: str = "cosine", include_embeddings: bool = False, include_final: bool = True,
                            num_bootstrap: int = 200, bootstrap: str = "points", confidence: float = 0.95,
                            seed: int = 0, normalize: bool = True, copies_are_neighbours: bool = False,
                            block_size: int = 1024, batch_size: int = 16) -> BottleneckResult:
    """Pick the semantic bottleneck: argmax over residual indices of S_sem - S_lang, with a group bootstrap.

    features: (L+1, N, D) pooled vectors for residual indices 0..L (any float dtype; one layer is on the device
    at a time). languages, group_ids: (N,) labels. Silhouettes use `metric` on L2-normalised vectors
    (`normalize`). Candidates: 1..L-1, plus 0 with `include_embeddings` and L (post-norm) with `include_final`
    (default: 1..L, the paper's selection).
    Bootstrap: `num_bootstrap` (>= 1) resamples of the query groups (`group_bootstrap_multiplicities(seed)`), the
    same resamples for every layer, under the `bootstrap` scheme ("points" or "expanded", module docstring);
    diff_lo/diff_hi are the (1 - confidence)/2 and (1 + confidence)/2 percentiles.
    """
    _check_metric(metric)
    _check_bootstrap(bootstrap)
    features = _check_points(features, 3, "features (L+1, N, D)")
    num_layers = features.shape[0] - 1
    first = 0 if include_embeddings else 1
    last = num_layers if include_final else num_layers - 1
    if last < first:
        raise ValueError(f"no candidate layer: features have residual indices 0..{num_layers}, candidates would be "
                         f"{first}..{last} (include_embeddings={include_embeddings}, include_final={include_final})")
    if num_bootstrap < 1:
        raise ValueError(f"num_bootstrap must be >= 1, got {num_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    num_points = features.shape[1]
    labels = _PointLabels.build(languages, group_ids, num_points)
    resamples = group_bootstrap_multiplicities(len(labels.groups), num_bootstrap, seed)
    multiplicities = np.concatenate([np.ones((1, len(labels.groups)), np.int32), resamples])

    options = dict(bootstrap=bootstrap, metric=metric, normalize=normalize,
                   copies_are_neighbours=copies_are_neighbours, block_size=block_size, batch_size=batch_size)
    per_layer = [labels.bootstrap_silhouettes(features[k], multiplicities, **options)
                 for k in range(num_layers + 1)]
    s_lang = np.stack([lang for lang, _ in per_layer]).astype(np.float64)  # (L+1, 1 + B)
    s_sem = np.stack([sem for _, sem in per_layer]).astype(np.float64)
    diff = s_sem - s_lang
    tail = 100.0 * (1.0 - confidence) / 2.0
    diff_lo, diff_hi = np.percentile(diff[:, 1:], [tail, 100.0 - tail], axis=1)
    best_layer = first + int(np.argmax(diff[first:last + 1, 0]))
    resample_best = first + np.argmax(diff[first:last + 1, 1:], axis=0)
    pick_share = np.bincount(resample_best, minlength=num_layers + 1) / num_bootstrap
    return BottleneckResult(
        best_layer=best_layer, num_layers=num_layers, s_lang=s_lang[:, 0], s_sem=s_sem[:, 0], diff=diff[:, 0],
        diff_lo=diff_lo, diff_hi=diff_hi, pick_share=pick_share,
        languages=tuple(str(lang) for lang in dict.fromkeys(np.asarray(languages).tolist())),
        num_groups=len(labels.groups), num_points=num_points, selection_range=(first, last), metric=metric,
        num_bootstrap=int(num_bootstrap), bootstrap=bootstrap, confidence=float(confidence), seed=int(seed))


# ----------------------------------------------------------------------------------------------------- reports


def _save_figure(figure, path: pathlib.Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_layer_curves(result: BottleneckResult, path: str | os.PathLike) -> None:
    """PNG of S_lang, S_sem and diff vs residual index, the bootstrap band on diff, k* marked, the probe's
    validation AUROC on a second axis (when computed) and, when no bottleneck is found, the reasons in red."""
    from matplotlib.figure import Figure  # object API: no pyplot global state, Agg canvas

    layers = np.arange(result.num_layers + 1)
    figure = Figure(figsize=(8, 5))
    axes = figure.add_subplot()
    axes.plot(layers, result.s_lang, marker=".", label="S_lang (by language)")
    axes.plot(layers, result.s_sem, marker=".", label="S_sem (by query group)")
    axes.plot(layers, result.diff, marker=".", color="black", label="S_sem - S_lang")
    axes.fill_between(layers, result.diff_lo, result.diff_hi, color="grey", alpha=0.3,
                      label=f"{100 * result.confidence:g}% group-bootstrap interval ({result.bootstrap}, "
                            f"{result.num_bootstrap} resamples)")
    found = result.bottleneck_found
    axes.axvline(result.best_layer, color="red", linestyle="--",
                 label=f"k* = {result.best_layer} (pick share {result.pick_share[result.best_layer]:.2f})"
                       + ("" if found else ", NO bottleneck"))
    first, last = result.selection_range
    axes.axvspan(first - 0.5, last + 0.5, color="yellow", alpha=0.08, label=f"candidates {first}..{last}")
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel(f"residual index (0 = embeddings, {result.num_layers} = after final norm)")
    axes.set_ylabel(f"silhouette ({result.metric})")
    axes.set_title(f"Semantic bottleneck: {result.num_points} texts, {result.num_groups} groups, "
                   f"{len(result.languages)} languages")
    handles, labels = axes.get_legend_handles_labels()
    if result.best_probe_layer is not None:
        probe_axes = axes.twinx()
        best = result.best_probe_layer
        probe_axes.plot(layers, result.probe_auroc, marker="x", color="tab:green", linestyle=":",
                        label=f"probe val AUROC (harmful vs benign; best {result.probe_auroc[best]:.3f} at {best})")
        probe_axes.set_ylabel("probe validation AUROC")
        probe_axes.set_ylim(0.0, 1.02)
        more_handles, more_labels = probe_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below
    axes.grid(alpha=0.3)
    if not found:
        message = "NO SEMANTIC BOTTLENECK FOUND: " + "; ".join(m for _, m in result.reasons)
        figure.suptitle(textwrap.fill(message, 120), color="red", fontsize=7, y=1.04)
    _save_figure(figure, pathlib.Path(path))


def plot_tsne(x: Any, languages: Sequence[Any], group_ids: Sequence[Any], path: str | os.PathLike, *,
              title: str = "", max_iter: int = 1000, seed: int = 42) -> None:
    """t-SNE PNG of one layer's vectors x (N, D), L2-normalised, 2 panels: coloured by language and by group.

    sklearn TSNE: 2-D, random_state=seed, perplexity min(30, N-1), `max_iter` iterations (>= 250), euclidean.
    """
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _TINY)
    embedded = TSNE(n_components=2, perplexity=min(30.0, x.shape[0] - 1.0), max_iter=max_iter,
                    random_state=seed).fit_transform(x)
    language_codes, unique_languages = _factorize(languages, x.shape[0], "languages")
    group_codes, unique_groups = _factorize(group_ids, x.shape[0], "group_ids")
    figure = Figure(figsize=(12, 5.5))
    by_language, by_group = figure.subplots(1, 2)
    for code, language in enumerate(unique_languages):
        mask = language_codes == code
        by_language.scatter(embedded[mask, 0], embedded[mask, 1], s=6, label=str(language),
                            color=_category_colour(code, len(unique_languages)))
    by_language.legend(fontsize=7, markerscale=2, loc="best")
    by_language.set_title("coloured by language")
    by_group.scatter(embedded[:, 0], embedded[:, 1], s=6,
                     c=[_category_colour(code, len(unique_groups)) for code in group_codes])
    by_group.set_title(f"coloured by query group ({len(unique_groups)} groups, colours repeat)")
    figure.suptitle(title)
    _save_figure(figure, pathlib.Path(path))


def _category_colour(index: int, num_categories: int):
    """Distinct colours for up to 10 categories (tab10), then 20 repeating ones (tab20)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if num_categories <= 10 else "tab20"]
    return palette(index % palette.N)


def write_bottleneck_report(result: BottleneckResult, workdir: str | os.PathLike, *, features: Any = None,
                            languages: Sequence[Any] | None = None, group_ids: Sequence[Any] | None = None,
                            tsne_layers: Sequence[int] | None = None, tsne_max_iter: int = 1000,
                            metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write `bottleneck.json`, `layers.csv` and `bottleneck_layers.png` into `workdir` (atomically), plus
    `tsne_layer<k>.png` for each of `tsne_layers` (default: k*) when `features` (L+1, N, D) and the per-point
    `languages` and `group_ids` are given. `metadata` (e.g. {"model": {"fingerprint", ...}}) is merged into the
    JSON at the top level, so later stages can check the layer belongs to their model. Returns {name: path}."""
    workdir = io_utils.to_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": workdir / BOTTLENECK_FILE, "csv": workdir / "layers.csv",
             "plot": workdir / "bottleneck_layers.png"}
    atomic_write_json(paths["json"], {**result.to_json_dict(), **dict(metadata or {})})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, lineterminator="\n")  # no probe -> empty cells
    writer.writeheader()
    writer.writerows(result.layer_rows())
    atomic_write_text(paths["csv"], table.getvalue())
    plot_layer_curves(result, paths["plot"])
    if features is not None:
        if languages is None or group_ids is None:
            raise ValueError("t-SNE plots need the per-point `languages` and `group_ids` along with `features`")
        for layer in (result.best_layer,) if tsne_layers is None else tsne_layers:
            if not 0 <= layer <= result.num_layers:
                raise ValueError(f"tsne layer {layer} is outside residual indices 0..{result.num_layers}")
            paths[f"tsne_{layer}"] = workdir / f"tsne_layer{layer:02d}.png"
            plot_tsne(features[layer], languages, group_ids, paths[f"tsne_{layer}"],
                      title=f"residual index {layer} of {result.num_layers}", max_iter=tsne_max_iter)
    return {name: str(path) for name, path in paths.items()}


def load_bottleneck(path_or_workdir: str | os.PathLike) -> dict:
    """Read and validate `bottleneck.json` (a file path or the directory holding it); returns the dict.

    Raises FileNotFoundError if missing and ValueError naming the file and field on a schema violation.
    """
    path = io_utils.to_path(path_or_workdir)
    if path.is_dir():
        path = path / BOTTLENECK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the {BOTTLENECK_FILE} written by Locate)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err

    def fail(field: str, expected: str):
        value = report.get(field, "<missing>") if isinstance(report, dict) else report
        raise InputError(f"{path}: field {field!r} must be {expected}, got {value!r}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(report, dict):
        fail("<root>", "a JSON object")
    if not is_int(report.get("num_layers")) or report["num_layers"] < 1:
        fail("num_layers", "an integer >= 1")
    num_layers = report["num_layers"]
    if not is_int(report.get("best_layer")) or not 0 <= report["best_layer"] <= num_layers:
        fail("best_layer", f"an integer residual index in 0..{num_layers}")
    for field in ("num_groups", "num_points"):
        if not is_int(report.get(field)) or report[field] < 2:
            fail(field, "an integer >= 2")
    languages = report.get("languages")
    if not isinstance(languages, list) or len(languages) < 2 or not all(isinstance(x, str) for x in languages):
        fail("languages", "a list of at least 2 language codes")
    rows = report.get("layers")
    if not isinstance(rows, list) or len(rows) != num_layers + 1:
        fail("layers", f"a list of {num_layers + 1} per-layer objects (residual indices 0..{num_layers})")
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("layer") != k:
            raise InputError(f"{path}: layers[{k}] must be an object with \"layer\": {k}, got {row!r}")
        for field in LAYER_FIELDS[1:]:
            if not isinstance(row.get(field), (int, float)) or isinstance(row.get(field), bool):
                raise InputError(f"{path}: layers[{k}].{field} must be a number, got {row.get(field, '<missing>')!r}")
        probe = row.get(PROBE_FIELD)
        if probe is not None and (isinstance(probe, bool) or not isinstance(probe, (int, float)) or
                                  not 0.0 <= probe <= 1.0):
            raise InputError(f"{path}: layers[{k}].{PROBE_FIELD} must be null or a number in [0, 1], got {probe!r}")
    _check_or_fill_verdict(report, path)
    return report


def _check_or_fill_verdict(report: dict, path: pathlib.Path) -> None:
    """Validate `bottleneck_found` / `reason`; a file written before them gets them recomputed from its layers
    (when it records its `selection_range`) or null, with `verdict_source` saying so."""
    if "bottleneck_found" in report:
        if not isinstance(report["bottleneck_found"], bool):
            raise InputError(f"{path}: field 'bottleneck_found' must be true or false, "
                             f"got {report['bottleneck_found']!r}")
        if report.get("reason") is not None and not isinstance(report["reason"], str):
            raise InputError(f"{path}: field 'reason' must be null or a string, got {report['reason']!r}")
        if not report["bottleneck_found"] and not report.get("reason"):
            raise InputError(f"{path}: field 'reason' must say why when 'bottleneck_found' is false")
        return
    selection = report.get("selection_range")
    num_layers = report["num_layers"]
    if not (isinstance(selection, list) and len(selection) == 2 and all(isinstance(v, int) for v in selection)
            and 0 <= selection[0] <= report["best_layer"] <= selection[1] <= num_layers):
        report.update(bottleneck_found=None, reason="not recorded (the file predates the verdict and has no "
                                                    "usable selection_range)", reason_codes=[],
                      verdict_source="unknown")
        return
    rows = report["layers"]
    reasons = no_bottleneck_reasons([r["diff"] for r in rows], [r["pick_share"] for r in rows],
                                    report["best_layer"], selection, report.get("num_bootstrap"))
    report.update(bottleneck_found=not reasons, reason="; ".join(m for _, m in reasons) or None,
                  reason_codes=[c for c, _ in reasons],
                  verdict_source="recomputed by load_bottleneck (the file predates the verdict fields)")


def verdict_line(report: Mapping[str, Any]) -> str:
    """One line on a loaded bottleneck.json's k*: whether it is a bottleneck and why not, and the probe's best."""
    k = report["best_layer"]
    found = report.get("bottleneck_found")
    if found is None:
        head = f"k* = {k} (bottleneck verdict {report.get('reason') or 'not recorded'})"
    elif found:
        head = f"k* = {k} is a semantic bottleneck (S_sem - S_lang = {report['layers'][k]['diff']:.4f})"
    else:
        head = f"k* = {k} is NOT a semantic bottleneck: {report['reason']}"
    probe = probe_line(report)
    return f"{head}; {probe}" if probe else head


def probe_line(report: Mapping[str, Any]) -> str:
    """The probe's validation AUROC at k* and its best residual index, its reason when unavailable, or ""."""
    probe_at_k = report["layers"][report["best_layer"]].get(PROBE_FIELD)
    probe = report.get("probe") or {}
    if probe_at_k is not None:
        return (f"probe val AUROC {probe_at_k:.3f} at k*, best {probe.get('best_auroc', float('nan')):.3f} at "
                f"residual index {probe.get('best_layer')}")
    return f"probe AUROC unavailable: {probe['reason']}" if probe.get("reason") else ""
