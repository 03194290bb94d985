"""The Snakemake workflow: DAG shapes, config validation at start, and a full tiny run."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selectmoe.workflow.config import merge_configs

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "config", "workflow_scripts", "report", "profiles", "envs"]
PAPER_DATASETS = ["cot", "dolly", "flan_v2", "oasst1"]


def _copy_workflow(destination: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy2(source, destination / name)
    return destination


def _snakemake(workdir: Path, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # job scripts run with the `python` on PATH: make it the interpreter running the tests
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table."""
    block = output.split("Job stats:", 1)[1]
    counts: dict[str, int] = {}
    for line in block.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return _copy_workflow(tmp_path)


def test_demo_dag_counts(workflow_dir: Path) -> None:
    result = _snakemake(workflow_dir, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout + result.stderr)
    # 1 loss type x 1 percentage x {selectmoe, selectmoe_seed, perplexity}, 1 percentage
    # x {rds, random, oracle} (no full baseline in the demo): 6 rows, 3 selection replicates
    # each (a warmup, its router data and its clusters per replicate; rds selects once), each
    # replicate finetuned with 1 seed, every row evaluated in one job; one target. rds's
    # features: per dataset and for the query set.
    assert counts == {
        "build_demo": 1,
        "build_demo_target": 1,
        "validate_data": 1,
        "convert": 1,
        "verify_conversion": 1,
        "warmup": 3,
        "score": 12,
        "score_untrained": 4,
        "cluster": 3,
        "select": 5 * 3 + 1,
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
        "all": 1,
        "total": 82,
    }
    assert _layout_counts(workflow_dir / "config/config.yaml") == counts


def _layout_counts(configfile: Path) -> dict[str, int]:
    """The layout's job graph (selectmoe.workflow.layout) counted like Snakemake's job stats:
    the plan, the cost ledger and the summary read this graph, so it must be Snakemake's."""
    from selectmoe.workflow.config import load_workflow_config
    from selectmoe.workflow.layout import Layout

    counts = dict(Layout(load_workflow_config(configfile)).job_counts())
    counts["all"] = 1
    counts["total"] = sum(counts.values())
    return counts


