"""Benchmark of selectmoe.clustering and selection against scikit-learn, in one run.

Three measurements (issue #4):

1. Silhouette, N=20,000, D=64, K=50 on CPU: ``selectmoe.clustering.silhouette_score`` against
   ``sklearn.metrics.silhouette_score(metric="cosine")``: time of each, speed-up, largest difference
   (of the score and of any single sample's value).
2. k-means at the same size on router-like data: ``selectmoe.clustering.KMeans`` against
   ``sklearn.cluster.KMeans`` on the L2-normalised data, same k and ``n_init``: time, speed-up and
   inertia. The two minimise slightly different objectives (unit centroids vs mean centroids), so
   both partitions are scored under both: ours ``sum 2(1 - cos)`` and scikit-learn's
   ``sum |x̂ - mean|²``.
3. The full pool's shape: synthetic router data of 270,679 samples x 16 layers x 64 experts in four
   files (the sizes of LESS's CoT, Dolly, FLAN-v2 and OASST1) with a matching pool, then
   ``selectmoe.selection.select.run_selection`` (method ``selectmoe``, automatic k over [10, 100])
   in a
   child process, once per ``--processes`` value (default: 1 and 2 sweep processes): wall time and
   peak memory.

Usage::

    python benchmarks/clustering.py                  # all three, results into benchmarks/RESULTS.md
    python benchmarks/clustering.py --skip-full      # only 1 and 2 (about a minute)
    python benchmarks/clustering.py --device cuda --processes 1   # ours on a GPU

The results replace the section between ``<!-- clustering:begin -->`` and
``<!-- clustering:end -->`` of the output file (``clustering-cuda`` for ``--device cuda``;
other sections are kept). scikit-learn always runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_md import replace_section, section_markers

POOL_SIZES = {"cot": 100_000, "dolly": 15_011, "flan_v2": 100_000, "oasst1": 55_668}
DEVICE = "cpu"  # set from --device in main()


def router_like(
    n: int, n_layers: int, n_experts: int, *, n_groups: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic router data: ``n_groups`` routing patterns plus per-sample noise.

    ``moe_probs[n, l] = softmax(pattern[g_n, l] + noise)``, the shape of mean routing
    distributions; ``quality_score`` is standard normal. Generated block by block to bound memory.
    """
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(n_groups, n_layers, n_experts, generator=gen) * 1.5
    groups = torch.randint(0, n_groups, (n,), generator=gen)
    probs = torch.empty(n, n_layers, n_experts)
    for start in range(0, n, 32_768):
        stop = min(n, start + 32_768)
        noise = torch.randn(stop - start, n_layers, n_experts, generator=gen)
        probs[start:stop] = torch.softmax(patterns[groups[start:stop]] + noise, dim=-1)
    quality = torch.randn(n, n_layers, generator=gen)
    return quality, probs


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_silhouette() -> dict:
    from sklearn.metrics import silhouette_samples as sk_samples

    from selectmoe.clustering import silhouette_samples

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    labels = rng.integers(0, 50, size=20_000)
    x = centres[labels] + 3.0 * rng.normal(size=(20_000, 64))
    start = time.perf_counter()
    reference = sk_samples(x, labels, metric="cosine")
    sk_seconds = time.perf_counter() - start
    ours_seconds, ours = best_of(5, lambda: silhouette_samples(x, labels, device=DEVICE))
    return {
        "n": 20_000,
        "d": 64,
        "k": 50,
        "sklearn_s": sk_seconds,
        "ours_s": ours_seconds,
        "speedup": sk_seconds / ours_seconds,
        "score_diff": float(abs(ours.mean() - reference.mean())),
        "max_sample_diff": float(np.max(np.abs(ours - reference))),
        "score": float(ours.mean()),
    }


