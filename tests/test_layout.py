"""The workflow's layout (selectmoe.workflow.layout): the sweep, its paths and its job graph."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selectmoe.workflow.config import with_defaults
from selectmoe.workflow.layout import RULES, Layout, Ref, Selection

REPO = Path(__file__).resolve().parents[1]
SECTION = {
    "methods": ["selectmoe", "random", "oracle"],
    "loss_types": ["sigmoid", "mse"],
    "percentages": [0.05, 0.1],
    "full_baseline": True,
    "replicates": [1, 2],
}


def _config(name: str = "config.yaml", **selection) -> dict:
    config = yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))
    config["selection"].update(selection)
    return with_defaults(config)


def _layout(**selection) -> Layout:
    return Layout(_config(**{**SECTION, **selection}))


ROWS = [
    "selectmoe/sigmoid/p0.05",
    "selectmoe/sigmoid/p0.1",
    "selectmoe/mse/p0.05",
    "selectmoe/mse/p0.1",
    "random/p0.05",
    "random/p0.1",
    "oracle/p0.05",
    "oracle/p0.1",
    "full",
]


def test_the_sweep_in_order_and_its_paths():
    layout = _layout()
    assert [row.path for row in layout.rows()] == ROWS
    # one selection per replicate; full involves no chance and selects once
    assert layout.selection_paths() == [
        *(f"{row}/r{rep}" for row in ROWS[:-1] for rep in (1, 2)),
        "full",
    ]
    assert _layout(full_baseline=False).selection_paths()[-1] == "oracle/p0.1/r2"


def test_replicates_of_a_method_without_chance_share_its_selection():
    layout = _layout(methods=["rds", "random"], full_baseline=False, percentages=[0.05])
    rds, random = layout.rows()
    assert [layout.selection_of(rds, r).path for r in (1, 2)] == ["rds/p0.05"] * 2
    assert [layout.selection_of(random, r).path for r in (1, 2)] == [
        "random/p0.05/r1",
        "random/p0.05/r2",
    ]
    # each replicate is finetuned on its selection, with its own nested seed
    inputs = layout.inputs("finetune", {"target": "demo-llama", "row": "rds/p0.05", "rep": "2"})
    assert inputs["selected"] == "results/selection/rds/p0.05/selected_data.jsonl"
    from selectmoe.workflow.settings import RuleSettings

    settings = RuleSettings(layout)
    assert settings.finetune("demo-llama", 2, 1)["seed"] == 2001
    assert settings.selection("random/p0.05/r2")["seed"] == 2
    assert settings.warmup("mse", 2)["gate_init_seed"] == 2
    assert settings.clustering(2)["seed"] == 2 and settings.less(2)["seed"] == 2
    # rds's features are the replicates' too; LESS's are per replicate
    assert layout.features("rds", "cot") == "results/targeted/rds/cot_features.pt"
    assert layout.features("less", "cot", 2) == "results/targeted/less/r2/cot_features.pt"


def test_a_path_gives_its_selection_back():
    for selection in _layout().selections():
        assert Selection.from_path(selection.path) == selection
    assert Selection.from_path("ifd/mse/p0.25") == Selection("ifd", "mse", 0.25)
    assert Selection.from_path("full") == Selection("full", None, 1.0)
    assert Selection.from_path("ifd/mse/p0.25/r7") == Selection("ifd", "mse", 0.25, 7)
    assert Selection.from_path("random/p0.1/r7").row == "random/p0.1"
    for bad in ("selectmoe", "selectmoe/mse/0.1", "a/b/c/p0.1", "r1/p0.1/x"):
        with pytest.raises(ValueError, match="is not a selection path"):
            Selection.from_path(bad)


def test_the_wildcard_pattern_matches_exactly_the_sweep():
    layout = _layout(methods=["selectmoe", "ifd", "random", "oracle"])
    pattern = re.compile(layout.selection_pattern())
    for selection in layout.selections():
        assert pattern.fullmatch(selection.path), selection.path
    others = ("quality_topk/mse/p0.1/r1", "selectmoe/hinge/p0.1/r1", "random/mse/p0.1/r1")
    # a replicated method needs its replicate; full has none
    others += ("fullx", "random/p0.1", "full/r1", "random/p0.1/rx")
    for other in others:
        assert not pattern.fullmatch(other), other
    rows = re.compile(layout.row_pattern())
    assert all(rows.fullmatch(row.path) for row in layout.rows())
    assert not rows.fullmatch("random/p0.1/r1")


def test_inputs_are_refs_to_the_jobs_that_make_them():
    layout = _layout()
    inputs = layout.inputs("select", {"selection": "selectmoe/mse/p0.1/r2"})
    assert [str(p) for p in inputs["router_data"]] == [
        f"results/router_data/mse/r2/{d}_router_data.pt" for d in layout.datasets
    ]
    assert {ref.job for ref in inputs["router_data"]} == {
        ("score", (("dataset", d), ("loss", "mse"), ("rep", "2"))) for d in layout.datasets
    }
    assert inputs["clusters"][0].job == ("cluster", (("loss", "mse"), ("rep", "2")))
    # random reads the pool alone; oracle the pool and its labels
    assert set(layout.inputs("select", {"selection": "random/p0.1/r1"})) == {"pool"}
    assert set(layout.inputs("select", {"selection": "oracle/p0.1/r1"})) == {"pool", "labels"}
    adapter = layout.adapter("demo-llama", "random/p0.1", 2, 3)
    assert adapter == "results/finetune/demo-llama/random/p0.1/r2/seed3/adapter"
    assert adapter.job == (
        "finetune",
        (("rep", "2"), ("row", "random/p0.1"), ("seed", "3"), ("target", "demo-llama")),
    )
    assert layout.benchmark("finetune", dict(adapter.wildcards)) == (
        "results/benchmarks/finetune/demo-llama/random/p0.1/r2/seed3.tsv"
    )
    # one evaluate job per row reads every replicate's adapters
    adapters = layout.inputs("evaluate", {"target": "demo-llama", "row": "random/p0.1"})
    assert [a.job[1] for a in adapters["adapters"]] == [
        (("rep", str(r)), ("row", "random/p0.1"), ("seed", "1"), ("target", "demo-llama"))
        for r in (1, 2)
    ]


def test_a_ref_survives_pickling():
    import pickle

    ref = Ref("results/x", "score", {"loss": "mse", "dataset": "cot"})
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and again.job == ref.job


def test_the_job_graph_of_the_demo():
    counts = Layout(_config()).job_counts()
    assert dict(counts) == {
        "build_demo": 1,
        "build_demo_target": 1,
        "validate_data": 1,
        "convert": 1,
        "verify_conversion": 1,
        "warmup": 3,
        "score": 12,
        "score_untrained": 4,
        "cluster": 3,
        "select": 16,
        "represent": 5,
        "finetune": 18,
        "evaluate": 6,
        "evaluate_base": 1,
        "summarize": 1,
        "costs": 1,
        "diagnostics": 1,
        "report_warmup": 1,
        "report_quality_scores": 1,
        "report_quality_losses": 1,
        "report_selections": 1,
        "report_noise": 1,
    }
    assert set(counts) <= set(RULES)


def test_cost_points_walk_the_graph():
    layout = Layout(_config())
    points = {(p["method"], p["loss"]): p for p in layout.cost_points()}
    rules = {key: sorted(job["rule"] for job in p["jobs"]) for key, p in points.items()}
    assert rules[("base", None)] == ["evaluate_base"]
    # every replicate's jobs: the row's cost is that of its three selections and finetunes
    assert rules[("random", None)] == sorted(["evaluate", *["finetune"] * 3, *["select"] * 3])
    assert rules[("selectmoe", "sigmoid")] == sorted(
        ["convert", *["warmup", *["score"] * 4, "cluster", "select", "finetune"] * 3, "evaluate"]
    )
    # rds selects once from features of every dataset and the queries
    assert rules[("rds", None)] == sorted(
        ["evaluate", *["finetune"] * 3, "select", *["represent"] * 5]
    )
    assert all("build_demo" not in r for r in rules.values())  # shared data is not counted
    jobs = [j for j in points[("selectmoe", "sigmoid")]["jobs"] if j["rule"] == "warmup"]
    assert jobs[0]["benchmark"] == "results/benchmarks/warmup/sigmoid/r42.tsv"
    assert jobs[0]["outputs"] == ["results/warmup/sigmoid/r42/full_rank_weights.pt"]


def test_path_fragments_are_spelled_in_one_module():
    """``p{pct}``, ``seed{seed}`` and ``r{rep}`` (the sweep's path fragments) appear in the
    layout only."""
    found = []
    for folder in ("selectmoe", "rules", "workflow_scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in (".py", ".smk") or path.name == "layout.py":
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"/p\{|\bp\{pct|seed\{|\br\{rep", text):
                found.append(str(path.relative_to(REPO)))
    assert found == []
    rules = (REPO / "rules").glob("*.smk")
    assert sum(len(re.findall(r"^rule select", p.read_text(), re.M)) for p in rules) == 1


def test_the_config_check_imports_no_torch():
    """What the Snakefile runs before any job (validate, defaults, registered names, the
    layout's job graph) loads no torch: a dry run stays fast."""
    code = (
        "import sys, yaml\n"
        "from selectmoe.workflow.config import check_config, with_defaults\n"
        "from selectmoe.workflow.layout import Layout\n"
        "from selectmoe.workflow.settings import RuleSettings\n"
        "config = with_defaults(yaml.safe_load(open('config/paper.yaml')))\n"
        "check_config(config)\n"
        "layout = Layout(config)\n"
        "assert sum(layout.job_counts().values()) > 1000\n"
        "RuleSettings(layout).selection(layout.selection_paths()[0])\n"
        "heavy = ('torch', 'transformers', 'peft', 'lm_eval')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_routed_methods_follow_their_definitions():
    config = _config(**{**SECTION, "methods": ["mine", "random"]})
    config["selection"]["method_definitions"] = {"mine": {"score": "gate", "allocation": "topk"}}
    layout = Layout(copy.deepcopy(config))
    assert layout.selection_paths()[:2] == ["mine/sigmoid/p0.05/r1", "mine/sigmoid/p0.05/r2"]
    # topk clusters nothing: no cluster job
    assert "cluster" not in layout.job_counts()


def test_a_method_ranking_by_excess_loss_reads_the_converted_models_router_data():
    """excess_loss's reference is the untrained control's router data (no replicate), which
    then records the LM statistics; other methods do not read it."""
    blend = {
        "score": "rank_blend",
        "score_params": {"scores": [{"score": "lm_loss"}, {"score": "excess_loss"}]},
        "allocation": "quality_quota",
    }
    config = _config(**{**SECTION, "methods": ["mine", "perplexity"]})
    config["selection"]["method_definitions"] = {"mine": blend}
    layout = Layout(copy.deepcopy(config))
    inputs = layout.inputs("select", {"selection": "mine/sigmoid/p0.05/r2"})
    assert [str(p) for p in inputs["reference_router_data"]] == [
        f"results/router_data/untrained/{d}_router_data.pt" for d in layout.datasets
    ]
    assert {ref.job[0] for ref in inputs["reference_router_data"]} == {"score_untrained"}
    assert "clusters" in inputs  # quality_quota spreads over the clusters
    other = layout.inputs("select", {"selection": "perplexity/sigmoid/p0.05/r2"})
    assert "reference_router_data" not in other
