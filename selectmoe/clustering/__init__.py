"""Clustering for selection: exact cosine silhouette, spherical k-means and automatic k.

Everything here works on the *directions* of the feature rows (cosine geometry), runs the heavy
arithmetic in torch so that the same code serves CPU and CUDA, and takes numpy or torch input.

- :func:`silhouette_samples` / :func:`silhouette_score`: scikit-learn's silhouette with
  ``metric="cosine"``, exact, in O(N·K·D) time and O(chunk·K + K·D) memory instead of O(N²), through
  the cluster-sum identity ``sum_{j in C} (1 - x̂_i·x̂_j) = |C| - x̂_i·S_C`` (``S_C`` the sum of the
  unit rows of cluster ``C``).
- :class:`KMeans`: spherical k-means (unit centroids, cosine similarity) with scikit-learn's API:
  greedy k-means++ seeding, ``n_init`` restarts, ``max_iter``, ``tol``, re-seeding of empty
  clusters. Lloyd iterations skip the points whose assignment provably cannot change (Elkan's
  bounds, on angles), which keeps the result of plain Lloyd but does a fraction of its work after
  the first iterations.
- :func:`choose_k`: k-means over a range of k, the elbow of the inertia curve by Kneedle, the best
  silhouette as a fallback; the k-means++ seeding is computed once for the largest k and its
  prefixes seed every smaller k, and the sweep can run in several processes over the visible GPUs.
- A registry of clustering methods (:func:`register_clustering_method`) so that selection can use
  another algorithm without changes; ``"kmeans"`` is registered by default.
"""

from selectmoe.clustering._inputs import DEFAULT_K_RANGE, available_devices
from selectmoe.clustering.auto_k import KSweepResult, choose_k, default_k_step
from selectmoe.clustering.kmeans import KMeans
from selectmoe.clustering.registry import (
    KMEANS_PARAM_DEFAULTS,
    ClusteringMethod,
    ClusteringResult,
    get_clustering_method,
    list_clustering_methods,
    register_clustering_method,
    resolve_kmeans_params,
)
from selectmoe.clustering.silhouette import silhouette_samples, silhouette_score
from selectmoe.clustering.validation import (
    SilhouetteCheck,
    SilhouetteValidationReport,
    validate_silhouette,
)

__all__ = [
    "DEFAULT_K_RANGE",
    "KMEANS_PARAM_DEFAULTS",
    "ClusteringMethod",
    "ClusteringResult",
    "KMeans",
    "KSweepResult",
    "SilhouetteCheck",
    "SilhouetteValidationReport",
    "available_devices",
    "choose_k",
    "default_k_step",
    "get_clustering_method",
    "list_clustering_methods",
    "register_clustering_method",
    "resolve_kmeans_params",
    "silhouette_samples",
    "silhouette_score",
    "validate_silhouette",
]
