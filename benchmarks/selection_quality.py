"""Which score and allocation keep the least planted noise, by their *worst* kind of noise?

Measured on the family of planted noise (``tests/noise_family.py``: 17 kinds in four families,
each at two severities) over two worlds of content (the demo's invented world and ``atlas``,
other templates and vocabulary), with the package's own warmup, scoring and selection code and
the converted demo model. For every world and warmup seed this script

1. builds the labelled pool (30% planted) unless it is in ``--work`` already;
2. scores it with the converted model (the untrained control; its answer loss is
   ``excess_loss``'s reference), warms the gates up (config/config.yaml's warmup, sigmoid loss,
   one run per warmup seed) and scores it again with the LM statistics and IFD;
3. computes every candidate score (:data:`SCORES`) and every allocation (:data:`ALLOCATIONS`)
   over the routing clusters of that warmup, at 5, 10 and 25% of the pool.

It reports the AUROC of each score per kind (clean above planted), and per score x allocation
the planted share of each *family* relative to its share of the pool (1.0: as random; the
``ratio``). The default is chosen by the worst case: the candidate whose largest ratio over
(world, family, budget) is smallest; leave-one-family-out repeats the choice without one
family and reports how the chosen candidate does on the family it never saw.

Usage::

    python benchmarks/selection_quality.py --work /tmp/bq

writes the section of ``benchmarks/RESULTS.md`` between ``<!-- selection-quality:begin -->``
and ``<!-- selection-quality:end -->``; pools, warmed weights and router data are cached under
``--work`` (about 3 minutes per world and warmup seed from scratch on 2 cores). It needs the
converted demo model (``results/models/demo-olmoe/converted``: run the demo once).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import replace_section  # noqa: E402

from selectmoe.data.router_data import load_router_data  # noqa: E402
from selectmoe.evidence.diagnostics import auroc  # noqa: E402
from selectmoe.selection.allocation import allocate  # noqa: E402
from selectmoe.selection.methods import SEED_METHOD  # noqa: E402
from selectmoe.selection.scores import attach_reference_loss, compute_score  # noqa: E402
from selectmoe.selection.select import budget, select_indices  # noqa: E402
from selectmoe.stages.scoring import score_dataset  # noqa: E402
from selectmoe.stages.warmup import WarmupSettings, run_warmup  # noqa: E402
from selectmoe.workflow.config import build_settings  # noqa: E402
from tests.noise_family import FAMILIES, KINDS, WORLDS, build_noise_family  # noqa: E402

DATASETS = ("cot", "dolly", "flan_v2", "oasst1")
SECTION = ("<!-- selection-quality:begin -->", "<!-- selection-quality:end -->")


def _blend(*parts: tuple[str, dict[str, Any]], within: str = "pool") -> tuple[str, dict]:
    scores = [{"score": s, "params": p, "weight": 1} for s, p in parts]
    return "rank_blend", {"scores": scores, "within": within}


LM = ("lm_loss", {})
EOS = ("eos_loss", {})
WORST_TURN = ("worst_turn_loss", {})
EXCESS = ("excess_loss", {})
#: The candidate scores: name -> (score, params), all higher-is-better.
SCORES: dict[str, tuple[str, dict[str, Any]]] = {
    "gate (seed)": ("gate", {}),
    "lm_loss": LM,
    "eos_loss": EOS,
    "loss q0.9": ("loss_quantile", {"q": 0.9}),
    "loss max": ("loss_quantile", {"q": 1.0}),
    "worst_turn_loss": WORST_TURN,
    "excess_loss": EXCESS,
    "ifd (low first)": ("ifd", {}),
    "lm_loss, length residual": ("length_residual", {"score": "lm_loss"}),
    "blend lm+eos": _blend(LM, EOS),
    "blend worst_turn+eos": _blend(WORST_TURN, EOS),
    "blend lm+eos+q0.9": _blend(LM, EOS, ("loss_quantile", {"q": 0.9})),
    "blend lm+eos+excess": _blend(LM, EOS, EXCESS),
    "blend lm+eos+gate": _blend(LM, EOS, ("gate", {})),
    "blend lm+eos in dataset": _blend(LM, EOS, within="dataset"),
    "blend worst_turn+eos in dataset": _blend(WORST_TURN, EOS, within="dataset"),
    "blend lm+eos+excess in dataset": _blend(LM, EOS, EXCESS, within="dataset"),
}
#: Scores ranked by their negative for AUROC and selection (IFD: the lower, the more the
#: question helps).
NEGATED = {"ifd (low first)"}
#: The allocations over the routing clusters: Select-MoE's, among which its default is chosen.
CLUSTERED = (
    "round_robin",
    "proportional",
    "drop_then_round_robin",
    "floor_round_robin",
    "quality_quota",
)
ALLOCATIONS = (
    "topk",
    "round_robin",
    "proportional",
    "drop_then_round_robin",
    "floor_round_robin",
    "quality_quota",
)
PERCENTAGES = (0.05, 0.1, 0.25)


def _values(router: Any, name: str) -> np.ndarray:
    score, params = SCORES[name]
    values = compute_score(router, score, params=params)
    if name in NEGATED:
        values = -values
    return np.where(np.isfinite(values), values, -1e9)  # undefined: last


def _pool_files(pool: Path) -> list[Path]:
    return [pool / d / f"{d}_data.jsonl" for d in DATASETS]


def _score_all(model: Path, weights: Path | None, pool: Path, out: Path, *, config: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for dataset, file in zip(DATASETS, _pool_files(pool), strict=True):
        path = out / f"{dataset}_router_data.pt"
        if not path.exists():
            score_dataset(
                model_dir=model,
                weights_path=weights,
                pool_files=[file],
                dataset=dataset,
                output_path=path,
                batch_size=config["scoring"]["batch_size"],
                max_sequence_length=config["scoring"]["max_sequence_length"],
                device="cpu",
                progress=False,
                ifd=weights is not None,
            )
    return out


def prepare_world(
    world: str, *, model: Path, work: Path, config: dict[str, Any], seeds: Iterable[int]
) -> dict[str, Any]:
    """Build the world's pool, score it untrained, warm up and score once per seed (cached)."""
    base = work / world
    if not (base / "noise_labels.jsonl").exists():
        build_noise_family(base, world=world)
    pool = base / "pool"
    reference = _score_all(model, None, pool, base / "untrained", config=config)
    warmed = {}
    for seed in seeds:
        out = base / f"warm_seed{seed}"
        weights = out / "full_rank_weights.pt"
        if not weights.exists():
            settings = dict(config["warmup"])
            settings.update(
                quality_loss_type="sigmoid", device="cpu", seed=seed, gate_init_seed=seed
            )
            run_warmup(
                model_dir=model,
                pool_files=_pool_files(pool),
                output_path=weights,
                settings=build_settings(WarmupSettings, settings, section="warmup"),
                checkpoint_dir=out / "checkpoints",
            )
        warmed[seed] = _score_all(model, weights, pool, out / "router_data", config=config)
    return {"labels": base / "noise_labels.jsonl", "reference": reference, "warmed": warmed}


