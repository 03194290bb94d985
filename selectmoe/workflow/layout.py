"""The workflow's layout: every artefact's path, the rule that makes it, and the sweep's jobs.

This module is the one home of the workflow's path grammar and job graph. The rules
(``rules/*.smk``) take their outputs, inputs, logs and benchmarks from a :class:`Layout` built
once from the validated config; ``rule all``, the summary's points, the cost ledger, the plan and
the command line read the same object, so that nothing else spells a path or enumerates the
sweep. Adding a wildcard to an artefact is one edit here and one in the rule that makes it.

Paths (under ``results_dir``)::

    models/{base}/converted                              convert
    warmup/{loss}/r{rep}/full_rank_weights.pt            warmup
    router_data/{loss}/r{rep}/{dataset}_router_data.pt   score
    router_data/untrained/{dataset}_router_data.pt       score_untrained
    clusters/{loss}/r{rep}/clusters.json                 cluster
    targeted/rds/{part}_features.pt                      represent
    targeted/less/r{rep}/{part}_features.pt              less_gradients (less_warmup: .../warmup)
    artefacts/{name}/{key}                               artefact (a plugin's)
    selection/{selection}/selected_data.jsonl            select (+ selection.json, scores, plots)
    finetune/{target}/{row}/r{rep}/seed{seed}/adapter    finetune
    eval/{target}/{row}/r{rep}/seed{seed}/results.json   evaluate (eval/{target}/base: base)

A ``{row}`` (a row of the summary) is ``{method}/{loss}/p{pct}`` for a method that reads one
loss type's router data, ``{method}/p{pct}`` for one that does not, and ``{method}`` for the
whole pool (``full``): the method's kind decides (:mod:`selectmoe.selection.kinds`). A
``{selection}`` is ``{row}/r{rep}``, one per selection replicate (``selection.replicates``: the
seed of every random choice of the pipeline), or the ``{row}`` alone for a method whose
selection involves no chance (``rds``, ``full``): it selects once, and its replicates differ
only in their finetune seed (``1000 * rep + seed``).

Every input a rule reads is returned by :meth:`Layout.inputs` as a :class:`Ref` when a rule of
the workflow makes it: a path (what Snakemake sees) that also names the job making it, so that
:meth:`Layout.jobs` can walk the job graph from any output without asking Snakemake.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from selectmoe.selection.kinds import MethodKind, kind_of
from selectmoe.selection.methods import uses_score

__all__ = [
    "FULL",
    "QUERIES",
    "RULES",
    "UNTRAINED",
    "Layout",
    "Ref",
    "RuleSpec",
    "Selection",
]

FULL = "full"
#: The ``{part}`` of the query set's features, beside the pool's datasets.
QUERIES = "queries"
#: The loss type under which the converted model's untrained gates are scored (the control).
UNTRAINED = "untrained"
#: Path fragments of the sweep's dimensions, spelled here only.
_PERCENT = "p{pct}"
_SEED = "seed{seed}"
_REPLICATE = "r{rep}"
_REPLICATE_PATTERN = re.compile(r"r([0-9]+)")


@dataclass(frozen=True)
class Selection:
    """One selection of the sweep, or (``replicate`` None) a row of the summary.

    Attributes
    ----------
    method : str
    loss : str or None
        The quality-loss type of the router data it reads; None when its kind reads none.
    percentage : float
        The selected share of the pool, in (0, 1]; 1.0 for a selection of the whole pool.
    replicate : int or None
        The selection replicate (its seed); None for a method that selects once, or for a row.
    """

    method: str
    loss: str | None
    percentage: float
    replicate: int | None = None

    @property
    def row(self) -> str:
        """``{method}/{loss}/p{pct}``, ``{method}/p{pct}`` or ``{method}`` (whole pool)."""
        if self.method == FULL:
            return FULL
        share = _PERCENT.format(pct=f"{self.percentage:g}")
        return f"{self.method}/{self.loss}/{share}" if self.loss else f"{self.method}/{share}"

    @property
    def path(self) -> str:
        """:attr:`row`, with ``/r{rep}`` for a replicate."""
        if self.replicate is None:
            return self.row
        return f"{self.row}/{_REPLICATE.format(rep=self.replicate)}"

    def of_row(self) -> Selection:
        """The summary row of this selection (no replicate)."""
        return Selection(self.method, self.loss, self.percentage)

    @classmethod
    def from_path(cls, path: str) -> Selection:
        """The selection of a path or row (the inverse of :attr:`path`)."""
        parts = path.split("/")
        replicate = None
        if len(parts) > 1 and _REPLICATE_PATTERN.fullmatch(parts[-1]):
            replicate = int(parts.pop()[1:])
        if parts == [FULL]:
            return cls(FULL, None, 1.0, replicate)
        if len(parts) not in (2, 3) or not parts[-1].startswith("p"):
            raise ValueError(
                f"{path!r} is not a selection path ({{method}}[/{{loss}}]/p{{pct}}[/r{{rep}}])"
            )
        loss = parts[1] if len(parts) == 3 else None
        return cls(parts[0], loss, float(parts[-1][1:]), replicate)


class Ref(str):
    """A path that a rule of the workflow makes: the string Snakemake reads, with the job.

    Attributes
    ----------
    rule : str
        The rule that makes the file.
    wildcards : tuple of (str, str)
        That job's wildcards.
    """

    rule: str
    wildcards: tuple[tuple[str, str], ...]

    def __new__(cls, path: str, rule: str, wildcards: Mapping[str, Any] | None = None) -> Ref:
        made = super().__new__(cls, path)
        made.rule = rule
        made.wildcards = tuple(sorted((k, str(v)) for k, v in (wildcards or {}).items()))
        return made

    def __reduce__(self) -> tuple[Any, ...]:  # pickled into the jobs' scripts as params
        return (Ref, (str(self), self.rule, dict(self.wildcards)))

    @property
    def job(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """``(rule, wildcards)``: the job that makes this file."""
        return (self.rule, self.wildcards)


@dataclass(frozen=True)
class RuleSpec:
    """How a rule logs and is benchmarked, which resources it takes and what it costs.

    Attributes
    ----------
    log, benchmark : str
        Templates under ``results_dir`` with the rule's wildcards.
    stage : str or None
        Its key in ``resources.gpus`` / ``threads`` / ``mem_mb`` (None: one thread, no GPU).
    ledger : {"selection", "training", "evaluation"} or None
        Which part of a summary point's cost it is in the cost ledger (None: not counted, like
        building or fetching the data every point shares).
    """

    log: str
    benchmark: str
    stage: str | None = None
    ledger: str | None = None


def _spec(name: str, wildcards: str = "", **kwargs: Any) -> RuleSpec:
    """Logs and benchmarks under ``logs/{name}{wildcards}`` and ``benchmarks/...``."""
    return RuleSpec(
        log=f"logs/{name}{wildcards}.log", benchmark=f"benchmarks/{name}{wildcards}.tsv", **kwargs
    )


RULES: dict[str, RuleSpec] = {
    "build_demo": _spec("build_demo"),
    "build_demo_target": _spec("build_demo_target"),
    "fetch_pool": _spec("fetch_pool"),
    "fetch_queries": _spec("fetch_queries"),
    "validate_data": _spec("validate_data"),
    "convert": _spec("convert", stage="convert", ledger="selection"),
    "verify_conversion": _spec("verify_conversion", stage="convert"),
    "warmup": _spec("warmup", f"/{{loss}}/{_REPLICATE}", stage="warmup", ledger="selection"),
    "score": _spec(
        "score", f"/{{loss}}/{_REPLICATE}/{{dataset}}", stage="score", ledger="selection"
    ),
    "score_untrained": _spec("score", f"/{UNTRAINED}/{{dataset}}", stage="score"),
    "cluster": _spec("cluster", f"/{{loss}}/{_REPLICATE}", stage="select", ledger="selection"),
    "represent": _spec("represent", "/{part}", stage="represent", ledger="selection"),
    "less_warmup": _spec("less_warmup", f"/{_REPLICATE}", stage="less_warmup", ledger="selection"),
    "less_gradients": _spec(
        "less_gradients", f"/{_REPLICATE}/{{part}}", stage="less_gradients", ledger="selection"
    ),
    "artefact": _spec("artefacts", "/{name}/{key}", stage="artefact", ledger="selection"),
    "select": _spec("select", "/{selection}", ledger="selection"),
    "finetune": _spec(
        "finetune",
        f"/{{target}}/{{row}}/{_REPLICATE}/{_SEED}",
        stage="finetune",
        ledger="training",
    ),
    "evaluate": _spec("evaluate", "/{target}/{row}", stage="evaluate", ledger="evaluation"),
    "evaluate_base": _spec("evaluate", "/{target}/base", stage="evaluate", ledger="evaluation"),
    "summarize": _spec("summarize"),
    "costs": _spec("costs"),
    "diagnostics": _spec("diagnostics"),
    "report_warmup": _spec("report/warmup", "/{loss}"),
    "report_quality_scores": _spec("report/quality_scores", "/{loss}"),
    "report_quality_losses": _spec("report/quality_losses"),
    "report_selections": _spec("report/selections"),
    "report_noise": _spec("report/noise_kept"),
}
"""Every rule of the workflow with its log, benchmark, resources and ledger part."""


def _escape(names: Iterable[str]) -> str:
    return "|".join(map(re.escape, names))


class Layout:
    """The workflow's paths and jobs for one validated config (schema defaults filled in).

    Parameters
    ----------
    config : mapping
        The workflow config as Snakemake holds it after ``validate`` (every default set).
    """

    QUERIES = QUERIES
    UNTRAINED = UNTRAINED

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.results = str(config["results_dir"]).rstrip("/") or "."
        self.demo = bool((config.get("demo") or {}).get("activate", False))
        data = config["data"]
        self.datasets: list[str] = list(data["datasets"])
        self.base = str(config["base_model"]["name"])
        selection = config["selection"]
        self.losses: list[str] = list(selection["loss_types"])
        self.methods: list[str] = list(selection["methods"])
        self.percentages: list[float] = [float(p) for p in selection["percentages"]]
        self.definitions: dict[str, Any] = dict(selection.get("method_definitions") or {})
        self.targets: list[str] = list(config["targets"])
        self.seeds: list[int] = [int(seed) for seed in config["finetune"]["seeds"]]
        self.replicates: list[int] = [int(r) for r in selection["replicates"]]
        self.targeted: Mapping[str, Any] = config.get("targeted") or {}

    # ---------------------------------------------------------------------------- helpers

    def path(self, template: str, **wildcards: Any) -> str:
        """``{results_dir}/{template}`` with ``wildcards`` filled in (a value may be a Snakemake
        wildcard such as ``"{loss}"``, which stays a pattern)."""
        return f"{self.results}/{template.format(**wildcards)}"

    def ref(self, rule: str, template: str, **wildcards: Any) -> Ref:
        """:meth:`path` as a :class:`Ref` to the job of ``rule`` with ``wildcards``."""
        return Ref(self.path(template, **wildcards), rule, wildcards)

    @staticmethod
    def provenance(path: str) -> str:
        """The provenance record beside a job's first output."""
        return f"{path}.provenance.json"

    def log(self, rule: str) -> str:
        """The log pattern of ``rule`` (wildcards as Snakemake fills them)."""
        return f"{self.results}/{RULES[rule].log}"

    def benchmark(self, rule: str, wildcards: Mapping[str, Any] | None = None) -> str:
        """The benchmark file of ``rule``: a pattern, or one job's file with ``wildcards``."""
        template = RULES[rule].benchmark
        if wildcards is None:
            return f"{self.results}/{template}"
        return self.path(template, **dict(wildcards))

    def kind(self, method: str) -> MethodKind:
        """The kind of a method of the sweep."""
        return kind_of(method, self.definitions)

    def is_demo(self) -> bool:
        """Whether the embedded demo builds the pool, models and tasks."""
        return self.demo

    # ------------------------------------------------------------------------- the sweep

    @property
    def first_replicate(self) -> int:
        """The replicate whose warmup, router data and scores the report and diagnostics show."""
        return self.replicates[0]

    def replicated(self, method: str) -> bool:
        """Whether ``method`` selects once per replicate (its selection involves chance)."""
        return method not in self.kind(method).deterministic

    def rows(self) -> list[Selection]:
        """Every row of the summary (a selection without its replicate), in sweep order: per
        method (in ``methods`` order) every loss type and percentage, then ``full`` when
        ``full_baseline``."""
        found = []
        for method in self.methods:
            kind = self.kind(method)
            losses: list[str | None] = list(self.losses) if kind.uses_loss else [None]
            for loss in losses:
                if kind.uses_percentage:
                    found += [Selection(method, loss, p) for p in self.percentages]
                else:
                    found.append(Selection(method, loss, 1.0))
        if self.config["selection"].get("full_baseline", True) and FULL not in self.methods:
            found.append(Selection(FULL, None, 1.0))
        return found

    def selection_of(self, row: Selection, replicate: int) -> Selection:
        """The selection that replicate ``replicate`` of ``row`` finetunes on: its own, or the
        one selection of a method without chance."""
        if not self.replicated(row.method):
            return row.of_row()
        return Selection(row.method, row.loss, row.percentage, replicate)

    def row_selections(self, row: Selection) -> list[Selection]:
        """The distinct selections of a row, in replicate order."""
        return list(dict.fromkeys(self.selection_of(row, r) for r in self.replicates))

    def selections(self) -> list[Selection]:
        """Every selection job of the sweep: per row, one per replicate (or one)."""
        return [selection for row in self.rows() for selection in self.row_selections(row)]

    def selection_paths(self) -> list[str]:
        """Every selection of the sweep, as the ``{selection}`` wildcard value."""
        return [selection.path for selection in self.selections()]

    def selection_runs(self) -> list[dict[str, Any]]:
        """Every selection with its row, size and replicate (the diagnostics' overlap table):
        ``{"name", "row", "percentage", "replicate"}``."""
        return [
            {
                "name": selection.path,
                "row": selection.row,
                "percentage": selection.percentage,
                "replicate": selection.replicate,
            }
            for selection in self.selections()
        ]

    def routed_losses(self) -> list[str]:
        """The loss types with a warmup in the sweep (none when no method reads router data)."""
        return self.losses if any(self.kind(m).uses_loss for m in self.methods) else []

    def needs_ifd(self) -> bool:
        """Whether a method of the sweep ranks by IFD (scoring then runs the answers alone)."""
        return uses_score("ifd", self.methods, self.definitions)

    def targeted_methods(self) -> list[str]:
        """The sweep's methods of a targeted kind."""
        return [m for m in self.methods if self.kind(m).targeted]

    def score_selections(self) -> list[str]:
        """Per scoring method of the sweep (routed or targeted) and loss type, the selection
        whose scores the diagnostics read: the first percentage's of the first replicate (a
        score does not depend on the percentage)."""
        first: dict[tuple[str, str | None], str] = {}
        for row in self.rows():
            kind = self.kind(row.method)
            if kind.uses_loss or kind.targeted:
                chosen = self.selection_of(row, self.first_replicate)
                first.setdefault((row.method, row.loss), chosen.path)
        return list(first.values())

    def method_scores(self) -> dict[str, dict[str, str]]:
        """Loss type -> {method: the scores file of :meth:`score_selections`}; a method that
        reads no loss type (targeted) appears under every loss type."""
        table: dict[str, dict[str, str]] = {loss: {} for loss in self.routed_losses()}
        for path in self.score_selections():
            selection = Selection.from_path(path)
            scores = str(self.selection_file(path, "scores.npz"))
            for loss in [selection.loss] if selection.loss else list(table):
                table[loss][selection.method] = scores
        return table

    def warmed_router_data(self) -> dict[str, list[str]]:
        """Loss type -> its router-data files (first replicate), for every loss type with a
        warmup."""
        return {
            loss: [str(self.router_data(loss, d, self.first_replicate)) for d in self.datasets]
            for loss in self.routed_losses()
        }

    def selection_pattern(self) -> str:
        """The regular expression of every selection path (the ``{selection}`` wildcard): a
        row, with ``/r{rep}`` for a method that selects once per replicate."""
        replicate = "/" + _REPLICATE.replace("{rep}", "[0-9]+")
        once = [m for m in dict.fromkeys([*self.methods, FULL]) if not self.replicated(m)]
        alternatives = []
        if once:
            alternatives.append(f"(?:{self.row_pattern(once)})")
        repeated = [m for m in dict.fromkeys(self.methods) if self.replicated(m)]
        if repeated:
            alternatives.append(f"(?:{self.row_pattern(repeated)}){replicate}")
        return "|".join(alternatives)

    def row_pattern(self, methods: Iterable[str] | None = None) -> str:
        """The regular expression of the rows of ``methods`` (default every method and
        ``full``): the ``{row}`` wildcard."""
        methods = dict.fromkeys([*self.methods, FULL] if methods is None else methods)
        by_loss, others, whole = [], [], []
        for method in methods:
            kind = self.kind(method)
            if not kind.uses_percentage:
                whole.append(method)
            elif kind.uses_loss:
                by_loss.append(method)
            else:
                others.append(method)
        alternatives = []
        percent = _PERCENT.replace("{pct}", "[0-9.]+")
        if by_loss:
            alternatives.append(f"({_escape(by_loss)})/({_escape(self.losses)})/{percent}")
        if others:
            alternatives.append(f"({_escape(others)})/{percent}")
        alternatives += [re.escape(m) for m in whole]
        return "|".join(alternatives)

    def wildcard_constraints(self) -> dict[str, str]:
        """The regular expressions of every wildcard of the rules."""
        from selectmoe.workflow.artefacts import artefacts

        return {
            "loss": _escape(self.losses) or "(?!)",
            "seed": "[0-9]+",
            "rep": "[0-9]+",
            "row": self.row_pattern(),
            "dataset": _escape(self.datasets),
            "target": _escape(self.targets),
            "part": _escape([*self.datasets, QUERIES]),
            "selection": self.selection_pattern(),
            "name": _escape(artefacts()) or "(?!)",
            "key": "[A-Za-z0-9_./-]+",
        }

    # ----------------------------------------------------------------- sources and demo

    def demo_dir(self) -> str:
        return self.path("demo")

    def demo_file(self, name: str) -> Ref:
        """An output of build_demo (``demo/{name}``)."""
        return self.ref("build_demo", f"demo/{name}")

    def pool_files(self, dataset: str | None = None) -> list[str]:
        """The JSONL files of one dataset, or of every dataset: ``{pool_dir}/{file_pattern}``
        (the demo's pool when active). They are refs to build_demo or fetch_pool."""
        datasets = self.datasets if dataset is None else [dataset]
        pattern = self.config["data"]["file_pattern"]
        if self.demo:
            return [self.demo_file(f"pool/{pattern.format(dataset=d)}") for d in datasets]
        pool_dir = self.config["data"]["pool_dir"]
        return [Ref(f"{pool_dir}/{pattern.format(dataset=d)}", "fetch_pool") for d in datasets]

    def labels_file(self) -> str | None:
        """The pool's quality labels: the demo's sidecar, else data.labels (None: no labels)."""
        if self.demo:
            return self.demo_file("noise_labels.jsonl")
        return self.config["data"].get("labels")

    def has_labels(self) -> bool:
        return self.labels_file() is not None

    def base_source(self) -> str:
        """The OLMoE checkpoint to convert (the demo's base model when active)."""
        return self.demo_file("base_model") if self.demo else self.config["base_model"]["source"]

    def base_source_inputs(self) -> list[str]:
        """The base model as an input, when a rule of the workflow builds it (the demo)."""
        return [self.demo_file("base_model")] if self.demo else []

    def target_model(self, target: str) -> str:
        """The target's model: a hub id or directory (the demo's target when active)."""
        if self.demo:
            return self.ref("build_demo_target", "demo/target_model")
        return self.config["targets"][target]["model"]

    def target_inputs(self, target: str | None = None) -> list[str]:
        """The target model as an input, when a rule of the workflow builds it (the demo)."""
        return [self.ref("build_demo_target", "demo/target_model")] if self.demo else []

    def task_inputs(self) -> list[str]:
        """The evaluation tasks as an input, when a rule builds them (the demo's)."""
        return [self.demo_file("tasks")] if self.demo else []

    def targeted_model(self) -> str:
        """targeted.model, else the first target's model (the targeted methods select for it)."""
        return self.targeted.get("model") or self.target_model(self.targets[0])

    def targeted_model_inputs(self) -> list[str]:
        return [] if self.targeted.get("model") else self.target_inputs()

    def own_queries_file(self) -> str | None:
        return (self.targeted.get("queries") or {}).get("file")

    def queries_file(self) -> str:
        """The query set: targeted.queries.file, the demo's, or LESS's (rule fetch_queries)."""
        own = self.own_queries_file()
        if own:
            return own
        if self.demo:
            return self.demo_file("queries.jsonl")
        return self.ref("fetch_queries", "data/queries.jsonl")

    # -------------------------------------------------------------------------- artefacts

    def converted_model(self) -> Ref:
        """The converted Select-MoE model (a directory)."""
        return Ref(self.path("models/{base}/converted", base=self.base), "convert")

    def conversion_report(self) -> Ref:
        path = self.path("models/{base}/verify_conversion.json", base=self.base)
        return Ref(path, "verify_conversion")

    def data_report(self) -> Ref:
        return self.ref("validate_data", "data/validate_data.json")

    def warmup_weights(self, loss: str, rep: Any) -> Ref:
        """The warmed gates and routers of a loss type in one replicate."""
        template = f"warmup/{{loss}}/{_REPLICATE}/full_rank_weights.pt"
        return self.ref("warmup", template, loss=loss, rep=rep)

    def warmup_checkpoints(self, loss: str, rep: Any) -> str:
        """The warmup's training checkpoints (outside the job's declared outputs)."""
        return self.path(f"checkpoints/warmup/{{loss}}/{_REPLICATE}", loss=loss, rep=rep)

    def router_data(self, loss: str, dataset: str, rep: Any = None) -> Ref:
        """A dataset's router data under one replicate of a loss type's warmup, or under the
        converted model's gates (``untrained``, no replicate)."""
        if loss == UNTRAINED:
            path = self.path(
                "router_data/{loss}/{dataset}_router_data.pt", loss=loss, dataset=dataset
            )
            return Ref(path, "score_untrained", {"dataset": dataset})
        if rep is None:
            raise ValueError(f"router data of loss type {loss!r} needs its replicate")
        template = f"router_data/{{loss}}/{_REPLICATE}/{{dataset}}_router_data.pt"
        return self.ref("score", template, loss=loss, rep=rep, dataset=dataset)

    def clusters(self, loss: str, rep: Any) -> Ref:
        """The clusters of one replicate's router data of a loss type."""
        return self.ref(
            "cluster", f"clusters/{{loss}}/{_REPLICATE}/clusters.json", loss=loss, rep=rep
        )

    def features(self, method: str, part: str, rep: Any = None) -> Ref:
        """A targeted method's features of a pool dataset or of the query set (``less``: of one
        replicate's warmup; ``rds``: no chance, no replicate)."""
        if method == "rds":
            return Ref(
                self.path("targeted/rds/{part}_features.pt", part=part), "represent", {"part": part}
            )
        template = f"targeted/less/{_REPLICATE}/{{part}}_features.pt"
        return self.ref("less_gradients", template, rep=rep, part=part)

    def less_warmup(self, rep: Any) -> Ref:
        """LESS's warmup checkpoints of one replicate."""
        return self.ref("less_warmup", f"targeted/less/{_REPLICATE}/warmup", rep=rep)

    def artefact(self, name: str, **wildcards: Any) -> Ref:
        """A plugin's artefact (:mod:`selectmoe.workflow.artefacts`) with its wildcards."""
        from selectmoe.workflow.artefacts import get_artefact

        key = get_artefact(name).key.format(**wildcards)
        return self.ref("artefact", "artefacts/{name}/{key}", name=name, key=key)

    def selection_file(self, selection: str, name: str) -> Ref:
        """``selected_data.jsonl``, ``selection.json``, ``scores.npz`` or ``plots`` of a
        ``{selection}``."""
        return Ref(
            self.path("selection/{selection}/{name}", selection=selection, name=name),
            "select",
            {"selection": selection},
        )

    def adapter(self, target: str, row: str, rep: Any, seed: Any) -> Ref:
        """The LoRA adapter of a target finetuned on a row's replicate with one seed."""
        template = f"finetune/{{target}}/{{row}}/{_REPLICATE}/{_SEED}/adapter"
        return self.ref("finetune", template, target=target, row=row, rep=rep, seed=seed)

    def finetune_checkpoints(self, target: str, row: str, rep: Any, seed: Any) -> str:
        template = f"checkpoints/finetune/{{target}}/{{row}}/{_REPLICATE}/{_SEED}"
        return self.path(template, target=target, row=row, rep=rep, seed=seed)

    @staticmethod
    def finetune_seed(rep: Any, seed: Any) -> int:
        """The seed of a finetune job: its seed nested in its replicate (``1000 * rep + seed``)."""
        return 1000 * int(rep) + int(seed)

    def evaluations(self) -> list[tuple[int, int]]:
        """``(replicate, seed)`` of every finetune of a row, in the order of its evaluations."""
        return [(rep, seed) for rep in self.replicates for seed in self.seeds]

    def eval_dir(self, target: str, row: str) -> str:
        """Where the evaluations of a target (with the adapters of a ``row``, or ``base``) go."""
        return self.path("eval/{target}/{row}", target=target, row=row)

    def eval_results(self, target: str, row: str, kind: str) -> list[Ref]:
        """Per replicate and finetune seed (:meth:`evaluations`), the evaluation's
        ``results.json`` or ``samples.jsonl`` (kind)."""
        name = {"results": "results.json", "samples": "samples.jsonl"}[kind]
        job = {"target": target, "row": row}
        directory = self.eval_dir(target, row)
        return [
            Ref(
                f"{directory}/{_REPLICATE.format(rep=rep)}/{_SEED.format(seed=seed)}/{name}",
                "evaluate",
                job,
            )
            for rep, seed in self.evaluations()
        ]

    def eval_results_pattern(self, kind: str) -> list[str]:
        """The evaluate rule's outputs: one per replicate and seed, with ``{target}``/``{row}``."""
        return [str(path) for path in self.eval_results("{target}", "{row}", kind)]

    def evaluation_provenance(self, target: str, row: str) -> str:
        return f"{self.eval_dir(target, row)}/evaluate.provenance.json"

    def base_results(self, target: str, kind: str) -> Ref:
        """The base model's ``results.json`` or ``samples.jsonl`` (rule evaluate_base)."""
        name = {"results": "results.json", "samples": "samples.jsonl"}[kind]
        return Ref(f"{self.eval_dir(target, 'base')}/{name}", "evaluate_base", {"target": target})

    def output(self, name: str) -> str:
        """A workflow-wide output under ``results_dir`` (``summary.csv``, ``costs.md``, ...)."""
        return self.path(name)

    def report_file(self, name: str) -> str:
        return self.path("report/{name}", name=name)

    def diagnostics_file(self, name: str) -> str:
        return self.path("diagnostics/{name}", name=name)

    # ----------------------------------------------------------------------------- inputs

    def inputs(self, rule: str, wildcards: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The named inputs of one job of ``rule`` (Snakemake's ``unpack`` reads them).

        Raises
        ------
        KeyError
            For a rule the layout does not know.
        """
        values = {k: str(v) for k, v in dict(wildcards or {}).items()}
        return _INPUTS[rule](self, values)

    # ------------------------------------------------------------------ what the sweep makes

    def summary_points(self) -> list[dict[str, Any]]:
        """One point per (target, row) plus the base model of each target.

        A point lists its evaluations, one per replicate and finetune seed (the base model has
        one, without either), and the files the summary reads: per replicate, its selection's
        ``selection.json`` and ``selected_data.jsonl`` (shared by the replicates of a method
        without chance).
        """
        points = []
        for target in self.targets:
            base = self.base_results(target, "results")
            points.append(
                {
                    "target": target,
                    "method": "base",
                    "loss": None,
                    "percentage": None,
                    "replicates": [None],
                    "seeds": [None],
                    "results": [base],
                    "samples": [self.base_results(target, "samples")],
                    "provenance": self.provenance(base),
                }
            )
            for row in self.rows():
                chosen = [self.selection_of(row, rep).path for rep in self.replicates]
                evaluations = self.evaluations()
                points.append(
                    {
                        "target": target,
                        "method": row.method,
                        "loss": row.loss,
                        "percentage": row.percentage,
                        "uses_labels": self.kind(row.method).uses_labels,
                        "replicates": [rep for rep, _ in evaluations],
                        "seeds": [seed for _, seed in evaluations],
                        "results": self.eval_results(target, row.row, "results"),
                        "samples": self.eval_results(target, row.row, "samples"),
                        "provenance": self.evaluation_provenance(target, row.row),
                        "selection_json": [
                            self.selection_file(p, "selection.json") for p in chosen
                        ],
                        "selected": [self.selection_file(p, "selected_data.jsonl") for p in chosen],
                    }
                )
        return points

    def report_outputs(self) -> list[str]:
        """The figures and tables of the report rules (``snakemake --report`` shows them)."""
        outputs = [self.report_file("quality_losses.png"), self.report_file("selections.csv")]
        for loss in self.routed_losses():
            outputs += [
                self.report_file(f"warmup/{loss}/losses.png"),
                self.report_file(f"quality_scores/{loss}.png"),
            ]
        if self.demo:
            outputs.append(self.report_file("noise_kept.png"))
        return outputs

    def final_outputs(self) -> list[str]:
        """What ``rule all`` asks for."""
        outputs = [
            self.output("summary.csv"),
            self.output("summary.md"),
            self.output("costs.csv"),
            self.conversion_report(),
            self.data_report(),
            *self.report_outputs(),
        ]
        if self.routed_losses():
            outputs.append(self.diagnostics_file("diagnostics.md"))
        return outputs

    # ---------------------------------------------------------------------- the job graph

    def jobs(self, outputs: Iterable[str] | None = None) -> list[tuple[str, dict[str, str]]]:
        """Every job needed to make ``outputs`` (default: everything the sweep makes), each
        once, in the order the walk meets them: ``(rule, wildcards)``.

        The walk follows :meth:`inputs` from job to job through the :class:`Ref` paths; files
        that no rule makes (a user's pool, a hub model) end it.
        """
        pending = [p for p in (outputs or self._final_jobs()) if isinstance(p, Ref)]
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], None] = {}
        while pending:
            ref = pending.pop(0)
            if ref.job in seen:
                continue
            seen[ref.job] = None
            for value in self.inputs(ref.rule, dict(ref.wildcards)).values():
                items = value if isinstance(value, list | tuple) else [value]
                pending += [item for item in items if isinstance(item, Ref)]
        return [(rule, dict(wildcards)) for rule, wildcards in seen]

    def _final_jobs(self) -> list[Ref]:
        """One ref per job that ``rule all`` needs directly."""
        refs = [
            Ref(self.output("summary.csv"), "summarize"),
            Ref(self.output("costs.csv"), "costs"),
            self.conversion_report(),
            self.data_report(),
            Ref(self.report_file("quality_losses.png"), "report_quality_losses"),
            Ref(self.report_file("selections.csv"), "report_selections"),
        ]
        for loss in self.routed_losses():
            refs += [
                Ref(self.report_file(f"warmup/{loss}/losses.png"), "report_warmup", {"loss": loss}),
                Ref(
                    self.report_file(f"quality_scores/{loss}.png"),
                    "report_quality_scores",
                    {"loss": loss},
                ),
            ]
        if self.demo:
            refs.append(Ref(self.report_file("noise_kept.png"), "report_noise"))
        if self.routed_losses():
            refs.append(Ref(self.diagnostics_file("diagnostics.md"), "diagnostics"))
        return refs

    def job_counts(self) -> Counter:
        """Jobs per rule of the whole sweep (what a dry run's job stats list, without ``all``)."""
        return Counter(rule for rule, _ in self.jobs())

    def gpus(self, rule: str) -> int:
        """GPUs a job of ``rule`` holds (``resources.gpus`` of its stage)."""
        stage = RULES[rule].stage
        table = (self.config.get("resources") or {}).get("gpus") or {}
        return int(table.get(stage, 0)) if stage else 0

    def threads(self, rule: str) -> int:
        stage = RULES[rule].stage
        table = (self.config.get("resources") or {}).get("threads") or {}
        return int(table.get(stage, table.get("default", 1))) if stage else 1

    def mem_mb(self, rule: str) -> int:
        stage = RULES[rule].stage
        table = (self.config.get("resources") or {}).get("mem_mb") or {}
        return int(table.get(stage, table.get("default", 4000)))

    def outputs_of(self, rule: str, wildcards: Mapping[str, str]) -> list[str]:
        """The files a job stores for the cost ledger's ``stored_mb`` (its main outputs)."""
        return _STORED[rule](self, dict(wildcards)) if rule in _STORED else []

    def cost_points(self) -> list[dict[str, Any]]:
        """Per summary point, every job it needed, from the job graph (:mod:`.evidence.costs`).

        A job is counted when its rule has a ledger part (:class:`RuleSpec`): the data every
        point shares (building or fetching the pool) is not.
        """
        points = []
        for point in self.summary_points():
            outputs = point["results"]
            jobs = []
            for rule, wildcards in self.jobs(outputs):
                part = RULES[rule].ledger
                if part is None:
                    continue
                jobs.append(
                    {
                        "kind": part,
                        "benchmark": self.benchmark(rule, wildcards),
                        "gpus": self.gpus(rule),
                        "outputs": self.outputs_of(rule, wildcards),
                        "rule": rule,
                    }
                )
            order = {"selection": 0, "training": 1, "evaluation": 2}
            jobs.sort(key=lambda job: order[job["kind"]])
            keys = ("target", "method", "loss", "percentage")
            points.append({**{key: point[key] for key in keys}, "jobs": jobs})
        return points


# --------------------------------------------------------------------------------------------
# each rule's inputs
# --------------------------------------------------------------------------------------------

_INPUTS: dict[str, Callable[[Layout, dict[str, str]], dict[str, Any]]] = {}
_STORED: dict[str, Callable[[Layout, dict[str, str]], list[str]]] = {}


def _inputs(rule: str) -> Callable:
    def register(function: Callable) -> Callable:
        _INPUTS[rule] = function
        return function

    return register


def _no_inputs(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {}


for _rule in ("build_demo", "fetch_pool", "fetch_queries", "report_quality_losses"):
    _INPUTS[_rule] = _no_inputs


@_inputs("build_demo_target")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {
        "manifest": layout.demo_file("demo_manifest.json"),
        "tokenizer": layout.demo_file("tokenizer"),
        "tasks": layout.demo_file("tasks"),
    }


@_inputs("validate_data")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"pool": layout.pool_files()}


@_inputs("convert")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"source": layout.base_source_inputs()}


@_inputs("verify_conversion")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"source": layout.base_source_inputs(), "model": layout.converted_model()}


@_inputs("warmup")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"model": layout.converted_model(), "pool": layout.pool_files()}


@_inputs("score")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {
        "model": layout.converted_model(),
        "weights": layout.warmup_weights(w["loss"], w["rep"]),
        "pool": layout.pool_files(w["dataset"]),
    }


@_inputs("score_untrained")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"model": layout.converted_model(), "pool": layout.pool_files(w["dataset"])}


