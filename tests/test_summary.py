"""The summary table: values and intervals from per-question samples, paired comparisons with
random, row order, determinism, the label references, and bad input."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from selectmoe.errors import SelectMoeError
from selectmoe.evidence.stats import mean_intervals, paired_difference, replicate_means
from selectmoe.evidence.summary import SummarySettings, summarize

TASKS = ("qa_b", "qa_a")
N_QUESTIONS = {"qa_a": 30, "qa_b": 20}
SETTINGS = SummarySettings()


def _write_run(directory: Path, name: str, scores: dict[str, np.ndarray], **extra) -> dict:
    """One evaluation: results JSON (lm-eval's shape) and samples JSONL, per task a 0/1 vector."""
    results_path = directory / f"{name}.json"
    samples_path = directory / f"{name}.jsonl"
    results = {
        task: {"alias": task, "acc,none": float(np.mean(values)), "acc_stderr,none": 0.01}
        for task, values in scores.items()
    }
    data = {"results": results, "selectmoe": {"tasks": sorted(scores)}, **extra}
    results_path.write_text(json.dumps(data), encoding="utf-8")
    with samples_path.open("w", encoding="utf-8") as handle:
        for task in sorted(scores):
            for doc_id, value in enumerate(scores[task]):
                record = {"task": task, "doc_id": doc_id, "metrics": {"acc": float(value)}}
                handle.write(json.dumps(record) + "\n")
    return {"results": results_path, "samples": samples_path}


def _scores(rng: np.random.Generator, p: float) -> dict[str, np.ndarray]:
    return {task: (rng.random(n) < p).astype(float) for task, n in N_QUESTIONS.items()}


def _point(
    directory: Path, rng, name: str, p: float, replicates=(7, 8, 9), seeds=(1,), **fields
) -> dict:
    """Evaluations of every replicate (its own accuracy: replicates differ) and seed."""
    evaluations = [(r, s) for r in replicates for s in seeds]
    shift = {r: 0.1 * (i - 1) for i, r in enumerate(replicates)} if len(replicates) > 1 else {}
    runs = [
        _write_run(directory, f"{name}_r{r}_s{s}", _scores(rng, p + shift.get(r, 0.0)))
        for r, s in evaluations
    ]
    return {
        "results": [run["results"] for run in runs],
        "samples": [run["samples"] for run in runs],
        "replicates": [r for r, _ in evaluations],
        "seeds": [s for _, s in evaluations],
        **fields,
    }


@pytest.fixture
def points(tmp_path: Path) -> list[dict]:
    """A sweep given out of order: base, full, random, selectmoe at two percentages, oracle."""
    rng = np.random.default_rng(0)
    d = tmp_path / "runs"
    d.mkdir()
    selection = d / "selection.json"
    selection.write_text(json.dumps({"n_selected": 12}))
    return [
        _point(
            d,
            rng,
            "sm10",
            0.7,
            target="tiny",
            method="selectmoe",
            loss="sigmoid",
            percentage="0.1",
            selection_json=selection,
        ),
        _point(d, rng, "rand10", 0.4, target="tiny", method="random", percentage=0.1),
        _point(d, rng, "full", 0.6, target="tiny", method="full", percentage=1.0),
        _point(
            d,
            rng,
            "oracle10",
            0.9,
            target="tiny",
            method="oracle",
            percentage=0.1,
            uses_labels=True,
        ),
        _point(
            d, rng, "base", 0.3, replicates=(None,), seeds=(None,), target="tiny", method="base"
        ),
        _point(
            d, rng, "sm20", 0.5, target="tiny", method="selectmoe", loss="sigmoid", percentage=0.2
        ),
    ]


def _run(points, out: Path, **kwargs):
    out.mkdir(exist_ok=True)
    frame = summarize(
        points,
        output_csv=out / "summary.csv",
        output_md=out / "summary.md",
        settings=kwargs.pop("settings", SETTINGS),
        **kwargs,
    )
    return frame, out / "summary.csv", out / "summary.md"


def _grids(point: dict, tasks=("qa_a", "qa_b")) -> list[np.ndarray]:
    """The [replicates, seeds, questions] grid per task, read back from the samples files."""
    n_replicates = len(dict.fromkeys(point["replicates"]))
    grids = []
    for task in tasks:
        rows = []
        for samples in point["samples"]:
            records = [json.loads(line) for line in Path(samples).read_text().splitlines()]
            rows.append([r["metrics"]["acc"] for r in records if r["task"] == task])
        grids.append(np.array(rows).reshape(n_replicates, -1, len(rows[0])))
    return grids


def test_values_intervals_and_comparisons(points, tmp_path):
    frame, csv_path, _ = _run(points, tmp_path / "out")
    rows = {(r["method"], r["percentage"]): r for r in frame.to_dict("records")}
    sm = rows[("selectmoe", 0.1)]
    grids = _grids(points[0])
    overall, per_task = mean_intervals(grids)
    assert sm["qa_a/acc"] == pytest.approx(grids[0].mean())
    # the t interval, clipped to the scores' range [0, 1]
    assert (sm["qa_a/acc_low"], sm["qa_a/acc_high"]) == (
        max(per_task[0].low, 0.0),
        min(per_task[0].high, 1.0),
    )
    assert (sm["mean"], sm["mean_low"], sm["mean_high"]) == (
        pytest.approx(overall.estimate),
        max(overall.low, 0.0),
        min(overall.high, 1.0),
    )
    comparison = paired_difference(grids, _grids(points[1]))
    assert sm["vs_random"] == pytest.approx(comparison.difference)
    assert (sm["vs_random_low"], sm["vs_random_high"], sm["vs_random_p"]) == (
        comparison.low,
        comparison.high,
        comparison.p_value,
    )
    assert sm["vs_random_verdict"] == "better" and comparison.low > 0
    assert sm["n_selected"] == 12 and sm["n_seeds"] == 1 and sm["n_replicates"] == 3
    means = [float(m) for m in sm["replicate_means"].split(";")]
    assert means == pytest.approx(list(replicate_means(grids)))
    assert sm["replicate_sd"] == pytest.approx(np.std(means, ddof=1))
    # no random at 20% or for full and base: no comparison
    for key in (("selectmoe", 0.2), ("full", 1.0), ("random", 0.1)):
        assert math.isnan(rows[key]["vs_random"])
        assert not isinstance(rows[key]["vs_random_verdict"], str)
    base = (
        rows[("base", None)]
        if ("base", None) in rows
        else next(r for r in frame.to_dict("records") if r["method"] == "base")
    )
    assert base["n_seeds"] == 1 and base["n_replicates"] == 1 and base["uses_labels"] is False
    assert math.isnan(base["replicate_sd"]) and math.isnan(base["stability"])
    assert rows[("oracle", 0.1)]["uses_labels"] is True
    header = next(csv.reader(io.StringIO(csv_path.read_text())))
    assert header[:8] == [
        "target",
        "method",
        "loss",
        "percentage",
        "uses_labels",
        "n_selected",
        "n_replicates",
        "n_seeds",
    ]
    assert header[8:11] == ["qa_a/acc", "qa_a/acc_low", "qa_a/acc_high"]
    after_mean = header[header.index("mean_high") + 1 :]
    assert after_mean[:4] == ["replicate_means", "replicate_sd", "stability", "k"]
    assert "vs_random_verdict" in header and header[-1] == "results"


def test_row_order_and_markdown(points, tmp_path):
    frame, _, md_path = _run(points, tmp_path / "out")
    assert list(zip(frame["method"], frame["percentage"].fillna(-1), strict=True)) == [
        ("base", -1),
        ("full", 1.0),
        ("selectmoe", 0.1),
        ("selectmoe", 0.2),
        ("random", 0.1),
        ("oracle", 0.1),
    ]
    markdown = md_path.read_text()
    assert "| tiny | oracle ‡ |" in markdown
    assert "reads the pool's quality labels" in markdown
    assert (
        "variance components" in markdown and "no difference shown" not in markdown.split("\n")[0]
    )
    line = next(row for row in markdown.splitlines() if "| selectmoe | sigmoid | 10 |" in row)
    assert "better" in line and "[" in line


def test_outputs_are_byte_deterministic(points, tmp_path):
    _, csv_a, md_a = _run(points, tmp_path / "a")
    _, csv_b, md_b = _run(points, tmp_path / "b")
    assert csv_a.read_bytes() == csv_b.read_bytes()
    assert md_a.read_bytes() == md_b.read_bytes()


def test_plot_is_written(points, tmp_path):
    _run(points, tmp_path / "out", plot_path=tmp_path / "out" / "summary.png")
    assert (tmp_path / "out" / "summary.png").stat().st_size > 10_000


def test_group_tasks_pool_their_subtasks(tmp_path):
    rng = np.random.default_rng(1)
    scores = {"grp_x": (rng.random(10) < 0.5).astype(float), "grp_y": np.ones(6)}
    run = _write_run(
        tmp_path,
        "g",
        scores,
        group_subtasks={"grp": ["grp_x", "grp_y"]},
    )
    data = json.loads(run["results"].read_text())
    data["selectmoe"]["tasks"] = ["grp"]
    run["results"].write_text(json.dumps(data))
    frame, _, _ = _run(
        [
            {
                "target": "t",
                "method": "base",
                "results": [run["results"]],
                "samples": [run["samples"]],
            }
        ],
        tmp_path / "out",
    )
    assert frame.loc[0, "grp/acc"] == pytest.approx(np.concatenate(list(scores.values())).mean())


def test_a_task_without_the_metric_uses_its_own(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(
        json.dumps({"results": {"gen": {"f1,none": 0.5}}, "selectmoe": {"tasks": ["gen"]}})
    )
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task": "gen", "doc_id": i, "metrics": {"f1": v}}) + "\n"
            for i, v in enumerate([0.25, 0.75])
        )
    )
    frame, _, _ = _run(
        [{"target": "t", "method": "base", "results": [results], "samples": [samples]}],
        tmp_path / "out",
    )
    assert frame.loc[0, "gen/f1"] == pytest.approx(0.5)


