"""Selections as typed values (selectmoe.workflow.sweep)."""

from __future__ import annotations

import re

import pytest

from selectmoe.workflow.sweep import Selection, selection_pattern, sweep_selections

SECTION = {
    "methods": ["selectmoe", "random", "oracle"],
    "loss_types": ["sigmoid", "mse"],
    "percentages": [0.05, 0.1],
    "full_baseline": True,
}


def test_the_sweep_in_order_and_its_paths():
    paths = [selection.path for selection in sweep_selections(SECTION)]
    assert paths == [
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
    assert sweep_selections({**SECTION, "full_baseline": False})[-1].path == "oracle/p0.1"


def test_a_path_gives_its_selection_back():
    for selection in sweep_selections(SECTION):
        assert Selection.from_path(selection.path) == selection
    assert Selection.from_path("ifd/mse/p0.25") == Selection("ifd", "mse", 0.25)
    assert Selection.from_path("full") == Selection("full", None, 1.0)
    for bad in ("selectmoe", "selectmoe/mse/0.1", "a/b/c/p0.1"):
        with pytest.raises(ValueError, match="is not a selection path"):
            Selection.from_path(bad)


def test_the_wildcard_pattern_matches_exactly_the_sweep():
    pattern = re.compile(selection_pattern(["selectmoe", "ifd"], ["sigmoid", "mse"]))
    for selection in sweep_selections(SECTION):
        assert pattern.fullmatch(selection.path), selection.path
    for other in ("quality_topk/mse/p0.1", "selectmoe/hinge/p0.1", "random/mse/p0.1", "fullx"):
        assert not pattern.fullmatch(other), other
