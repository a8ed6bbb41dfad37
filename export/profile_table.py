"""The per-block cost table a profile gives: one ``Part`` row per block instance and one for the model outside
blocks, the ``Profile`` that holds them with the measured whole (as text lines, the JSON dict, and the ``gap``
between the parts and the whole), and its bar chart.

``profile`` (onnxruntime) and ``profile_trt`` (TensorRT) fill it; ``write_chart`` writes a PNG beside the model
(matplotlib, extra ``plot``) and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "blocks-export-profile/1"
OUTSIDE = "outside blocks"
#: How close the parts must come to the measured whole for a profile to be called consistent (the acceptance
#: test's rule; ``Profile.lines`` says when a profile is further off).
GAP_LIMIT = 0.10


@dataclass(frozen=True)
class Part:
    """One row: a block instance (``name`` its module path, ``kind`` its class) or ``OUTSIDE``."""

    name: str
    kind: str
    ms: float  # mean per run
    nodes: int  # kernels (onnxruntime) or layers (TensorRT) whose time it got

    def as_dict(self, whole_ms: float) -> dict[str, Any]:
        return {"name": self.name, "class": self.kind, "ms": round(self.ms, 4),
                "share": round(self.ms / whole_ms, 4) if whole_ms > 0 else None, "nodes": self.nodes}


@dataclass
class Profile:
    """Per-block cost of one graph on one runtime."""

    model: str
    runtime: str  # "onnxruntime 1.32.0 CPUExecutionProvider, 2 threads", "TensorRT 10.3.0"
    inputs: dict[str, list[int]]
    runs: int
    warmup: int
    whole_ms: float  # mean run time measured by the runtime
    parts: list[Part]  # block instances in graph order, then OUTSIDE
    notes: list[str] = field(default_factory=list)
    chart: str | None = None  # the bar chart's path, once written

    @property
    def parts_ms(self) -> float:
        return sum(p.ms for p in self.parts)

    @property
    def gap(self) -> float:
        """|parts - whole| / whole: the time no kernel accounts for (scheduling, copies between runs)."""
        return abs(self.parts_ms - self.whole_ms) / self.whole_ms if self.whole_ms > 0 else 0.0

    def block(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "runtime": self.runtime, "inputs": self.inputs,
                "runs": self.runs, "warmup": self.warmup, "whole_ms": round(self.whole_ms, 4),
                "parts_ms": round(self.parts_ms, 4), "gap": round(self.gap, 4),
                "parts": [p.as_dict(self.whole_ms) for p in self.parts], "notes": list(self.notes),
                "chart": self.chart}

    def lines(self) -> list[str]:
        """The table as text lines (what the CLI prints)."""
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.inputs.items())
        width = max([len(p.name) for p in self.parts] + [len(OUTSIDE), 5])
        kind_w = max([len(p.kind) for p in self.parts] + [5])
        out = [f"{self.model}: {self.runtime}; input {shapes}; mean of {self.runs} runs after {self.warmup} "
               f"warm-up",
               f"{'block':<{width}}  {'class':<{kind_w}}  {'ms':>9}  {'share':>6}  {'nodes':>5}"]
        for p in self.parts:
            share = f"{100 * p.ms / self.whole_ms:5.1f}%" if self.whole_ms > 0 else "    -"
            out.append(f"{p.name:<{width}}  {p.kind:<{kind_w}}  {p.ms:9.3f}  {share:>6}  {p.nodes:5d}")
        out.append(f"{'sum of the parts':<{width}}  {'':<{kind_w}}  {self.parts_ms:9.3f}  "
                   f"{100 * self.parts_ms / self.whole_ms if self.whole_ms > 0 else 0:5.1f}%")
        out.append(f"{'whole run':<{width}}  {'':<{kind_w}}  {self.whole_ms:9.3f}  100.0%")
        if self.gap > GAP_LIMIT:
            out.append(f"note: the parts are {100 * self.gap:.0f}% off the whole run (more than "
                       f"{100 * GAP_LIMIT:.0f}%): time between kernels, or a loaded machine; rerun with more runs")
        out += [f"note: {n}" for n in self.notes]
        if self.chart:
            out.append(f"bar chart: {self.chart}")
        return out


def profile_parts(times: Mapping[str, float], counts: Mapping[str, int], instances: Sequence[tuple[str, str]]
           ) -> list[Part]:
    """Block rows in the order of ``instances`` (every instance, 0 ms when none of its nodes ran), then the
    blocks found without metadata, then OUTSIDE."""
    kinds = dict(instances)
    order = [b for b, _ in instances] + [b for b in times if b not in kinds and b != OUTSIDE]
    rows = [Part(b, kinds.get(b, ""), times.get(b, 0.0), counts.get(b, 0)) for b in order]
    return rows + [Part(OUTSIDE, "", times.get(OUTSIDE, 0.0), counts.get(OUTSIDE, 0))]


# --- the bar chart ---------------------------------------------------------------------------------------------

PLOT_HINT = "bar chart skipped: matplotlib is not installed (pip install 'blocks-export[plot]')"


def chart_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the bar chart of ``model_path`` goes: beside it, ``<stem>.profile.png``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".profile.png")


def write_chart(profile: Profile, path: Path) -> str | None:
    """A horizontal bar chart of the parts (ms and share) at ``path``, written atomically; ``None`` (and nothing
    written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .io import atomic_path

    parts = list(profile.parts)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(parts) + 1.6))
    labels = [f"{p.name} ({p.kind})" if p.kind else p.name for p in parts]
    values = [p.ms for p in parts]
    ax.barh(range(len(parts)), values, color=["#4878a8" if p.name != OUTSIDE else "#999999" for p in parts])
    ax.set_yticks(range(len(parts)), labels)
    ax.invert_yaxis()
    for i, p in enumerate(parts):
        share = 100 * p.ms / profile.whole_ms if profile.whole_ms > 0 else 0.0
        ax.text(p.ms, i, f" {p.ms:.2f} ms, {share:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("ms per run (mean)")
    ax.set_title(f"{profile.model}: {profile.runtime}", fontsize=9)
    ax.set_xlim(0, max(values + [1e-9]) * 1.35)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return str(path)
