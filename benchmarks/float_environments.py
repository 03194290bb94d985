"""Float environments: where do two machines' runs of the same commit part?

The workflow's selection targets (every ``select`` job's ``selected_data.jsonl``, with all they
need: demo data, converted model, warmup, router data, clusters, RDS / LESS features) are run
once per *float environment* on this machine, each in its own ``--directory``, and the artefacts
are then compared in pipeline order with the first environment's:

- ``native``: ``ATEN_CPU_CAPABILITY`` set to what ``torch.backends.cpu.get_cpu_capability()``
  reports (e.g. ``avx2``): the SIMD kernels this CPU kind gets;
- ``control``: ``native`` again in another directory: what a plain rerun changes (nothing, on
  a CPU);
- ``default``: ``ATEN_CPU_CAPABILITY=default``: ATen's kernels without SIMD, as a CPU kind
  without AVX would run them;
- ``default_shared``: ``default`` starting from a copy of the first environment's ``demo/``
  (pool, tokenizer, pretrained base and target models): two machines that download the same
  OLMoE and pool, so that the first stage of the real pipeline that parts shows;
- ``threads2``: every float rule run with 2 threads (``--set-threads``) instead of the config's
  1. Setting ``OMP_NUM_THREADS`` in the caller's environment would change nothing: Snakemake
  sets it (and ``MKL_NUM_THREADS``, ...) to the job's threads, and the job scripts call
  ``torch.set_num_threads(threads)``.

For every artefact: are the two files byte-identical (or equal but for timings), the largest
absolute (and relative) difference of its tensors, and, for the discrete ones, the consequence:
the chosen k and the adjusted Rand index of the cluster labels, the Jaccard index of the selected
(dataset, id) sets and how many examples were swapped.

Usage::

    .venv/bin/python benchmarks/float_environments.py \\
        --configfile config/config.yaml --configfile config/small.yaml \\
        --workdir /tmp/float_envs --environments native,default,default_shared

An environment whose selections are already there is not run again (Snakemake finds nothing to
do). The results replace the ``float-environments`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from results_md import replace_section

from selectmoe.workflow.config import merge_configs, with_defaults
from selectmoe.workflow.layout import Layout

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
TITLE = "## Float environments: where two machines' runs part"
MARKERS = ("<!-- float-environments:begin -->", "<!-- float-environments:end -->")
#: The rules whose jobs compute with floats (``threads2`` runs them with 2 threads).
FLOAT_RULES = (
    "build_demo",
    "build_demo_target",
    "convert",
    "warmup",
    "score",
    "cluster",
    "represent",
    "less_warmup",
    "less_gradients",
    "select",
)
#: Pipeline order of the artefacts under ``results_dir``: a file's unit is the first pattern it
#: matches; a pattern ending in ``/`` makes the directory one unit.
ORDER = (
    "demo/pool/*",
    "demo/noise_labels.jsonl",
    "demo/queries.jsonl",
    "demo/tasks/",
    "demo/tokenizer/",
    "demo/base_model/",
    "demo/target_model/",
    "demo/demo_manifest.json",
    "data/*",
    "models/*/converted/",
    "models/*/verify_conversion.json",
    "warmup/*",
    "router_data/untrained/*",
    "router_data/*",
    "clusters/*",
    "targeted/rds/*",
    "targeted/less/*/warmup/",
    "targeted/less/*",
    "artefacts/*",
    "selection/*",
)
#: Not compared: logs, timings, checkpoints, provenance records, plots.
SKIPPED = (
    "logs/*",
    "benchmarks/*",
    "checkpoints/*",
    "report/*",
    "*.provenance.json",
    "*/plots/*",
    "*.snakemake_timestamp",
)
#: JSON keys that hold wall-clock measurements (ignored when comparing content).
TIMING_KEYS = frozenset(
    {"timings", "wall_time_s", "finished", "elapsed_s", "seconds", "tokens_per_second"}
)


@dataclass(frozen=True)
class Environment:
    """A float environment: variables for the run and extra Snakemake arguments."""

    name: str
    variables: Mapping[str, str]
    arguments: tuple[str, ...] = ()
    description: str = ""
    #: Start from a copy of the reference run's ``demo/`` (its pool, tokenizer and pretrained
    #: models), as two machines that download the same base model and pool do.
    shared_demo: bool = False


def environments(native: str) -> dict[str, Environment]:
    """The environments this benchmark knows, ``native`` being this CPU's ATen capability."""
    threads = tuple(f"{rule}=2" for rule in FLOAT_RULES)
    return {
        "native": Environment(
            "native", {"ATEN_CPU_CAPABILITY": native}, (), f"ATEN_CPU_CAPABILITY={native}"
        ),
        "control": Environment(
            "control",
            {"ATEN_CPU_CAPABILITY": native},
            (),
            f"ATEN_CPU_CAPABILITY={native} again, in another directory: the rerun control",
        ),
        "default": Environment(
            "default", {"ATEN_CPU_CAPABILITY": "default"}, (), "ATEN_CPU_CAPABILITY=default"
        ),
        "default_shared": Environment(
            "default_shared",
            {"ATEN_CPU_CAPABILITY": "default"},
            (),
            "ATEN_CPU_CAPABILITY=default, demo/ (pool, base and target models) copied from "
            "the reference run",
            shared_demo=True,
        ),
        "threads2": Environment(
            "threads2",
            {"ATEN_CPU_CAPABILITY": native},
            ("--set-threads", *threads),
            f"ATEN_CPU_CAPABILITY={native}, float rules with 2 threads (--set-threads)",
        ),
    }


