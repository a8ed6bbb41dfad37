"""A small PNG beside the report: the metric of the original model and of each graph as bars, with the change
against the original written on each. matplotlib is an optional extra (``blocks-export[plot]``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import RuntimeMissing
from ..io import atomic_write_bytes
from .evaluate import METRIC_TITLES, ValReport

PLOT_HINT = "pip install 'blocks-export[plot]'"


def check_matplotlib() -> None:
    """``RuntimeMissing`` (one line, exit 3) saying how to get matplotlib, before any work is done."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; only a PNG is written
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissing(f"the figure needs matplotlib: {PLOT_HINT}") from None
    return plt


def metric_figure(report: ValReport, path: Path, force: bool = True) -> Path:
    """Write the bar chart of ``report`` to ``path`` (PNG, atomically); returns ``path``."""
    plt = _pyplot()
    results = report.results
    metric = METRIC_TITLES[results[0].metric] if results else "metric"
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(results) + 1.5), 3.2), dpi=120)
    try:
        names = [f"{r.name}\n{r.precision}" for r in results]
        colours = ["#7f7f7f" if r.reference else "#1f77b4" for r in results]
        bars = ax.bar(range(len(results)), [r.value for r in results], color=colours)
        for bar, r in zip(bars, results, strict=True):
            note = f"{r.value:.4f}" + ("" if r.change is None else f"\n{100 * r.change:+.2f} pt")
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(results)), names, fontsize=7)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per precision ({report.images} images)", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue(), force)
    return Path(path)


__all__ = ["PLOT_HINT", "check_matplotlib", "metric_figure"]
