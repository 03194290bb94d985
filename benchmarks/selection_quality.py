"""How well does each score rank clean examples above planted noise, and how much noise does
each selection method keep? Measured on a labelled pool with the package's own warmup, scoring
and selection code.

For a pool (the demo's, or the second pool of ``tests/second_pool.py`` with other noise kinds)
this script warms the gates of the converted demo model (config/config.yaml's warmup section,
one run per warmup seed and trash mode), scores every dataset with the LM statistics and IFD,
and scores it with the untrained gates as a control. It then reports

- per score: AUROC for "clean ranks above planted" with a 95% bootstrap interval over examples,
  and the paired difference to the seed's score (same resamples), per warmup seed;
- per method (a score and an allocation) and budget: the planted share of the selection, with
  a random selection's expected share and 95% range (hypergeometric).

Usage::

    python -m tests.second_pool results/demo results/second_pool
    python benchmarks/selection_quality.py --name demo --pool results/demo/pool \\
        --labels results/demo/noise_labels.jsonl --work results/bench_quality/demo
    python benchmarks/selection_quality.py --name second --pool results/second_pool/pool \\
        --labels results/second_pool/noise_labels.jsonl --work results/bench_quality/second

Each writes its section of ``benchmarks/RESULTS.md`` (``--output``); warmed models and router
data are cached under ``--work``.

It needs the converted demo model (``results/models/demo-olmoe/converted``: run the demo once).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy.stats import hypergeom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import replace_section  # noqa: E402

from selectmoe.data.labels import align_labels  # noqa: E402
from selectmoe.data.router_data import load_router_data  # noqa: E402
from selectmoe.evidence.diagnostics import auroc, auroc_intervals  # noqa: E402
from selectmoe.selection.allocation import allocate  # noqa: E402
from selectmoe.selection.scores import compute_score  # noqa: E402
from selectmoe.selection.select import budget, select_indices  # noqa: E402
from selectmoe.stages.scoring import score_dataset  # noqa: E402
from selectmoe.stages.warmup import WarmupSettings, run_warmup  # noqa: E402
from selectmoe.workflow.config import build_settings  # noqa: E402

DATASETS = ("cot", "dolly", "flan_v2", "oasst1")
GATE = "gate"
#: The scores measured: name -> (score, params). ``-ifd`` ranks low IFD first (for AUROC only).
SCORES: dict[str, tuple[str, dict[str, Any]]] = {
    "gate (seed)": (GATE, {}),
    "gate layer 0": (GATE, {"layers": [0]}),
    "gate layer 1": (GATE, {"layers": [1]}),
    "gate answer tokens": (GATE, {"tokens": "answer"}),
    "gate mean of sigmoid": (GATE, {"aggregation": "mean_of_sigmoid"}),
    "lm_loss": ("lm_loss", {}),
    "eos_loss": ("eos_loss", {}),
    "-ifd": ("ifd", {}),
    "blend gate+lm_loss": (
        "rank_blend",
        {"scores": [{"score": GATE, "weight": 1}, {"score": "lm_loss", "weight": 1}]},
    ),
    "blend gate layer 1+lm_loss": (
        "rank_blend",
        {
            "scores": [
                {"score": GATE, "params": {"layers": [1]}, "weight": 1},
                {"score": "lm_loss", "weight": 1},
            ]
        },
    ),
}
ALLOCATIONS = ("topk", "round_robin", "proportional", "drop_then_round_robin")
SELECTION_SCORES = ("gate (seed)", "gate layer 1", "lm_loss", "eos_loss", "blend gate+lm_loss")
PERCENTAGES = (0.1, 0.3)


def _pool_files(pool: Path) -> dict[str, list[Path]]:
    return {d: [pool / d / f"{d}_data.jsonl"] for d in DATASETS}


def prepare(
    *, model: Path, pool: Path, work: Path, config: dict[str, Any], variant: dict[str, Any]
) -> list[Path]:
    """Warm up (unless ``variant["untrained"]``) and score every dataset; cached on disk."""
    name = variant["name"]
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    weights = None
    if not variant.get("untrained"):
        weights = out / "full_rank_weights.pt"
        if not weights.exists():
            settings = dict(config["warmup"])
            settings.update(quality_loss_type="sigmoid", device="cpu", **variant["warmup"])
            run_warmup(
                model_dir=model,
                pool_files=[f for files in _pool_files(pool).values() for f in files],
                output_path=weights,
                settings=build_settings(WarmupSettings, settings, section="warmup"),
                checkpoint_dir=out / "checkpoints",
            )
    paths = []
    for dataset, files in _pool_files(pool).items():
        path = out / f"{dataset}_router_data.pt"
        if not path.exists():
            score_dataset(
                model_dir=model,
                weights_path=weights,
                pool_files=files,
                dataset=dataset,
                output_path=path,
                batch_size=config["scoring"]["batch_size"],
                max_sequence_length=config["scoring"]["max_sequence_length"],
                device="cpu",
                progress=False,
                ifd=True,
            )
        paths.append(path)
    return paths


def measure_scores(router: Any, labels: Any) -> dict[str, np.ndarray]:
    values = {}
    for name, (score, params) in SCORES.items():
        value = compute_score(router, score, params=params)
        values[name] = -value if name == "-ifd" else value
        values[name] = np.where(np.isfinite(values[name]), values[name], -1e9)  # undefined: last
    return values


def planted_shares(
    router: Any, labels: Any, config: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    selection = config["selection"]
    clustered = select_indices(
        router,
        method="selectmoe_seed",
        selection_percentage=0.1,
        clustering_method=selection["clustering_method"],
        clustering_params={**selection["clustering_params"], "device": "cpu"},
        seed=seed,
    )
    clusters = clustered.labels
    rows = []
    n_pool, n_planted = len(labels.planted), int(labels.planted.sum())
    for percentage in PERCENTAGES:
        n = budget(percentage, n_pool)
        distribution = hypergeom(n_pool, n_planted, n)
        rows.append(
            {
                "method": "random (expected, 95% range)",
                "percentage": percentage,
                "share": n_planted / n_pool,
                "low": distribution.ppf(0.025) / n,
                "high": distribution.ppf(0.975) / n,
            }
        )
        for score_name in SELECTION_SCORES:
            score, params = SCORES[score_name]
            values = compute_score(router, score, params=params, seed=seed)
            for allocation in ALLOCATIONS:
                picked = allocate(allocation, values, clusters, n, seed=seed)
                rows.append(
                    {
                        "method": f"{score_name} + {allocation}",
                        "percentage": percentage,
                        "share": float(labels.planted[picked].mean()),
                    }
                )
        ifd = compute_score(router, "ifd")
        picked = allocate("ifd_filter", ifd, None, n)
        rows.append(
            {
                "method": "ifd + ifd_filter",
                "percentage": percentage,
                "share": float(labels.planted[picked].mean()),
            }
        )
    return rows


def _interval(row: dict[str, float], key: str = "", signed: bool = False) -> str:
    value, low, high = (
        row[key or "auroc"],
        row[f"{key}_low" if key else "low"],
        row[f"{key}_high" if key else "high"],
    )
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


def markdown(report: dict[str, Any], name: str, seeds: list[int]) -> str:
    """The RESULTS.md section of one pool: AUROC per score, planted share per method."""
    variants = report["variants"]
    warm = [f"warm_seed{s}" for s in seeds]
    kinds = sorted(next(iter(variants[warm[0]]["auroc_by_kind"].values())))
    begin, end = (
        f"<!-- selection-quality-{name}:begin -->",
        f"<!-- selection-quality-{name}:end -->",
    )
    lines = [
        begin,
        f"### Pool `{name}`: {report['pool']}",
        "",
        f"Command: `{report['command']}` ({report['seconds']:.0f} s, reusing the warmups and "
        "router data already in `--work`; about 2 minutes from scratch on 2 cores). Warmup as in "
        "config/config.yaml (sigmoid loss), once per warmup seed "
        f"({', '.join(map(str, seeds))}) and once with `trash_expert_mode: noise` (seed 42).",
        "",
        "AUROC (clean above planted, 95% bootstrap interval over examples) and the paired "
        "difference to the seed's gate score on the same resamples, for each warmup seed; "
        "per kind: AUROC of clean against that kind (warmup seed "
        f"{seeds[0]}). 'noise trash': the same score after a warmup with the noise trash expert.",
        "",
        "| score | AUROC | Δ vs seed's gate, per warmup seed | noise trash | "
        + " | ".join(kinds)
        + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    first = variants[warm[0]]
    for score in first["auroc"]:
        deltas = "; ".join(
            _interval(variants[w]["auroc"][score], "diff", signed=True) for w in warm
        )
        noise = variants["warm_noise_trash"]["auroc"].get(score)
        per_kind = first["auroc_by_kind"][score]
        noise_cell = f"{noise['auroc']:.3f}" if noise else "–"
        kind_cells = " | ".join(f"{per_kind[k]:.2f}" for k in kinds)
        lines.append(
            f"| {score} | {_interval(first['auroc'][score])} | {deltas} | {noise_cell} | "
            f"{kind_cells} |"
        )
    lines += [
        "",
        "Planted share of each selection (score + allocation) per warmup seed; random's row is "
        "the expected share and the 95% range of a random selection (hypergeometric).",
        "",
        "| method | 10%: "
        + " / ".join(map(str, seeds))
        + " | 30%: "
        + " / ".join(map(str, seeds))
        + " |",
        "|---|---|---|",
    ]
    shares: dict[str, dict[float, list[str]]] = {}
    for w in warm:
        for row in variants[w]["planted_shares"]:
            cell = (
                f"{row['share']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
                if "low" in row
                else f"{row['share']:.3f}"
            )
            shares.setdefault(row["method"], {}).setdefault(row["percentage"], []).append(cell)
    for method, by_percentage in shares.items():
        cells = []
        for percentage in PERCENTAGES:
            values = by_percentage[percentage]
            cells.append(values[0] if method.startswith("random") else " / ".join(values))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", end]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ROOT / "results/models/demo-olmoe/converted")
    parser.add_argument("--config", type=Path, default=ROOT / "config/config.yaml")
    parser.add_argument("--warmup-seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--name", required=True, help="the pool's name in RESULTS.md")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(args.config.read_text())
    variants = [{"name": "untrained", "untrained": True}]
    variants += [{"name": f"warm_seed{s}", "warmup": {"seed": s}} for s in args.warmup_seeds]
    variants += [{"name": "warm_noise_trash", "warmup": {"trash_expert_mode": "noise"}}]
    report: dict[str, Any] = {
        "pool": str(args.pool),
        "command": shlex.join(["python", *sys.argv]),
        "variants": {},
    }
    start = time.perf_counter()
    untrained = None
    for variant in variants:
        paths = prepare(
            model=args.model, pool=args.pool, work=args.work, config=config, variant=variant
        )
        router = load_router_data(paths)
        keys = list(zip(router.datasets, router.sample_ids, strict=True))
        labels = align_labels(args.labels, keys)
        clean = ~labels.planted
        values = measure_scores(router, labels)
        if variant.get("untrained"):
            untrained = values["gate (seed)"]
        else:
            values["untrained gate (control)"] = untrained
        kinds = sorted(set(labels.kinds) - {"clean"})
        entry: dict[str, Any] = {
            "auroc": auroc_intervals(
                values, clean, reference="gate (seed)", n_resamples=args.resamples, seed=0
            ),
            "auroc_by_kind": {
                name: {
                    kind: auroc(
                        v[(np.asarray(labels.kinds) == kind) | clean],
                        clean[(np.asarray(labels.kinds) == kind) | clean],
                    )
                    for kind in kinds
                }
                for name, v in values.items()
            },
        }
        if not variant.get("untrained"):
            entry["planted_shares"] = planted_shares(router, labels, config, seed=42)
        report["variants"][variant["name"]] = entry
        print(f"## {variant['name']}")
        for name, row in entry["auroc"].items():
            print(
                f"{name:32s} {row['auroc']:.3f} [{row['low']:.3f}, {row['high']:.3f}]  "
                f"vs seed {row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]  "
                + " ".join(f"{k}={entry['auroc_by_kind'][name][k]:.2f}" for k in kinds)
            )
        for row in entry.get("planted_shares", []):
            extra = f" [{row['low']:.3f}, {row['high']:.3f}]" if "low" in row else ""
            print(f"  p={row['percentage']:.1f} {row['method']:45s} {row['share']:.3f}{extra}")
        sys.stdout.flush()
    report["seconds"] = time.perf_counter() - start
    (args.work / "selection_quality.json").write_text(json.dumps(report, indent=1))
    section = markdown(report, args.name, args.warmup_seeds)
    print(section)
    replace_section(
        args.output,
        section,
        (
            f"<!-- selection-quality-{args.name}:begin -->",
            f"<!-- selection-quality-{args.name}:end -->",
        ),
    )


if __name__ == "__main__":
    main()
