"""Silhouette scores on the device: jitted cluster-distance-sum kernels and the public `silhouette_score`.

Locate scores each residual index by two silhouettes of the pooled prompt vectors: S_sem by query group and S_lang
by language. This module holds the numerics; layer selection with the group bootstrap is
`lasa_jax.locate.selection`, the report files (bottleneck.json, layers.csv, plots, loading) are
`lasa_jax.locate.report`; both use the checks and kernels below.

Conventions
-----------
- Features are pooled last-token vectors, one per prompt: `x` is (N, D) for one layer, or (L+1, N, D) for all
  residual indices 0..L (0 = token embeddings, k in 1..L-1 = after block k, L = last block AFTER the final norm).
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
- cosine, unit rows u: d(x_i, x_j) = 1 - u_i . u_j, so S[c, i] = |c| - u_i . G_c with G_c = sum_{j in c} u_j: one
  segment sum (k, D) and one (k, D) x (D, N) product, O(N D k). The self pair contributes 1 - u_i . u_i (~0),
  removed from a_i. Memory is O(N D + k N): a few (k, N) float32 buffers, so it stays small while k << N
  (N = 20,000, D = 4,096: 1.7 GB peak with k = 2,000 groups, 5.1 GB with k = 10,000; measured).
- euclidean: row blocks of `block_size` points; each block's (N, block) distance matrix is segment-summed into
  (k, block), so memory is O(N * block_size) (N = 20,000, D = 4,096: x 0.33 GB + a 82 MB block at 1,024).
Then a_i = (S[A_i, i] - d(x_i, x_i)) / (|A_i| - 1) and b_i = min_{c != A_i, |c| > 0} S[c, i] / |c|; empty label
slots (|c| = 0) are ignored and singleton clusters give 0.

The group bootstrap's kernel (`point_bootstrap_jit`, bootstrap="points", see `lasa_jax.locate.selection`):
per-point silhouettes s_i once per layer on the full data, then per resample the weighted mean
sum_i m_{g_i} s_i / sum_i m_{g_i} with m_g = times query group g was drawn.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "euclidean")
TINY = 1e-12
_HOST_CHUNK_BYTES = 16 << 20


# ------------------------------------------------------------------------------------------------ jitted core


def _unit_rows(x: jax.Array) -> jax.Array:
    """(N, D) -> (N, D) rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), TINY)


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
    self distance d(x_i, x_i) (N,) that S contains. chunks: row chunks of x (N, D) float32 (see `device_chunks`);
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
        inv_norm = jax.lax.rsqrt(jnp.maximum(sq_norms, TINY * TINY))  # all-zero rows: x * inv_norm = 0
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


def _silhouette_values(dist_sums: jax.Array, sizes: jax.Array, codes: jax.Array, self_dist: jax.Array) -> jax.Array:
    """Per-point silhouettes (N,) from cluster distance sums.

    dist_sums (k, N): summed distance of point i to all members of cluster c, self pairs included; sizes (k,):
    cluster sizes (0 = empty slot, ignored); codes (N,): own cluster; self_dist (N,): d(x_i, x_i).
    """
    n = codes.shape[0]
    own_count = sizes[codes] - 1.0
    own_sum = dist_sums[codes, jnp.arange(n)] - self_dist
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
def point_bootstrap_jit(chunks, language_codes, group_codes, multiplicities, *, num_languages, num_groups, metric,
                         normalize, block_size):
    """bootstrap="points": weighted means of the full-data per-point silhouettes. Returns (s_lang (R,), s_sem (R,))."""
    chunks = _prepared_chunks(chunks, metric, normalize)
    s_lang = _silhouette_samples_jit(chunks, language_codes, num_clusters=num_languages, metric=metric,
                                     block_size=block_size)
    s_sem = _silhouette_samples_jit(chunks, group_codes, num_clusters=num_groups, metric=metric,
                                    block_size=block_size)
    point_weights = multiplicities.astype(jnp.float32)[:, group_codes]  # (R, N)
    return _weighted_means(s_lang, point_weights), _weighted_means(s_sem, point_weights)


# --------------------------------------------------------------------------------------------- host wrappers


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def factorize(labels: Sequence[Any], num_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Host factorisation: (codes (N,) int32 into the sorted unique labels, unique labels)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_points:
        raise ValueError(f"{what} must be a 1-D sequence of {num_points} labels (one per point), "
                         f"got shape {labels.shape}")
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int32), uniques


def check_num_labels(num_labels: int, num_points: int, what: str) -> None:
    if not 2 <= num_labels <= num_points - 1:
        raise ValueError(f"silhouette needs 2 <= number of distinct {what} <= number of points - 1; "
                         f"got {num_labels} distinct {what} for {num_points} points")


def check_points(x: Any, ndim: int, what: str) -> np.ndarray | jax.Array:
    """x as a JAX array (unchanged) or a NumPy array (np.asarray: no copy for NumPy input) of `ndim` dimensions."""
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{what} must be a {ndim}-D array, got shape {x.shape}")
    return x


def device_chunks(x: Any) -> tuple[jax.Array, ...]:
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
    check_metric(metric)
    x = check_points(x, 2, "x")
    codes, uniques = factorize(labels, x.shape[0], "labels")
    check_num_labels(len(uniques), x.shape[0], "labels")
    values = _silhouette_samples_jit(device_chunks(x), jnp.asarray(codes), num_clusters=len(uniques),
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
    check_metric(metric)
    x_layers = check_points(x_layers, 3, "x_layers")
    num_points = x_layers.shape[1]
    codes, uniques = factorize(labels, num_points, "labels")
    check_num_labels(len(uniques), num_points, "labels")
    static = dict(num_clusters=len(uniques), metric=metric, block_size=min(block_size, num_points))
    codes = jnp.asarray(codes)
    if isinstance(x_layers, jax.Array):
        return np.asarray(_layerwise_scores_jit(x_layers, codes, **static))
    return np.array([float(jnp.mean(_silhouette_samples_jit(device_chunks(x), codes, **static)))
                     for x in x_layers])


