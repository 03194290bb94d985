"""The cost ledger: benchmark files summed per point, joined to the summary's scores."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from selectmoe.errors import SelectMoeError
from selectmoe.evidence.costs import cost_ledger, read_benchmark, write_cost_ledger

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, seconds: float, cpu: float, rss: float, repeats: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n"
    path.write_text(HEADER + line * repeats)
    return path


def test_read_benchmark_means_repeats_and_names_bad_files(tmp_path: Path):
    path = bench(tmp_path / "a.tsv", 10.0, 4.0, 300.0, repeats=2)
    assert read_benchmark(path) == {"wall_s": 10.0, "cpu_s": 4.0, "max_rss_mb": 300.0}
    with pytest.raises(SelectMoeError, match=re.escape(f"{tmp_path / 'b.tsv'}: benchmark file")):
        read_benchmark(tmp_path / "b.tsv")
    (tmp_path / "c.tsv").write_text("x\ty\n1\t2\n")
    with pytest.raises(SelectMoeError, match="missing s, cpu_time, max_rss"):
        read_benchmark(tmp_path / "c.tsv")


def test_ledger_sums_each_part_and_counts_shared_jobs_for_every_point(tmp_path: Path):
    warmup = bench(tmp_path / "warmup.tsv", 100.0, 90.0, 2000.0)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"x" * 1_000_000)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "a.safetensors").write_bytes(b"y" * 500_000)
    jobs = [
        {"kind": "selection", "benchmark": warmup, "gpus": 2, "outputs": [weights]},
        {
            "kind": "selection",
            "benchmark": bench(tmp_path / "select.tsv", 5.0, 5.0, 100.0),
            "gpus": 0,
        },
        {
            "kind": "training",
            "benchmark": bench(tmp_path / "ft1.tsv", 30.0, 25.0, 800.0),
            "gpus": 1,
            "outputs": [adapter],
        },
        {
            "kind": "training",
            "benchmark": bench(tmp_path / "ft2.tsv", 40.0, 35.0, 900.0),
            "gpus": 1,
            "outputs": [adapter, weights],  # listed twice: stored once
        },
        {"kind": "evaluation", "benchmark": bench(tmp_path / "ev.tsv", 7.0, 6.0, 700.0)},
    ]
    points = [
        {"target": "t", "method": "selectmoe", "loss": "sigmoid", "percentage": 0.1, "jobs": jobs},
        {"target": "t", "method": "also", "loss": "sigmoid", "percentage": 0.1, "jobs": jobs[:1]},
    ]
    ledger = cost_ledger(points)
    first = ledger.iloc[0]
    assert first["selection_cpu_s"] == 95.0 and first["selection_wall_s"] == 105.0
    assert first["selection_gpu_s"] == 200.0  # 100 s on 2 GPUs
    assert first["training_cpu_s"] == 60.0 and first["training_gpu_s"] == 70.0
    assert first["evaluation_cpu_s"] == 6.0
    assert first["total_cpu_s"] == 161.0 and first["total_gpu_s"] == 270.0
    assert first["peak_rss_mb"] == 2000.0
    assert first["stored_mb"] == pytest.approx(1.5)
    assert first["n_jobs"] == 5
    # the shared warmup is counted in full for the other point too
    assert ledger.iloc[1]["selection_cpu_s"] == 90.0
    with pytest.raises(SelectMoeError, match=r"job kind 'train'; valid: selection, training"):
        cost_ledger([{**points[0], "jobs": [{**jobs[0], "kind": "train"}]}])


def test_write_cost_ledger_joins_scores_and_plots(tmp_path: Path):
    job = {"kind": "evaluation", "benchmark": bench(tmp_path / "ev.tsv", 7.0, 6.0, 700.0)}
    points = [
        {"target": "t", "method": "base", "loss": None, "percentage": None, "jobs": [job]},
        {"target": "t", "method": "random", "loss": None, "percentage": 0.1, "jobs": [job]},
    ]
    summary = tmp_path / "summary.csv"
    pd.DataFrame(
        [
            {
                "target": "t",
                "method": "base",
                "loss": None,
                "percentage": None,
                "mean": 0.2,
                "mean_low": 0.1,
                "mean_high": 0.3,
            },
            {
                "target": "t",
                "method": "random",
                "loss": None,
                "percentage": 0.1,
                "mean": 0.4,
                "mean_low": 0.35,
                "mean_high": 0.45,
                "vs_random": 0.0,
            },
        ]
    ).to_csv(summary, index=False)
    ledger = write_cost_ledger(
        points,
        summary_csv=summary,
        output_csv=tmp_path / "costs.csv",
        output_md=tmp_path / "costs.md",
        plot_path=tmp_path / "costs.png",
    )
    assert ledger["mean"].tolist() == [0.2, 0.4]
    assert ledger["mean_high"].tolist() == [0.3, 0.45]
    assert (tmp_path / "costs.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "costs.md").read_text()
    assert "| t | random |  | 10 | 0.400 [0.350, 0.450] | 0.0 | 0.0 | 6.0 | 6.0 | 700 | 0.0 |" in md
    missing = [{**points[1], "percentage": 0.3}]
    with pytest.raises(SelectMoeError, match=r"no row for \('t', 'random', None, 0\.3\)"):
        write_cost_ledger(
            missing,
            summary_csv=summary,
            output_csv=tmp_path / "c2.csv",
            output_md=tmp_path / "c2.md",
            plot_path=tmp_path / "c2.png",
        )
    assert not (tmp_path / "c2.csv").exists()