def _labels(path: Path, router: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(planted, kind, family) arrays aligned to the router's rows."""
    records = {
        (r["dataset"], r["id"]): r
        for r in (json.loads(line) for line in path.read_text().splitlines())
    }
    rows = [records[key] for key in zip(router.datasets, router.sample_ids, strict=True)]
    return (
        np.array([r["planted"] for r in rows]),
        np.array([r["kind"] for r in rows]),
        np.array([r["family"] for r in rows]),
    )


def measure_world(
    world: str, prepared: dict[str, Any], config: dict[str, Any]
) -> list[dict[str, Any]]:
    """One record per (warmup seed): AUROC per score and kind/family, and the family ratios of
    every score x allocation x budget."""
    selection = config["selection"]
    reference = load_router_data(sorted(prepared["reference"].glob("*_router_data.pt")))
    records = []
    for seed, directory in prepared["warmed"].items():
        router = load_router_data(sorted(directory.glob("*_router_data.pt")))
        attach_reference_loss(router, reference)
        planted, kinds, families = _labels(prepared["labels"], router)
        clean = ~planted
        clusters = select_indices(
            router,
            method=SEED_METHOD,
            selection_percentage=0.1,
            clustering_method=selection["clustering_method"],
            clustering_params={**selection["clustering_params"], "device": "cpu"},
            seed=seed,
        ).labels
        values = {name: _values(router, name) for name in SCORES}
        record: dict[str, Any] = {"world": world, "seed": seed, "auroc": {}, "ratio": {}}
        for name, value in values.items():
            by_kind = {
                kind: auroc(value[(kinds == kind) | clean], clean[(kinds == kind) | clean])
                for kind in sorted(set(kinds[planted]))
            }
            record["auroc"][name] = {"all": auroc(value, clean), **by_kind}
            for allocation in ALLOCATIONS:
                for percentage in PERCENTAGES:
                    n = budget(percentage, len(value))
                    picked = allocate(allocation, value, clusters, n, seed=seed)
                    ratios = {"all": float(planted[picked].mean() / planted.mean())}
                    for family in FAMILIES:
                        in_pool = (families == family).mean()
                        ratios[family] = float((families[picked] == family).mean() / in_pool)
                    record["ratio"][f"{name} + {allocation} @ {percentage}"] = ratios
        ifd = compute_score(router, "ifd")
        for percentage in PERCENTAGES:
            picked = allocate("ifd_filter", ifd, None, budget(percentage, len(ifd)))
            record["ratio"][f"ifd + ifd_filter @ {percentage}"] = {
                "all": float(planted[picked].mean() / planted.mean()),
                **{
                    f: float((families[picked] == f).mean() / (families == f).mean())
                    for f in FAMILIES
                },
            }
        records.append(record)
        print(f"[{world} seed {seed}] measured {len(values)} scores", flush=True)
    return records


def family_cells(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """candidate -> {(world, family): per-seed ratio pooled over the budgets}.

    The pooled ratio is the family's selected count over its expected count summed over the
    5 / 10 / 25% budgets (budget-weighted mean of the per-budget ratios): a small family at the
    5% budget is a handful of examples, too few to rank candidates by alone.
    """
    weights = np.array(PERCENTAGES) / sum(PERCENTAGES)
    cells: dict[str, dict[tuple[str, str], list[float]]] = {}
    for record in records:
        candidates = {key.rsplit(" @ ", 1)[0] for key in record["ratio"]}
        for candidate in candidates:
            for family in ("all", *FAMILIES):
                pooled = sum(
                    w * record["ratio"][f"{candidate} @ {p}"][family]
                    for w, p in zip(weights, PERCENTAGES, strict=True)
                )
                key = (record["world"], family)
                cells.setdefault(candidate, {}).setdefault(key, []).append(pooled)
    return {c: {k: np.asarray(v) for k, v in by.items()} for c, by in cells.items()}


def worst_cell(cells: dict[tuple[str, str], np.ndarray], families: Iterable[str]) -> tuple:
    """The (world, family) whose mean ratio over seeds is largest, its mean and standard error."""
    wanted = set(families)
    key = max((k for k in cells if k[1] in wanted), key=lambda k: cells[k].mean())
    values = cells[key]
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return key, float(values.mean()), float(se)


def inverted_kinds(records: list[dict[str, Any]], score: str) -> list[str]:
    """Kinds whose AUROC (mean over worlds and seeds) is below 0.5 for ``score``."""
    kinds = {k for r in records for k in r["auroc"][score] if k != "all"}
    return sorted(k for k in kinds if _mean_auroc(records, score, k) < 0.5)


def choose(
    cells: dict[str, dict],
    families: Iterable[str],
    records: list[dict[str, Any]],
    *,
    allocations: Iterable[str] = ALLOCATIONS,
) -> tuple[str, float]:
    """The default by the worst case.

    Among the candidates with one of ``allocations`` whose score inverts no kind: those whose
    worst (world, family) ratio is within a tolerance of the smallest worst, the tolerance
    being two standard errors (over warmup seeds) of a worst cell, the median over these
    candidates; of them, the one with the smallest mean ratio over all (world, family) cells.
    Returns the choice and the tolerance.
    """
    families, allocations = list(families), set(allocations)
    eligible = [
        c
        for c in cells
        if c.rsplit(" + ", 1)[1] in allocations and not inverted_kinds(records, _score_of(c))
    ]
    worsts = {c: worst_cell(cells[c], families) for c in eligible}
    best = min(worsts[c][1] for c in eligible)
    tolerance = 2 * float(np.median([worsts[c][2] for c in eligible]))
    tied = [c for c in eligible if worsts[c][1] <= best + tolerance]

    def mean_ratio(candidate: str) -> float:
        return float(np.mean([v.mean() for (_, f), v in cells[candidate].items() if f in families]))

    return min(tied, key=lambda c: (mean_ratio(c), c)), tolerance


def _score_of(candidate: str) -> str:
    score = candidate.rsplit(" + ", 1)[0]
    return "ifd (low first)" if score == "ifd" else score


def _mean_se(values: list[float]) -> str:
    """``mean ± standard error`` of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    se = array.std(ddof=1) / np.sqrt(len(array)) if len(array) > 1 else float("nan")
    return f"{array.mean():.3f} ± {se:.3f}"


def _per_seed(records: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> list:
    """``value`` of each warmup seed, averaged over the worlds."""
    seeds = sorted({r["seed"] for r in records})
    return [float(np.mean([value(r) for r in records if r["seed"] == s])) for s in seeds]


def _mean_auroc(records: list[dict[str, Any]], score: str, kind: str, world: str = "") -> float:
    return float(
        np.mean(
            [
                r["auroc"][score][kind]
                for r in records
                if kind in r["auroc"][score] and world in ("", r["world"])
            ]
        )
    )


def markdown(records: list[dict[str, Any]], *, command: str, seconds: float, commit: str) -> str:
    """The RESULTS.md section: per-kind AUROC, the worst-case table, leave-one-family-out."""
    families = list(FAMILIES)
    cells = family_cells(records)
    worlds = sorted({r["world"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    kinds = [k for f in families for k in FAMILIES[f]]
    chosen, tolerance = choose(cells, families, records, allocations=CLUSTERED)
    any_allocation, _ = choose(cells, families, records)
    lines = [
        SECTION[0],
        f"Command: `{command}` (commit {commit}; {seconds:.0f} s, the pools, warmups and "
        f"router data made or read from `--work`). Worlds: {', '.join(worlds)}; warmup seeds "
        f"{', '.join(map(str, seeds))}; "
        f"2,000 examples per world, 30% planted, {len(KINDS)} kinds in {len(FAMILIES)} "
        "families x 2 severities (tests/noise_family.py).",
        "",
        "#### AUROC per kind (clean above that kind; mean over worlds and warmup seeds; "
        "**bold**: below 0.5, the score ranks that kind *above* clean examples; `all` with "
        "± its standard error over the warmup seeds, the pools fixed)",
        "",
        "| score | all | "
        + " | ".join(f"all, {w}" for w in worlds)
        + " | worst kind | "
        + " | ".join(kinds)
        + " |",
        "|---|---|" + "---|" * len(worlds) + "---|" + "---|" * len(kinds),
    ]
    for score in SCORES:
        per_kind = {k: _mean_auroc(records, score, k) for k in kinds}
        low = min(per_kind, key=per_kind.get)
        kind_cells = " | ".join(
            f"**{per_kind[k]:.2f}**" if per_kind[k] < 0.5 else f"{per_kind[k]:.2f}" for k in kinds
        )
        world_cells = " | ".join(
            _mean_se([r["auroc"][score]["all"] for r in records if r["world"] == w]) for w in worlds
        )
        overall = _mean_se(_per_seed(records, lambda r, score=score: r["auroc"][score]["all"]))
        lines.append(
            f"| {score} | {overall} | {world_cells} | {low} {per_kind[low]:.2f} | {kind_cells} |"
        )
    lines += [
        "",
        "#### Planted share relative to random, by family (1.00: as random)",
        "",
        "Each cell: the family's selected count over a random selection's expected count, summed "
        "over the 5 / 10 / 25% budgets, mean over warmup seeds, the worse of the two worlds. "
        "`worst`: the largest over families and worlds, ± its standard error over warmup seeds "
        "(the criterion). `all @ 10%`: every planted kind together, 10% budget, mean over "
        "worlds ± its standard error over warmup seeds. `inverted`: kinds its score ranks above "
        "clean examples (not eligible).",
        "",
        "| score + allocation | worst ± se | " + " | ".join(families) + " | all @ 10% | inverted |",
        "|---|---|" + "---|" * len(families) + "---|---|",
    ]
    ranked = sorted(cells, key=lambda c: (worst_cell(cells[c], families)[1], c))
    for candidate in ranked:
        _, value, se = worst_cell(cells[candidate], families)
        per_family = " | ".join(f"{worst_cell(cells[candidate], [f])[1]:.2f}" for f in families)
        overall = _mean_se(
            _per_seed(records, lambda r, c=candidate: r["ratio"][f"{c} @ 0.1"]["all"])
        )
        inverted = ", ".join(inverted_kinds(records, _score_of(candidate)))
        mark = " **(chosen)**" if candidate == chosen else ""
        lines.append(
            f"| {candidate}{mark} | {value:.2f} ± {se:.2f} | {per_family} | {overall} | "
            f"{inverted} |"
        )
    shown = [chosen, "lm_loss + round_robin", "lm_loss + topk", "gate (seed) + round_robin"]
    lines += [
        "",
        "#### Per budget: planted share relative to random, by family (mean over warmup seeds; "
        "atlas / demo)",
        "",
        "| score + allocation | budget | all | " + " | ".join(families) + " |",
        "|---|---|---|" + "---|" * len(families),
    ]
    for candidate in shown:
        for percentage in PERCENTAGES:
            key = f"{candidate} @ {percentage}"

            def cell(family: str, key: str = key) -> str:
                return " / ".join(
                    f"{np.mean([r['ratio'][key][family] for r in records if r['world'] == w]):.2f}"
                    for w in worlds
                )

            lines.append(
                f"| {candidate} | {percentage:.0%} | {cell('all')} | "
                + " | ".join(cell(f) for f in families)
                + " |"
            )
    lines += [
        "",
        "#### Leave one family out: chosen without it, measured on it",
        "",
        "| held-out family | chosen on the other three (clustered) | its ratio on the held-out "
        "family (worse world) | the full choice's | `lm_loss + round_robin` (`selectmoe` before) |",
        "|---|---|---|---|---|",
    ]
    before = cells["lm_loss + round_robin"]
    for held_out in families:
        others = [f for f in families if f != held_out]
        pick, _ = choose(cells, others, records, allocations=CLUSTERED)
        lines.append(
            f"| {held_out} | {pick} | {worst_cell(cells[pick], [held_out])[1]:.2f} | "
            f"{worst_cell(cells[chosen], [held_out])[1]:.2f} | "
            f"{worst_cell(before, [held_out])[1]:.2f} |"
        )
    lines += [
        "",
        f"`selectmoe`'s default, chosen by the worst case over all four families among the "
        f"allocations over the routing clusters ({', '.join(CLUSTERED)}; tolerance "
        f"{tolerance:.3f}, two median standard errors of a worst cell): **{chosen}**. With "
        f"top-k allowed too (no clusters: not Select-MoE) the rule picks {any_allocation}.",
        SECTION[1],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ROOT / "results/models/demo-olmoe/converted")
    parser.add_argument("--config", type=Path, default=ROOT / "config/config.yaml")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS))
    parser.add_argument("--warmup-seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="re-make the section from --work's JSON"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = yaml.safe_load(args.config.read_text())
    start = time.perf_counter()
    records = []
    if args.report_only:
        records = json.loads((args.work / "selection_quality.json").read_text())
    for world in [] if args.report_only else args.worlds:
        prepared = prepare_world(
            world, model=args.model, work=args.work, config=config, seeds=args.warmup_seeds
        )
        records += measure_world(world, prepared, config)
    (args.work / "selection_quality.json").write_text(json.dumps(records, indent=1))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    section = markdown(
        records,
        command=shlex.join(["python", *sys.argv]),
        seconds=time.perf_counter() - start,
        commit=commit,
    )
    print(section)
    replace_section(args.output, section, SECTION)


if __name__ == "__main__":
    main()