# ------------------------------------------------------------------------------ config, runs


def merged_config(paths: Sequence[Path]) -> dict[str, Any]:
    """The validated config of several files read in order (with the schema's defaults)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merge_configs(merged, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return with_defaults(merged)


def selection_targets(layout: Layout) -> list[str]:
    """Every ``select`` job's ``selected_data.jsonl`` (relative to the run's directory)."""
    return [str(layout.selection_file(p, "selected_data.jsonl")) for p in layout.selection_paths()]


def snakemake_command(
    environment: Environment, configfiles: Sequence[Path], targets: Sequence[str], directory: Path
) -> list[str]:
    executable = Path(sys.executable).with_name("snakemake")
    return [
        str(executable if executable.exists() else "snakemake"),
        *targets,
        "--cores",
        "2",
        "--rerun-incomplete",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(directory),
        *environment.arguments,
        "--configfile",
        *(str(path) for path in configfiles),
    ]


def job_seconds(results: Path) -> float:
    """The summed wall time of the run's jobs (Snakemake's benchmark files)."""
    total = 0.0
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        with tsv.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        total += sum(float(row["s"]) for row in rows if row.get("s"))
    return total


def run_commits(results: Path) -> str:
    """The commits the run's jobs recorded in their provenance (``*`` after one with
    uncommitted changes in the checkout), most jobs first."""
    counts: dict[str, int] = {}
    for record in results.rglob("*provenance.json"):
        git = json.loads(record.read_text(encoding="utf-8")).get("software", {}).get("git", {})
        if git.get("commit"):
            name = git["commit"][:7] + ("*" if git.get("dirty") else "")
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({n})" for name, n in sorted(counts.items(), key=lambda i: -i[1]))


def run_environment(
    environment: Environment,
    configfiles: Sequence[Path],
    targets: Sequence[str],
    workdir: Path,
    results_dir: str,
    reference: str,
) -> dict[str, Any]:
    """Run the selection targets in ``workdir/<env>``; the wall time of the run that did the
    work is kept in ``workdir/runs.json`` (a later call finds nothing to do)."""
    directory = workdir / environment.name
    directory.mkdir(parents=True, exist_ok=True)
    demo = directory / results_dir / "demo"
    if environment.shared_demo and not demo.exists():
        # copy2 keeps the modification times, so Snakemake takes the copy as up to date
        shutil.copytree(
            workdir / reference / results_dir / "demo", demo, copy_function=shutil.copy2
        )
    command = snakemake_command(environment, configfiles, targets, directory)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(environment.variables)
    log = workdir / f"{environment.name}.snakemake.log"
    print(f"[{environment.name}] {environment.description}: log {log}", flush=True)
    started = time.perf_counter()
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n")
        handle.flush()
        code = subprocess.run(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
        ).returncode
    wall = time.perf_counter() - started
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise SystemExit(f"[{environment.name}] snakemake failed ({code}):\n" + "\n".join(tail))
    ledger_path = workdir / "runs.json"
    ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.exists() else {}
    record = ledger.get(environment.name, {})
    if wall > 60 or "wall_s" not in record:  # a run that found nothing to do keeps the old wall
        record = {"wall_s": round(wall, 1), "command": shlex.join(command)}
    record["job_s"] = round(job_seconds(directory / results_dir), 1)
    record["commits"] = run_commits(directory / results_dir)
    ledger[environment.name] = record
    ledger_path.write_text(json.dumps(ledger, indent=2), encoding="utf-8")
    print(f"[{environment.name}] done: {record}", flush=True)
    return record


# ------------------------------------------------------------------------------ comparison


@dataclass
class Diff:
    """One artefact of two runs compared."""

    artefact: str
    identical: str  # "yes", "content" (equal but for timings) or "no"
    max_abs: float | None = None
    max_rel: float | None = None
    consequence: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def unit_of(relative: str) -> tuple[int, str] | None:
    """The position in :data:`ORDER` and the unit (a file or a directory) of a result file."""
    if any(fnmatch(relative, pattern) for pattern in SKIPPED):
        return None
    for position, pattern in enumerate(ORDER):
        if pattern == "selection/*" and fnmatch(relative, pattern):
            return position, relative.rsplit("/", 1)[0]  # a selection's directory
        if pattern.endswith("/"):
            prefix = pattern.rstrip("/")
            parts = prefix.count("/") + 1
            head = "/".join(relative.split("/")[:parts])
            if fnmatch(head, prefix) and relative.count("/") >= parts:
                return position, head
        elif fnmatch(relative, pattern):
            return position, relative
    return len(ORDER), relative


def units(results: Path) -> list[tuple[int, str]]:
    found = set()
    for path in results.rglob("*"):
        if path.is_file():
            unit = unit_of(path.relative_to(results).as_posix())
            if unit is not None:
                found.add(unit)
    return sorted(found)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts / lists / tuples by ``a.b[0]`` keys (tensors and arrays as leaves)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple) and value and not isinstance(value[0], str | int):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return value.astype(np.float64)
    if isinstance(value, float):
        return np.asarray([value], dtype=np.float64)
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return np.asarray(value, dtype=np.float64)
    return None


def compare_leaves(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per numeric key (max |a - b|, max |a|); the other keys that differ."""
    numeric: dict[str, tuple[float, float]] = {}
    other = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        x, y = _as_array(a[key]), _as_array(b[key])
        if x is not None and y is not None and x.shape == y.shape:
            if x.size:
                numeric[key] = (float(np.max(np.abs(x - y))), float(np.max(np.abs(x))))
        elif not _equal(a[key], b[key]):
            other.append(key)
    return numeric, other


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray | torch.Tensor) or isinstance(y, np.ndarray | torch.Tensor):
        return type(x) is type(y) and x.shape == y.shape and bool((x == y).all())
    return _strip_timings(x) == _strip_timings(y)


