"""Command line: ``selectmoe COMMAND [options]`` (also ``python -m selectmoe``).

Every command exits 0 on success; on bad input it prints one line ``selectmoe: error: ...``
(what, where, how to fix) to stderr and exits 2, leaving no partial output behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selectmoe.errors import ConfigError, SelectMoeError, exit_status
from selectmoe.schema import default_seed, section_defaults
from selectmoe.workflow.config import build_settings

__all__ = ["main"]

logger = logging.getLogger("selectmoe")


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-4", "epochs=2"]`` -> ``{"lr": 0.0001, "epochs": 2}`` (values parsed as YAML)."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _parse_fewshot(text: str) -> int | dict[str, int]:
    """``--num-fewshot``: ``N`` for every task, or ``task=N,task=N`` per task."""
    if text.strip().isdigit():
        return int(text)
    counts: dict[str, int] = {}
    for item in text.split(","):
        task, sep, count = item.partition("=")
        if not sep or not task.strip() or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a count (5) or task=count pairs (mmlu=5,bbh_cot_fewshot=3)"
            )
        counts[task.strip()] = int(count)
    return counts


def _print_json(obj: Any) -> None:
    from selectmoe.training.distributed import distributed_info

    if distributed_info().is_main:  # under accelerate launch only one process reports
        print(json.dumps(obj, indent=2, default=str))


def _settings_values(args: argparse.Namespace) -> dict[str, Any]:
    """``--settings FILE`` (a YAML/JSON mapping) updated by the ``--set KEY=VALUE`` pairs."""
    import yaml

    values: dict[str, Any] = {}
    if args.settings:
        path = Path(args.settings)
        if not path.is_file():
            raise ConfigError(f"{path}: settings file not found")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: settings file must hold a mapping of KEY: VALUE")
        values.update(loaded)
    values.update(_parse_overrides(args.set))
    return values


def _cmd_verify_results(args: argparse.Namespace) -> None:
    from selectmoe.errors import IntegrityError
    from selectmoe.workflow.verify import format_damage, verify_results

    checked, damaged = verify_results(args.results_dir, workdir=args.workdir)
    for damage in damaged:
        print(format_damage(damage))
    if damaged:
        raise IntegrityError(
            f"{len(damaged)} of {checked} outputs under {args.results_dir} differ from their "
            "provenance (listed above with the rule to rerun)"
        )
    print(f"[verify] {checked} outputs under {args.results_dir} match their provenance")


def _cmd_build_rehearsal(args: argparse.Namespace) -> None:
    from selectmoe.rehearsal import build_rehearsal

    manifest = build_rehearsal(args.output, seed=args.seed)
    print(
        f"[rehearsal] fixtures in {args.output}: pool {manifest['pool']}, models "
        + ", ".join(manifest["models"])
    )


def _cmd_build_demo(args: argparse.Namespace) -> None:
    from selectmoe.demo import build_demo

    overrides = _parse_overrides(args.set)
    _print_json(build_demo(args.output, seed=args.seed, **overrides))


def _cmd_validate_data(args: argparse.Namespace) -> None:
    from selectmoe.data.pool import validate_data_files

    report = validate_data_files(args.files)
    if args.report:
        from selectmoe.io import atomic_write_json

        atomic_write_json(args.report, report)
    _print_json(report)


def _cmd_convert(args: argparse.Namespace) -> None:
    from selectmoe.model.conversion import convert_olmoe

    _print_json(
        convert_olmoe(
            args.source,
            args.output,
            quality_gate_init_mean=args.gate_init_mean,
            quality_gate_init_std=args.gate_init_std,
            trash_expert_mode=args.trash_expert_mode,
            seed=args.seed,
        )
    )


def _cmd_verify(args: argparse.Namespace) -> None:
    from selectmoe.model.conversion import verify_conversion

    _print_json(
        verify_conversion(args.source, args.converted, output_json=args.report, tolerance=args.tol)
    )


def _cmd_warmup(args: argparse.Namespace) -> None:
    from selectmoe.stages.warmup import WarmupSettings, run_warmup

    settings = build_settings(WarmupSettings, _settings_values(args), section="warmup")
    _print_json(
        run_warmup(
            model_dir=args.model,
            pool_files=args.pool,
            output_path=args.output,
            settings=settings,
            checkpoint_dir=args.checkpoint_dir,
        )
    )


def _cmd_score(args: argparse.Namespace) -> None:
    from selectmoe.stages.scoring import score_dataset

    _print_json(
        score_dataset(
            model_dir=args.model,
            weights_path=args.weights,
            pool_files=args.pool,
            dataset=args.dataset,
            output_path=args.output,
            batch_size=args.batch_size,
            max_sequence_length=args.max_length,
            device=args.device,
            dtype=args.dtype,
        )
    )


def _router_files(directory: str) -> list[Path]:
    files = sorted(Path(directory).glob("*_router_data.pt"))
    if not files:
        raise SelectMoeError(f"{directory}: no *_router_data.pt files; run the score stage")
    return files


def _cmd_cluster(args: argparse.Namespace) -> None:
    from selectmoe.selection.clusters import run_clustering

    record = run_clustering(
        _router_files(args.router_data),
        args.output,
        clustering_method=args.clustering_method,
        clustering_params=_parse_overrides(args.set),
        seed=args.seed,
        debug_print=args.debug_print,
    )
    _print_json({k: v for k, v in record.items() if k != "labels"})


def _cmd_represent(args: argparse.Namespace) -> None:
    from selectmoe.stages.representations import RepresentationSettings, run_representations

    settings = build_settings(
        RepresentationSettings, _settings_values(args), section="targeted.rds"
    )
    _print_json(
        run_representations(
            model_source=args.model,
            data_path=args.data,
            output=args.output,
            settings=settings,
            queries=args.queries,
        )
    )


def _cmd_less_warmup(args: argparse.Namespace) -> None:
    from selectmoe.stages.less import LessSettings, run_less_warmup

    settings = build_settings(LessSettings, _settings_values(args), section="targeted.less")
    log = run_less_warmup(
        base_model=args.model, pool_paths=args.pool, output_dir=args.output, settings=settings
    )
    _print_json({k: v for k, v in log.items() if k not in ("history", "examples")})


def _cmd_less_gradients(args: argparse.Namespace) -> None:
    from selectmoe.stages.less import LessSettings, run_less_gradients

    settings = build_settings(LessSettings, _settings_values(args), section="targeted.less")
    _print_json(
        run_less_gradients(
            base_model=args.model,
            warmup_dir=args.warmup,
            data_path=args.data,
            output=args.output,
            settings=settings,
            queries=args.queries,
        )
    )


def _targeted_files(directory: str) -> list[Path]:
    files = sorted(p for p in Path(directory).glob("*_features.pt") if p.name != _QUERY_FEATURES)
    if not files:
        raise SelectMoeError(f"{directory}: no *_features.pt files; run represent / less-gradients")
    return files


_QUERY_FEATURES = "queries_features.pt"


def _workflow_select(args: argparse.Namespace) -> None:
    """One selection of a workflow config, run exactly as its select rule runs it: the inputs,
    settings and outputs come from the workflow's layout."""
    from selectmoe.workflow.config import check_config, load_workflow_config
    from selectmoe.workflow.layout import Layout
    from selectmoe.workflow.plugins import load_plugins
    from selectmoe.workflow.select_job import run_select_job
    from selectmoe.workflow.settings import RuleSettings

    config = load_workflow_config(args.configfile)
    load_plugins(config.get("plugins", []))
    check_config(config)
    layout = Layout(config)
    if args.selection not in layout.selection_paths():
        raise ConfigError(
            f"--selection {args.selection!r} is not a selection of {args.configfile}; its "
            f"selections: {', '.join(layout.selection_paths())}"
        )
    inputs = layout.inputs("select", {"selection": args.selection})
    files = {
        name: [str(v)] if isinstance(v, str) else [str(x) for x in v] for name, v in inputs.items()
    }
    missing = [path for paths in files.values() for path in paths if not Path(path).exists()]
    if missing:
        raise SelectMoeError(
            f"{missing[0]}: input of selection {args.selection} not found ({len(missing)} "
            "missing); run the workflow up to it first (snakemake ... --until select)"
        )
    settings = RuleSettings(layout).selection(args.selection)

    def output(name: str) -> str:
        return str(layout.selection_file(args.selection, name))

    _print_json(
        run_select_job(
            inputs=files,
            output_jsonl=output("selected_data.jsonl"),
            output_json=output("selection.json"),
            output_scores=output("scores.npz"),
            plot_dir=output("plots"),
            method=settings["method"],
            selection_percentage=settings["percentage"],
            clustering_method=settings.get("clustering_method", "kmeans"),
            clustering_params=dict(settings.get("clustering_params", {})),
            seed=settings["seed"],
            debug_print=settings["debug_print"] or args.debug_print,
            method_definitions=settings.get("method_definitions") or {},
        )
    )