def test_paper_dag_counts(workflow_dir: Path) -> None:
    # the LESS pool files only need to exist for the DAG; nothing is downloaded or read
    for dataset in PAPER_DATASETS:
        path = workflow_dir / "data/less/train/processed" / dataset / f"{dataset}_data.jsonl"
        path.parent.mkdir(parents=True)
        path.touch()
    result = _snakemake(
        workflow_dir,
        "-n",
        "--configfile",
        "config/paper.yaml",
        "--cores",
        "32",
        "--resources",
        "gpu=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout + result.stderr)
    # 3 targets; 4 losses x 3 percentages x {selectmoe, selectmoe_seed, perplexity, ifd,
    # quality_topk, diversity} = 72 routed rows, 3 random, 3 rds, 3 less, 1 full -> 82 rows x 3
    # targets, each row's 3 selection replicates finetuned with 1 seed and evaluated (one job
    # per row and target); the targeted methods' features per dataset and for LESS's query sets
    assert counts["warmup"] == 4 * 3  # per loss type and replicate
    assert counts["score"] == 16 * 3
    assert counts["score_untrained"] == 4  # the converted model's gates: no replicate
    assert counts["cluster"] == 4 * 3  # one k-means sweep per loss type and replicate
    # per replicate: 72 routed, 3 random, 3 less; once: 3 rds and full; no oracle (the LESS
    # pool has no quality labels)
    assert counts["select"] == (72 + 3 + 3) * 3 + 3 + 1
    assert counts["represent"] == 5  # 4 datasets and the queries; rds has no chance
    assert counts["less_gradients"] == 5 * 3
    assert counts["less_warmup"] == 3 and counts["fetch_queries"] == 1
    assert counts["finetune"] == 738
    assert counts["evaluate"] == 246
    assert counts["evaluate_base"] == 3
    assert counts["diagnostics"] == 1
    assert counts["convert"] == counts["verify_conversion"] == counts["summarize"] == 1
    assert "build_demo" not in counts
    # the layout's graph has every job of Snakemake's (and fetch_pool, which this dry run skips:
    # the pool files exist)
    layout = _layout_counts(workflow_dir / "config/paper.yaml")
    assert layout.pop("fetch_pool") == 1
    layout["total"] -= 1
    assert layout == counts


def _dry_run_jobs(output: str) -> list[dict]:
    """Each job block of a dry run: its rule, threads and resources."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if not header:
            continue
        job = {"rule": header.group(1), "threads": 1, "resources": {}}
        if threads := re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE):
            job["threads"] = int(threads.group(1))
        if resources := re.search(r"^\s+resources: (.*)$", block, re.MULTILINE):
            for item in resources.group(1).split(", "):
                key, _, value = item.partition("=")
                job["resources"][key] = int(value) if value.isdigit() else value
        jobs.append(job)
    return jobs


def test_slurm_profile_renders_submissions(workflow_dir: Path) -> None:
    """The paper sweep under profiles/slurm: every job renders a valid sbatch command line."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    for dataset in PAPER_DATASETS:
        path = workflow_dir / "data/less/train/processed" / dataset / f"{dataset}_data.jsonl"
        path.parent.mkdir(parents=True)
        path.touch()
    result = _snakemake(
        workflow_dir, "-n", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert _job_counts(output)["finetune"] == 738
    jobs = [job for job in _dry_run_jobs(output) if job["rule"] != "all"]
    assert len(jobs) == 1341
    paper = yaml.safe_load((workflow_dir / "config/paper.yaml").read_text())
    stage_of = {
        "evaluate_base": "evaluate",
        "select": "select",
        "cluster": "select",
        "score_untrained": "score",
    }
    commands = {}
    for job in jobs:
        resources = job["resources"]
        fake_job = SimpleNamespace(
            resources=SimpleNamespace(get=resources.get, **resources), threads=job["threads"]
        )
        params = {
            "run_uuid": "uuid",
            "slurm_logfile": "log",
            "comment_str": job["rule"],
            "account": "-A acct",
            "partition": f"-p {resources['slurm_partition']}",
            "workdir": str(workflow_dir),
        }
        command = get_submit_command(fake_job, params) + set_gres_string(fake_job)
        commands.setdefault(job["rule"], command)
        stage = stage_of.get(job["rule"], job["rule"])
        gpus = paper["resources"]["gpus"].get(stage, 0)
        assert resources.get("gpu", 0) == gpus, job["rule"]
        if gpus:
            # the rule's gpu resource becomes --gpus, one task: accelerate starts the processes
            assert f"--gpus={gpus}" in command, command
            assert "--ntasks-per-gpu" not in command and "--gres" not in command, command
        else:
            assert "--gpus" not in command and "--ntasks=1" in command, command
        assert re.search(r" -t \d+", command) and re.search(r" --mem \d+", command), command
        assert "--cpus-per-task=" in command, command
    assert " -t 720" in commands["warmup"] and " --mem 96000" in commands["warmup"]
    assert " -t 1440" in commands["finetune"] and " --mem 128000" in commands["finetune"]
    # the targeted methods' GPU jobs: one GPU each, their own time and memory
    assert "--gpus=1" in commands["represent"] and " -t 120" in commands["represent"]
    assert "--gpus=1" in commands["less_warmup"] and " -t 240" in commands["less_warmup"]
    assert "--gpus=1" in commands["less_gradients"] and " --mem 64000" in commands["less_gradients"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"percentages": [0.1, 1.5]},
            r"selection\.percentages\[1\]: 1\.5 is out of range; allowed: values > 0 and <= 1",
        ),
        ({"percentages": [0]}, r"selection\.percentages\[0\]: 0 is out of range"),
        ({"percentages": [-0.2]}, r"selection\.percentages\[0\]: -0\.2 is out of range"),
        (
            {"loss_types": ["hinge"]},
            r"selection\.loss_types: 'hinge' is not registered; valid: beta_moment_matching, "
            r"mean_variance_regularization, mse, sigmoid \(a plugin module",
        ),
        (
            {"methods": ["best"]},
            r"selection\.methods: 'best' is not registered; valid: selectmoe, selectmoe_seed, "
            r"quality_topk, diversity, perplexity, ifd, random, full, oracle, anti_oracle",
        ),
    ],
)
def test_bad_config_fails_at_start(workflow_dir: Path, change: dict, expected: str) -> None:
    config = yaml.safe_load((workflow_dir / "config/config.yaml").read_text())
    config["selection"].update(change)
    (workflow_dir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(workflow_dir, "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert re.search(expected, result.stdout + result.stderr), (result.stdout + result.stderr)[
        -2000:
    ]
    # nothing ran: no results directory, no job
    assert not (workflow_dir / "results").exists()


# the small scenario a newcomer can run too (config/small.yaml, read after config/config.yaml)
SMALL_DEMO = yaml.safe_load((REPO / "config" / "small.yaml").read_text(encoding="utf-8"))
SMALL_ROWS = [
    "selectmoe/sigmoid/p0.25",
    "selectmoe/beta_moment_matching/p0.25",
    "ifd/sigmoid/p0.25",
    "ifd/beta_moment_matching/p0.25",
    "rds/p0.25",
    "less/p0.25",
    "random/p0.25",
    "oracle/p0.25",
    "anti_oracle/p0.25",
    "full",
]
#: the rows whose method selects once (no chance): their replicates share one selection
SMALL_ONCE = ("rds/p0.25", "full")
#: every selection of the small scenario: per replicate, or once
SMALL_SELECTIONS = list(
    dict.fromkeys(
        row if row in SMALL_ONCE else f"{row}/r{rep}"
        for row in SMALL_ROWS
        for rep in SMALL_DEMO["selection"]["replicates"]
    )
)


# Another project's Snakefile that imports this workflow as a Snakemake module (its rules,
# scripts, schema, environments and report captions resolve from the module's directory).
MODULE_SNAKEFILE = """\
from snakemake.utils import min_version

min_version("9.0")


module selectmoe:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from selectmoe
"""


def _small_demo_dir(destination: Path, *, as_module: bool = False) -> tuple[Path, dict]:
    """A workflow copy with the small demo config written to small.yaml; ``as_module``: the
    copy sits in ``destination/workflow`` and the returned directory is another project's
    (``destination/project``) that uses it as a Snakemake module."""
    if as_module:
        module_dir = destination / "workflow"
        module_dir.mkdir()
        _copy_workflow(module_dir)
        workflow_dir = destination / "project"
        workflow_dir.mkdir()
        (workflow_dir / "Snakefile").write_text(
            MODULE_SNAKEFILE.format(snakefile=module_dir / "Snakefile")
        )
    else:
        workflow_dir = _copy_workflow(destination)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    merge_configs(config, SMALL_DEMO)
    (workflow_dir / "small.yaml").write_text(yaml.safe_dump(config))
    return workflow_dir, config


@pytest.mark.slow
def test_demo_workflow_end_to_end(finished_demo: tuple[Path, dict]) -> None:
    workflow_dir, config = finished_demo
    results = workflow_dir / "results"
    seeds = config["finetune"]["seeds"]
    replicates = config["selection"]["replicates"]
    losses = config["selection"]["loss_types"]
    declared = [
        "demo/demo_manifest.json",
        "data/validate_data.json",
        "models/demo-olmoe/converted/config.json",
        "models/demo-olmoe/verify_conversion.json",
        "eval/demo-llama/base/results.json",
        "eval/demo-llama/base/samples.jsonl",
        "summary.csv",
        "summary.md",
        "summary_accuracy.png",
        "diagnostics/diagnostics.md",
        "diagnostics/planted_share.csv",
        "diagnostics/method_scores.csv",
        "costs.csv",
        "costs.md",
        "costs_accuracy.png",
    ]
    declared += [f"router_data/untrained/{d}_router_data.pt" for d in PAPER_DATASETS]
    for loss in losses:
        for rep in replicates:
            declared.append(f"warmup/{loss}/r{rep}/full_rank_weights.pt")
            declared += [f"router_data/{loss}/r{rep}/{d}_router_data.pt" for d in PAPER_DATASETS]
        declared += [f"diagnostics/quality_{loss}.csv", f"diagnostics/quality_{loss}.png"]
    declared.append("diagnostics/selection_overlap.csv")
    for row in SMALL_ROWS:
        chosen = [row] if row in SMALL_ONCE else [f"{row}/r{rep}" for rep in replicates]
        for selection in chosen:
            declared += [
                f"selection/{selection}/selected_data.jsonl",
                f"selection/{selection}/selection.json",
            ]
        for rep in replicates:
            for seed in seeds:
                declared += [
                    f"finetune/demo-llama/{row}/r{rep}/seed{seed}/adapter/adapter_config.json",
                    f"eval/demo-llama/{row}/r{rep}/seed{seed}/results.json",
                    f"eval/demo-llama/{row}/r{rep}/seed{seed}/samples.jsonl",
                ]
    missing = [path for path in declared if not (results / path).is_file()]
    assert not missing
    # a method without chance selects once for every replicate, the others once per replicate
    assert not (results / "selection/rds/p0.25/r1").exists()
    first, second = (
        (results / f"selection/random/p0.25/r{rep}/selected_data.jsonl").read_bytes()
        for rep in replicates
    )
    assert first != second

    with open(results / "summary.csv", newline="") as handle:
        rows = {(row["method"], row["loss"]): row for row in csv.DictReader(handle)}
    assert len(rows) == 1 + len(SMALL_ROWS)
    assert {method for method, _ in rows} == {
        "base",
        "selectmoe",
        "ifd",
        "rds",
        "less",
        "random",
        "oracle",
        "anti_oracle",
        "full",
    }
    for (method, _), row in rows.items():
        mean, low, high = (float(row[k]) for k in ("mean", "mean_low", "mean_high"))
        assert 0.0 <= low <= mean <= high <= 1.0, row
        assert row["uses_labels"] == str(method in ("oracle", "anti_oracle"))
        assert row["n_seeds"] == ("1" if method == "base" else str(len(seeds)))
        assert row["n_replicates"] == ("1" if method == "base" else str(len(replicates)))
        if method != "base":
            assert len(row["replicate_means"].split(";")) == len(replicates)
            overlap = float(row["stability"])
            # one selection for every replicate: the same examples; the others may agree too
            # (a top-k of a score that the replicates barely move)
            assert overlap == 1.0 if method in ("rds", "full") else 0.0 <= overlap <= 1.0
            if method == "random":  # two draws of a quarter of the pool share about a seventh
                assert overlap < 0.5
        if method == "selectmoe":
            assert len(row["k"].split(";")) == len(replicates)
        compared = method in ("selectmoe", "ifd", "rds", "less", "oracle", "anti_oracle")
        assert (row["vs_random"] != "") == compared, row
        if compared:
            difference, low, high = (
                float(row[k]) for k in ("vs_random", "vs_random_low", "vs_random_high")
            )
            assert low <= difference <= high and 0 < float(row["vs_random_p"]) <= 1
            expected = "better" if low > 0 else "worse" if high < 0 else "no difference shown"
            assert row["vs_random_verdict"] == expected
    # the selected share is what was asked for: 25% of 4 x 60 examples
    assert all(
        int(row["n_selected"]) == 60 for (m, _), row in rows.items() if m != "base" and m != "full"
    )
    assert "‡" in (results / "summary.md").read_text()  # the label references are marked
    assert "| rds † |" in (results / "summary.md").read_text()  # and the targeted methods
    markdown = (results / "diagnostics/diagnostics.md").read_text()
    for loss in losses:
        assert f"## Loss type `{loss}`" in markdown
    assert "| untrained | all |" in markdown and "auroc_wrong_answer" in markdown
    # every router method's score, with its interval and the paired difference to the seed's
    with open(results / "diagnostics/method_scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    # (and the targeted methods' similarity to the query set, against the same labels)
    assert {(r["loss"], r["method"]) for r in scores} == {
        (loss, method)
        for loss in losses
        for method in ("selectmoe_seed", "selectmoe", "ifd", "rds", "less")
    }
    for row in scores:
        assert float(row["low"]) <= float(row["auroc"]) <= float(row["high"])
        assert float(row["diff_low"]) <= float(row["diff"]) <= float(row["diff_high"])
    # the cost ledger: every summary row, its jobs' seconds from the benchmark files
    with open(results / "costs.csv", newline="") as handle:
        costs = {(row["method"], row["loss"]): row for row in csv.DictReader(handle)}
    assert set(costs) == set(rows)
    for key, row in costs.items():
        assert float(row["total_cpu_s"]) > 0 and float(row["peak_rss_mb"]) > 0
        assert float(row["mean"]) == pytest.approx(float(rows[key]["mean"]))
        # convert, then per replicate a warmup, 4 scores, the loss type's clusters (selectmoe)
        # and the selection; rds: 5 represent jobs (4 datasets, the queries) and one selection;
        # less per replicate: its warmup, 5 gradient jobs and the selection; pool methods select
        # per replicate; base evaluates
        n = len(replicates)
        n_selection = {
            "selectmoe": 1 + 7 * n,
            "ifd": 1 + 6 * n,
            "rds": 6,
            "less": 7 * n,
            "full": 1,
            "base": 0,
        }.get(key[0], n)
        expected_jobs = n_selection + (0 if key[0] == "base" else n * len(seeds)) + 1
        assert int(row["n_jobs"]) == expected_jobs, key
        assert (float(row["stored_mb"]) > 0) == (key[0] != "base")

    # provenance beside every stage's output; each summary row links to its evaluation's
    for path in declared:
        main = path.removesuffix("/config.json").removesuffix("/adapter_config.json")
        if main.startswith("eval/") or main.startswith("diagnostics/"):
            continue  # one provenance per evaluate / diagnostics job, checked below
        if main.endswith(
            (
                "selection.json",
                "summary.md",
                "summary_accuracy.png",
                "costs.md",
                "costs_accuracy.png",
            )
        ):
            continue  # second outputs of a job: its provenance sits beside the first
        assert (results / f"{main}.provenance.json").is_file(), main
    assert (results / "diagnostics/diagnostics.md.provenance.json").is_file()
    for row in rows.values():
        record = json.loads((workflow_dir / row["provenance"]).read_text())
        assert record["stage"] in ("evaluate", "evaluate_base")
        assert record["outputs"][0]["path"].endswith("results.json")
        assert record["params"]["evaluation"]["tasks"] == config["evaluation"]["tasks"]
    warmup = json.loads(
        (
            results / "warmup/beta_moment_matching/r2/full_rank_weights.pt.provenance.json"
        ).read_text()
    )
    assert warmup["stage"] == "warmup"
    assert warmup["wildcards"] == {"loss": "beta_moment_matching", "rep": "2"}
    assert warmup["params"]["settings"]["quality_loss_type"] == "beta_moment_matching"
    assert warmup["params"]["settings"]["seed"] == warmup["params"]["settings"]["gate_init_seed"]
    assert warmup["params"]["settings"]["seed"] == 2
    pool_file = workflow_dir / warmup["inputs"]["pool"][0]["path"]
    assert (
        warmup["inputs"]["pool"][0]["sha256"] == hashlib.sha256(pool_file.read_bytes()).hexdigest()
    )
    assert warmup["software"]["packages"]["torch"] and warmup["wall_time_s"] > 0
    finetune = json.loads(
        (results / "finetune/demo-llama/random/p0.25/r2/seed1/adapter.provenance.json").read_text()
    )
    # the finetune seed is nested in its replicate
    assert finetune["params"]["settings"]["seed"] == 2001
    assert finetune["wildcards"]["seed"] == "1" and finetune["wildcards"]["rep"] == "2"

    again = _snakemake(workflow_dir, "-n", "--cores", "2", "--configfile", "small.yaml")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def _planned_jobs(workflow_dir: Path, configfile: str) -> dict[str, int]:
    result = _snakemake(workflow_dir, "-n", "--cores", "2", "--configfile", configfile)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    output = result.stdout + result.stderr
    return {} if "Nothing to be done" in output else _job_counts(output)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "rerun", "kept"),
    [
        # a clustering setting: the clustered selections (selectmoe, not ifd) and what follows
        # them, nothing before
        (
            {"selection": {"clustering_params": {"k_step": 1}}},
            {
                "cluster": 4,  # 2 loss types x 2 replicates
                "select": 4,
                "finetune": 4,
                "evaluate": 2,
                "summarize": 1,
                "diagnostics": 1,
            },
            ["warmup", "score", "build_demo"],
        ),
        # one more percentage: only the new selections and what follows them
        (
            {"selection": {"percentages": [0.25, 0.5]}},
            {
                # per replicate: routed, random, the two references, less; rds once
                "select": (4 + 1 + 2 + 1) * 2 + 1,
                "finetune": 9 * 2,
            },
            ["warmup", "score", "cluster", "convert", "build_demo", "evaluate_base"],
        ),
        # a warmup setting: both warmups, their router data and everything after
        (
            {"warmup": {"learning_rate": 0.002}},
            {
                "warmup": 4,  # 2 loss types x 2 replicates
                "score": 16,
                "cluster": 4,
                "select": 8,
                "finetune": 8,
                "evaluate": 4,
            },
            ["score_untrained", "build_demo", "evaluate_base"],
        ),
        # one more finetune seed: its finetunes (every row's replicates), every evaluation of
        # a row, the summary
        (
            {"finetune": {"seeds": [1, 2]}},
            {"finetune": 10 * 2, "evaluate": 10, "summarize": 1},
            ["warmup", "score", "cluster", "select", "evaluate_base"],
        ),
        # an evaluation setting: every evaluation, no training
        (
            {"evaluation": {"seed": 43}},
            {"evaluate": 10, "evaluate_base": 1, "summarize": 1},
            ["warmup", "score", "cluster", "select", "finetune"],
        ),
    ],
)
def test_a_changed_parameter_reruns_exactly_its_dependents(
    finished_demo: tuple[Path, dict], change: dict, rerun: dict, kept: list[str]
) -> None:
    workflow_dir, config = finished_demo
    assert _planned_jobs(workflow_dir, "small.yaml") == {}  # finished: nothing to do
    changed = merge_configs(yaml.safe_load(yaml.safe_dump(config)), change)
    (workflow_dir / "changed.yaml").write_text(yaml.safe_dump(changed))
    planned = _planned_jobs(workflow_dir, "changed.yaml")
    for rule, count in rerun.items():
        assert planned.get(rule) == count, (rule, planned)
    assert not set(kept) & set(planned), planned