@_inputs("cluster")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"router_data": [layout.router_data(w["loss"], d, w["rep"]) for d in layout.datasets]}


def _part_data(layout: Layout, part: str) -> list[str]:
    return [layout.queries_file()] if part == QUERIES else layout.pool_files(part)


@_inputs("represent")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"data": _part_data(layout, w["part"]), "model": layout.targeted_model_inputs()}


@_inputs("less_warmup")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"pool": layout.pool_files(), "model": layout.targeted_model_inputs()}


@_inputs("less_gradients")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {
        "data": _part_data(layout, w["part"]),
        "warmup": layout.less_warmup(w["rep"]),
        "model": layout.targeted_model_inputs(),
    }


@_inputs("artefact")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    from selectmoe.workflow.artefacts import get_artefact

    return get_artefact(w["name"]).inputs_of(layout, w["key"])


@_inputs("select")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    selection = Selection.from_path(w["selection"])
    return layout.kind(selection.method).inputs(layout, selection)


@_inputs("finetune")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    chosen = layout.selection_of(Selection.from_path(w["row"]), int(w["rep"]))
    return {
        "target_model": layout.target_inputs(w["target"]),
        "selected": layout.selection_file(chosen.path, "selected_data.jsonl"),
    }


@_inputs("evaluate")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {
        "target_model": layout.target_inputs(w["target"]),
        "tasks": layout.task_inputs(),
        "adapters": [
            layout.adapter(w["target"], w["row"], rep, seed) for rep, seed in layout.evaluations()
        ],
    }


