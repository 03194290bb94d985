"""The select job: a selection (:func:`selectmoe.selection.select.run_selection`) and its plots
(:func:`selectmoe.evidence.selection_plots.write_plots`), made from what the selection wrote.

Selection does not draw: its plots are evidence, and this workflow-level job puts the two
together for the select rule and the ``selectmoe select`` command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selectmoe.evidence.selection_plots import write_plots
from selectmoe.selection.select import run_selection

__all__ = ["run_select_job"]


def run_select_job(
    *args: Any,
    output_json: str | os.PathLike[str],
    output_scores: str | os.PathLike[str] | None = None,
    plot_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`~selectmoe.selection.select.run_selection` with the same arguments, then the plots
    into ``plot_dir`` (when given) from its ``selection.json`` and scores file.

    ``output_scores`` defaults to ``scores.npz`` beside ``output_json``. When the plots fail, the
    selection's files are removed too: a job leaves all its outputs or none.
    """
    scores = Path(output_scores or Path(output_json).with_name("scores.npz"))
    info = run_selection(*args, output_json=output_json, output_scores=scores, **kwargs)
    if plot_dir is not None:
        try:
            info["plots"] = write_plots(output_json, scores, plot_dir)
        except BaseException:
            for path in (kwargs.get("output_jsonl"), output_json, scores):
                if path is not None:
                    Path(path).unlink(missing_ok=True)
            raise
    return info
