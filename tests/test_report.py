"""The report: the figures of selectmoe.evidence (warmup, quality, noise, selections) on tiny
synthetic inputs, the warmup's per-layer gate metrics, and `snakemake --report` over a finished
small demo run."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from selectmoe.errors import ConfigError, SelectMoeError
from selectmoe.evidence import noise_figures, quality_figures, selection_plots, warmup_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 1000, path
    # written atomically: no temporary file left beside it
    assert not list(path.parent.glob(f".{path.name}.*")), path


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- quality losses

LOSS_PARAMS = {
    "beta_target_mean": 0.3,
    "beta_target_var": 0.02,
    "w_mean": 2.0,
    "w_var": 3.0,
    "lambda_var": 0.2,
    "sample_wise_averaging": True,
}


def test_quality_loss_curves_match_the_closed_forms(tmp_path: Path) -> None:
    curves = quality_figures.plot_quality_losses(
        tmp_path / "losses.png", params=LOSS_PARAMS, n_points=11
    )
    _assert_png(tmp_path / "losses.png")
    g = curves["g"]
    assert np.allclose(g, np.linspace(0, 1, 11))
    p = LOSS_PARAMS
    uniform = {
        "sigmoid": g,
        "mse": g**2,
        "beta_moment_matching": p["w_mean"] * (g - p["beta_target_mean"]) ** 2
        + p["w_var"] * p["beta_target_var"] ** 2,
        "mean_variance_regularization": (g - 0.5) ** 2,
    }
    variance = (g - 0.5) ** 2  # a batch half at g, half at 1 - g: mean 0.5
    two_point = {
        "sigmoid": np.full_like(g, 0.5),
        "mse": (g**2 + (1 - g) ** 2) / 2,
        "beta_moment_matching": p["w_mean"] * (0.5 - p["beta_target_mean"]) ** 2
        + p["w_var"] * (variance - p["beta_target_var"]) ** 2,
        "mean_variance_regularization": -p["lambda_var"] * variance,
    }
    assert set(uniform) <= set(curves["uniform"])  # every registered loss is drawn
    for name, expected in uniform.items():
        assert np.allclose(curves["uniform"][name], expected, atol=1e-12), name
        assert np.allclose(curves["two_point"][name], two_point[name], atol=1e-12), name
    assert curves["params"] == LOSS_PARAMS


def test_quality_loss_curves_call_the_registered_functions() -> None:
    """A changed parameter changes the curve: the values come from selectmoe.model.losses at call
    time."""
    from types import SimpleNamespace

    from selectmoe.model.losses import get_quality_loss

    curves = quality_figures.quality_loss_curves(["beta_moment_matching"], params={"w_var": 0.0})
    assert list(curves["uniform"]) == ["beta_moment_matching"]
    config = SimpleNamespace(**{**quality_figures.LOSS_PARAMETER_DEFAULTS, "w_var": 0.0})
    good = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    expected = float(get_quality_loss("beta_moment_matching")(good, torch.ones(1, 2), config))
    index = int(np.argmin(np.abs(curves["g"] - 0.7)))
    assert curves["two_point"]["beta_moment_matching"][index] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="unknown quality_loss_type 'hinge'"):
        quality_figures.quality_loss_curves(["hinge"])
    with pytest.raises(SelectMoeError, match="n_points"):
        quality_figures.quality_loss_curves(n_points=1)


# ----------------------------------------------------------------------------- planted noise


@pytest.fixture
def noise_files(tmp_path: Path) -> dict[str, Path]:
    """10 pool examples, 4 planted (2 junk, 2 shuffled), and three selections."""
    kinds = {"a_1": "junk", "a_2": "shuffled", "b_0": "junk", "b_3": "shuffled"}
    labels = [
        {
            "dataset": d,
            "id": f"{d}_{i}",
            "planted": f"{d}_{i}" in kinds,
            "kind": kinds.get(f"{d}_{i}", "clean"),
        }
        for d in ("a", "b")
        for i in range(5)
    ]
    labels_path = _write_jsonl(tmp_path / "noise_labels.jsonl", labels)

    def selection(name: str, ids: list[str]) -> Path:
        records = [
            {"dataset": i.split("_")[0], "id": i, "score": 0.5, "cluster": 0, "messages": []}
            for i in ids
        ]
        return _write_jsonl(tmp_path / f"{name}.jsonl", records)

    return {
        "labels": labels_path,
        "clean": selection("clean", ["a_0", "a_3", "b_1", "b_2"]),
        "mixed": selection("mixed", ["a_0", "a_1", "b_0", "b_4", "a_4"]),
        "full": selection("full", [r["id"] for r in labels]),
    }


def test_noise_kept_counts_and_shares(noise_files: dict[str, Path], tmp_path: Path) -> None:
    selections = {name: noise_files[name] for name in ("clean", "mixed", "full")}
    table = noise_figures.plot_noise_kept(
        noise_files["labels"],
        selections,
        tmp_path / "noise.png",
        output_csv=tmp_path / "noise.csv",
    )
    _assert_png(tmp_path / "noise.png")
    rows = table.set_index("selection")
    assert list(table["selection"]) == ["clean", "mixed", "full"]
    assert rows["n_pool"].tolist() == [10, 10, 10]
    assert rows["n_planted_pool"].tolist() == [4, 4, 4]
    assert rows["n_selected"].tolist() == [4, 5, 10]
    assert rows["n_planted_selected"].tolist() == [0, 2, 4]
    assert rows["planted_kept_share"].tolist() == [0.0, 0.5, 1.0]
    assert rows["planted_share_of_selection"].tolist() == [0.0, 0.4, 0.4]
    assert rows["selected_share"].tolist() == [0.4, 0.5, 1.0]
    assert rows["pool_planted_share"].tolist() == [0.4, 0.4, 0.4]
    assert rows["kept/junk"].tolist() == [0, 2, 2]
    assert rows["kept/shuffled"].tolist() == [0, 0, 2]
    written = pd.read_csv(tmp_path / "noise.csv")
    pd.testing.assert_frame_equal(written, table, check_dtype=False)


def test_noise_kept_rejects_foreign_or_repeated_examples(
    noise_files: dict[str, Path], tmp_path: Path
) -> None:
    foreign = _write_jsonl(tmp_path / "foreign.jsonl", [{"dataset": "c", "id": "c_0"}])
    with pytest.raises(SelectMoeError, match=r"foreign\.jsonl: 1 selected example\(s\) have no"):
        noise_figures.noise_kept(noise_files["labels"], {"x": foreign})
    twice = _write_jsonl(tmp_path / "twice.jsonl", [{"dataset": "a", "id": "a_0"}] * 2)
    with pytest.raises(SelectMoeError, match="selected twice"):
        noise_figures.noise_kept(noise_files["labels"], {"x": twice})
    with pytest.raises(SelectMoeError, match="noise labels not found"):
        noise_figures.noise_kept(tmp_path / "missing.jsonl", {"x": twice})


# ----------------------------------------------------------------------------- warmup history


def _history_payload(path: Path, *, per_layer: bool) -> Path:
    history = []
    for step in (1, 10, 20):
        record: dict[str, Any] = {
            "step": step,
            "epoch": 0,
            "lr": 1e-3,
            "loss": 5.0 - 0.01 * step,
            "lm_loss": 4.9 - 0.01 * step,
            "quality_loss": 0.5 + 0.001 * step,
            "good_mean": 0.5 + 0.001 * step,
        }
        if per_layer:
            for layer, (mean, std) in enumerate([(0.4, 0.1), (0.6, 0.05), (0.5, 0.0)]):
                mean += 0.001 * step
                record[f"good_mean/layer_{layer}"] = mean
                record[f"good_sq/layer_{layer}"] = mean**2 + std**2 - (1e-12 if std == 0 else 0)
        history.append(record)
    payload = {
        "weights": {"model.layers.0.quality_gate.weight": torch.zeros(1, 4)},
        "history": list(reversed(history)),  # sorted by step when read
        "config": {"model_overrides": {"quality_loss_type": "mse", "quality_loss_weight": 0.01}},
    }
    torch.save(payload, path)
    return path


def test_warmup_history_spread_per_layer(tmp_path: Path) -> None:
    weights = _history_payload(tmp_path / "full_rank_weights.pt", per_layer=True)
    frame = warmup_figures.plot_warmup_history(
        weights, losses_png=tmp_path / "losses.png", good_ratio_png=tmp_path / "good.png"
    )
    _assert_png(tmp_path / "losses.png")
    _assert_png(tmp_path / "good.png")
    assert frame["step"].tolist() == [1, 10, 20]
    assert frame.attrs["n_layers"] == 3
    assert frame.attrs["quality_loss_type"] == "mse"
    assert np.allclose(frame["good_std/layer_0"], 0.1)
    assert np.allclose(frame["good_std/layer_1"], 0.05)
    # a mean square a rounding error below the squared mean gives spread 0, not NaN
    assert frame["good_std/layer_2"].tolist() == [0.0, 0.0, 0.0]


def test_warmup_history_without_per_layer_metrics(tmp_path: Path) -> None:
    weights = _history_payload(tmp_path / "old.pt", per_layer=False)
    frame = warmup_figures.plot_warmup_history(
        weights, losses_png=tmp_path / "losses.png", good_ratio_png=tmp_path / "good.png"
    )
    assert frame.attrs["n_layers"] == 0
    _assert_png(tmp_path / "good.png")
    with pytest.raises(SelectMoeError, match="warmup weights not found"):
        warmup_figures.load_warmup_history(tmp_path / "missing.pt")
    torch.save({"weights": {}}, tmp_path / "no_history.pt")
    with pytest.raises(SelectMoeError, match="no training history"):
        warmup_figures.load_warmup_history(tmp_path / "no_history.pt")


def test_warmup_logs_gate_mean_and_spread_per_layer(
    tmp_path: Path, tiny_converted_dir: Path, tiny_pool: dict[str, Path], tiny_tokenizer: Any
) -> None:
    """The logged per-layer moments equal those of an independent forward over the step's
    batch (one batch holds the whole pool, so its order does not matter)."""
    from selectmoe import SelectMoeForCausalLM, register_select_moe
    from selectmoe.data.encoding import encode_examples
    from selectmoe.data.pool import load_pool
    from selectmoe.stages.warmup import WarmupSettings, run_warmup

    pool_files = [tiny_pool["alpha"], tiny_pool["beta"]]
    settings = WarmupSettings(
        subset_ratio=1.0,
        per_device_batch_size=16,
        effective_batch_size=16,
        max_steps=1,
        log_every=1,
        device="cpu",
        checkpoint_every=0,
    )
    returned = run_warmup(
        model_dir=tiny_converted_dir,
        pool_files=pool_files,
        output_path=tmp_path / "full_rank_weights.pt",
        settings=settings,
    )
    (record,) = returned["history"]

    register_select_moe()
    model = SelectMoeForCausalLM.from_pretrained(tiny_converted_dir, dtype=torch.float32).eval()
    encoded = encode_examples(load_pool(pool_files), tiny_tokenizer, full_sequence_prediction=True)
    assert len(encoded) == 12
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.config.num_hidden_layers)]
    with torch.no_grad():
        for item in encoded:
            output = model(torch.tensor([item.input_ids]), output_router_logits=True)
            for layer, logits in enumerate(output.router_logits):
                per_layer[layer].append(torch.sigmoid(logits["quality_score"]).flatten())
    means = []
    for layer, values in enumerate(per_layer):
        good = torch.cat(values).double()
        assert record[f"good_mean/layer_{layer}"] == pytest.approx(float(good.mean()), abs=1e-5)
        assert record[f"good_sq/layer_{layer}"] == pytest.approx(float((good**2).mean()), abs=1e-5)
        means.append(float(good.mean()))
    assert record["good_mean"] == pytest.approx(sum(means) / len(means), abs=1e-5)

    frame = warmup_figures.load_warmup_history(tmp_path / "full_rank_weights.pt")
    assert frame.attrs["n_layers"] == model.config.num_hidden_layers
    spread = math.sqrt(record["good_sq/layer_0"] - record["good_mean/layer_0"] ** 2)
    assert frame["good_std/layer_0"].iloc[0] == pytest.approx(spread)
    assert spread > 0


# ----------------------------------------------------------------------------- quality scores


def _router_file(path: Path, dataset: str, quality_score: torch.Tensor) -> Path:
    n, layers = quality_score.shape
    torch.save(
        {
            "quality_score": quality_score.float(),
            "moe_probs": torch.full((n, layers, 4), 0.25),
            "sample_ids": [f"{dataset}_{i}" for i in range(n)],
            "dataset": dataset,
            "metadata": {},
        },
        path,
    )
    return path


def test_quality_score_distribution_per_dataset_and_layer(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = {
        "alpha": torch.randn(20, 3, generator=generator),
        "beta": torch.randn(7, 3, generator=generator) + 1.0,
    }
    files = [_router_file(tmp_path / f"{d}_router_data.pt", d, s) for d, s in scores.items()]
    stats = quality_figures.plot_quality_scores(
        files, tmp_path / "scores.png", stats_csv=tmp_path / "scores.csv", title="mse"
    )
    _assert_png(tmp_path / "scores.png")
    assert list(stats["dataset"].unique()) == ["alpha", "beta"]
    assert stats["layer"].tolist()[:4] == ["0", "1", "2", "mean"]
    for dataset, raw in scores.items():
        good = torch.sigmoid(raw.double()).numpy()
        rows = stats[stats["dataset"] == dataset].set_index("layer")
        for layer in range(3):
            assert rows.loc[str(layer), "n"] == len(good)
            assert rows.loc[str(layer), "mean"] == pytest.approx(good[:, layer].mean(), abs=1e-6)
            assert rows.loc[str(layer), "std"] == pytest.approx(good[:, layer].std(), abs=1e-6)
            assert rows.loc[str(layer), "median"] == pytest.approx(
                np.median(good[:, layer]), abs=1e-6
            )
        assert rows.loc["mean", "mean"] == pytest.approx(good.mean(axis=1).mean(), abs=1e-6)
    written = pd.read_csv(tmp_path / "scores.csv", dtype={"layer": str})
    pd.testing.assert_frame_equal(written, stats, check_dtype=False)


# ----------------------------------------------------------------------------- selections


def test_selection_overview(tmp_path: Path) -> None:
    clustered = {
        "method": "selectmoe",
        "selection_percentage": 0.25,
        "n_pool": 40,
        "n_selected": 10,
        "k": 4,
        "k_selection": "knee",
        "ks": [2, 4, 6],
        "silhouettes": [0.1, 0.3, 0.2],
        "silhouette": None,
        "score": {"mean": 0.55},
        "selected_score": {"mean": 0.6},
        "per_dataset": {"a": {"selected": 6}, "b": {"selected": 4}},
    }
    random = {
        "method": "random",
        "selection_percentage": 0.25,
        "n_pool": 40,
        "n_selected": 10,
        "k": None,
        "score": {"mean": 0.5},
        "per_dataset": {"a": {"selected": 5}, "b": {"selected": 5}},
    }
    paths = {}
    for name, info in (("selectmoe/mse/p0.25", clustered), ("random/p0.25", random)):
        paths[name] = tmp_path / f"{name.replace('/', '_')}.json"
        paths[name].write_text(json.dumps(info))
    table = selection_plots.selection_overview(paths, tmp_path / "selections.csv")
    rows = table.set_index("selection")
    assert rows.loc["selectmoe/mse/p0.25", "k"] == 4
    assert rows.loc["selectmoe/mse/p0.25", "silhouette"] == 0.3  # the silhouette at the chosen k
    assert rows.loc["selectmoe/mse/p0.25", "selected_score_mean"] == 0.6
    assert pd.isna(rows.loc["random/p0.25", "k"])
    assert pd.isna(rows.loc["random/p0.25", "score_mean"])  # random uses no scores
    assert rows["selected/a"].tolist() == [6, 5]
    assert (tmp_path / "selections.csv").read_text().startswith("selection,method,percentage,")
    with pytest.raises(SelectMoeError, match="selection file not found"):
        selection_plots.selection_overview({"x": tmp_path / "missing.json"})


# ----------------------------------------------------------------------------- the workflow report


def _results_of(html: str) -> dict[str, dict[str, Any]]:
    """The results table that Snakemake's HTML report embeds (path -> name, caption, labels)."""
    match = re.search(r'<script id="results">\s*var results = ', html)
    assert match, "no results in the report"
    results, _ = json.JSONDecoder().raw_decode(html[match.end() :])
    return results