def both_objectives(unit: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """(ours: sum 2(1 - cos) with unit centroids, scikit-learn's: sum |x̂ - mean|²)."""
    sums = np.zeros((k, unit.shape[1]))
    np.add.at(sums, labels, unit)
    counts = np.bincount(labels, minlength=k)
    norms = np.linalg.norm(sums, axis=1)
    cosine = float(np.sum(2.0 * (counts - norms)))
    means = sums / np.maximum(counts, 1)[:, None]
    euclidean = float(np.sum((unit - means[labels]) ** 2))
    return cosine, euclidean


def bench_kmeans(n_init: int, repeats: int) -> dict:
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.preprocessing import normalize

    from selectmoe.clustering import KMeans

    _, probs = router_like(20_000, 4, 16, n_groups=50, seed=1)
    x = probs.reshape(20_000, 64).double().numpy()
    unit = normalize(x)
    rows = []
    for seed in range(repeats):
        start = time.perf_counter()
        sk = SkKMeans(50, n_init=n_init, random_state=seed).fit(unit)
        sk_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ours = KMeans(50, n_init=n_init, seed=seed, device=DEVICE).fit(x)
        ours_seconds = time.perf_counter() - start
        ours_cos, ours_eu = both_objectives(unit, ours.labels_, 50)
        sk_cos, sk_eu = both_objectives(unit, sk.labels_, 50)
        rows.append(
            {
                "seed": seed,
                "sklearn_s": sk_seconds,
                "ours_s": ours_seconds,
                "ours_inertia": ours.inertia_,
                "sklearn_inertia": float(sk.inertia_),
                "ours_cosine": ours_cos,
                "sklearn_cosine": sk_cos,
                "ours_euclidean": ours_eu,
                "sklearn_euclidean": sk_eu,
                "ours_iter": ours.n_iter_,
                "sklearn_iter": int(sk.n_iter_),
            }
        )
    total = {key: sum(r[key] for r in rows) for key in rows[0] if key != "seed"}
    return {
        "n": 20_000,
        "d": 64,
        "k": 50,
        "n_init": n_init,
        "repeats": repeats,
        "rows": rows,
        "sklearn_s": total["sklearn_s"] / repeats,
        "ours_s": total["ours_s"] / repeats,
        "speedup": total["sklearn_s"] / total["ours_s"],
        # > 0 means ours is worse; mean over seeds of the relative difference
        "cosine_gap": float(np.mean([r["ours_cosine"] / r["sklearn_cosine"] - 1 for r in rows])),
        "euclidean_gap": float(
            np.mean([r["ours_euclidean"] / r["sklearn_euclidean"] - 1 for r in rows])
        ),
    }


def write_full_pool(directory: Path, seed: int) -> tuple[list[Path], list[Path]]:
    """Router-data files and pool JSONL files of the real pool's sizes."""
    router_paths, pool_paths = [], []
    for index, (dataset, n) in enumerate(POOL_SIZES.items()):
        quality, probs = router_like(n, 16, 64, n_groups=40, seed=seed + index)
        ids = [f"{dataset}_{i}" for i in range(n)]
        path = directory / f"{dataset}_router_data.pt"
        torch.save(
            {
                "quality_score": quality,
                "moe_probs": probs,
                "sample_ids": ids,
                "dataset": dataset,
                "metadata": {"generator": "benchmarks/clustering.py", "seed": seed + index},
            },
            path,
        )
        del quality, probs
        pool = directory / f"{dataset}.jsonl"
        with pool.open("w", encoding="utf-8") as handle:
            for sample_id in ids:
                record = {
                    "dataset": dataset,
                    "id": sample_id,
                    "messages": [
                        {"role": "user", "content": f"Question {sample_id}?"},
                        {"role": "assistant", "content": f"Answer to {sample_id}."},
                    ],
                }
                handle.write(json.dumps(record) + "\n")
        router_paths.append(path)
        pool_paths.append(pool)
    return router_paths, pool_paths


def _tree_pss_bytes(pid: int) -> int:
    """Proportional set size of a process and its descendants (shared pages counted once)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            total += sum(_tree_pss_bytes(int(child)) for child in children)
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return total


class MemorySampler:
    """Samples the PSS of this process tree every ``interval`` seconds; keeps the peak."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_pss_bytes(os.getpid()))
            self._stop.wait(interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def full_child(args: argparse.Namespace) -> None:
    """Runs in a child process so that its peak memory is its own."""
    import logging

    from selectmoe.workflow.select_job import run_select_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    directory = Path(args.full_child)
    router_paths = [directory / f"{d}_router_data.pt" for d in POOL_SIZES]
    pool_paths = [directory / f"{d}.jsonl" for d in POOL_SIZES]
    params = {
        "auto_k": True,
        "k_range": [10, 100],
        "n_init": args.n_init,
        "device": args.device,
        "enable_parallel_kmeans": args.processes[0] > 1,
        "parallel_processes": args.processes[0],
    }
    start = time.perf_counter()
    sampler = MemorySampler()
    with sampler:
        info = run_select_job(
            router_paths,
            pool_paths,
            output_jsonl=directory / "out" / "selected_data.jsonl",
            output_json=directory / "out" / "selection.json",
            plot_dir=directory / "out" / "plots",
            method="selectmoe",
            selection_percentage=0.05,
            clustering_method="kmeans",
            clustering_params=params,
            seed=42,
            debug_print=args.verbose,
        )
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_gb": peak_gb,
                "peak_tree_pss_gb": sampler.peak / 1e9,
                "k": info["k"],
                "k_selection": info["k_selection"],
                "ks": info["ks"],
                "n_selected": info["n_selected"],
                "timings": info["timings"],
                "clustering_seconds": info["clustering"].get("seconds"),
                "n_iters": info["clustering"].get("n_iters"),
                "peak_gpu_gb": (
                    torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0
                ),
            }
        )
    )


