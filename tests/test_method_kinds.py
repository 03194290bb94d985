"""Kinds of selection method (selectmoe.selection.kinds) and a plugin's own kind with an artefact
of its own, run through Snakemake into the summary, the cost ledger and the plan."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import yaml

from selectmoe.errors import SelectionError
from selectmoe.selection.kinds import (
    MethodKind,
    available_methods,
    kind_of,
    method_kinds,
    register_method_kind,
)
from selectmoe.selection.methods import marked

# A user's plugin: a kind of method that ranks the pool by the words of each example's last
# answer, read from an artefact that the plugin declares and makes itself.
PLUGIN = '''
"""Select the examples with the longest answers, counted by an artefact of the plugin's own."""
import json

import numpy as np

from selectmoe.data.pool import load_pool
from selectmoe.selection.kinds import Chosen, Loaded, MethodKind, register_method_kind
from selectmoe.selection.select import PoolExamples
from selectmoe.workflow.artefacts import Artefact, register_artefact


def count_words(inputs, output, wildcards):
    pool = load_pool(inputs["pool"])
    counts = {example.id: len(example.messages[-1]["content"].split()) for example in pool}
    with open(output, "w", encoding="utf-8") as handle:
        json.dump({"dataset": wildcards["dataset"], "words": counts}, handle, sort_keys=True)


register_artefact(
    Artefact(
        name="answer_words",
        key="{dataset}.json",
        inputs=lambda layout, w: {"pool": layout.pool_files(w["dataset"])},
        make=count_words,
    ),
    overwrite=True,
)


def inputs(layout, selection):
    words = [layout.artefact("answer_words", dataset=d) for d in layout.datasets]
    return {"words": words, "pool": layout.pool_files()}


def load(inputs, request):
    words = {}
    for path in inputs["words"]:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        words.update({(record["dataset"], i): n for i, n in record["words"].items()})
    return Loaded(candidates=PoolExamples.of_pool(inputs["pool"]), extra={"words": words})


def choose(loaded, request):
    pool = loaded.candidates
    keys = zip(pool.datasets, pool.sample_ids)
    words = np.asarray([loaded.extra["words"][key] for key in keys], dtype=np.float64)
    order = np.argsort(-words, kind="stable")[: request.n].astype(np.int64)
    return Chosen(indices=order, scores=words, score_definition="words of the last answer")


