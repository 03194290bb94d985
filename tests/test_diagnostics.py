"""Quality diagnostics (selectmoe.evidence.diagnostics) against scikit-learn, scipy and known
cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import hypergeom, spearmanr
from sklearn.metrics import roc_auc_score

from selectmoe.evidence.diagnostics import (
    auroc,
    planted_shares,
    quality_table,
    spearman,
    write_diagnostics,
)
from selectmoe.evidence.overlap import SelectionRun
from selectmoe.selection.select import load_selection_scores, run_selection
from tests.test_labels import write_labels
from tests.test_selection import make_router_payload, save, write_pool


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_spearman_equal_the_references(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=200), 1)  # rounded: many ties
    positive = rng.random(200) < 0.3
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    other = np.round(scores + rng.normal(size=200), 1)
    assert spearman(scores, other) == pytest.approx(spearmanr(scores, other).statistic, abs=1e-12)


def test_auroc_and_spearman_edge_cases():
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))
    assert auroc(np.array([0.0, 1.0]), np.array([False, True])) == 1.0
    assert auroc(np.array([1.0, 0.0]), np.array([False, True])) == 0.0
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


def _router_files(tmp_path: Path, name: str, shift: float) -> tuple[list[Path], list[dict]]:
    """Two datasets; the score of planted examples (every third) is lowered by ``shift``."""
    directory = tmp_path / name
    directory.mkdir()
    payloads = []
    for dataset, n, seed in (("alpha", 30, 1), ("beta", 18, 2)):
        payload = make_router_payload(dataset, n, seed=seed)
        planted = torch.arange(n) % 3 == 0
        payload["quality_score"][planted] -= shift
        payload["n_tokens"] = torch.arange(n, dtype=torch.int64) + 5
        payloads.append(payload)
    paths = [save(p, directory / f"{p['dataset']}_router_data.pt") for p in payloads]
    return paths, payloads


def _labels(tmp_path: Path, payloads: list[dict]) -> Path:
    rows = []
    for payload in payloads:
        for position, sample_id in enumerate(payload["sample_ids"]):
            planted = position % 3 == 0
            kind = ("junk" if position % 2 else "truncated") if planted else "clean"
            rows.append(
                {"dataset": payload["dataset"], "id": sample_id, "planted": planted, "kind": kind}
            )
    return write_labels(tmp_path / "labels.jsonl", rows)


def test_quality_table_values(tmp_path):
    warmed, payloads = _router_files(tmp_path, "warmed", shift=3.0)
    untrained, _ = _router_files(tmp_path, "untrained", shift=0.0)
    labels = _labels(tmp_path, payloads)
    table = quality_table(warmed, untrained, labels_path=labels).set_index(["gate", "scope"])
    scores = (
        torch.sigmoid(torch.cat([p["quality_score"] for p in payloads]).double())
        .mean(dim=1)
        .numpy()
    )
    clean = np.array([i % 3 != 0 for p in payloads for i in range(len(p["sample_ids"]))])
    lengths = np.concatenate([np.arange(len(p["sample_ids"])) + 5 for p in payloads])
    row = table.loc[("warmed", "all")]
    assert row["n"] == 48 and row["mean"] == pytest.approx(scores.mean())
    assert row["auroc"] == pytest.approx(roc_auc_score(clean, scores))
    assert row["auroc"] > 0.9  # the planted ones were pushed down
    assert row["spearman_length"] == pytest.approx(spearmanr(scores, lengths).statistic)
    kinds = np.array(
        [
            "clean" if c else ("junk" if i % 2 else "truncated")
            for p in payloads
            for i, c in enumerate(i % 3 != 0 for i in range(len(p["sample_ids"])))
        ]
    )
    pair = (kinds == "junk") | clean
    assert row["auroc_junk"] == pytest.approx(roc_auc_score(clean[pair], scores[pair]))
    control = table.loc[("untrained", "all")]
    assert 0.2 < control["auroc"] < 0.8  # no shift: near chance
    assert row["spearman_untrained"] < 1.0 and row["mean_abs_change"] > 0
    assert np.isnan(control.get("spearman_untrained", np.nan))
    layer = table.loc[("warmed", "layer:1")]
    layer_scores = torch.sigmoid(
        torch.cat([p["quality_score"] for p in payloads])[:, 1].double()
    ).numpy()
    assert layer["auroc"] == pytest.approx(roc_auc_score(clean, layer_scores))
    assert table.loc[("warmed", "dataset:beta")]["n"] == 18


def test_quality_table_without_labels_or_control(tmp_path):
    warmed, _ = _router_files(tmp_path, "warmed", shift=1.0)
    table = quality_table(warmed)
    assert set(table["gate"]) == {"warmed"}
    assert not any(column.startswith("auroc") for column in table)


def test_planted_shares_against_the_hypergeometric_range(tmp_path):
    _, payloads = _router_files(tmp_path, "w", shift=0.0)
    labels = _labels(tmp_path, payloads)
    keys = [(p["dataset"], i) for p in payloads for i in p["sample_ids"]]
    clean_keys = [k for k in keys if int(k[1].split("_")[1]) % 3 != 0]
    planted_keys = [k for k in keys if int(k[1].split("_")[1]) % 3 == 0]

    def write(name, chosen):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"dataset": d, "id": i}) + "\n" for d, i in chosen))
        return path

    shares = planted_shares(
        {
            "clean": write("clean", clean_keys[:12]),
            "noisy": write("noisy", planted_keys[:12]),
            "mixed": write("mixed", clean_keys[:8] + planted_keys[:4]),
        },
        labels_path=labels,
        pool_keys=keys,
    ).set_index("selection")
    distribution = hypergeom(48, 16, 12)
    assert shares.loc["mixed", "random_low"] == distribution.ppf(0.025) / 12
    assert shares.loc["mixed", "random_high"] == distribution.ppf(0.975) / 12
    assert shares.loc["clean", "verdict"] == "less than random"
    assert shares.loc["noisy", "verdict"] == "more than random"
    assert shares.loc["mixed", "verdict"] == "as random"
    assert shares.loc["mixed", "planted_share"] == pytest.approx(4 / 12)
    assert shares.loc["noisy", "planted_junk"] + shares.loc["noisy", "planted_truncated"] == 12


def test_write_diagnostics_files(tmp_path):
    warmed, payloads = _router_files(tmp_path, "warmed", shift=2.0)
    untrained, _ = _router_files(tmp_path, "untrained", shift=0.0)
    labels = _labels(tmp_path, payloads)
    pool = write_pool(tmp_path, payloads)
    runs = []
    for rep, ids in ((1, ["alpha_0", "alpha_1"]), (2, ["alpha_1", "alpha_2"])):
        selection = tmp_path / f"sel{rep}.jsonl"
        selection.write_text("".join(json.dumps({"dataset": "alpha", "id": i}) + "\n" for i in ids))
        runs.append(SelectionRun(f"x/p0.1/r{rep}", "x/p0.1", 0.1, rep, str(selection)))
    written = write_diagnostics(
        warmed={"sigmoid": warmed},
        untrained=untrained,
        output_dir=tmp_path / "out",
        labels_path=labels,
        selections=runs,
        pool_files=pool,
    )
    markdown = Path(written["markdown"]).read_text()
    assert "## Loss type `sigmoid`" in markdown and "auroc_junk" in markdown
    assert "| untrained | all |" in markdown
    assert Path(written["sigmoid"]["png"]).stat().st_size > 0
    assert "x/p0.1/r2" in Path(written["planted_share"]).read_text()
    # the replicates' overlap: {0, 1} and {1, 2} share one of three
    overlap = pd.read_csv(written["selection_overlap"])
    assert overlap.to_dict("records") == [
        {
            "percentage": 0.1,
            "a": "x/p0.1",
            "b": "x/p0.1",
            "jaccard": pytest.approx(1 / 3),
            "jaccard_min": pytest.approx(1 / 3),
            "jaccard_max": pytest.approx(1 / 3),
            "n_pairs": 1,
        }
    ]
    assert "## Overlap of the selections" in markdown


def test_selection_overlap_pairs_replicates(tmp_path):
    from selectmoe.evidence.overlap import jaccard, selection_overlap, stability

    def write(name, ids):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"dataset": "d", "id": str(i)}) + "\n" for i in ids))
        return str(path)

    runs = [
        SelectionRun("a/r1", "a", 0.5, 1, write("a1", range(0, 4))),
        SelectionRun("a/r2", "a", 0.5, 2, write("a2", range(2, 6))),
        SelectionRun("b/r1", "b", 0.5, 1, write("b1", range(0, 4))),
        SelectionRun("b/r2", "b", 0.5, 2, write("b2", range(4, 8))),
        SelectionRun("once", "once", 0.5, None, write("once", range(0, 2))),
        SelectionRun("other", "other", 0.1, 1, write("other", range(0, 1))),
    ]
    table = selection_overlap(runs).set_index(["a", "b"])
    # a with b: r1 with r1 (identical), r2 with r2 ({2..5} and {4..7}: 2 of 6)
    assert table.loc[("a", "b"), "jaccard"] == pytest.approx((1 + 2 / 6) / 2)
    assert table.loc[("a", "b"), "n_pairs"] == 2
    # a row that selects once is paired with every replicate of the other
    assert table.loc[("a", "once"), "n_pairs"] == 2
    assert table.loc[("a", "once"), "jaccard_max"] == pytest.approx(2 / 4)
    # a row with itself: its stability; none for a row that selects once; other sizes apart
    assert table.loc[("a", "a"), "jaccard"] == pytest.approx(2 / 6)
    assert ("once", "once") not in table.index and ("a", "other") not in table.index
    assert stability([runs[0].path, runs[1].path, runs[0].path]) == pytest.approx(
        (2 / 6 + 1 + 2 / 6) / 3
    )
    assert jaccard([], []) != jaccard([], [])  # NaN: no examples to compare


def test_auroc_intervals_are_paired_bootstraps():
    from selectmoe.evidence.diagnostics import auroc_intervals

    rng = np.random.default_rng(0)
    clean = rng.random(300) < 0.7
    good = clean + rng.normal(scale=0.8, size=300)
    weak = good + rng.normal(scale=3.0, size=300)
    out = auroc_intervals({"good": good, "weak": weak}, clean, reference="weak", n_resamples=300)
    assert out["good"]["auroc"] == pytest.approx(roc_auc_score(clean, good), abs=1e-12)
    assert out["good"]["low"] < out["good"]["auroc"] < out["good"]["high"]
    assert out["good"]["diff"] == pytest.approx(out["good"]["auroc"] - out["weak"]["auroc"])
    assert out["good"]["diff_low"] > 0  # the better score, supported by a paired interval
    assert out["weak"]["diff"] == out["weak"]["diff_low"] == out["weak"]["diff_high"] == 0.0
    with pytest.raises(ValueError, match="reference 'none' is not one of the scores"):
        auroc_intervals({"good": good}, clean, reference="none")


def test_method_score_table_ranks_each_method_by_its_own_score(tmp_path):
    from selectmoe.evidence.diagnostics import method_score_table
    from selectmoe.selection.methods import method_definitions

    paths, payloads = _router_files(tmp_path, "warmed", shift=0.0)
    losses = []
    for path, payload in zip(paths, payloads, strict=True):
        n = len(payload["sample_ids"])
        planted = torch.arange(n) % 3 == 0
        payload["answer_loss"] = torch.linspace(1.0, 2.0, n) + 3.0 * planted
        payload["answer_loss_alone"] = payload["answer_loss"] + 0.5
        losses.append(payload["answer_loss"])
        save(payload, path)
    labels = _labels(tmp_path, payloads)
    pool = write_pool(tmp_path, payloads)
    # the scores each method's selection wrote (the diagnostics read them, not recompute them)
    scores = {}
    for method in ("selectmoe", "perplexity"):
        out = tmp_path / method
        run_selection(
            paths,
            pool,
            output_jsonl=out / "selected_data.jsonl",
            output_json=out / "selection.json",
            output_scores=out / "scores.npz",
            method=method,
            selection_percentage=0.25,
            clustering_params={"auto_k": False, "k": 3, "n_init": 1},
            seed=0,
        )
        scores[method] = out / "scores.npz"
    table = method_score_table(
        paths,
        scores=scores,
        definitions=method_definitions(),
        labels_path=labels,
        n_resamples=200,
    )
    assert table["method"].tolist() == ["selectmoe_seed", "selectmoe", "perplexity"]
    clean = np.concatenate([np.arange(n) % 3 != 0 for n in (30, 18)])
    loss = torch.cat(losses).numpy()
    row = table.set_index("method").loc["perplexity"]
    assert row["auroc"] == pytest.approx(roc_auc_score(clean, -loss), abs=1e-12) == 1.0
    assert row["score"] == "lm_loss()"
    seed_auroc = table.set_index("method").loc["selectmoe_seed", "auroc"]
    assert row["diff"] == pytest.approx(1.0 - seed_auroc)
    assert row["auroc_junk"] == 1.0 and row["auroc_truncated"] == 1.0
    assert np.isfinite(row["spearman_length"])
    # selectmoe's row is its own score (the blend its selection wrote), not the answer loss
    blended = load_selection_scores(scores["selectmoe"])["score"]
    selectmoe = table.set_index("method").loc["selectmoe"]
    assert selectmoe["score"].startswith("rank_blend(")
    assert selectmoe["auroc"] == pytest.approx(roc_auc_score(clean, blended), abs=1e-12)


def test_method_score_table_flags_inverted_kinds_and_length_blind_scores(tmp_path):
    """A score that ranks one planted kind above clean examples is flagged ``inverted`` for that
    kind; one that follows the answer's length is ``length_blind``; without labels the table
    still says what the score measures (length, the untrained model's same score)."""
    from selectmoe.evidence.diagnostics import method_score_table
    from selectmoe.selection.methods import method_definitions

    paths, payloads = _router_files(tmp_path, "warmed", shift=0.0)
    reference_paths, reference_payloads = _router_files(tmp_path, "untrained", shift=0.0)
    for path, payload, ref_path, ref in zip(
        paths, payloads, reference_paths, reference_payloads, strict=True
    ):
        n = len(payload["sample_ids"])
        position = torch.arange(n)
        planted = position % 3 == 0
        junk = planted & (position % 2 == 1)
        # junk gets the lowest loss (ranked first: inverted), truncated the highest
        loss = torch.linspace(1.0, 2.0, n) + 3.0 * (planted & ~junk) - 0.9 * junk
        payload["answer_loss"] = loss
        payload["n_answer_tokens"] = (100 * loss).to(torch.int64)  # length follows the loss
        save(payload, path)
        ref["answer_loss"] = loss + 0.1 * torch.cos(position.float())  # nearly the same ranks
        ref["n_answer_tokens"] = payload["n_answer_tokens"]
        save(ref, ref_path)
    labels = _labels(tmp_path, payloads)
    pool = write_pool(tmp_path, payloads)
    out = tmp_path / "perplexity"
    run_selection(
        paths,
        pool,
        output_jsonl=out / "selected_data.jsonl",
        output_json=out / "selection.json",
        output_scores=out / "scores.npz",
        method="perplexity",
        selection_percentage=0.25,
        seed=0,
    )
    common = {"scores": {"perplexity": out / "scores.npz"}, "definitions": method_definitions()}
    labelled = method_score_table(
        paths, **common, labels_path=labels, untrained=reference_paths, n_resamples=50
    ).set_index("method")
    row = labelled.loc["perplexity"]
    assert row["auroc_junk"] < 0.5 < row["auroc_truncated"]
    assert row["inverted"] == "junk"
    assert row["length_blind"] and row["spearman_answer_length"] < -0.5
    assert row["spearman_untrained"] > 0.9
    unlabelled = method_score_table(paths, **common, untrained=reference_paths).set_index("method")
    assert "auroc" not in unlabelled and "inverted" not in unlabelled
    assert unlabelled.loc["perplexity", "length_blind"]
    assert unlabelled.loc["perplexity", "spearman_untrained"] == pytest.approx(
        row["spearman_untrained"]
    )
    # the gate's untrained twin is the untrained gate (these router data have the same gates)
    assert unlabelled.loc["selectmoe_seed", "spearman_untrained"] == pytest.approx(1.0)
    written = write_diagnostics(
        warmed={"sigmoid": paths},
        untrained=reference_paths,
        output_dir=tmp_path / "diag",
        method_scores={"sigmoid": common["scores"]},
    )
    markdown = Path(written["markdown"]).read_text()
    assert "`perplexity` (sigmoid): mostly measures length" in markdown
    assert "inverted" not in markdown.split("Blind spots:")[1]  # no labels, no such claim