def bench_full(args: argparse.Namespace) -> list[dict]:
    """One child run of ``run_selection`` per process count, on the same generated data."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="selectmoe-bench-") as tmp:
        start = time.perf_counter()
        write_full_pool(Path(tmp), seed=0)
        generate_s = time.perf_counter() - start
        for processes in args.processes:
            command = [
                sys.executable,
                __file__,
                "--full-child",
                tmp,
                "--n-init",
                str(args.n_init),
                "--processes",
                str(processes),
                "--device",
                args.device,
            ]
            if args.verbose:
                command.append("--verbose")
            # With --verbose the child's log goes straight to our stderr (progress of a long run).
            done = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=None if args.verbose else subprocess.PIPE,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                sys.stderr.write(done.stderr or "")
                raise SystemExit(f"full-pool run failed with status {done.returncode}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result.update(generate_s=generate_s, processes=processes)
            print(json.dumps(result), flush=True)
            runs.append(result)
    return runs


def markdown(results: dict, args: argparse.Namespace) -> str:
    sil, km, full = results.get("silhouette"), results.get("kmeans"), results.get("full")
    begin, end = section_markers("clustering", args.device)
    where = "CPU" if args.device == "cpu" else args.device.upper()
    gpu = ""
    if args.device.startswith("cuda"):
        gpu = f"; ours on {torch.cuda.get_device_name(0)}"
    command = "python benchmarks/clustering.py" + (
        f" --device {args.device} --processes {' '.join(map(str, args.processes))}"
        if args.device != "cpu"
        else ""
    )
    lines = [
        begin,
        f"## Clustering and selection, {where} (`{command}`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}; load average "
        f"at start {results['load_average']}. Measured {results['date']}. scikit-learn runs on "
        "the CPU.",
        "",
    ]
    if sil:
        lines += [
            f"### Silhouette, cosine, N=20,000, D=64, K=50 ({where})",
            "",
            "| | scikit-learn | selectmoe | speed-up | max \\|Δ score\\| | max \\|Δ s_i\\| |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| time | {sil['sklearn_s']:.3f} s | {sil['ours_s'] * 1000:.1f} ms | "
            f"{sil['speedup']:.0f}x | {sil['score_diff']:.1e} | {sil['max_sample_diff']:.1e} |",
            "",
        ]
    if km:
        lines += [
            f"### k-means, N=20,000, D=64 (4 layers x 16 experts, router-like), k=50, "
            f"n_init={km['n_init']} (mean of {km['repeats']} seeds)",
            "",
            "scikit-learn fits the L2-normalised data; both partitions are scored under both "
            "objectives (gap > 0: ours is worse).",
            "",
            "| | scikit-learn | selectmoe | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| time per fit | {km['sklearn_s']:.3f} s | {km['ours_s']:.3f} s | "
            f"{km['speedup']:.2f}x faster |",
            f"| ours: sum 2(1 - cos), unit centroids | "
            f"{np.mean([r['sklearn_cosine'] for r in km['rows']]):.2f} | "
            f"{np.mean([r['ours_cosine'] for r in km['rows']]):.2f} | "
            f"gap {km['cosine_gap']:+.3%} |",
            f"| scikit-learn: sum \\|x̂ - mean\\|² | "
            f"{np.mean([r['sklearn_euclidean'] for r in km['rows']]):.2f} | "
            f"{np.mean([r['ours_euclidean'] for r in km['rows']]):.2f} | "
            f"gap {km['euclidean_gap']:+.3%} |",
            f"| iterations | {np.mean([r['sklearn_iter'] for r in km['rows']]):.1f} | "
            f"{np.mean([r['ours_iter'] for r in km['rows']]):.1f} | |",
            "",
        ]
    if full:
        first = full[0]
        lines += [
            f"### `select` on the full pool's shape: 270,679 x 16 layers x 64 experts ({where})",
            "",
            f"Method `selectmoe`, 5%, automatic k over [10, 100] (k step "
            f"{first['ks'][1] - first['ks'][0]}, {len(first['ks'])} candidates), n_init="
            f"{args.n_init}; synthetic router data with 40 routing patterns per dataset, pool "
            "JSONL of the same ids. Processes: `clustering_params.parallel_processes` (each with "
            "2 / processes torch threads).",
            "",
            "| processes | wall time | peak memory | chosen k | load router data | load pool | "
            "clustering | write |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in full:
            t = run["timings"]
            lines.append(
                f"| {run['processes']} | {run['wall_s']:.0f} s | "
                f"{max(run['peak_rss_gb'], run['peak_tree_pss_gb']):.2f} GB | {run['k']} "
                f"({run['k_selection']}) | {t['load_router_data']:.1f} s | "
                f"{t['load_pool']:.1f} s | {t['clustering']:.1f} s | "
                f"{t.get('write_jsonl', 0) + t.get('plots', 0):.1f} s |"
            )
            if run.get("peak_gpu_gb"):
                lines.append(f"|  | peak GPU memory {run['peak_gpu_gb']:.2f} GB | | | | | | |")
        lines += [
            "",
            "Peak memory: the larger of the selection process's peak RSS and the peak "
            "proportional set size of its process tree (workers and shared memory included, "
            "sampled every 0.25 s).",
            "",
        ]
        for run in full:
            seconds = {key: round(value, 1) for key, value in run["clustering_seconds"].items()}
            lines.append(
                f"- {run['processes']} process(es): clustering seconds {json.dumps(seconds)} "
                "(k-means and silhouette summed over processes, sweep_wall is wall time); "
                f"Lloyd iterations per k {run['n_iters']}."
            )
        lines.append("")
    lines.append(end)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-full", action="store_true", help="skip the full-pool run")
    parser.add_argument("--n-init", type=int, default=1, help="n_init of the full-pool run")
    parser.add_argument("--kmeans-n-init", type=int, default=3, help="n_init of benchmark 2")
    parser.add_argument("--repeats", type=int, default=5, help="seeds in benchmark 2")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="processes of the k sweep; one full-pool run per value",
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--device", default="cpu", help="device of ours: cpu, cuda, cuda:1")
    parser.add_argument("--full-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.full_child:
        full_child(args)
        return
    results: dict = {
        "load_average": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    results["silhouette"] = bench_silhouette()
    print(json.dumps(results["silhouette"]), flush=True)
    results["kmeans"] = bench_kmeans(args.kmeans_n_init, args.repeats)
    print(json.dumps({k: v for k, v in results["kmeans"].items() if k != "rows"}), flush=True)
    if not args.skip_full:
        results["full"] = bench_full(args)
    section = markdown(results, args)
    print(section)
    if not args.no_write:
        replace_section(args.output, section, section_markers("clustering", args.device))


if __name__ == "__main__":
    main()