def _cmd_select(args: argparse.Namespace) -> None:
    from selectmoe.selection.kinds import kind_of
    from selectmoe.workflow.select_job import run_select_job

    if args.configfile is not None:
        _workflow_select(args)
        return
    if args.pool is None or args.output is None or args.percentage is None:
        raise ConfigError(
            "select needs --pool, --output and --percentage (or --configfile and --selection)"
        )
    kind = kind_of(args.method)
    router_files: list[Path] = []
    queries = None
    if kind.targeted:
        if args.features is None:
            raise SelectMoeError(
                f"method {args.method} needs --features (the directory of the pool's "
                "*_features.pt and queries_features.pt)"
            )
        router_files = _targeted_files(args.features)
        queries = Path(args.features) / _QUERY_FEATURES
    elif args.router_data is not None:
        router_files = _router_files(args.router_data)
    elif kind.uses_loss:
        raise SelectMoeError(
            f"method {args.method} needs --router-data (only methods of the pool, reference "
            "and full kinds select from the pool alone)"
        )
    _print_json(
        run_select_job(
            router_files,
            args.pool,
            output_jsonl=args.output,
            output_json=args.info or str(Path(args.output).with_name("selection.json")),
            plot_dir=args.plots,
            method=args.method,
            selection_percentage=args.percentage,
            clustering_method=args.clustering_method,
            clustering_params=_parse_overrides(args.set),
            seed=args.seed,
            debug_print=args.debug_print,
            labels_path=args.labels,
            clusters_path=args.clusters,
            queries_path=queries,
            reference_router_data_paths=(
                _router_files(args.reference_router_data) if args.reference_router_data else ()
            ),
        )
    )