def test_samples_that_disagree_with_the_results_are_refused(points, tmp_path):
    results = Path(points[1]["results"][0])
    data = json.loads(results.read_text())
    data["results"]["qa_a"]["acc,none"] += 0.1
    results.write_text(json.dumps(data))
    with pytest.raises(SelectMoeError, match=r"reports acc .* but its samples average"):
        _run(points, tmp_path / "out")


def test_seeds_on_other_questions_are_refused(points, tmp_path):
    samples = Path(points[0]["samples"][1])
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join(lines[:-1]) + "\n")
    results = Path(points[0]["results"][1])
    data = json.loads(results.read_text())
    kept = [json.loads(line)["metrics"]["acc"] for line in lines[:-1] if '"qa_b"' in line]
    data["results"]["qa_b"]["acc,none"] = float(np.mean(kept))
    results.write_text(json.dumps(data))
    with pytest.raises(SelectMoeError, match="evaluated on different documents"):
        _run(points, tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"target": ""}, "'target' must be a non-empty string"),
        ({"results": []}, "'results' must be a non-empty list"),
        ({"samples": ["a.jsonl"]}, "3 results files but 1 samples files"),
        ({"seeds": [1]}, "1 seeds for 3 results"),
        ({"replicates": [1, 2]}, "2 replicates for 3 results"),
        ({"replicates": [1, 1, 2]}, "different numbers of finetune seeds"),
        ({"percentage": "ten"}, "'percentage' must be a number"),
        ({"loss": 3}, "'loss' must be a string or None"),
        ({"n_selected": -1}, "'n_selected' must be an integer >= 0"),
    ],
)
def test_bad_points(points, tmp_path, change, pattern):
    points[0].update(change)
    with pytest.raises(SelectMoeError, match=pattern):
        _run(points, tmp_path / "out")