register_method_kind(
    MethodKind(
        name="answer_length",
        methods=("longest_answers",),
        inputs=inputs,
        load=load,
        choose=choose,
        deterministic=("longest_answers",),
        description="the longest answers first",
    ),
    overwrite=True,
)
'''


def test_every_built_in_method_has_one_kind():
    kinds = method_kinds()
    assert list(kinds)[:5] == ["routed", "pool", "full", "reference", "targeted"]
    assert kind_of("selectmoe").name == "routed" and kind_of("selectmoe_seed").uses_loss
    assert kind_of("random").name == "pool" and not kind_of("random").uses_loss
    assert not kind_of("full").uses_percentage
    assert kind_of("oracle").uses_labels and marked("oracle") == "oracle ‡"
    assert kind_of("less").targeted and marked("rds") == "rds †"
    assert marked("selectmoe") == "selectmoe"
    # a config's own definition is routed
    assert kind_of("mine", {"mine": {"score": "gate", "allocation": "topk"}}).name == "routed"
    names = available_methods()
    assert len(names) == len(set(names)) and {"selectmoe", "random", "less"} <= set(names)


def test_unknown_methods_and_clashing_kinds_are_refused():
    with pytest.raises(SelectionError, match=r"unknown selection method 'nope'; valid: selectmoe"):
        kind_of("nope")
    clash = MethodKind(
        name="other",
        methods=("random",),
        inputs=lambda layout, s: {},
        load=lambda inputs, request: None,
        choose=lambda loaded, request: None,
    )
    with pytest.raises(SelectionError, match="random belong to another kind"):
        register_method_kind(clash)
    with pytest.raises(SelectionError, match="kind 'routed' is already registered"):
        register_method_kind(
            MethodKind(
                name="routed",
                methods=(),
                inputs=clash.inputs,
                load=clash.load,
                choose=clash.choose,
            )
        )


def test_a_plugin_kind_selects_through_the_api(tmp_path, monkeypatch, tiny_write_pool):
    """The plugin's kind, called as the select job calls it: its artefact, then its choice."""
    from selectmoe.selection.select import run_selection
    from selectmoe.workflow.artefacts import make_artefact

    (tmp_path / "words_plugin_api.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("words_plugin_api")
    pool = tiny_write_pool(tmp_path / "pool", 8)
    words = []
    for dataset, path in pool.items():
        out = tmp_path / "artefacts" / f"{dataset}.json"
        out.parent.mkdir(exist_ok=True)
        make_artefact("answer_words", f"{dataset}.json", inputs={"pool": [path]}, output=out)
        words.append(out)
    info = run_selection(
        inputs={"words": words, "pool": list(pool.values())},
        output_jsonl=tmp_path / "sel" / "selected_data.jsonl",
        output_json=tmp_path / "sel" / "selection.json",
        output_scores=tmp_path / "sel" / "scores.npz",
        method="longest_answers",
        selection_percentage=0.25,
        seed=0,
    )
    records = [
        json.loads(line)
        for line in (tmp_path / "sel" / "selected_data.jsonl").read_text().splitlines()
    ]
    counts = [len(r["messages"][-1]["content"].split()) for r in records]
    assert info["n_selected"] == len(records) == round(0.25 * 8 * len(pool))
    assert counts == sorted(counts, reverse=True) and [r["score"] for r in records] == counts
    everything = []
    for path in pool.values():
        everything += [
            len(json.loads(line)["messages"][-1]["content"].split())
            for line in path.read_text().splitlines()
        ]
    assert counts == sorted(everything, reverse=True)[: len(counts)]


@pytest.mark.slow
def test_a_plugin_kind_runs_through_snakemake_into_summary_costs_and_plan(tmp_path):
    """A kind of method with its own input artefact: the plugin alone declares it, and the one
    select rule, the artefact rule, the summary, the cost ledger and the plan follow it."""
    from selectmoe.plan import format_plan_markdown, plan_table
    from selectmoe.workflow.config import merge_configs, with_defaults
    from selectmoe.workflow.plugins import load_plugins
    from tests.test_workflow import SMALL_DEMO, _copy_workflow, _snakemake

    workflow_dir = tmp_path / "wf"
    workflow_dir.mkdir()
    _copy_workflow(workflow_dir)
    (workflow_dir / "words_plugin.py").write_text(PLUGIN)
    config = yaml.safe_load((workflow_dir / "config/config.yaml").read_text())
    merge_configs(config, json.loads(json.dumps({"demo": SMALL_DEMO["demo"]})))
    merge_configs(
        config,
        {
            "plugins": ["words_plugin"],
            "selection": {
                "loss_types": ["sigmoid"],
                "percentages": [0.25],
                "methods": ["longest_answers", "random"],
                "full_baseline": False,
                "replicates": [1, 2],
            },
            "finetune": {"seeds": [1], "epochs": 1, "max_sequence_length": 128},
        },
    )
    (workflow_dir / "words.yaml").write_text(yaml.safe_dump(config))
    run = _snakemake(workflow_dir, "--cores", "2", "--configfile", "words.yaml")
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    results = workflow_dir / "results"
    # the artefact rule made the plugin's files, one per dataset, with provenance
    datasets = ("cot", "dolly", "flan_v2", "oasst1")
    for dataset in datasets:
        made = results / f"artefacts/answer_words/{dataset}.json"
        assert json.loads(made.read_text())["dataset"] == dataset
        assert (results / f"artefacts/answer_words/{dataset}.json.provenance.json").is_file()
    with open(results / "summary.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"base", "longest_answers", "random"}
    assert rows["longest_answers"]["vs_random_verdict"] in (
        "better",
        "worse",
        "no difference shown",
    )
    with open(results / "costs.csv", newline="") as handle:
        costs = {row["method"]: row for row in csv.DictReader(handle)}
    # 4 artefacts and the one selection (the kind has no chance), a finetune per replicate,
    # one evaluation
    assert int(costs["longest_answers"]["n_jobs"]) == 4 + 1 + 2 + 1
    assert rows["longest_answers"]["stability"] == "1.0"
    assert float(costs["longest_answers"]["selection_cpu_s"]) > float(
        costs["random"]["selection_cpu_s"]
    )
    # the plan counts the plugin's artefact jobs (with the plugin imported, as the CLI does)
    sys.path.insert(0, str(workflow_dir))
    try:
        load_plugins(["words_plugin"])
        shapes = {}
        from selectmoe.plan import shape_for_model

        for model in ("base_model", "target_model"):
            source = str(results / "demo" / model)
            shapes[source] = shape_for_model(source)
        config["base_model"]["source"] = str(results / "demo/base_model")
        config["targets"] = {"demo-llama": {"model": str(results / "demo/target_model")}}
        # the plan models LoRA on projections (the demo's target adapts its embeddings)
        config["finetune"]["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
        rows = plan_table(with_defaults(config), shapes=shapes)
    finally:
        sys.path.remove(str(workflow_dir))
    artefact = next(row for row in rows if row["stage"] == "artefact")
    assert artefact["jobs"] == 4 and artefact["model"] == "answer_words (plugin)"
    assert "| artefact | answer_words (plugin) | 4 |" in format_plan_markdown(rows)
    scores = np.load(results / "selection/longest_answers/p0.25/scores.npz")
    assert str(scores["method"]) == "longest_answers" and scores["selected"].sum() == 60