def _cmd_finetune(args: argparse.Namespace) -> None:
    from selectmoe.stages.finetune import FinetuneSettings, run_finetune

    settings = build_settings(FinetuneSettings, _settings_values(args), section="finetune")
    log = run_finetune(
        base_model=args.base_model,
        selected_data=args.data,
        output_dir=args.output,
        settings=settings,
        checkpoint_dir=args.checkpoint_dir,
    )
    _print_json({k: v for k, v in log.items() if k != "history"})


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from selectmoe.data.lm_eval_results import read_task_metrics
    from selectmoe.stages.evaluation import evaluate_adapters

    adapters = args.adapter or [None] * len(args.output)
    outputs = evaluate_adapters(
        pretrained=args.base_model,
        adapters=adapters,
        tasks=args.tasks,
        output_jsons=args.output,
        samples_jsonls=args.samples,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        batch_size=int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    for output in outputs:  # empty on the other processes of a launched run: the first writes
        if output:
            _print_json(read_task_metrics(output))


def _cmd_summarize(args: argparse.Namespace) -> None:
    from selectmoe.evidence.summary import SummarySettings, summarize

    points = json.loads(Path(args.points).read_text(encoding="utf-8"))
    settings = SummarySettings(
        metric=args.metric,
        confidence_level=args.confidence_level,
        reference_method=args.reference_method,
    )
    frame = summarize(
        points, output_csv=args.csv, output_md=args.md, plot_path=args.plot, settings=settings
    )
    print(frame.to_string(index=False))


def _cmd_validate_silhouette(args: argparse.Namespace) -> None:
    from selectmoe.clustering import validate_silhouette

    report = validate_silhouette(tolerance=args.tol, include_large=not args.quick)
    print(report.format())
    if not report.passed:
        raise SelectMoeError(
            f"silhouette differs from scikit-learn by {report.worst:.3g} > {args.tol:g}"
        )


def _cmd_plan(args: argparse.Namespace) -> None:
    from selectmoe.plan import format_plan_markdown, load_config, plan_table
    from selectmoe.workflow.plugins import load_plugins

    config = load_config(args.configfile)
    load_plugins(config.get("plugins", []))  # a plugin's kinds of method and artefacts
    rows = plan_table(config, gpu_memory_gib=args.gpu_memory_gib, mfu=args.mfu)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_plan_markdown(rows))