@_inputs("evaluate_base")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"target_model": layout.target_inputs(w["target"]), "tasks": layout.task_inputs()}


@_inputs("summarize")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    points = layout.summary_points()
    return {
        "results": [r for p in points for r in p["results"]],
        "samples": [s for p in points for s in p["samples"]],
        "selections": list(dict.fromkeys(s for p in points for s in p.get("selection_json", []))),
        "selected": list(dict.fromkeys(s for p in points for s in p.get("selected", []))),
        "provenance": [p["provenance"] for p in points],
    }


@_inputs("costs")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"summary": Ref(layout.output("summary.csv"), "summarize")}


@_inputs("diagnostics")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    labelled = layout.has_labels()
    paths = layout.selection_paths()
    return {
        "warmed": [
            layout.router_data(loss, d, layout.first_replicate)
            for loss in layout.routed_losses()
            for d in layout.datasets
        ],
        "untrained": [layout.router_data(UNTRAINED, d) for d in layout.datasets],
        "labels": layout.labels_file() if labelled else [],
        "selections": [layout.selection_file(s, "selected_data.jsonl") for s in paths],
        "scores": [layout.selection_file(s, "scores.npz") for s in layout.score_selections()]
        if labelled
        else [],
        "pool": layout.pool_files(),
    }