def test_missing_and_broken_files_are_named(points, tmp_path):
    Path(points[1]["samples"][0]).unlink()
    with pytest.raises(SelectMoeError, match=r"samples file not found: .*rand10_r7_s1\.jsonl"):
        _run(points, tmp_path / "out")
    Path(points[1]["samples"][0]).write_text("{not json\n")
    with pytest.raises(SelectMoeError, match=r"rand10_r7_s1\.jsonl:1: invalid JSON"):
        _run(points, tmp_path / "out")


def test_duplicate_empty_and_bad_plot(points, tmp_path):
    with pytest.raises(SelectMoeError, match="share target/method/loss/percentage"):
        _run([points[0], dict(points[0])], tmp_path / "out")
    with pytest.raises(SelectMoeError, match="non-empty list of evaluation points"):
        _run([], tmp_path / "out")
    with pytest.raises(SelectMoeError, match="must end in one of"):
        _run(points, tmp_path / "out", plot_path=tmp_path / "plot.gif")
    with pytest.raises(SelectMoeError, match="confidence_level"):
        SummarySettings(confidence_level=1.5)


def test_replicate_columns_stability_and_k(points, tmp_path):
    """Each replicate's selection: its k and the overlap of the replicates' selections."""
    d = tmp_path / "selections"
    d.mkdir()
    keys = [[("a", str(i)) for i in range(0, 10)], [("a", str(i)) for i in range(5, 15)]]
    keys.append(keys[0])
    selected, infos = [], []
    for r, chosen in enumerate(keys):
        path = d / f"r{r}.jsonl"
        path.write_text("".join(json.dumps({"dataset": ds, "id": i}) + "\n" for ds, i in chosen))
        selected.append(path)
        info = d / f"r{r}.json"
        info.write_text(json.dumps({"n_selected": 10, "k": 4 + r}))
        infos.append(info)
    points[0].update(selected=selected, selection_json=infos)
    frame, _, md_path = _run(points, tmp_path / "out")
    sm = frame[(frame["method"] == "selectmoe") & (frame["percentage"] == 0.1)].iloc[0]
    # pairs: r0-r1 5/15, r0-r2 1, r1-r2 5/15
    assert sm["stability"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert sm["k"] == "4;5;6" and sm["n_selected"] == 10
    assert not isinstance(frame[frame["method"] == "random"].iloc[0]["k"], str)
    markdown = md_path.read_text()
    assert "| replicates | overlap |" in markdown and "| 0.56 |" in markdown
    means = [float(m) for m in sm["replicate_means"].split(";")]
    assert " / ".join(f"{m:.3f}" for m in means) in markdown


def test_intervals_stay_within_the_range_of_the_scores(tmp_path):
    """Three replicates far apart near the ceiling: the t interval would pass 1, the table's
    stops there (a mean of 0/1 scores cannot leave [0, 1])."""
    rng = np.random.default_rng(5)
    d = tmp_path / "runs"
    d.mkdir()
    point = _point(d, rng, "high", 0.93, target="tiny", method="selectmoe", percentage=0.1)
    grids = _grids(point)
    unclipped, per_task = mean_intervals(grids)
    assert max(i.high for i in [unclipped, *per_task]) > 1.0  # the case this test is about
    frame, _, _ = _run([point], tmp_path / "out")
    row = frame.iloc[0]
    for name in ("qa_a/acc", "qa_b/acc", "mean"):
        assert 0.0 <= row[f"{name}_low"] <= row[name] <= row[f"{name}_high"] <= 1.0, name
    assert row["qa_a/acc_low"] == per_task[0].low  # the other end is the t interval's


def _stamp(point: dict, shots: int) -> dict:
    """Give every results file of ``point`` lm-eval's config blocks for a ``shots``-shot task."""
    for path in point["results"]:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.update(
            lm_eval_version="0.4.13",
            versions={task: 1.0 for task in TASKS},
            configs={
                task: {"task": task, "num_fewshot": shots, "doc_to_text": "Q: {{q}}\nA:"}
                for task in TASKS
            },
            **{"n-shot": {task: shots for task in TASKS}},
        )
        Path(path).write_text(json.dumps(data), encoding="utf-8")
    return point


def test_evaluation_contracts_are_shown_and_different_ones_never_paired(tmp_path: Path):
    """The summary names each task's contract (lm-eval and task versions, few-shot count, config
    digest); a row evaluated under another contract than its reference is refused in one line
    naming the task and both contracts."""
    from selectmoe.data.lm_eval_results import config_digest

    rng = np.random.default_rng(3)
    d = tmp_path / "runs"
    d.mkdir()
    method = _stamp(
        _point(d, rng, "sm", 0.6, target="t", method="selectmoe", loss="s", percentage=0.1), 0
    )
    random = _stamp(_point(d, rng, "rand", 0.4, target="t", method="random", percentage=0.1), 0)
    _run([method, random], tmp_path / "same")
    markdown = (tmp_path / "same" / "summary.md").read_text(encoding="utf-8")
    digest = config_digest({"task": "qa_a", "num_fewshot": 0, "doc_to_text": "Q: {{q}}\nA:"})
    assert f"qa_a: lm-eval 0.4.13, task v1.0, 0-shot, config {digest}" in markdown
    five_shot = _stamp(_point(d, rng, "rand5", 0.4, target="t", method="random", percentage=0.1), 5)
    with pytest.raises(SelectMoeError) as error:
        _run([method, five_shot], tmp_path / "mixed")
    message = str(error.value)
    assert "task 'qa_a'" in message and "0-shot" in message and "5-shot" in message
    assert "are not compared" in message and "\n" not in message
    # one row whose seeds disagree is refused too
    mixed_seeds = _point(d, rng, "mix", 0.5, target="t", method="random", percentage=0.2)
    _stamp({"results": mixed_seeds["results"][:1]}, 0)
    _stamp({"results": mixed_seeds["results"][1:]}, 3)
    with pytest.raises(SelectMoeError, match="evaluate every seed of a row with the same"):
        _run([mixed_seeds], tmp_path / "seeds")


def test_the_base_model_drift_sentinel_warns_above_the_table(tmp_path: Path, caplog):
    rng = np.random.default_rng(4)
    d = tmp_path / "runs"
    d.mkdir()
    base = _point(d, rng, "base", 0.3, replicates=(None,), seeds=(None,), target="t", method="base")
    scores = summarize(
        [base], output_csv=tmp_path / "a.csv", output_md=tmp_path / "a.md", settings=SETTINGS
    )
    value = float(scores.iloc[0]["qa_a/acc"])
    inside = SummarySettings(expected_base={"t": {"qa_a": {"value": value, "tolerance": 0.01}}})
    summarize([base], output_csv=tmp_path / "b.csv", output_md=tmp_path / "b.md", settings=inside)
    assert "Base-model check failed" not in (tmp_path / "b.md").read_text(encoding="utf-8")
    far = SummarySettings(expected_base={"t": {"qa_a": {"value": value + 0.3, "tolerance": 0.05}}})
    with caplog.at_level("WARNING"):
        summarize([base], output_csv=tmp_path / "c.csv", output_md=tmp_path / "c.md", settings=far)
    markdown = (tmp_path / "c.md").read_text(encoding="utf-8")
    assert markdown.startswith(
        f"**Base-model check failed**: t scores {value:.3f} on qa_a, outside the expected "
        f"{value + 0.3:.3f} ± 0.050"
    )
    assert "Base-model check failed" in caplog.text


def _filtered_run(directory: Path, name: str, strict: np.ndarray, flexible: np.ndarray) -> dict:
    """A generate_until task scored under two filters, as lm-eval writes bbh's samples."""
    results = {
        "qa_gen": {
            "alias": "qa_gen",
            "exact_match,strict-match": float(np.mean(strict)),
            "exact_match,flexible-extract": float(np.mean(flexible)),
        }
    }
    results_path = directory / f"{name}.json"
    results_path.write_text(json.dumps({"results": results, "selectmoe": {"tasks": ["qa_gen"]}}))
    samples_path = directory / f"{name}.jsonl"
    with samples_path.open("w", encoding="utf-8") as handle:
        for filter_name, values in (("strict-match", strict), ("flexible-extract", flexible)):
            for doc_id, value in enumerate(values):
                record = {
                    "task": "qa_gen",
                    "doc_id": doc_id,
                    "filter": filter_name,
                    "metrics": {"exact_match": float(value)},
                }
                handle.write(json.dumps(record) + "\n")
    return {"results": [results_path], "samples": [samples_path]}


def test_a_metric_per_task_and_its_filter(tmp_path: Path):
    """``summary.metric: {task: "metric,filter"}`` takes the records of that filter, checked
    against lm-eval's number under the same name; two filters and no choice is one clear error."""
    rng = np.random.default_rng(5)
    strict, flexible = (rng.random(25) < 0.3).astype(float), (rng.random(25) < 0.6).astype(float)
    run = _filtered_run(tmp_path, "gen", strict, flexible)
    point = {**run, "replicates": [None], "seeds": [None], "target": "t", "method": "base"}
    with pytest.raises(SelectMoeError, match=r"filters: flexible-extract, strict-match\); name"):
        summarize([point], output_csv=tmp_path / "x.csv", output_md=tmp_path / "x.md")
    for filter_name, values in (("strict-match", strict), ("flexible-extract", flexible)):
        settings = SummarySettings(metric={"qa_gen": f"exact_match,{filter_name}"})
        frame = summarize(
            [point], output_csv=tmp_path / "a.csv", output_md=tmp_path / "a.md", settings=settings
        )
        assert frame.iloc[0][f"qa_gen/exact_match,{filter_name}"] == pytest.approx(values.mean())
    with pytest.raises(SelectMoeError, match="no samples of task 'qa_gen' with filter 'none'"):
        summarize(
            [point],
            output_csv=tmp_path / "b.csv",
            output_md=tmp_path / "b.md",
            settings=SummarySettings(metric={"qa_gen": "exact_match,none"}),
        )


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"doc_id": 0, "acc": 1.0}', r"x\.jsonl:1: not a samples record \(needs task, doc_id"),
        (
            '{"task": "qa_a", "doc_id": 0, "metrics": ["acc"], "acc": 1.0}',
            r"x\.jsonl:1: 'metrics' is a list, not \{name: value\} \(lm-eval's own samples",
        ),
        ("{not json", r"x\.jsonl:1: invalid JSON"),
    ],
)
def test_an_unknown_samples_format_is_one_clear_line(tmp_path: Path, line: str, pattern: str):
    results = tmp_path / "x.json"
    results.write_text(json.dumps({"results": {"qa_a": {"acc,none": 1.0}}}), encoding="utf-8")
    samples = tmp_path / "x.jsonl"
    samples.write_text(line + "\n", encoding="utf-8")
    point = {"results": [results], "samples": [samples], "replicates": [None], "seeds": [None]}
    with pytest.raises(SelectMoeError, match=pattern) as error:
        summarize(
            [{**point, "target": "t", "method": "base"}],
            output_csv=tmp_path / "s.csv",
            output_md=tmp_path / "s.md",
        )
    assert "\n" not in str(error.value)