def _add_data_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of the demo and the pool."""

    p = sub.add_parser("build-demo", help="generate the embedded demo (tokenizer, data, models)")
    p.add_argument("--output", required=True, help="directory to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.set_defaults(func=_cmd_build_demo)

    p = sub.add_parser(
        "verify", help="re-check every output of a results directory against its provenance"
    )
    p.add_argument("results_dir", help="the workflow's results_dir")
    p.add_argument(
        "--workdir", help="where the workflow ran (recorded paths are relative to it; default .)"
    )
    p.set_defaults(func=_cmd_verify_results)

    p = sub.add_parser(
        "build-rehearsal",
        help="the paper path's offline fixtures: tiny checkpoints and a LESS archive",
    )
    p.add_argument(
        "output",
        help="directory to create (config/rehearsal.yaml reads results/rehearsal/fixtures)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_build_rehearsal)

    p = sub.add_parser("validate-data", help="check LESS-format pool files")
    p.add_argument("files", nargs="+")
    p.add_argument("--report", help="write the counts as JSON here")
    p.set_defaults(func=_cmd_validate_data)


def _add_selector_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of the selector model: conversion, warmup, scoring."""

    p = sub.add_parser("convert", help="OLMoE checkpoint -> Select-MoE model")
    p.add_argument("--source", required=True, help="OLMoE directory or hub id")
    p.add_argument("--output", required=True)
    base = section_defaults("base_model")
    p.add_argument("--gate-init-mean", type=float, default=base["quality_gate_init_mean"])
    p.add_argument("--gate-init-std", type=float, default=base["quality_gate_init_std"])
    p.add_argument(
        "--trash-expert-mode",
        default=section_defaults("warmup")["trash_expert_mode"],
        choices=["zero", "noise", "custom"],
    )
    p.add_argument("--seed", type=int, default=base["conversion_seed"])
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("verify-conversion", help="prove a conversion bit-exact")
    p.add_argument("--source", required=True)
    p.add_argument("--converted", required=True)
    p.add_argument("--report", help="JSON report path")
    p.add_argument("--tol", type=float, default=1e-5)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("warmup", help="stage 1: train the quality gates and routers")
    p.add_argument("--model", required=True, help="converted Select-MoE directory")
    p.add_argument("--pool", nargs="+", required=True, help="pool JSONL files")
    p.add_argument("--output", required=True, help="full_rank_weights.pt")
    p.add_argument("--settings", help=helps["settings"])
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.add_argument("--checkpoint-dir", help=helps["checkpoint"])
    p.set_defaults(func=_cmd_warmup)

    p = sub.add_parser("score", help="stage 2: router data of one dataset")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--weights",
        help="full_rank_weights.pt; omitted: the converted model's untrained gates (a control)",
    )
    p.add_argument("--pool", nargs="+", required=True, help="the dataset's JSONL files")
    p.add_argument("--dataset", required=True)
    p.add_argument("--output", required=True, help="{dataset}_router_data.pt")
    scoring = section_defaults("scoring")
    p.add_argument("--batch-size", type=int, default=scoring["batch_size"])
    p.add_argument("--max-length", type=int, default=scoring["max_sequence_length"])
    p.add_argument("--device", default=scoring["device"])
    p.add_argument("--dtype", default=scoring["dtype"], choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_cmd_score)


