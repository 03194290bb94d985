import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from selectmoe.workflow.config import (
    check_registered_names,
    coerce_command_line_strings,
    load_schema,
    validate_config,
)
from selectmoe.errors import ConfigError
from selectmoe.workflow.plugins import PLUGINS_VARIABLE, load_plugins
from selectmoe.selection import methods
from selectmoe.workflow import sweep
from snakemake.utils import validate

# Validate first, with one-line messages that name the key and the allowed values, then let
# Snakemake's validate fill in the schema defaults.
SCHEMA = load_schema(workflow.source_path("../config/schema.yaml"))
# nested --config values arrive as strings (Snakemake reads them with YAML's base loader)
config.update(coerce_command_line_strings(config, SCHEMA))
try:
    validate_config(config, SCHEMA)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
validate(config, schema="../config/schema.yaml")

# The plugins register their names before the names of the config are checked; jobs (and their
# launched processes) import them again from SELECTMOE_PLUGINS.
try:
    load_plugins(config.get("plugins", []))
    check_registered_names(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
os.environ[PLUGINS_VARIABLE] = ",".join(config.get("plugins", []))

RESULTS = config["results_dir"]
DEMO_DIR = f"{RESULTS}/demo"
DATASETS = config["data"]["datasets"]
BASE = config["base_model"]["name"]
SELECTION = config["selection"]
LOSSES = SELECTION["loss_types"]
METHODS = SELECTION["methods"]
TARGETS = list(config["targets"])
SEEDS = [int(seed) for seed in config["finetune"]["seeds"]]
# methods whose selection depends on the router data (and so on the quality-loss type), plugged-in
# selection methods included
ROUTER_METHODS = [
    *methods.ROUTER_METHODS,
    *SELECTION.get("method_definitions", {}),
    *(m for m in METHODS if m not in methods.SELECTION_METHODS),
]
DEFINITIONS = methods.method_definitions(SELECTION.get("method_definitions", {}))


def needs_ifd():
    """Whether a method of the sweep ranks by IFD (scoring then runs the answers alone too)."""
    return methods.uses_score("ifd", METHODS, SELECTION.get("method_definitions", {}))


# reference selections that read the pool's quality labels (no real method may)
LABEL_METHODS = list(methods.LABEL_METHODS)


wildcard_constraints:
    loss="|".join(map(re.escape, LOSSES)),
    pct="[0-9.]+",
    seed="[0-9]+",
    dataset="[A-Za-z0-9_.-]+",
    target="[A-Za-z0-9_.-]+",
    method="|".join(ROUTER_METHODS),
    reference="|".join(LABEL_METHODS),
    targeted="|".join(methods.TARGETED_METHODS),
    part="|".join(map(re.escape, [*DATASETS, "queries"])),
    selection=sweep.selection_pattern(ROUTER_METHODS, LOSSES),


def is_demo():
    return bool(config.get("demo", {}).get("activate", False))


def get_labels_file():
    """The pool's quality labels: the demo's sidecar, else data.labels (None: no labels)."""
    if is_demo():
        return f"{DEMO_DIR}/noise_labels.jsonl"
    return config["data"].get("labels")


def has_labels():
    return get_labels_file() is not None


if any(method in LABEL_METHODS for method in METHODS) and not has_labels():
    raise WorkflowError(
        "selection.methods lists "
        + ", ".join(m for m in METHODS if m in LABEL_METHODS)
        + ", which read the pool's quality labels, but data.labels is null; set it to a labels "
        "file of the pool or drop those methods"
    )


def demo_outputs():
    """Everything the build_demo rule declares."""
    return {
        "manifest": f"{DEMO_DIR}/demo_manifest.json",
        "noise_labels": f"{DEMO_DIR}/noise_labels.jsonl",
        "pool": [f for d in DATASETS for f in get_pool_files(d)],
        "base_model": f"{DEMO_DIR}/base_model",
        "target_model": f"{DEMO_DIR}/target_model",
        "tasks": f"{DEMO_DIR}/tasks",
    }


def get_pool_files(dataset):
    """The JSONL files of one dataset: {pool_dir}/{file_pattern} (the demo's pool when active)."""
    pool_dir = f"{DEMO_DIR}/pool" if is_demo() else config["data"]["pool_dir"]
    pattern = config["data"]["file_pattern"]
    return [f"{pool_dir}/{pattern.format(dataset=dataset)}"]


def get_all_pool_files(wildcards=None):
    return [f for d in DATASETS for f in get_pool_files(d)]


def get_base_source():
    return demo_outputs()["base_model"] if is_demo() else config["base_model"]["source"]


def get_base_source_input(wildcards):
    """Input dependency on the base model only when it is a file we build (the demo)."""
    return [demo_outputs()["base_model"]] if is_demo() else []


def get_target_model(target):
    return (
        demo_outputs()["target_model"]
        if is_demo()
        else config["targets"][target]["model"]
    )


def get_target_input(wildcards):
    return [demo_outputs()["target_model"]] if is_demo() else []


def get_eval_inputs(wildcards):
    return [demo_outputs()["tasks"]] if is_demo() else []


def converted_dir():
    return f"{RESULTS}/models/{BASE}/converted"


def warmup_settings(loss):
    settings = {k: v for k, v in config["warmup"].items()}
    settings["quality_loss_type"] = loss
    return settings


def finetune_settings(target, seed):
    """The finetune section with the target's overrides, for one finetune seed."""
    settings = {k: v for k, v in config["finetune"].items() if k != "seeds"}
    settings.update(config["targets"][target].get("finetune", {}))
    settings["seed"] = int(seed)
    return settings


def clustering_settings():
    """The settings of the cluster jobs: exactly these are their rerun-triggering params."""
    keys = ("clustering_method", "clustering_params", "seed", "debug_print")
    return {key: SELECTION.get(key, {}) for key in keys}


# The paths of the files that several rules share (one place each); a wildcard is passed as
# "{name}" (or "{{name}}" inside expand).
def warmup_weights(loss):
    """The warmed gates and routers of a loss type (rule warmup)."""
    return f"{RESULTS}/warmup/{loss}/full_rank_weights.pt"


def router_data(loss, dataset):
    """A dataset's router data under a loss type's warmup, or ``untrained`` (rules score*)."""
    return f"{RESULTS}/router_data/{loss}/{dataset}_router_data.pt"


def clusters_path(loss):
    """The clusters of a loss type's router data (rule cluster)."""
    return f"{RESULTS}/clusters/{loss}/clusters.json"


def selection_file(selection, name):
    """``selected_data.jsonl``, ``selection.json`` or ``plots`` of a {selection} (rules select*)."""
    return f"{RESULTS}/selection/{selection}/{name}"


def provenance(path):
    """The provenance record beside a job's first output."""
    return f"{path}.provenance.json"


# The targeted methods (rds, less): their model, query set and features files.
TARGETED = config.get("targeted", {})
# the {part} of the query set's features, beside the pool's datasets
QUERIES = "queries"
TARGETED_IN_SWEEP = [m for m in methods.TARGETED_METHODS if m in METHODS]


def get_targeted_model():
    """targeted.model, else the first target's model (the targeted methods select for it)."""
    return TARGETED.get("model") or get_target_model(TARGETS[0])


def get_targeted_model_input(wildcards=None):
    """Input dependency on the targeted model only when it is the demo's target."""
    return get_target_input(wildcards) if not TARGETED.get("model") else []


def get_queries_file():
    """The query set: targeted.queries.file, the demo's, or LESS's (rule fetch_queries)."""
    own = TARGETED.get("queries", {}).get("file")
    if own:
        return own
    return f"{DEMO_DIR}/queries.jsonl" if is_demo() else f"{RESULTS}/data/queries.jsonl"


def targeted_part_data(wildcards):
    """The examples of a {part}: a pool dataset's file, or the query set."""
    if wildcards.part == QUERIES:
        return [get_queries_file()]
    return get_pool_files(wildcards.part)


def targeted_features(method, part):
    """The features of a pool dataset or of the query set (rules represent, less_gradients)."""
    return f"{RESULTS}/targeted/{method}/{part}_features.pt"


def less_warmup_dir():
    """LESS's warmup checkpoints (rule less_warmup)."""
    return f"{RESULTS}/targeted/less/warmup"


def less_settings():
    """targeted.less with the selection seed (the warmup's random share and its training)."""
    return {**TARGETED.get("less", {}), "seed": SELECTION["seed"]}


def selection_settings(method=None):
    """The selection keys a selection job uses: exactly these are its rerun-triggering params.

    Passing the whole section would rerun every selection when a sweep value (a percentage, a
    method, a loss type) is added, the baselines and unclustered methods when a clustering
    setting changes, and every method when one method's definition changes. ``method``: a
    method that reads the router data; a clustered one reads its clusters from the cluster
    job, whose settings it still records.
    """
    settings = {key: SELECTION[key] for key in ("seed", "debug_print")}
    if method is None:
        return settings
    own = SELECTION.get("method_definitions", {})
    if method in own:
        settings["method_definitions"] = {method: own[method]}
    if methods.uses_clusters(method, own):
        settings["clustering_method"] = SELECTION["clustering_method"]
        settings["clustering_params"] = SELECTION.get("clustering_params", {})
    return settings


def gpus(stage):
    return config["resources"]["gpus"].get(stage, 0)


def threads(stage):
    table = config["resources"]["threads"]
    return table.get(stage, table.get("default", 1))


def mem_mb(stage):
    table = config["resources"]["mem_mb"]
    return table.get(stage, table.get("default", 4000))


def selection_paths():
    """Every selection of the sweep, as the {selection} wildcard value."""
    return [selection.path for selection in sweep.sweep_selections(SELECTION)]


def adapter_dir(target, selection, seed):
    """The LoRA adapter of a target finetuned on a {selection} with one seed (rule finetune)."""
    return f"{RESULTS}/finetune/{target}/{selection}/seed{seed}/adapter"


def eval_dir(target, selection):
    """Where the evaluations of a target (with an adapter of ``selection``, or ``base``) go."""
    return f"{RESULTS}/eval/{target}/{selection}"


def seed_results(target, selection, kind):
    """Per finetune seed, the evaluation's ``results.json`` or ``samples.jsonl`` (kind)."""
    name = {"results": "results.json", "samples": "samples.jsonl"}[kind]
    return [f"{eval_dir(target, selection)}/seed{seed}/{name}" for seed in SEEDS]


def parse_selection(selection):
    """(method, loss type or None, percentage) of a {selection} value; full is 100%."""
    parsed = sweep.Selection.from_path(selection)
    return parsed.method, parsed.loss, parsed.percentage


def summary_points():
    """One point per (target, selection) plus the base model of each target.

    A point lists its evaluations, one per finetune seed (the base model has one, without seed).
    """
    points = []
    for target in TARGETS:
        points.append(
            {
                "target": target,
                "method": "base",
                "loss": None,
                "percentage": None,
                "seeds": [None],
                "results": [f"{eval_dir(target, 'base')}/results.json"],
                "samples": [f"{eval_dir(target, 'base')}/samples.jsonl"],
                "provenance": f"{eval_dir(target, 'base')}/results.json.provenance.json",
            }
        )
        for selection in selection_paths():
            method, loss, pct = parse_selection(selection)
            points.append(
                {
                    "target": target,
                    "method": method,
                    "loss": loss,
                    "percentage": pct,
                    "uses_labels": method in LABEL_METHODS,
                    "seeds": SEEDS,
                    "results": seed_results(target, selection, "results"),
                    "samples": seed_results(target, selection, "samples"),
                    "provenance": f"{eval_dir(target, selection)}/evaluate.provenance.json",
                    "selection_json": selection_file(selection, "selection.json"),
                }
            )
    return points


def cost_points():
    """Per summary point, the jobs it needed, for the cost ledger (selectmoe.evidence.costs)."""

    def job(kind, benchmark, stage, outputs=()):
        return {
            "kind": kind,
            "benchmark": f"{RESULTS}/benchmarks/{benchmark}.tsv",
            "gpus": gpus(stage),
            "outputs": list(outputs),
        }

    points = []
    for target in TARGETS:
        base = {"target": target, "method": "base", "loss": None, "percentage": None}
        points.append(
            {**base, "jobs": [job("evaluation", f"evaluate/{target}/base", "evaluate")]}
        )
        for selection in selection_paths():
            method, loss, pct = parse_selection(selection)
            jobs = []
            if loss is not None:
                jobs.append(job("selection", "convert", "convert", [converted_dir()]))
                weights = warmup_weights(loss)
                jobs.append(job("selection", f"warmup/{loss}", "warmup", [weights]))
                for dataset in DATASETS:
                    data = router_data(loss, dataset)
                    jobs.append(
                        job("selection", f"score/{loss}/{dataset}", "score", [data])
                    )
            if method == "rds":
                for part in [*DATASETS, QUERIES]:
                    features = targeted_features("rds", part)
                    jobs.append(
                        job("selection", f"represent/{part}", "represent", [features])
                    )
            if method == "less":
                warmup = less_warmup_dir()
                jobs.append(job("selection", "less_warmup", "less_warmup", [warmup]))
                for part in [*DATASETS, QUERIES]:
                    features = targeted_features("less", part)
                    jobs.append(
                        job(
                            "selection",
                            f"less_gradients/{part}",
                            "less_gradients",
                            [features],
                        )
                    )
            if loss is not None and methods.uses_clusters(
                method, SELECTION.get("method_definitions", {})
            ):
                clusters = clusters_path(loss)
                jobs.append(job("selection", f"cluster/{loss}", "select", [clusters]))
            chosen = f"{RESULTS}/selection/{selection}"
            jobs.append(job("selection", f"select/{selection}", "select", [chosen]))
            for seed in SEEDS:
                run = f"{target}/{selection}/seed{seed}"
                adapter = adapter_dir(target, selection, seed)
                jobs.append(job("training", f"finetune/{run}", "finetune", [adapter]))
            jobs.append(job("evaluation", f"evaluate/{target}/{selection}", "evaluate"))
            point = {
                "target": target,
                "method": method,
                "loss": loss,
                "percentage": pct,
            }
            points.append({**point, "jobs": jobs})
    return points


REPORT_DIR = f"{RESULTS}/report"
DIAGNOSTICS_DIR = f"{RESULTS}/diagnostics"


def report_losses():
    """The loss types with a warmup in the sweep (none when no method uses router data)."""
    return LOSSES if any(method in ROUTER_METHODS for method in METHODS) else []


def report_outputs():
    """The figures and tables of rules/report.smk (`snakemake --report` shows them)."""
    outputs = [f"{REPORT_DIR}/quality_losses.png", f"{REPORT_DIR}/selections.csv"]
    for loss in report_losses():
        outputs += [
            f"{REPORT_DIR}/warmup/{loss}/losses.png",
            f"{REPORT_DIR}/quality_scores/{loss}.png",
        ]
    if is_demo():
        outputs.append(f"{REPORT_DIR}/noise_kept.png")
    return outputs


def get_final_output():
    outputs = [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/costs.csv",
        f"{RESULTS}/models/{BASE}/verify_conversion.json",
        f"{RESULTS}/data/validate_data.json",
    ]
    outputs += report_outputs()
    if report_losses():
        outputs.append(f"{DIAGNOSTICS_DIR}/diagnostics.md")
    return outputs