def _hash_of_unrooted(key: str, a: Path, b: Path, runs: tuple[Path, Path]) -> bool:
    """Whether ``key`` is a manifest's size or hash (``files.<path>.sha256``) of a file that
    differs between the runs only by naming the run's directory."""
    if not key.startswith("files.") or not key.endswith((".sha256", ".bytes")):
        return False
    relative = key[len("files.") :].rsplit(".", 1)[0]
    first, second = a.parent / relative, b.parent / relative
    if not (first.is_file() and second.is_file()):
        return False
    return first.read_bytes().replace(bytes(runs[0]), b"<run>") == second.read_bytes().replace(
        bytes(runs[1]), b"<run>"
    )


def _unrooted(value: Any, run: Path) -> Any:
    """``value`` with the run's directory replaced by ``<run>`` in every string."""
    return json.loads(json.dumps(value).replace(str(run), "<run>"))


def _short(key: str) -> str:
    """A tensor's key without PEFT's wrapping (``base_model.model.``, ``.default``)."""
    return key.replace("trainable.", "").replace("base_model.model.", "").replace(".default", "")


def _strip_timings(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


_SHOWN: set[str] = set()


def load_leaves(path: Path) -> dict[str, Any] | None:
    """A tensor file's leaves (``.pt``, ``.safetensors``, ``.npz``), else None. The structure
    of the first file of each kind is printed."""
    if path.suffix == ".pt":
        payload = torch.load(path, map_location="cpu", weights_only=False)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        payload = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            payload = {key: data[key] for key in data.files}
    else:
        return None
    leaves = flatten(_strip_timings(payload))
    kind = path.parent.parent.name if path.suffix == ".pt" else path.suffix
    if kind not in _SHOWN:
        _SHOWN.add(kind)
        shapes = {
            k: (tuple(v.shape) if hasattr(v, "shape") else type(v).__name__)
            for k, v in list(leaves.items())[:12]
        }
        print(f"  structure of {path.name}: {len(leaves)} leaves, e.g. {shapes}", flush=True)
    return leaves


def _ids(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [(row["dataset"], str(row["id"])) for row in map(json.loads, handle)]


def _fmt(value: float | None) -> str:
    return "" if value is None else ("0" if value == 0 else f"{value:.1e}")


def compare_files(a: Path, b: Path, runs: tuple[Path, Path]) -> Diff:
    """One file of the two runs (``b`` may be missing); ``runs`` are the two runs' directories,
    which a file may name (the demo's lm-eval task files do)."""
    name = a.name
    if not b.exists():
        return Diff(name, "no", consequence="missing in the second run")
    first, second = a.read_bytes(), b.read_bytes()
    if first == second:
        return Diff(name, "yes")
    if first.replace(bytes(runs[0]), b"<run>") == second.replace(bytes(runs[1]), b"<run>"):
        return Diff(name, "content", consequence="equal but for the run's directory")
    leaves_a = load_leaves(a)
    if leaves_a is not None:
        leaves_b = load_leaves(b) or {}
        numeric, other = compare_leaves(leaves_a, leaves_b)
        # an input's hash (router data: metadata.weights_sha256) differs with its input, which
        # is compared on its own row; a warmup file's hash differs with its timings alone
        other = [key for key in other if not key.endswith("sha256")]
        moved = {k: v for k, v in numeric.items() if v[0] > 0}
        worst = max(moved, key=lambda k: moved[k][0], default=None)
        diff = Diff(name, "no" if moved or other else "content")
        if worst is not None:
            diff.max_abs = moved[worst][0]
            diff.max_rel = moved[worst][0] / moved[worst][1] if moved[worst][1] else None
            top = sorted(moved, key=lambda k: -moved[k][0])[:3]
            diff.consequence = (
                f"{len(moved)} of {len(numeric)} tensors differ; largest: "
                + ", ".join(f"{_short(k)} {_fmt(moved[k][0])}" for k in top)
            )
            diff.details["moved"] = {k: moved[k][0] for k in moved}
            diff.details["relative"] = {
                k: moved[k][0] / moved[k][1] if moved[k][1] else None for k in moved
            }
        if other:
            diff.consequence += ("; " if diff.consequence else "") + "other: " + ", ".join(other)
        if diff.identical == "content":
            diff.consequence = "equal but for timings or an input's hash"
        return diff
    if a.suffix == ".json":
        x = json.loads(a.read_text(encoding="utf-8"))
        y = json.loads(b.read_text(encoding="utf-8"))
        if _strip_timings(x) == _strip_timings(y):
            return Diff(name, "content", consequence="equal but for timings")
        if _strip_timings(_unrooted(x, runs[0])) == _strip_timings(_unrooted(y, runs[1])):
            return Diff(name, "content", consequence="equal but for the run's directory")
        numeric, other = compare_leaves(flatten(_strip_timings(x)), flatten(_strip_timings(y)))
        moved = {k: v for k, v in numeric.items() if v[0] > 0}
        other = [k for k in other if not _hash_of_unrooted(k, a, b, runs)]
        if not moved and not other:
            return Diff(name, "content", consequence="equal but for the run's directory")
        worst = max(moved, key=lambda k: moved[k][0], default=None)
        diff = Diff(name, "no", consequence="keys differ: " + ", ".join([*moved, *other][:6]))
        if worst is not None:
            diff.max_abs = moved[worst][0]
            diff.max_rel = moved[worst][0] / moved[worst][1] if moved[worst][1] else None
        return diff
    return Diff(name, "no", consequence="bytes differ")


def compare_unit(unit: str, a_root: Path, b_root: Path) -> Diff:
    """A unit (file or directory) of the two runs, with the consequences of its kind."""
    a, b = a_root / unit, b_root / unit
    if a.is_dir():
        files = sorted(
            p.relative_to(a).as_posix()
            for p in a.rglob("*")
            if p.is_file() and unit_of(f"{unit}/{p.relative_to(a).as_posix()}") is not None
        )
        diffs = [compare_files(a / f, b / f, (a_root.parent, b_root.parent)) for f in files]
        differing = [d for d in diffs if d.identical == "no"]
        if unit.startswith("selection/"):
            return compare_selection(unit, a, b, diffs)
        diff = Diff(unit + "/", "no" if differing else "yes")
        if any(d.identical == "content" for d in diffs) and not differing:
            diff.identical = "content"
        abs_values = [d.max_abs for d in differing if d.max_abs is not None]
        if abs_values:
            worst = max((d for d in differing if d.max_abs is not None), key=lambda d: d.max_abs)
            diff.max_abs, diff.max_rel = worst.max_abs, worst.max_rel
        if differing:
            diff.consequence = f"{len(differing)} of {len(files)} files differ: " + "; ".join(
                f"{d.artefact} ({d.consequence})" for d in differing[:2]
            )
            diff.details["moved"] = {
                key: value for d in differing for key, value in d.details.get("moved", {}).items()
            }
        return diff
    diff = compare_files(a, b, (a_root.parent, b_root.parent))
    diff.artefact = unit
    if unit.startswith("warmup/") and diff.details.get("moved"):
        diff = split_warmup(diff)
    if unit.startswith("clusters/") and diff.identical != "yes":
        diff = compare_clusters(a, b, diff)
    return diff


def split_warmup(diff: Diff) -> Diff:
    """A warmup's difference told apart: its trained weights (``payload["weights"]``, the row's
    max |diff|) and its loss history."""
    moved: dict[str, float] = diff.details["moved"]
    weights = {k: v for k, v in moved.items() if k.startswith("weights.")}
    history = {k: v for k, v in moved.items() if k.startswith("history")}
    parts = []
    if weights:
        worst = max(weights, key=lambda k: weights[k])
        diff.max_abs = weights[worst]
        diff.max_rel = diff.details["relative"][worst]
        parts.append(f"{len(weights)} weight tensors differ, largest {worst[len('weights.') :]}")
    else:
        diff.max_abs = diff.max_rel = None
        parts.append("weights equal")
    if history:
        worst = max(history, key=lambda k: history[k])
        parts.append(
            f"loss history: {len(history)} values differ, largest {_fmt(history[worst])} ({worst})"
        )
    diff.consequence = "; ".join(parts)
    diff.details["moved"], diff.details["history"] = weights, history
    return diff


def compare_clusters(a: Path, b: Path, diff: Diff) -> Diff:
    """The chosen k and the labels' agreement (adjusted Rand index) of two clusterings."""
    from sklearn.metrics import adjusted_rand_score

    x = json.loads(a.read_text(encoding="utf-8"))
    y = json.loads(b.read_text(encoding="utf-8"))
    ari = adjusted_rand_score(x["labels"], y["labels"])
    k = f"k {x['k']}" + ("" if x["k"] == y["k"] else f" vs {y['k']}")
    diff.consequence = f"{k}; label ARI {ari:.3f}" + (
        f"; {diff.consequence}" if diff.identical == "no" else ""
    )
    diff.details.update(k=(x["k"], y["k"]), ari=ari)
    return diff


def compare_selection(unit: str, a: Path, b: Path, diffs: Sequence[Diff]) -> Diff:
    """A selection directory: the selected sets, their order, k, the scores."""
    first, second = _ids(a / "selected_data.jsonl"), _ids(b / "selected_data.jsonl")
    sa, sb = set(first), set(second)
    jaccard = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
    swapped = len(sa - sb)
    bytes_equal = (a / "selected_data.jsonl").read_bytes() == (
        b / "selected_data.jsonl"
    ).read_bytes()
    files_equal = bytes_equal and all(d.identical != "no" for d in diffs)
    diff = Diff(unit, "yes" if files_equal else "no")
    parts = []
    ka = kb = None
    if (a / "selection.json").exists() and (b / "selection.json").exists():
        ka = json.loads((a / "selection.json").read_text(encoding="utf-8")).get("k")
        kb = json.loads((b / "selection.json").read_text(encoding="utf-8")).get("k")
        if ka is not None:
            parts.append(f"k {ka}" + ("" if ka == kb else f" vs {kb}"))
    if sa == sb:
        parts.append("same set" + ("" if first == second else ", other order"))
    else:
        parts.append(f"Jaccard {jaccard:.3f}, {swapped} of {len(sa)} swapped")
    score_diff = next((d for d in diffs if d.artefact == "scores.npz"), None)
    moved = score_diff.details.get("moved", {}) if score_diff is not None else {}
    if score_diff is not None and "score" in moved:  # the scores, not the clusters or flags
        diff.max_abs, diff.max_rel = moved["score"], score_diff.details["relative"]["score"]
        parts.append(f"scores max |diff| {_fmt(diff.max_abs)}")
    if not bytes_equal and sa == sb and first == second and diff.max_abs is None:
        parts.append("scores written differ")
    if not files_equal and bytes_equal and diff.max_abs is None:
        parts += [f"{d.artefact}: {d.consequence}" for d in diffs if d.identical == "no"]
    diff.consequence = "; ".join(parts)
    diff.details.update(jaccard=jaccard, swapped=swapped, n=len(sa), k=(ka, kb))
    return diff


def compare_runs(first: Path, second: Path) -> list[Diff]:
    """Every unit of the first run against the second, in pipeline order."""
    rows = []
    for position, unit in units(first):
        diff = compare_unit(unit, first, second)
        diff.details["stage"] = ORDER[position] if position < len(ORDER) else "other"
        rows.append(diff)
    return rows


# ------------------------------------------------------------------------------ report

#: Files of one job (one per dataset) shown as one row of the markdown table.
GROUPS = (
    (re.compile(r"^demo/pool/.+$"), "demo/pool/{dataset}/{dataset}_data.jsonl"),
    (
        re.compile(r"^(router_data/[^/]+/r\d+)/[^/]+_router_data\.pt$"),
        r"\1/{dataset}_router_data.pt",
    ),
    (
        re.compile(r"^(targeted/rds|targeted/less/r\d+)/[^/]+_features\.pt$"),
        r"\1/{part}_features.pt",
    ),
)


def group_rows(rows: Sequence[Diff]) -> list[Diff]:
    """Rows of one job's per-dataset files merged (the largest difference and its file)."""
    grouped: dict[str, list[Diff]] = {}
    for row in rows:
        key = row.artefact
        for pattern, template in GROUPS:
            if pattern.match(row.artefact):
                key = pattern.sub(template, row.artefact)
                break
        grouped.setdefault(key, []).append(row)
    merged = []
    for key, members in grouped.items():
        if len(members) == 1:
            merged.append(members[0])
            continue
        differing = [m for m in members if m.identical == "no"]
        row = Diff(key, "no" if differing else "yes")
        if not differing and any(m.identical == "content" for m in members):
            row.identical = "content"
        sized = [m for m in differing if m.max_abs is not None]
        if sized:
            worst = max(sized, key=lambda m: m.max_abs or 0.0)
            row.max_abs, row.max_rel = worst.max_abs, worst.max_rel
            per_key: dict[str, float] = {}
            for member in differing:
                for key, value in member.details.get("moved", {}).items():
                    per_key[key] = max(value, per_key.get(key, 0.0))
            row.details["moved"] = per_key
            keys = sorted(per_key, key=lambda k: -per_key[k])
            row.consequence = (
                f"{len(differing)} of {len(members)} files differ; per key: "
                + ", ".join(f"{_short(k)} {_fmt(per_key[k])}" for k in keys[:8])
            )
        elif differing:
            row.consequence = f"{len(differing)} of {len(members)} files differ"
        row.details["stage"] = members[0].details.get("stage")
        merged.append(row)
    return merged


def table(rows: Iterable[Diff]) -> list[str]:
    lines = [
        "| artefact | identical? | max \\|diff\\| | max rel | consequence |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        consequence = row.consequence.replace("|", "\\|")
        lines.append(
            f"| `{row.artefact}` | {row.identical} | {_fmt(row.max_abs)} | "
            f"{_fmt(row.max_rel)} | {consequence} |"
        )
    return lines


#: Stages whose largest difference the reading names (label, prefix of the artefacts).
STAGE_NAMES = (
    ("the converted model", "models/"),
    ("the warmup weights", "warmup/"),
    ("the router data", "router_data/"),
    ("the RDS features", "targeted/rds/"),
    ("the LESS features", "targeted/less/"),
)


def _stage_maxima(rows: Sequence[Diff]) -> list[str]:
    parts = []
    for label, prefix in STAGE_NAMES:
        sized = [r for r in rows if r.artefact.startswith(prefix) and r.max_abs is not None]
        if sized:
            worst = max(sized, key=lambda r: r.max_abs or 0.0)
            moved = worst.details.get("moved", {})
            if prefix == "warmup/":
                moved = {k: v for k, v in moved.items() if k.startswith("weights.")}
            key = max(moved, key=lambda k: moved[k], default=None)
            where = f" ({_short(key)})" if key and key != "features" else ""
            parts.append(f"{_fmt(worst.max_abs)} in {label}{where}")
    return parts


def reading(rows: Sequence[Diff], first_env: str, second_env: str) -> str:
    """A few sentences on where the runs part and what that does to k and the selections."""
    differing = [r for r in rows if r.identical == "no"]
    if not differing:
        return (
            f"All {len(rows)} artefacts of `{first_env}` and `{second_env}` are equal (byte for "
            "byte, or but for timings and the run's directory): these environments do not part "
            "on this config."
        )
    first = differing[0]
    moved = first.details.get("moved", {})
    top = sorted(moved, key=lambda k: -moved[k])[:3]
    size = (
        f"by at most {_fmt(first.max_abs)} (relative {_fmt(first.max_rel)}; "
        f"{len(moved)} tensors differ, largest {', '.join(_short(k) for k in top)})"
        if first.max_abs is not None
        else f"({first.consequence})"
    )
    sentences = [
        f"The first artefact that differs between `{first_env}` and `{second_env}` is "
        f"`{first.artefact}`, {size}; every artefact before it in pipeline order is equal (byte "
        "for byte, or but for timings and the run's directory)."
    ]
    if moved and all("quality_gate" in key for key in moved):
        sentences.append(
            "Only the quality gates differ there, the tensors that `convert` draws with "
            "`torch.randn`: its vectorised normal sampler rounds the last bit according to the "
            "CPU's kernels, so the same seed gives gates one ulp apart."
        )
    if first.artefact.startswith("demo/"):
        sentences.append(
            "`demo/` holds the demo's own pretrained models, which a real run downloads instead; "
            "`default_shared` starts from the reference run's copy of them."
        )
    later = rows[rows.index(first) + 1 :]
    maxima = _stage_maxima(later)
    if maxima:
        sentences.append("Downstream the difference reaches " + ", ".join(maxima) + ".")
    clusters = [r for r in rows if r.artefact.startswith("clusters/")]
    if clusters:
        k_changed = [r for r in clusters if len(set(r.details.get("k", ()))) > 1]
        aris = [r.details["ari"] for r in clusters if "ari" in r.details]
        if k_changed:
            sentences.append(
                f"{len(k_changed)} of {len(clusters)} clusterings choose another k ("
                + ", ".join(
                    f"`{r.artefact}` {r.details['k'][0]}→{r.details['k'][1]}" for r in k_changed
                )
                + ")."
            )
        elif aris and min(aris) < 1:
            sentences.append(
                f"Every clustering keeps its k, but the labels move: adjusted Rand index "
                f"{min(aris):.3f} at worst."
            )
        elif aris:
            sentences.append(
                "Every clustering keeps its k and its labels; only the inertia and silhouette "
                "curves move."
            )
        else:
            sentences.append("Every clustering is byte-identical.")
    selections = [r for r in rows if r.artefact.startswith("selection/")]
    if selections:
        changed = [r for r in selections if r.details.get("swapped")]
        reordered = [
            r for r in selections if not r.details.get("swapped") and "other order" in r.consequence
        ]
        scored = [r for r in selections if r.identical == "no"]
        if changed:
            worst = min(changed, key=lambda r: r.details["jaccard"])
            sentences.append(
                f"{len(changed)} of {len(selections)} selections choose another set; the worst, "
                f"`{worst.artefact}`, swaps {worst.details['swapped']} of {worst.details['n']} "
                f"examples (Jaccard {worst.details['jaccard']:.3f})."
            )
        else:
            sentences.append(
                f"All {len(selections)} selections keep their examples; {len(scored)} write "
                "scores that differ"
                + (f", by up to {_fmt(max(r.max_abs or 0.0 for r in scored))}." if scored else ".")
            )
        if reordered:
            lists = "selection lists" if len(reordered) == 1 else "selections list"
            sentences.append(
                f"{len(reordered)} {lists}"
                " the same examples in another order (scores that tie, or nearly, swap places); "
                "the finetune shuffles the examples from their file "
                "order, so another order is another training run."
            )
    return " ".join(sentences)


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", action="append", required=True, type=Path)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--environments", default="native,default")
    parser.add_argument("--results-md", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-results-md", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)

    native = torch.backends.cpu.get_cpu_capability().lower()
    known = environments(native)
    chosen = [name.strip() for name in args.environments.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or len(chosen) < 2:
        parser.error(f"--environments: two or more of {sorted(known)}")
    configfiles = [path.resolve() for path in args.configfile]
    workdir = args.workdir.resolve()
    config = merged_config(configfiles)
    layout = Layout(config)
    targets = selection_targets(layout)
    results_dir = str(config["results_dir"])
    print(f"native capability {native}; {len(targets)} selection targets", flush=True)

    runs = {
        name: run_environment(known[name], configfiles, targets, workdir, results_dir, chosen[0])
        for name in chosen
    }
    reference = chosen[0]
    comparisons = {}
    for name in chosen[1:]:
        print(f"\n{reference} vs {name}", flush=True)
        rows = compare_runs(workdir / reference / results_dir, workdir / name / results_dir)
        comparisons[name] = rows
        print("\n".join(table(rows)), flush=True)
        print("\n" + reading(rows, reference, name), flush=True)

    command = "python benchmarks/float_environments.py " + " ".join(
        [
            *(f"--configfile {os.path.relpath(p, REPO)}" for p in configfiles),
            f"--workdir {args.workdir}",
            f"--environments {','.join(chosen)}",
        ]
    )
    if args.no_results_md:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    key = "+".join(path.name for path in configfiles)
    lines = [
        f"### {' + '.join(f'`{path.name}`' for path in configfiles)} (`{command}`)",
        "",
        f"Commit `{git_commit()}`, torch {torch.__version__}, native ATen capability "
        f"`{native}`, {os.cpu_count()} CPUs shared with other work, `snakemake --cores 2`; "
        f"measured {now}. {len(targets)} `select` jobs and everything they need, per "
        "environment (wall: the run that did the work; jobs: the sum of its jobs' wall times; "
        "`*`: the checkout had uncommitted changes):",
        "",
    ]
    for name in chosen:
        run = runs[name]
        lines.append(
            f"- `{name}`: {known[name].description}; wall {run['wall_s']:.0f} s, "
            f"jobs {run['job_s']:.0f} s; commits of its jobs (jobs): {run['commits']}"
        )
    for name, rows in comparisons.items():
        lines += ["", f"#### `{reference}` against `{name}`", "", *table(group_rows(rows)), ""]
        lines.append(reading(rows, reference, name))
    write_section(args.results_md, key, "\n".join(lines))
    print(f"\nwrote the {key} part of the section to {args.results_md}", flush=True)


INTRO = (
    "Each part below runs the workflow's selection targets once per float environment on one "
    "machine, each environment in its own `--directory`, and compares every artefact in "
    "pipeline order with the first environment's. *identical?*: `yes` byte for byte, "
    "`content` equal but for timings or the run's directory named in a file, `no` otherwise; "
    "*max \\|diff\\|*: the largest absolute difference of the artefact's tensors (of a "
    "warmup, its trained weights; of a selection, its `scores.npz`), *max rel* that divided by "
    "the tensor's largest magnitude. Files of one job per dataset share a row."
)


def write_section(path: Path, key: str, body: str) -> None:
    """Put the part ``key`` (a scenario's config files) into the section, keeping the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    parts: dict[str, str] = {}
    if MARKERS[0] in text and MARKERS[1] in text:
        inner = text.split(MARKERS[0], 1)[1].split(MARKERS[1], 1)[0]
        pattern = r"<!-- part:(\S+) -->\n.*?<!-- /part:\1 -->\n"
        for match in re.finditer(pattern, inner, re.S):
            parts[match.group(1)] = match.group(0)
    parts[key] = f"<!-- part:{key} -->\n{body}\n<!-- /part:{key} -->\n"
    section = "\n".join([MARKERS[0], TITLE, "", INTRO, "", "\n".join(parts.values()) + MARKERS[1]])
    replace_section(path, section + "\n", MARKERS)


if __name__ == "__main__":
    main()