@_inputs("report_warmup")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"weights": layout.warmup_weights(w["loss"], layout.first_replicate)}


@_inputs("report_quality_scores")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {
        "router_data": [
            layout.router_data(w["loss"], d, layout.first_replicate) for d in layout.datasets
        ]
    }


@_inputs("report_selections")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    return {"info": [layout.selection_file(s, "selection.json") for s in layout.selection_paths()]}


@_inputs("report_noise")
def _(layout: Layout, w: dict[str, str]) -> dict[str, Any]:
    paths = layout.selection_paths()
    return {
        "labels": layout.labels_file(),
        "selected": [layout.selection_file(s, "selected_data.jsonl") for s in paths],
    }


# the files whose bytes the cost ledger counts as stored (selection and training outputs)
_STORED.update(
    {
        "convert": lambda layout, w: [layout.converted_model()],
        "warmup": lambda layout, w: [layout.warmup_weights(w["loss"], w["rep"])],
        "score": lambda layout, w: [layout.router_data(w["loss"], w["dataset"], w["rep"])],
        "cluster": lambda layout, w: [layout.clusters(w["loss"], w["rep"])],
        "represent": lambda layout, w: [layout.features("rds", w["part"])],
        "less_warmup": lambda layout, w: [layout.less_warmup(w["rep"])],
        "less_gradients": lambda layout, w: [layout.features("less", w["part"], w["rep"])],
        "artefact": lambda layout, w: [layout.path("artefacts/{name}/{key}", **w)],
        "select": lambda layout, w: [layout.path("selection/{selection}", **w)],
        "finetune": lambda layout, w: [layout.adapter(w["target"], w["row"], w["rep"], w["seed"])],
    }
)
