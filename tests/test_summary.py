"""Tests of the summary table: exact values, row order, baselines, determinism, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from selectmoe.errors import SelectMoeError
from selectmoe.summary import summarize

TASKS = ("qa_b", "qa_a")


def _write_results(path: Path, accs: dict[str, float], *, acc_norm: bool = True) -> Path:
    """A results JSON shaped like run_lm_eval's output."""
    results = {}
    for task, acc in accs.items():
        entry = {"alias": task, "sample_len": 40, "acc,none": acc, "acc_stderr,none": 0.01}
        if acc_norm:
            entry |= {"acc_norm,none": acc / 2, "acc_norm_stderr,none": "N/A"}
        results[task] = entry
    data = {
        "results": results,
        "n-samples": {task: {"original": 40, "effective": 40} for task in accs},
        "selectmoe": {"tasks": sorted(accs)},
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_selection(path: Path, n_selected: int) -> Path:
    path.write_text(json.dumps({"method": "x", "n_selected": n_selected}), encoding="utf-8")
    return path


@pytest.fixture
def points(tmp_path: Path) -> list[dict]:
    """A sweep given deliberately out of order, with base/full/random baselines."""
    r = tmp_path / "results"
    r.mkdir()

    def res(name: str, a: float, b: float) -> Path:
        return _write_results(r / f"{name}.json", {"qa_a": a, "qa_b": b})

    sel = {pct: _write_selection(r / f"sel{pct}.json", 10 * pct) for pct in (5, 10)}
    return [
        {
            "target": "tiny",
            "method": "selectmoe",
            "loss": "sigmoid",
            "percentage": 10,
            "results_json": res("sm_sig_10", 0.5, 0.75),
            "selection_json": sel[10],
            "noise_share": 0.125,
        },
        {
            "target": "tiny",
            "method": "random",
            "loss": None,
            "percentage": 5.0,
            "results_json": res("random_5", 0.25, 0.25),
            "selection_json": sel[5],
        },
        {"target": "tiny", "method": "full", "results_json": res("full", 0.625, 0.5)},
        {
            "target": "tiny",
            "method": "selectmoe",
            "loss": "mse",
            "percentage": "5",  # Snakemake wildcards are strings
            "results_json": res("sm_mse_5", 0.375, 0.5),
            "selection_json": sel[5],
        },
        {
            "target": "tiny",
            "method": "base",
            "loss": None,
            "results_json": res("base", 0.125, 0.25),
        },
        {
            "target": "tiny",
            "method": "selectmoe",
            "loss": "sigmoid",
            "percentage": 5,
            "results_json": res("sm_sig_5", 0.5, 0.5),
            "selection_json": sel[5],
            "noise_share": 0.25,
        },
        {"target": "alpha", "method": "base", "results_json": res("alpha_base", 0.0, 1.0)},
    ]


def _run(points: list[dict], out: Path, **kwargs) -> tuple:
    out.mkdir(exist_ok=True)
    frame = summarize(
        points, output_csv=out / "summary.csv", output_md=out / "summary.md", **kwargs
    )
    return frame, out / "summary.csv", out / "summary.md"


def test_rows_columns_and_exact_values(points: list[dict], tmp_path: Path) -> None:
    frame, csv_path, _ = _run(points, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert list(rows[0]) == [
        "target",
        "method",
        "loss",
        "percentage",
        "qa_a/acc",
        "qa_a/acc_norm",
        "qa_b/acc",
        "qa_b/acc_norm",
        "mean_acc",
        "n_selected",
        "noise_share",
        "selection_json",
        "results_json",
    ]
    keys = [(r["target"], r["method"], r["loss"], r["percentage"]) for r in rows]
    assert keys == [
        ("alpha", "base", "", ""),
        ("tiny", "base", "", ""),
        ("tiny", "full", "", ""),
        ("tiny", "selectmoe", "mse", "5.0"),
        ("tiny", "selectmoe", "sigmoid", "5.0"),
        ("tiny", "selectmoe", "sigmoid", "10.0"),
        ("tiny", "random", "", "5.0"),
    ]
    by_key = {(r["method"], r["loss"], r["percentage"]): r for r in rows if r["target"] == "tiny"}
    sig10 = by_key[("selectmoe", "sigmoid", "10.0")]
    assert sig10["qa_a/acc"] == "0.5"
    assert sig10["qa_a/acc_norm"] == "0.25"
    assert sig10["qa_b/acc"] == "0.75"
    assert sig10["mean_acc"] == "0.625"
    assert sig10["n_selected"] == "100"
    assert sig10["noise_share"] == "0.125"
    assert sig10["results_json"].endswith("sm_sig_10.json")
    base = by_key[("base", "", "")]
    assert base["mean_acc"] == "0.1875"
    assert base["n_selected"] == ""  # no selection for the base model
    assert by_key[("full", "", "")]["mean_acc"] == "0.5625"
    assert by_key[("random", "", "5.0")]["n_selected"] == "50"
    assert frame["mean_acc"].tolist() == pytest.approx(
        [0.5, 0.1875, 0.5625, 0.4375, 0.5, 0.625, 0.25]
    )


def test_markdown_table(points: list[dict], tmp_path: Path) -> None:
    _, _, md_path = _run(points, tmp_path / "out")
    lines = md_path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("| target | method | loss | percentage | qa_a/acc |")
    assert set(lines[1].replace(" ", "")) <= set("|-:")
    assert len(lines) == 2 + len(points)
    sig10 = next(line for line in lines if "sm_sig_10" in line)
    cells = [cell.strip() for cell in sig10.strip("|").split("|")]
    assert cells[:4] == ["tiny", "selectmoe", "sigmoid", "10"]
    assert cells[4:9] == ["0.5000", "0.2500", "0.7500", "0.3750", "0.6250"]
    assert cells[9] == "100"


def test_outputs_are_byte_deterministic(points: list[dict], tmp_path: Path) -> None:
    _, csv_a, md_a = _run(points, tmp_path / "a")
    _, csv_b, md_b = _run(list(reversed(points)), tmp_path / "b")
    assert csv_a.read_bytes() == csv_b.read_bytes()
    assert md_a.read_bytes() == md_b.read_bytes()


def test_plot_is_written(points: list[dict], tmp_path: Path) -> None:
    plot = tmp_path / "out" / "acc_vs_pct.png"
    _run(points, tmp_path / "out", plot_path=plot)
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in plot.parent.iterdir() if p.name.endswith(".tmp")]


def test_tasks_argument_selects_columns(points: list[dict], tmp_path: Path) -> None:
    frame, _, _ = _run(points, tmp_path / "out", tasks=["qa_b"])
    assert [c for c in frame.columns if "/" in c] == ["qa_b/acc", "qa_b/acc_norm"]
    assert frame["mean_acc"].tolist() == frame["qa_b/acc"].tolist()


def test_task_without_acc_gets_its_metrics(tmp_path: Path) -> None:
    path = tmp_path / "gen.json"
    path.write_text(
        json.dumps({"results": {"gen": {"exact_match,none": 0.5, "f1,none": 0.75}}}),
        encoding="utf-8",
    )
    frame, _, _ = _run([{"target": "t", "method": "base", "results_json": path}], tmp_path)
    assert frame.loc[0, "gen/exact_match"] == 0.5
    assert frame.loc[0, "gen/f1"] == 0.75
    assert math.isnan(frame.loc[0, "mean_acc"])


# --------------------------------------------------------------------------- errors


def test_missing_results_file(points: list[dict], tmp_path: Path) -> None:
    points[0]["results_json"] = tmp_path / "nope.json"
    with pytest.raises(SelectMoeError, match=r"results file not found: .*nope\.json"):
        _run(points, tmp_path / "out")
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_invalid_json(points: list[dict], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    points[2]["results_json"] = bad
    with pytest.raises(SelectMoeError, match=r"invalid JSON in results file .*bad\.json"):
        _run(points, tmp_path / "out")


def test_results_without_a_task(points: list[dict], tmp_path: Path) -> None:
    points[1]["results_json"] = _write_results(tmp_path / "partial.json", {"qa_a": 0.5})
    with pytest.raises(SelectMoeError, match=r"partial\.json has no results for task 'qa_b'"):
        _run(points, tmp_path / "out")


def test_bad_selection_file(points: list[dict], tmp_path: Path) -> None:
    points[0]["selection_json"] = tmp_path / "sel_missing.json"
    with pytest.raises(SelectMoeError, match=r"selection file not found: .*sel_missing\.json"):
        _run(points, tmp_path / "out")
    no_count = tmp_path / "sel_no_count.json"
    no_count.write_text("{}", encoding="utf-8")
    points[0]["selection_json"] = no_count
    with pytest.raises(SelectMoeError, match=r"sel_no_count\.json has no .*'n_selected'"):
        _run(points, tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"method": None}, "missing 'method'"),
        ({"percentage": "five"}, "'percentage' must be a number"),
        ({"percentage": -1}, "must be >= 0"),
        ({"loss": 3}, "'loss' must be a string"),
        ({"mean_acc": 1.0}, "clash with the summary's own columns"),
    ],
)
def test_bad_points(points: list[dict], tmp_path: Path, change: dict, pattern: str) -> None:
    points[0].update(change)
    with pytest.raises(SelectMoeError, match=pattern):
        _run(points, tmp_path / "out")


def test_duplicate_points(points: list[dict], tmp_path: Path) -> None:
    points.append(dict(points[0]))
    with pytest.raises(SelectMoeError, match="share target/method/loss/percentage"):
        _run(points, tmp_path / "out")


def test_empty_points_and_bad_plot_suffix(points: list[dict], tmp_path: Path) -> None:
    with pytest.raises(SelectMoeError, match="non-empty list"):
        _run([], tmp_path / "out")
    with pytest.raises(SelectMoeError, match=r"must end in one of"):
        _run(points, tmp_path / "out", plot_path=tmp_path / "plot.gif")