def _add_targeted_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of the targeted methods' features (rds, less)."""

    p = sub.add_parser("represent", help="rds: pooled hidden states of a dataset or the queries")
    p.add_argument("--model", required=True, help="the targeted model (the target's base)")
    p.add_argument("--data", required=True, help="a pool dataset's JSONL file, or the queries'")
    p.add_argument("--queries", action="store_true", help="--data is a query file")
    p.add_argument("--output", required=True, help="{dataset}_features.pt")
    p.add_argument("--settings", help=helps["settings"])
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.set_defaults(func=_cmd_represent)

    p = sub.add_parser("less-warmup", help="less: LoRA warmup with one checkpoint per epoch")
    p.add_argument("--model", required=True, help="the targeted model (the target's base)")
    p.add_argument("--pool", nargs="+", required=True, help="pool JSONL files")
    p.add_argument("--output", required=True, help="directory of checkpoint-{epoch}.pt")
    p.add_argument("--settings", help=helps["settings"])
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.set_defaults(func=_cmd_less_warmup)

    p = sub.add_parser("less-gradients", help="less: projected per-example LoRA gradients")
    p.add_argument("--model", required=True, help="the targeted model (the target's base)")
    p.add_argument("--warmup", required=True, help="the less-warmup directory")
    p.add_argument("--data", required=True, help="a pool dataset's JSONL file, or the queries'")
    p.add_argument("--queries", action="store_true", help="--data is a query file (plain grads)")
    p.add_argument("--output", required=True, help="{dataset}_features.pt")
    p.add_argument("--settings", help=helps["settings"])
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.set_defaults(func=_cmd_less_gradients)