def _categories_of(html: str) -> dict[str, dict[str, list[str]]]:
    match = re.search(r'<script id="categories">\s*var categories = ', html)
    assert match, "no categories in the report"
    categories, _ = json.JSONDecoder().raw_decode(html[match.end() :])
    return categories


@pytest.mark.slow
def test_snakemake_report_of_the_small_demo(finished_demo: tuple[Path, dict]) -> None:
    """`snakemake --report report.html` over the finished small demo: every figure and table is
    in it with its caption, under its category."""
    from tests.test_workflow import SMALL_SELECTIONS, _snakemake

    workflow_dir, config = finished_demo
    losses = sorted(config["selection"]["loss_types"])
    started = time.monotonic()
    built = _snakemake(
        workflow_dir, "--cores", "1", "--configfile", "small.yaml", "--report", "report.html"
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    html = (workflow_dir / "report.html").read_text(encoding="utf-8")
    results = _results_of(html)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for path, result in results.items():
        by_name.setdefault(result["name"], []).append({"path": path, **result})

    # 1. the summary table and the accuracy plot per method
    assert "summary.csv" in by_name and "summary_accuracy.png" in by_name
    # 2. the selection plots of both Select-MoE selections (random has none to show); ifd
    # clusters nothing and shows its score distribution only
    for plot, phrase, methods in [
        ("elbow.png", "Elbow curve", ["selectmoe"]),
        ("silhouette.png", "Silhouette per k", ["selectmoe"]),
        ("cluster_sizes.png", "Cluster sizes", ["selectmoe"]),
        ("score_distribution.png", "Score distribution", ["ifd", "selectmoe"]),
    ]:
        entries = by_name[plot]
        assert sorted(e["labels"]["selection"] for e in entries) == [
            f"{method}/{loss}/p0.25/r{rep}"
            for method in methods
            for loss in losses
            for rep in config["selection"]["replicates"]
        ], plot
        assert all(phrase in e["caption"] for e in entries), plot
    assert "selections.csv" in by_name
    # 3. warmup curves per loss type
    for plot, phrase in [
        ("losses.png", "loss per logged optimizer step"),
        ("good_ratio.png", "per MoE layer"),
    ]:
        entries = by_name[plot]
        assert sorted(e["labels"]["loss type"] for e in entries) == losses, plot
        assert all(phrase in e["caption"] for e in entries), plot
    # 4. the quality-score distribution per dataset and layer, per loss type
    for loss in losses:
        (entry,) = by_name[f"{loss}.png"]
        assert "one panel per MoE layer" in entry["caption"]
        assert f"{loss}.csv" in by_name
    # 5. the quality losses against the gate output, with the choice for batch statistics
    (entry,) = by_name["quality_losses.png"]
    assert "half the tokens at" in entry["caption"]
    # 6. the planted noise each selection kept
    (entry,) = by_name["noise_kept.png"]
    assert "planted" in entry["caption"]
    assert "noise_kept.csv" in by_name
    # 7. the quality diagnostics per loss type, with the untrained-gate control
    for loss in losses:
        (table,) = by_name[f"quality_{loss}.csv"]
        assert "untrained gate" in table["caption"] and "AUROC" in table["caption"]
        assert f"quality_{loss}.png" in by_name
    assert "planted_share.csv" in by_name
    categories = _categories_of(html)
    assert set(categories) == {
        "Summary",
        "Selection",
        "Warmup",
        "Quality scores",
        "Quality losses",
        "Quality diagnostics",
        "Planted noise (demo)",
    }
    assert set(categories["Warmup"]) == set(losses)
    assert "The results of this report, by category" in html  # report/workflow.rst

    # the values behind the noise figure: 25% of the pool (all of it for full), 30% planted
    noise = pd.read_csv(workflow_dir / "results/report/noise_kept.csv").set_index("selection")
    assert sorted(noise["n_selected"]) == [60] * (len(SMALL_SELECTIONS) - 1) + [240]
    assert set(noise["pool_planted_share"]) == {0.3}
    for rep in config["selection"]["replicates"]:
        assert noise.loc[f"oracle/p0.25/r{rep}", "planted_share_of_selection"] == 0.0
        assert noise.loc[f"anti_oracle/p0.25/r{rep}", "planted_share_of_selection"] == 1.0
    selections = pd.read_csv(workflow_dir / "results/report/selections.csv")
    assert sorted(selections["selection"]) == sorted(SMALL_SELECTIONS)
    history = torch.load(
        workflow_dir / f"results/warmup/{losses[0]}/r1/full_rank_weights.pt", weights_only=True
    )["history"]
    assert [r["step"] for r in history] == list(range(1, len(history) + 1))
    assert all("good_sq/layer_1" in r for r in history)
    print(f"report {time.monotonic() - started:.0f} s")