def _flip_inside_largest_record(path: Path) -> None:
    """Overwrite 8 bytes inside the largest record (a tensor's data) of a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    assert record.file_size > 256, record
    data = bytearray(path.read_bytes())
    offset = record.header_offset + 128  # past the local header, name and alignment padding
    data[offset : offset + 8] = bytes(b ^ 0xFF for b in data[offset : offset + 8])
    path.write_bytes(bytes(data))


def _run_until(
    workflow_dir: Path, pattern: str, timeout: float = 600, targets: tuple[str, ...] = ()
) -> Path:
    """Start the small demo (or its ``targets``) and SIGKILL Snakemake and its jobs once a file
    matches ``pattern``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(
        # targets first: --configfile takes every word that follows it
        [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "small.yaml"],
        cwd=workflow_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = sorted(workflow_dir.glob(pattern))
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return found[0]
            if process.poll() is not None:
                pytest.fail(f"the run ended (status {process.returncode}) before {pattern}")
            time.sleep(0.1)
        pytest.fail(f"no file matched {pattern} within {timeout} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_outputs(
    finished_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    """SIGKILL the whole run in the middle of a warmup, then in the middle of a finetune, whose
    two checkpoints are then damaged (bytes flipped inside a tensor, truncated); after `--unlock`
    and `--rerun-incomplete` the outputs equal those of the uninterrupted run: byte-identical
    selections and summary, equal warmup weights and adapters."""
    import torch

    reference, _ = finished_demo
    workflow_dir, _ = _small_demo_dir(tmp_path)
    killed_at = []
    for pattern in (
        "checkpoints/warmup/*/r*/step_*.pt.sha256",
        "checkpoints/finetune/**/step_000000004.pt.sha256",  # two checkpoints kept by then
    ):
        killed_at.append(_run_until(workflow_dir, f"results/{pattern}"))
        # a killed Snakemake leaves its lock: release it as a user would
        unlock = _snakemake(workflow_dir, "--unlock", "--configfile", "small.yaml")
        assert unlock.returncode == 0, unlock.stderr[-2000:]
    assert all(path.name.startswith("step_") for path in killed_at)  # a complete checkpoint
    # the finetune's checkpoints then rot on disk: bytes inside a tensor record of the newest
    # change (torch.load would read it without a word), the older one is cut to half its size;
    # the rerun must pass over both
    damaged = Path(os.fspath(killed_at[1]).removesuffix(".sha256"))
    _flip_inside_largest_record(damaged)
    truncated = damaged.with_name("step_000000002.pt")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    result = _snakemake(
        workflow_dir, "--cores", "2", "--configfile", "small.yaml", "--rerun-incomplete"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    logs = "".join(p.read_text() for p in (workflow_dir / "results/logs").rglob("*.log"))
    for path in (damaged, truncated):
        relative = path.relative_to(workflow_dir)
        assert f"checkpoint damaged: {relative}: content sha256 " in logs, logs[-3000:]

    ours, theirs = workflow_dir / "results", reference / "results"
    selections = sorted(p.relative_to(theirs) for p in theirs.glob("selection/**/*.jsonl"))
    replicates = SMALL_DEMO["selection"]["replicates"]
    assert len(selections) == len(SMALL_SELECTIONS)
    for relative in [*selections, Path("summary.csv"), Path("summary.md")]:
        assert (ours / relative).read_bytes() == (theirs / relative).read_bytes(), relative
    resumed = []
    for loss, rep in itertools.product(SMALL_DEMO["selection"]["loss_types"], replicates):
        relative = f"warmup/{loss}/r{rep}/full_rank_weights.pt"
        payload = torch.load(ours / relative, weights_only=False)
        resumed.append(payload["resumed_from_step"])
        expected = torch.load(theirs / relative, weights_only=False)
        assert payload["history"] == expected["history"], loss
        for name, tensor in expected["weights"].items():
            assert torch.equal(payload["weights"][name], tensor), (loss, name)
    assert any(step for step in resumed), "no warmup resumed from a checkpoint"
    _assert_adapters_equal(ours, theirs)


def _assert_adapters_equal(ours: Path, theirs: Path) -> None:
    """Every adapter of ``theirs`` equal in ``ours``, and no checkpoint left in ``ours``."""
    import torch
    from safetensors.torch import load_file

    adapters = list(theirs.glob("finetune/**/adapter_model.safetensors"))
    assert adapters
    for adapter in adapters:
        expected = load_file(adapter)
        got = load_file(ours / adapter.relative_to(theirs))
        assert all(torch.equal(got[k], v) for k, v in expected.items()), adapter
    assert not list(ours.glob("checkpoints/**/*.pt"))  # removed once each job finished


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_sigterm_run_resumes_to_the_reference(
    finished_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    """Two fault classes in one run: a second Snakemake started on the same directory is refused
    by the lock; SIGTERM to the first's process group during a finetune (as SLURM sends before a
    requeue) ends it promptly with the lock released; the rerun equals the uninterrupted run."""
    reference, _ = finished_demo
    workflow_dir, _ = _small_demo_dir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    first = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "small.yaml"],
        cwd=workflow_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        pattern = "results/checkpoints/finetune/**/step_*.pt.sha256"
        while not list(workflow_dir.glob(pattern)):
            assert first.poll() is None, f"the run ended (status {first.returncode}) too early"
            assert time.monotonic() < deadline, "no finetune checkpoint within 900 s"
            time.sleep(0.2)
        second = _snakemake(workflow_dir, "--cores", "1", "--configfile", "small.yaml")
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not list((workflow_dir / ".snakemake/locks").glob("*")), "the lock was left"
    result = _snakemake(
        workflow_dir, "--cores", "2", "--configfile", "small.yaml", "--rerun-incomplete"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    ours, theirs = workflow_dir / "results", reference / "results"
    selections = sorted(p.relative_to(theirs) for p in theirs.glob("selection/**/*.jsonl"))
    for relative in [*selections, Path("summary.csv"), Path("summary.md")]:
        assert (ours / relative).read_bytes() == (theirs / relative).read_bytes(), relative
    _assert_adapters_equal(ours, theirs)


@pytest.mark.slow
def test_a_killed_gradient_job_resumes_from_its_shards(
    finished_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    """SIGKILL the run while LESS's gradient job writes its shards; the rerun keeps the shards
    written and ends with the features of the uninterrupted run."""
    import torch

    reference, _ = finished_demo
    workflow_dir, _ = _small_demo_dir(tmp_path)
    target = "results/targeted/less/r1/cot_features.pt"
    shard = _run_until(
        workflow_dir,
        f"{target}.shards/checkpoint*.pt.sha256",  # a complete shard
        targets=(target,),
    )
    assert not (workflow_dir / target).exists()
    unlock = _snakemake(workflow_dir, "--unlock", "--configfile", "small.yaml")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    result = _snakemake(
        workflow_dir, target, "--cores", "2", "--configfile", "small.yaml", "--rerun-incomplete"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    log = (workflow_dir / "results/logs/less_gradients/r1/cot.log").read_text()
    computed, total = map(int, re.search(r"\((\d+) of (\d+) shards computed", log).groups())
    assert shard.name.startswith("checkpoint") and 0 < computed < total, log[-2000:]
    ours = torch.load(workflow_dir / target, weights_only=True)
    theirs = torch.load(reference / target, weights_only=True)
    assert ours["sample_ids"] == theirs["sample_ids"]
    assert torch.equal(ours["features"], theirs["features"])


def test_lint_is_clean(workflow_dir: Path) -> None:
    result = _snakemake(workflow_dir, "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Lints for" not in output, output[-3000:]


def test_conda_environment_pins_the_constraints() -> None:
    """envs/selectmoe.yaml (used by --sdm conda) installs exactly constraints.txt, plus torch."""
    env = yaml.safe_load((REPO / "envs/selectmoe.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    constraints = [
        line
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sorted(pip_section) == sorted([*constraints, "torch==2.13.0"])
    rule_files = sorted((REPO / "rules").glob("*.smk"))
    n_rules = 0
    for path in rule_files:
        text = path.read_text()
        rules = re.findall(r"^\s*rule \w+:", text, re.MULTILINE)
        envs = re.findall(r"conda:\n\s+\"\.\./envs/selectmoe\.yaml\"", text)
        assert len(rules) == len(envs), f"{path.name}: every rule names the conda environment"
        n_rules += len(rules)
    assert n_rules >= 14


def _rehearsal_dir(destination: Path) -> Path:
    """The workflow with the rehearsal's fixtures built where config/rehearsal.yaml reads them."""
    from selectmoe.rehearsal import build_rehearsal

    destination.mkdir(parents=True)
    workflow_dir = _copy_workflow(destination)
    build_rehearsal(workflow_dir / "results/rehearsal/fixtures")
    return workflow_dir


@pytest.mark.slow
def test_the_paper_path_rehearsed_runs_every_rule(tmp_path: Path) -> None:
    """config/paper.yaml + config/rehearsal.yaml: every rule of the paper's DAG runs on CPU and
    offline, on stand-ins of the paper's models (sharded OLMoE, Llama-2 with SentencePiece, Qwen3
    with Qwen's real vocabulary) and lm-eval's own six paper tasks; the summary has each task's
    paper metric, its evaluation contract, and the drift sentinel's warning (random weights)."""
    workflow_dir = _rehearsal_dir(tmp_path / "wf")
    planned = _snakemake(
        workflow_dir, "-n", "--cores", "2", "--configfile", "config/paper.yaml",
        "config/rehearsal.yaml",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    paper_rules = set(_job_counts(planned.stdout + planned.stderr)) - {"total"}
    # the run here: the rehearsal with one target per architecture family left out (Qwen2.5
    # shares Qwen3's tokenizer) and one selection replicate, to keep the suite's time
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    merge_configs(config, yaml.safe_load((REPO / "config/rehearsal.yaml").read_text()))
    del config["targets"]["qwen2.5-1.5b"]
    config["selection"].update(replicates=[42], full_baseline=False)
    (workflow_dir / "reduced.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(workflow_dir, "--cores", "2", "--configfile", "reduced.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    ran = _job_counts(result.stdout + result.stderr)
    assert set(ran) - {"total"} == paper_rules
    assert ran["fetch_pool"] == ran["fetch_queries"] == ran["convert"] == 1
    assert ran["less_warmup"] == 1 and ran["represent"] == 5 and ran["evaluate_base"] == 2

    results = workflow_dir / "results/rehearsal"
    with open(results / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    paper_metrics = config["summary"]["metric"]
    assert {(r["target"], r["method"]) for r in rows} >= {
        (target, method)
        for target in ("llama2-7b", "qwen3-1.7b-base")
        for method in ("base", "selectmoe", "rds", "less", "random")
    }
    for task, metric in paper_metrics.items():
        column = f"{task}/{metric}"
        assert all(0.0 <= float(row[column]) <= 1.0 for row in rows), column
    summary = (results / "summary.md").read_text(encoding="utf-8")
    assert "Base-model check failed**: llama2-7b scores" in summary
    contracts = summary.split("Evaluation contract")[1]
    assert "mmlu: lm-eval" in contracts and "57 subtasks" in contracts
    assert "bbh_cot_fewshot: lm-eval" in contracts and "27 subtasks" in contracts


def test_a_hugging_face_dataset_becomes_the_pool_in_the_workflow(tmp_path: Path) -> None:
    """data.source: hf on the paper path: rule fetch_pool exports a dataset saved with
    save_to_disk (Tulu-3's columns) to the pool files, which validate_data then reads."""
    from datasets import Dataset

    workflow_dir = _rehearsal_dir(tmp_path / "wf")
    rows = [
        {
            "id": f"{dataset}-{i}",
            "messages": [
                {"role": "user", "content": f"Question {i} of {dataset}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ],
            "source": f"mixture/{dataset}",
        }
        for i in range(40)
        for dataset in PAPER_DATASETS
    ]
    Dataset.from_list(rows).save_to_disk(workflow_dir / "tulu_like")
    config = {
        "data": {
            "source": "hf",
            "pool_dir": "results/rehearsal/hf_pool",
            "hf": {
                "dataset_id": "tulu_like",
                "dataset_map": {f"mixture/{d}": d for d in PAPER_DATASETS},
            },
        }
    }
    (workflow_dir / "hf.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(
        workflow_dir, "results/rehearsal/data/validate_data.json", "--cores", "2",
        "--configfile", "config/paper.yaml", "config/rehearsal.yaml", "hf.yaml",
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((workflow_dir / "results/rehearsal/data/fetch_pool.json").read_text())
    assert report["written"] == dict.fromkeys(PAPER_DATASETS, 40) and report["rows"] == 160
    assert report["source"]["dataset_id"] == "tulu_like" and report["source"]["fingerprint"]
    lines = (workflow_dir / "results/rehearsal/hf_pool/dolly/dolly_data.jsonl").read_text()
    assert len(lines.splitlines()) == 40
