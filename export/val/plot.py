"""A small PNG beside the report: the metric of the original model and of each graph as bars, with the change
against the original written on each; for an export, the per-block sensitivity of its precision steps beside it.
matplotlib is an optional extra (``blocks-export[plot]``)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
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
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(results) + 1.5), 3.2), dpi=120)
    try:
        _metric_bars(ax, report)
        fig.tight_layout()
        png = _png(fig)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), png, force)
    return Path(path)


def export_figure(report: ValReport, sensitivity: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """The PNG of an export's validation: the metric per graph, and beside it, per precision step that measured
    its blocks (``sensitivity``: rows with ``block``, ``rel_l2`` or ``error``, and ``fallback`` or ``kept``), each
    block's error when it alone is lowered, kept blocks marked."""
    plt = _pyplot()
    steps = [(step, rows) for step, rows in sensitivity.items() if rows]
    widths = [max(4.0, 1.3 * len(report.results) + 1.5)] + [5.0] * len(steps)
    tall = max([3.2] + [0.28 * len(rows) + 1.4 for _step, rows in steps])
    fig, axes = plt.subplots(1, 1 + len(steps), figsize=(sum(widths), tall), dpi=120,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    try:
        _metric_bars(axes[0][0], report)
        for ax, (step, rows) in zip(axes[0][1:], steps, strict=True):
            _sensitivity_bars(ax, step, rows)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def _ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _metric_bars(ax: Any, report: ValReport) -> None:
    results = report.results
    metric = METRIC_TITLES[results[0].metric] if results else "metric"
    names = [f"{r.name.replace(' (', chr(10) + '(')}\n{r.precision}" for r in results]  # "(not written)" below
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


def _sensitivity_bars(ax: Any, step: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Horizontal bars, one per block (log scale): its error alone; red where it was kept in higher precision."""
    errors = [max(float(r.get("rel_l2", r.get("error")) or 0.0), 1e-12) for r in rows]
    kept = [bool(r.get("fallback", r.get("kept"))) for r in rows]
    ys = range(len(rows))
    ax.barh(ys, errors, color=["#d62728" if k else "#2ca02c" for k in kept])
    ax.set_yticks(ys, [str(r["block"]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(_ticker().NullFormatter())  # minor labels overlap on a short log axis
    budget = rows[0].get("budget")
    if isinstance(budget, int | float) and budget > 0:
        ax.axvline(float(budget), color="#444444", linestyle="--", linewidth=1)
        ax.annotate("budget", (float(budget), 0), xycoords=("data", "axes fraction"), fontsize=6, rotation=90,
                    va="bottom", ha="right")
    ax.set_xlabel("error with this block alone lowered (rel L2)", fontsize=7)
    ax.set_title(f"{step}: per-block sensitivity (red: kept in higher precision)", fontsize=8)


__all__ = ["PLOT_HINT", "check_matplotlib", "export_figure", "metric_figure"]
