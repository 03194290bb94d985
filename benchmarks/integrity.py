"""What checking digests costs: SHA-256 of checkpoint-sized files against the write that made them.

Every training checkpoint and LESS gradient shard gets a digest sidecar when it is written, and is
hashed again before it is loaded; every job hashes its input files against their provenance
(issue 23). This benchmark measures, in one run on a file of ``--gib`` GiB (default 1):

1. ``torch.save`` of a float32 tensor of that size (the write a checkpoint costs anyway);
2. ``selectmoe.hashing.file_sha256`` of the file (what a sidecar or a check adds);
3. the reference: coreutils ``sha256sum`` on the same file, and ``hashlib.file_digest``;

with seconds per GiB and the ratios to the write and to ``sha256sum``. The page cache holds the
file after the write, so the hashing figures are CPU-bound (a cold network filesystem is slower
for both the check and the load it precedes).

Usage::

    python benchmarks/integrity.py            # 1 GiB; results into benchmarks/RESULTS.md
    python benchmarks/integrity.py --gib 4

The results replace the section between ``<!-- integrity:begin -->`` and
``<!-- integrity:end -->`` of the output file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from results_md import machine_line, replace_section, section_markers

from selectmoe.hashing import file_sha256


def _timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


def measure(gib: float, directory: Path) -> dict:
    """Seconds of each step on a file of ``gib`` GiB written under ``directory``."""
    path = directory / "checkpoint.pt"
    tensor = torch.rand(int(gib * (1 << 30)) // 4)
    write_s, _ = _timed(lambda: torch.save({"trainable": tensor}, path))
    size = path.stat().st_size
    ours_s, ours = _timed(lambda: file_sha256(path))

    def reference_hashlib() -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    hashlib_s, theirs = _timed(reference_hashlib)
    coreutils_s, output = _timed(
        lambda: subprocess.run(["sha256sum", os.fspath(path)], capture_output=True, check=True)
    )
    assert ours == theirs == output.stdout.split()[0].decode(), "the digests differ"
    return {
        "gib": size / (1 << 30),
        "write_s": write_s,
        "ours_s": ours_s,
        "hashlib_s": hashlib_s,
        "sha256sum_s": coreutils_s,
    }


def _section(results: dict, command: str) -> str:
    markers = section_markers("integrity", "cpu")
    gib = results["gib"]
    rows = [
        ("`torch.save` (the checkpoint's own write)", results["write_s"]),
        ("`selectmoe.hashing.file_sha256` (a sidecar, or a check)", results["ours_s"]),
        ("`hashlib.file_digest` (reference)", results["hashlib_s"]),
        ("`sha256sum` (coreutils, reference)", results["sha256sum_s"]),
    ]
    lines = [
        markers[0],
        "## What checking digests costs",
        "",
        f"`{command}` at {results['commit']}. {machine_line(results, torch.device('cpu'))}",
        "",
        f"One float32 checkpoint of {gib:.2f} GiB, in the page cache after its write:",
        "",
        "| step | seconds | s per GiB | vs the write | vs sha256sum |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds in rows:
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / gib:.2f} | "
            f"{seconds / results['write_s']:.2f}x | {seconds / results['sha256sum_s']:.2f}x |"
        )
    lines += [
        "",
        "A checkpoint costs one hash when written and one when a resumed run checks it; a job's "
        "input files one hash each before the job reads them (models and other directories are "
        "not hashed per job).",
        markers[1],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="RESULTS.md"
    )
    args = parser.parse_args()
    results = {"load_start": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
    with tempfile.TemporaryDirectory() as directory:
        results.update(measure(args.gib, Path(directory)))
    results["load_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    results["date"] = dt.date.today().isoformat()
    results["commit"] = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "an unknown commit"
    )
    command = "python benchmarks/integrity.py" + (f" --gib {args.gib:g}" if args.gib != 1 else "")
    section = _section(results, command)
    print(section)
    replace_section(args.output, section, section_markers("integrity", "cpu"))


if __name__ == "__main__":
    main()