def _add_selection_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of clustering and selection."""
    selection = section_defaults("selection")

    p = sub.add_parser("cluster", help="stage 2b: cluster the routing features of router data")
    p.add_argument("--router-data", required=True, help="directory of *_router_data.pt")
    p.add_argument("--output", required=True, help="clusters.json")
    p.add_argument("--clustering-method", default=selection["clustering_method"])
    p.add_argument("--seed", type=int, default=default_seed())
    p.add_argument("--debug-print", action="store_true")
    p.add_argument("--set", action="append", default=[], help="clustering_params " + helps["set"])
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser("select", help="stage 2b: select data from router data")
    p.add_argument("--configfile", help="a workflow config: run one of its selections as the rule")
    p.add_argument("--selection", help="with --configfile: the selection (e.g. random/p0.3/r42)")
    p.add_argument(
        "--router-data", help="directory of *_router_data.pt (not needed by pool-only methods)"
    )
    p.add_argument(
        "--reference-router-data",
        help="excess_loss: directory of the converted model's *_router_data.pt (LM statistics)",
    )
    p.add_argument(
        "--features",
        help="rds / less: directory of the pool's {dataset}_features.pt and queries_features.pt",
    )
    p.add_argument("--pool", nargs="+")
    p.add_argument("--output", help="selected_data.jsonl")
    p.add_argument("--info", help="selection.json (default: beside --output)")
    p.add_argument("--plots", help="directory for PNG plots")
    p.add_argument("--method", default="selectmoe", help="a selection method (default selectmoe)")
    p.add_argument(
        "--labels",
        help="quality labels of the pool (JSONL dataset/id/planted/kind): oracle, anti_oracle",
    )
    p.add_argument("--percentage", type=float, help="share of the pool, (0, 1]")
    p.add_argument("--clusters", help="clusters.json of the cluster command (else cluster here)")
    p.add_argument("--clustering-method", default=selection["clustering_method"])
    p.add_argument("--seed", type=int, default=default_seed())
    p.add_argument("--debug-print", action="store_true")
    p.add_argument("--set", action="append", default=[], help="clustering_params " + helps["set"])
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("validate-silhouette", help="compare the silhouette with scikit-learn")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--quick", action="store_true", help="skip the N=20,000 case")
    p.set_defaults(func=_cmd_validate_silhouette)


def _add_target_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of finetuning and evaluating a target."""

    p = sub.add_parser("finetune", help="stage 3: LoRA finetuning on selected data")
    p.add_argument("--base-model", required=True)
    p.add_argument("--data", required=True, help="selected_data.jsonl")
    p.add_argument("--output", required=True, help="adapter directory")
    p.add_argument("--settings", help=helps["settings"])
    p.add_argument("--set", action="append", default=[], help=helps["set"])
    p.add_argument("--checkpoint-dir", help=helps["checkpoint"])
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="stage 4: lm-eval on base model (+ adapter)")
    p.add_argument("--base-model", required=True)
    p.add_argument(
        "--adapter", nargs="+", help="LoRA adapter(s), evaluated in turn on one loaded base model"
    )
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--output", nargs="+", required=True, help="results JSON, one per adapter")
    p.add_argument("--samples", nargs="+", help="per-document samples JSONL, one per adapter")
    p.add_argument("--include-path", help="directory of local task YAMLs")
    p.add_argument(
        "--num-fewshot",
        type=_parse_fewshot,
        help="few-shot count for every task (N), or per task (mmlu=5,bbh_cot_fewshot=3)",
    )
    evaluation = section_defaults("evaluation")
    p.add_argument("--batch-size", default=evaluation["batch_size"])
    p.add_argument("--limit", type=float)
    p.add_argument("--device", default=evaluation["device"])
    p.add_argument(
        "--dtype", default=evaluation["dtype"], choices=["auto", "float32", "float16", "bfloat16"]
    )
    p.add_argument("--seed", type=int, default=evaluation["seed"])
    p.set_defaults(func=_cmd_evaluate)


def _add_evidence_commands(sub: Any, helps: Mapping[str, str]) -> None:
    """Commands of the summary and the plan."""

    p = sub.add_parser("summarize", help="gather results into CSV/Markdown")
    p.add_argument(
        "--points",
        required=True,
        help="JSON list of sweep points {target, method, loss, percentage, results, samples}",
    )
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--plot")
    summary = section_defaults("summary")
    p.add_argument("--metric", default=summary["metric"], help="per-document metric of the samples")
    p.add_argument("--confidence-level", type=float, default=summary["confidence_level"])
    p.add_argument("--reference-method", default=summary["reference_method"])
    p.set_defaults(func=_cmd_summarize)

    p = sub.add_parser("plan", help="GPU memory and time of every stage (computed estimate)")
    p.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU")
    p.add_argument("--mfu", type=float, default=0.4, help="sustained share of the peak FLOP/s")
    p.add_argument("--format", default="markdown", choices=["markdown", "json"])
    p.set_defaults(func=_cmd_plan)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selectmoe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "set": "KEY=VALUE setting (repeatable; VALUE parsed as YAML)",
        "settings": "YAML/JSON file of settings (--set pairs override it)",
        "checkpoint": "training checkpoints (default: OUTPUT.checkpoints); removed when done",
    }
    _add_data_commands(sub, helps)
    _add_selector_commands(sub, helps)
    _add_targeted_commands(sub, helps)
    _add_selection_commands(sub, helps)
    _add_target_commands(sub, helps)
    _add_evidence_commands(sub, helps)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def run() -> None:
        from selectmoe.workflow.plugins import load_plugins_from_environment

        load_plugins_from_environment()  # also in every process of an accelerate launch
        args.func(args)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
