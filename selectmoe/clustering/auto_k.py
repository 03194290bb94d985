"""k-means over a range of k and the choice of k (Kneedle elbow, silhouette fallback)."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from selectmoe.clustering._inputs import (
    _ALLOCATION_STRATEGIES,
    DEFAULT_K_RANGE,
    ArrayLike,
    DeviceLike,
    _check_features,
    _check_int,
    _encode_labels,
    _resolve_device,
)
from selectmoe.clustering.kmeans import (
    _default_trials,
    _fit_best,
    _init_seeds,
    _kmeans_plusplus,
    _prepare_unit,
    _tolerance,
)
from selectmoe.clustering.silhouette import (
    _silhouette_blocks,
)
from selectmoe.errors import SelectionError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class KSweepResult:
    """Result of :func:`choose_k`.

    Attributes
    ----------
    k : int
        The chosen number of clusters.
    method : {"knee", "silhouette"}
        How ``k`` was chosen: the Kneedle elbow of the inertia curve, or the best silhouette when
        the curve has no knee.
    ks : list of int
        Candidate k values, ascending.
    inertias : list of float
        Best inertia (over restarts) of each candidate, see :class:`KMeans`.
    silhouettes : list of float or None
        Cosine silhouette of each candidate's best labels (None when not computed).
    n_iters : list of int
        Lloyd iterations of each candidate's kept restart.
    labels : numpy.ndarray of shape (n_samples,), int64
        Labels of the chosen k.
    centers : numpy.ndarray of shape (k, n_features), float64
        Unit centroids of the chosen k.
    knee_k : int or None
        The Kneedle elbow (None when there is none).
    silhouette_k : int or None
        The candidate with the best silhouette (None when not computed).
    seconds : dict
        Wall time of the seeding, the k-means runs and the silhouettes.
    """

    k: int
    method: str
    ks: list[int]
    inertias: list[float]
    silhouettes: list[float] | None
    n_iters: list[int]
    labels: np.ndarray
    centers: np.ndarray
    knee_k: int | None
    silhouette_k: int | None
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the labels and centres, as JSON-ready values."""
        return {
            "k": self.k,
            "method": self.method,
            "knee_k": self.knee_k,
            "silhouette_k": self.silhouette_k,
            "ks": list(self.ks),
            "inertias": list(self.inertias),
            "silhouettes": None if self.silhouettes is None else list(self.silhouettes),
            "n_iters": list(self.n_iters),
            "seconds": dict(self.seconds),
        }


