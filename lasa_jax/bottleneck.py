"""The README's name for the silhouette score: `from lasa_jax.bottleneck import silhouette_score` (sklearn-equal
cosine/euclidean silhouette on the device; defined in `lasa_jax.locate.silhouette`)."""
from lasa_jax.locate.silhouette import silhouette_score

__all__ = ["silhouette_score"]
