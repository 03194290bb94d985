"""Figures without pyplot: a bare matplotlib Figure on the Agg canvas (no display, no global
state) and an atomic write. Every figure the package draws goes through these two helpers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selectmoe.io import atomic_path, atomic_write_text

__all__ = ["layer_colors", "new_figure", "save_figure", "write_csv"]


def new_figure(width: float = 6.4, height: float = 4.0, *, constrained: bool = True) -> Any:
    """A ``width`` x ``height`` inch Figure on the Agg canvas (constrained layout by default)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> None:
    """Write ``figure`` to ``path`` atomically, in the format of its suffix (PNG by default)."""
    # the temporary file has no meaningful suffix, so the format is passed explicitly
    file_format = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=file_format, dpi=dpi)


def write_csv(frame: Any, path: str | os.PathLike[str]) -> None:
    """A pandas frame as CSV (no index, ``\\n`` line ends), atomically."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def layer_colors(n_layers: int) -> list[Any]:
    """One colour per layer from viridis, first to last."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n_layers - 1)) for i in range(n_layers)]