def default_k_step(k_min: int, k_max: int) -> int:
    """At most about 20 candidates: ``max(1, (k_max - k_min) // 20)`` (Select-MoE's choice)."""
    return max(1, (k_max - k_min) // 20)


def _knee(ks: Sequence[int], inertias: Sequence[float], sensitivity: float) -> int | None:
    """Kneedle elbow (Satopää et al. 2011) of a decreasing convex curve, or None."""
    if len(ks) < 3:
        return None
    from kneed import KneeLocator

    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found"; None says the same.
        warnings.simplefilter("ignore")
        locator = KneeLocator(
            list(ks), list(inertias), S=sensitivity, curve="convex", direction="decreasing"
        )
    return None if locator.knee is None else int(locator.knee)


@dataclasses.dataclass
class _KFit:
    k: int
    inertia: float
    silhouette: float | None
    n_iter: int
    labels: np.ndarray
    centers: np.ndarray
    seconds: float


def _fit_one_k(
    unit: torch.Tensor,
    k: int,
    seedings: Sequence[np.ndarray],
    *,
    max_iter: int,
    tol: float,
) -> _KFit:
    start = time.perf_counter()
    best = _fit_best(unit, k, seedings, max_iter=max_iter, tol=tol)
    return _KFit(
        k=k,
        inertia=best.inertia,
        silhouette=None,
        n_iter=best.n_iter,
        labels=best.labels.cpu().numpy().astype(np.int64),
        centers=best.centers.cpu().numpy(),
        seconds=time.perf_counter() - start,
    )


def _mean_silhouettes(unit: torch.Tensor, label_sets: Sequence[np.ndarray]) -> list[float]:
    """Mean cosine silhouette (float64) of each labeling of the unit rows, in one data pass.

    Empty clusters are dropped first; a labeling with fewer than 2 or more than N - 1 clusters
    scores 0.
    """
    n_samples = unit.shape[0]
    results = [0.0] * len(label_sets)
    labelings: list[tuple[torch.Tensor, int]] = []
    where: list[int] = []
    for index, labels in enumerate(label_sets):
        codes, classes = _encode_labels(labels, n_samples)
        if 2 <= len(classes) <= n_samples - 1:
            labelings.append((torch.from_numpy(codes).to(unit.device), len(classes)))
            where.append(index)
    if labelings:
        totals = _silhouette_blocks(
            unit, labelings, dtype=torch.float64, normalized=True, per_sample=False
        )
        for index, total in zip(where, totals, strict=True):
            results[index] = float(total) / n_samples
    return results


def _fit_share(
    unit: torch.Tensor,
    ks: Sequence[int],
    seedings: Sequence[np.ndarray],
    *,
    max_iter: int,
    tol: float,
    compute_silhouette: bool,
    verbose: bool,
) -> tuple[list[_KFit], float]:
    """Fit every k of ``ks``; then, optionally, all their silhouettes in one pass over the data.

    Returns the fits and the seconds spent on the silhouettes.
    """
    fits = []
    for k in ks:
        fits.append(_fit_one_k(unit, k, seedings, max_iter=max_iter, tol=tol))
        if verbose:
            _print_fit(fits[-1])
    start = time.perf_counter()
    if compute_silhouette:
        values = _mean_silhouettes(unit, [fit.labels for fit in fits])
        for fit, value in zip(fits, values, strict=True):
            fit.silhouette = value
    return fits, time.perf_counter() - start


def _sweep_worker(payload: dict[str, Any]) -> tuple[list[_KFit], float]:
    """Fit the ks of one process (runs in a spawned process; module level so it pickles)."""
    torch.set_num_threads(payload["threads"])
    device = torch.device(payload["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    unit = payload["unit"].to(device)
    return _fit_share(
        unit,
        payload["ks"],
        payload["seedings"],
        max_iter=payload["max_iter"],
        tol=payload["tol"],
        compute_silhouette=payload["compute_silhouette"],
        verbose=False,
    )


def _process_devices(n_processes: int, devices: Sequence[str], strategy: str) -> list[str]:
    """Device of each process: ``round_robin`` cycles through the devices; ``balanced`` gives each
    device a contiguous block of processes, the first ``n_processes % n_devices`` one more."""
    if strategy == "round_robin":
        return [devices[p % len(devices)] for p in range(n_processes)]
    per, extra = divmod(n_processes, len(devices))
    out: list[str] = []
    for index, device in enumerate(devices):
        out += [device] * (per + (1 if index < extra else 0))
    return out


def _split_ks(ks: Sequence[int], n_processes: int) -> list[list[int]]:
    """Share the ks so each process gets about the same work (cost grows with k): the largest
    remaining k goes to the least loaded process."""
    loads = [0] * n_processes
    shares: list[list[int]] = [[] for _ in range(n_processes)]
    for k in sorted(ks, reverse=True):
        target = loads.index(min(loads))
        shares[target].append(k)
        loads[target] += k
    return [sorted(share) for share in shares]


def choose_k(
    X: ArrayLike,
    *,
    k_range: Sequence[int] = DEFAULT_K_RANGE,
    k_step: int | None = None,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float32,
    parallel_processes: int = 1,
    gpu_allocation_strategy: str = "round_robin",
    compute_silhouette: bool = True,
    knee_sensitivity: float = 1.0,
    verbose: bool = False,
) -> KSweepResult:
    """Spherical k-means for every k of a range; choose k by the elbow of the inertia curve.

    Candidates are ``range(k_min, k_max + 1, k_step)``. For each, :class:`KMeans` with ``n_init``
    restarts is fitted (the best inertia is kept) and, with ``compute_silhouette``, the cosine
    silhouette of its labels. The chosen k is the Kneedle elbow of the inertia curve
    (``curve="convex", direction="decreasing"``); when there is none, the k of the best silhouette.

    Work shared across k: the data is normalised once, and each restart's greedy k-means++ seeding
    is computed once for the largest k; its first ``k`` centres seed every smaller k (the draws of
    a seeding step do not depend on the final k). So the result for k equals
    ``KMeans(k, n_init=n_init, seed=seed, n_local_trials=2 + int(log(max(ks))), ...)``. The
    silhouettes of all candidates come from one two-pass sweep over the data (one matrix product
    per block of rows for all candidates together).

    With ``parallel_processes > 1`` the ks are shared among that many spawned processes (about the
    same total k each), placed on the visible GPUs by ``gpu_allocation_strategy`` (``round_robin``:
    process p on GPU ``p % n_gpus``; ``balanced``: contiguous blocks of processes per GPU), or all
    on the CPU when the run device is the CPU, each with ``torch.get_num_threads() //
    parallel_processes`` threads. The results do not depend on the split.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
        Feature rows.
    k_range : (int, int), default=(10, 100)
        Smallest and largest candidate, ``2 <= k_min <= k_max <= n_samples - 1``.
    k_step : int, optional
        Step between candidates; default :func:`default_k_step` (at most about 20 candidates).
    n_init, max_iter, tol, seed, device, dtype
        As in :class:`KMeans`.
    parallel_processes : int, default=1
        Processes for the sweep (1 runs it in this process).
    gpu_allocation_strategy : {"round_robin", "balanced"}, default="round_robin"
        How processes are placed on GPUs.
    compute_silhouette : bool, default=True
        Compute every candidate's silhouette (if False it is computed only when there is no knee),
        exactly in float64 on the run's unit rows (in ``dtype``: float32 rounding of the rows
        moves it by about 1e-8 from :func:`silhouette_score` of the raw features).
    knee_sensitivity : float, default=1.0
        Kneedle's ``S``.
    verbose : bool, default=False
        Print one line per candidate to stderr.

    Returns
    -------
    KSweepResult
        The chosen k and how, both curves, and the chosen k's labels and centres.
    """
    tensor = _check_features(X)
    n_samples = tensor.shape[0]
    if isinstance(k_range, str) or len(k_range) != 2:
        raise SelectionError(f"k_range must be two integers [k_min, k_max], got {k_range!r}")
    k_min = _check_int(k_range[0], "k_range[0] (k_min)", 2)
    k_max = _check_int(k_range[1], "k_range[1] (k_max)", k_min)
    if k_max > n_samples - 1:
        raise SelectionError(
            f"k_range upper bound {k_max} is larger than n_samples - 1 = {n_samples - 1} "
            f"({n_samples} samples); lower k_range to at most [{min(k_min, n_samples - 1)}, "
            f"{n_samples - 1}]"
        )
    step = default_k_step(k_min, k_max) if k_step is None else _check_int(k_step, "k_step", 1)
    n_init = _check_int(n_init, "n_init", 1)
    max_iter = _check_int(max_iter, "max_iter", 1)
    parallel_processes = _check_int(parallel_processes, "parallel_processes", 1)
    if gpu_allocation_strategy not in _ALLOCATION_STRATEGIES:
        raise SelectionError(
            f"gpu_allocation_strategy must be one of {list(_ALLOCATION_STRATEGIES)}, "
            f"got {gpu_allocation_strategy!r}"
        )
    if not (isinstance(tol, int | float) and tol >= 0):
        raise SelectionError(f"tol must be a number >= 0, got {tol!r}")
    ks = list(range(k_min, k_max + 1, step))
    run_device = _resolve_device(device, like=X)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    n_processes = min(parallel_processes, len(ks))
    unit = _prepare_unit(tensor, run_device, dtype, shared=n_processes > 1)
    tol_abs = _tolerance(unit, tol)
    trials = _default_trials(ks[-1])
    seedings = [
        _kmeans_plusplus(unit, ks[-1], np.random.default_rng(s), trials)
        for s in _init_seeds(_check_int(seed, "seed", 0), n_init)
    ]
    seconds["prepare_and_seed"] = time.perf_counter() - start

    start = time.perf_counter()
    if n_processes <= 1:
        fits, seconds["silhouette"] = _fit_share(
            unit,
            ks,
            seedings,
            max_iter=max_iter,
            tol=tol_abs,
            compute_silhouette=compute_silhouette,
            verbose=verbose,
        )
    else:
        fits, seconds["silhouette"] = _parallel_sweep(
            unit,
            ks,
            seedings,
            n_processes=n_processes,
            run_device=run_device,
            strategy=gpu_allocation_strategy,
            max_iter=max_iter,
            tol=tol_abs,
            compute_silhouette=compute_silhouette,
        )
        if verbose:
            for fit in fits:
                _print_fit(fit)
    seconds["kmeans"] = sum(f.seconds for f in fits)
    seconds["sweep_wall"] = time.perf_counter() - start

    inertias = [f.inertia for f in fits]
    knee_k = _knee(ks, inertias, knee_sensitivity)
    silhouettes: list[float] | None = None
    if not compute_silhouette and knee_k is None:
        # No knee: the fallback needs the silhouettes after all.
        start = time.perf_counter()
        for fit, value in zip(fits, _mean_silhouettes(unit, [f.labels for f in fits]), strict=True):
            fit.silhouette = value
        seconds["silhouette"] = time.perf_counter() - start
    if compute_silhouette or knee_k is None:
        silhouettes = [0.0 if f.silhouette is None else f.silhouette for f in fits]
    silhouette_k = None if silhouettes is None else ks[int(np.argmax(silhouettes))]
    if knee_k is not None:
        chosen, method = knee_k, "knee"
    else:
        assert silhouette_k is not None
        chosen, method = silhouette_k, "silhouette"
    fit = fits[ks.index(chosen)]
    logger.info(
        "choose_k: k=%d by %s (knee %s, best silhouette %s) over %d candidates in %.1f s",
        chosen,
        method,
        knee_k,
        silhouette_k,
        len(ks),
        seconds["sweep_wall"] + seconds["prepare_and_seed"],
    )
    return KSweepResult(
        k=chosen,
        method=method,
        ks=ks,
        inertias=inertias,
        silhouettes=silhouettes,
        n_iters=[f.n_iter for f in fits],
        labels=fit.labels,
        centers=fit.centers,
        knee_k=knee_k,
        silhouette_k=silhouette_k,
        seconds=seconds,
    )


def _print_fit(fit: _KFit) -> None:
    silhouette = "n/a" if fit.silhouette is None else f"{fit.silhouette:.4f}"
    print(
        f"[kmeans] k={fit.k:>4} inertia={fit.inertia:.4f} silhouette={silhouette} "
        f"iterations={fit.n_iter} ({fit.seconds:.2f} s)",
        file=sys.stderr,
        flush=True,
    )


def _parallel_sweep(
    unit: torch.Tensor,
    ks: Sequence[int],
    seedings: Sequence[np.ndarray],
    *,
    n_processes: int,
    run_device: torch.device,
    strategy: str,
    max_iter: int,
    tol: float,
    compute_silhouette: bool,
) -> tuple[list[_KFit], float]:
    """Run :func:`_fit_share` for shares of the ks in ``n_processes`` spawned processes.

    Returns the fits in the order of ``ks`` and the wall time the processes spent on silhouettes
    (the longest of them).
    """
    import torch.multiprocessing as mp

    if run_device.type == "cuda":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [str(run_device)]
    placement = _process_devices(n_processes, devices, strategy)
    shares = _split_ks(ks, n_processes)
    # CPU processes share the cores this process would use; GPU processes need few threads.
    threads = max(1, torch.get_num_threads() // n_processes)
    # The data travels once through shared memory (torch's reducer), not once per process.
    on_cpu = unit.device.type == "cpu"
    shared = unit if on_cpu and unit.is_shared() else unit.cpu().share_memory_()
    payloads = [
        {
            "unit": shared,
            "ks": share,
            "seedings": list(seedings),
            "device": placement[p],
            "threads": threads,
            "max_iter": max_iter,
            "tol": tol,
            "compute_silhouette": compute_silhouette,
        }
        for p, share in enumerate(shares)
        if share
    ]
    logger.info(
        "choose_k: %d processes, devices %s, ks %s",
        len(payloads),
        [p["device"] for p in payloads],
        [p["ks"] for p in payloads],
    )
    context = mp.get_context("spawn")
    with context.Pool(len(payloads)) as pool:
        results = pool.map(_sweep_worker, payloads, chunksize=1)
    by_k = {fit.k: fit for share, _ in results for fit in share}
    return [by_k[k] for k in ks], max(seconds for _, seconds in results)
