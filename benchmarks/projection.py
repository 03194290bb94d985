"""LESS's gradient projection: time per example of each projection against the matmul floor.

The paper's LESS projects every example's LoRA gradient (P = 134M parameters for Llama-2-7B at
rank 128 on q/k/v/o) to d = 8,192. A dense Rademacher matrix of that size (4.4 TB in float32)
cannot be kept, so ``RademacherProjection`` regenerates it block by block for every batch, and
generating costs more than multiplying. ``SparseSignProjection`` generates nothing (seeded
hashing, ``targeted.less.projection: sparse``). Scaled to this machine (P / 256, d / 8, batch 4,
as issue 24 measured), one run:

1. the floor: the batch times the matrix held in memory (the ``2 P d`` FLOPs ``selectmoe plan``
   counts), with the matrix generated once beforehand and not timed;
2. ``RademacherProjection.project`` (the matrix regenerated, since it exceeds the 256 MiB cache);
3. ``SparseSignProjection.project``;

each as seconds per example and as a ratio to the floor.

Usage::

    python benchmarks/projection.py                 # results into benchmarks/RESULTS.md
    python benchmarks/projection.py --params 131072 --dim 512   # a quicker look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import time
from pathlib import Path

import torch
from results_md import machine_line, replace_section, section_markers

from selectmoe.training.gradients import (
    PROJECTION_BLOCK_ROWS,
    RademacherProjection,
    SparseSignProjection,
)


def _best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _floor(
    dense: RademacherProjection, vectors: torch.Tensor, repeats: int
) -> tuple[float, torch.Tensor]:
    """Seconds of ``vectors @ matrix`` with the whole matrix generated beforehand, and the
    product (the matrix is freed on return)."""
    blocks = -(-dense.n_params // PROJECTION_BLOCK_ROWS)
    held = torch.cat([dense.block(i, torch.device("cpu")) for i in range(blocks)])
    return _best_of(repeats, lambda: vectors @ held), vectors @ held


def measure(params: int, dim: int, batch: int, repeats: int) -> dict:
    """Seconds per example of the floor and of both projections."""
    vectors = torch.randn(batch, params, generator=torch.Generator().manual_seed(0))
    dense = RademacherProjection(params, dim, seed=0)
    floor, expected = _floor(dense, vectors, repeats)
    rademacher = _best_of(1, lambda: dense.project(vectors))
    assert torch.allclose(dense.project(vectors[:1]), expected[:1], rtol=1e-4, atol=1e-3)
    sparse = SparseSignProjection(params, dim, seed=0)
    sparse_s = _best_of(repeats, lambda: sparse.project(vectors))
    return {
        "params": params,
        "dim": dim,
        "batch": batch,
        "floor": floor / batch,
        "rademacher": rademacher / batch,
        "sparse": sparse_s / batch,
    }


def _section(results: dict, command: str) -> str:
    markers = section_markers("projection", "cpu")
    floor = results["floor"]
    rows = [
        ("matmul with the matrix held (the floor, `2 P d` FLOPs)", floor),
        ("`rademacher`: `RademacherProjection`, regenerated per batch", results["rademacher"]),
        ("`sparse`: `SparseSignProjection`, seeded hashing", results["sparse"]),
    ]
    lines = [
        markers[0],
        "## LESS's gradient projection against the matmul floor",
        "",
        f"`{command}` at {results['commit']}. {machine_line(results, torch.device('cpu'))}",
        "",
        f"P = {results['params']:,} LoRA parameters (the paper's 134M / 256), d = "
        f"{results['dim']:,} (8,192 / 8), batches of {results['batch']}:",
        "",
        "| projection | s per example | vs the floor |",
        "| --- | ---: | ---: |",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.4f} | {seconds / floor:.2f}x |")
    lines += [
        "",
        "Generating the dense matrix is what the Rademacher projection spends its time on; at the "
        "paper's size it is regenerated for every batch (the matrix would take 4.4 TB). The "
        "sparse projection draws nothing: each parameter's four coordinates and signs are a few "
        "integer operations, and projecting is a scatter-add of `4 P` values.",
        markers[1],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--params", type=int, default=524_288)
    parser.add_argument("--dim", type=int, default=1_024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="RESULTS.md"
    )
    args = parser.parse_args()
    results = {"load_start": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
    results.update(measure(args.params, args.dim, args.batch, args.repeats))
    results["load_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    results["date"] = dt.date.today().isoformat()
    results["commit"] = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "an unknown commit"
    )
    command = "python benchmarks/projection.py"
    if (args.params, args.dim, args.batch) != (524_288, 1_024, 4):
        command += f" --params {args.params} --dim {args.dim} --batch {args.batch}"
    section = _section(results, command)
    print(section)
    replace_section(args.output, section, section_markers("projection", "cpu"))


if __name__ == "__main__":
    main()
