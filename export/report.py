"""The export report: one typed value (``Report``) whose ``as_dict`` is the JSON document (stdout with
``--json``, and ``model.report.json`` beside the output), and its rendering as rich tables on the terminal.

``Report`` is the schema: every key of the JSON is a field here, written by one pipeline step. Keys of steps
that did not run are left out (``verification`` is ``null`` when parity was not checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import atomic_write_text

if TYPE_CHECKING:
    from blocks_export.blocks.rewrite import RewriteReport

    from .boxes import BoxAgreement
    from .check import CheckReport
    from .fallback import Fp16Fallback
    from .int8 import Int8Result
    from .trt.build import EngineResult
    from .val.step import ExportValidation
    from .verify import VerifyResult

FORMAT = "blocks-export-report/1"


@dataclass
class StepRecord:
    """One pipeline step as the report shows it."""

    name: str
    status: str = "ok"  # ok | skipped | failed | warning
    seconds: float = 0.0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "note": self.note}


@dataclass
class Report:
    """What one export produced, field by field in the order the steps fill it."""

    source: str
    output: str
    target: str
    deform_conv: str
    precision: str
    warnings: list[str] = field(default_factory=list)
    source_sha256: str | None = None
    export_shape: list[int] | None = None
    blocks: RewriteReport | None = None
    library_warnings: list[str] = field(default_factory=list)  # Python warnings of third-party libraries, captured
    opset: int | None = None
    exporter: str | None = None
    dynamic: dict[str, dict[str, dict[str, int | None]]] | None = None
    notes: list[str] = field(default_factory=list)
    verification: VerifyResult | None = None
    detections: BoxAgreement | None = None  # Ultralytics detectors: decoded-box agreement with PyTorch
    int8: Int8Result | None = None  # ``int8=True``: the INT8 graph vs the original on held-out images
    fp16: Fp16Fallback | None = None  # ``fp16=True`` whose fp16 graph failed: the blocks kept fp32 and why
    onnx: str | None = None
    check: CheckReport | None = None
    engine: EngineResult | None = None
    engine_parity: VerifyResult | None = None  # the engine against the reference, where it can run here
    val: ExportValidation | None = None  # ``val=DATA``: the original and every graph in the user's metric
    status: str = "?"
    exit_code: int | None = None
    steps: list[StepRecord] = field(default_factory=list)
    report: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (keys of steps that did not run are absent)."""
        d: dict[str, Any] = {"format": FORMAT, "source": self.source, "output": self.output, "target": self.target,
                             "deform_conv": self.deform_conv, "precision": self.precision,
                             "warnings": list(self.warnings), "library_warnings": list(self.library_warnings)}
        optional: dict[str, Any] = {
            "source_sha256": self.source_sha256, "export_shape": self.export_shape,
            "blocks": self.blocks.as_dict() if self.blocks is not None else None,
            "opset": self.opset, "exporter": self.exporter,
        }
        d.update({k: v for k, v in optional.items() if v is not None})
        if self.opset is not None:  # written by the export step, null for a static export
            d["dynamic"] = self.dynamic
            d["notes"] = list(self.notes)
        d["verification"] = self.verification.as_dict() if self.verification is not None else None
        if self.detections is not None:
            d["detections"] = self.detections.as_dict()
        if self.int8 is not None:
            d["int8"] = self.int8.as_dict()
        if self.fp16 is not None:
            d["fp16"] = self.fp16.as_dict()
        if self.val is not None:
            d["val"] = self.val.as_dict()
        if self.onnx is not None:
            d["onnx"] = self.onnx
        if self.check is not None:
            d["check"] = {**self.check.as_dict(), "lines": self.check.lines()}
        if self.engine is not None:
            d["engine"] = self.engine.as_dict()
        if self.engine_parity is not None:
            d["engine_parity"] = self.engine_parity.rows()
        d.update({"status": self.status, "exit_code": self.exit_code, "steps": [s.as_dict() for s in self.steps],
                  "report": self.report})
        return d


@dataclass
class InspectReport:
    """What ``inspect`` found: the model, the plan, the blocks and hazards (``lines``: the terminal form)."""

    source: str
    kind: str
    loaded_as: str
    source_sha256: str
    target: str
    deform_conv: str
    opset: int
    warnings: list[str] = field(default_factory=list)
    ops: list[str] | None = None  # an ONNX input's op types
    export_shape: list[int] | None = None
    probed_with: str | None = None  # how the shape the model was run at was chosen
    blocks: RewriteReport | None = None
    lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "kind": self.kind, "loaded_as": self.loaded_as,
                             "source_sha256": self.source_sha256, "target": self.target,
                             "deform_conv": self.deform_conv, "opset": self.opset, "warnings": list(self.warnings)}
        if self.ops is not None:
            d["ops"] = list(self.ops)
        if self.export_shape is not None:
            d["export_shape"] = list(self.export_shape)
            d["probed_with"] = self.probed_with
        if self.blocks is not None:
            d["blocks"] = self.blocks.as_dict()
        d["lines"] = list(self.lines)
        return d


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ("inf", "nan"), tuples lists, paths strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(document: Report | InspectReport | dict[str, Any]) -> str:
    """``document`` as JSON: a ``Report``, an ``InspectReport``, or the plain document of ``check``."""
    return json.dumps(_clean(document.as_dict() if isinstance(document, Report | InspectReport) else document),
                      indent=2, sort_keys=False)


def write_report(report: Report, path: Path, force: bool = True) -> None:
    atomic_write_text(path, to_json(report) + "\n", force)


def _fmt(v: Any) -> str:
    return f"{v:.3e}" if isinstance(v, float) else str(v)


def render(report: Report, console: Any) -> None:
    """Block rewrites, parity per shape and output, and the verdict, on ``console`` (rich)."""
    from rich.markup import escape
    from rich.table import Table

    if report.blocks is not None and report.blocks.replaced:
        blocks = Table(title="blocks replaced", show_edge=False)
        for col in ("module", "class", "twin", "rel_l2"):
            blocks.add_column(col)
        for r in report.blocks.replaced:
            blocks.add_row(r.name or "(model)", r.original_class, r.twin_class, _fmt(r.rel_l2))
        console.print(blocks)
    for left in report.blocks.left_alone if report.blocks is not None else ():  # exported as they are: say why
        console.print(f"[yellow]{escape(left.line())}[/]")

    ver = report.verification
    if ver is not None:
        reference = ver.tolerance.reference if ver.tolerance is not None else "fp32"
        parity = Table(title=f"parity vs the original model ({ver.precision} graph, {reference} reference, CPU)",
                       show_edge=False)
        for col in ("runtime", "shape", "output", "result", "max abs", "max rel", "rel L2", "fp32 floor",
                    "cosine"):
            parity.add_column(col, no_wrap=True)
        errors: list[str] = []
        for run in ver.runs:
            shape, rt = "x".join(map(str, run.shape)), run.runtime
            for err in run.comparison.errors:  # one line each, under the table: never wrapped in a cell
                errors.append(f"{rt} {shape}: {' '.join(str(err).split())}")
                parity.add_row(rt, shape, "", "[red]FAILED[/]", f"error {len(errors)} (below)", "", "", "", "")
            for o in run.comparison.outputs:
                res = "[green]PASSED[/]" if o.passed else "[red]FAILED[/]"
                floor = "" if o.floor is None else _fmt(o.floor)
                parity.add_row(rt, shape, o.name, res, _fmt(o.max_abs), _fmt(o.max_rel), _fmt(o.rel_l2), floor,
                               f"{o.cosine:.9f}")
        console.print(parity)
        for i, err in enumerate(errors, 1):
            console.print(f"[red]error {i}:[/] {escape(err)}")
        if ver.tolerance is not None:
            console.print(f"[dim]verification: {escape(ver.tolerance.text())}[/]")
        for n in ver.notes:
            if n not in report.warnings:  # a warning is shown once, below
                console.print(f"[dim]verification: {escape(n)}[/]")
        if ver.divergence is not None:
            console.print(escape(ver.divergence.line()))
    for line in report.fp16.lines() if report.fp16 is not None else ():
        console.print(f"[yellow]{escape(line)}[/]")
    if report.int8 is not None:
        render_int8(report.int8, console)
    engine = report.engine_parity
    if engine is not None:
        for row in engine.runs:
            verdict = "[green]PASSED[/]" if row.comparison else "[red]FAILED[/]"
            worst = _fmt(row.comparison.worst_rel_l2) if row.comparison.outputs else "-"
            console.print(f"engine parity vs {engine.reference} ({row.comparison.precision}, "
                          f"{'x'.join(map(str, row.shape))}): {verdict} worst rel L2 {worst}")
            for err in row.comparison.errors:
                console.print(f"[red]  {err}[/]")
    if report.val is not None:
        render_val(report.val, console)
    if report.check is not None and not report.check:
        for line in report.check.lines():
            console.print(f"[red]{line}[/]")
    for n in report.notes:
        console.print(f"[dim]note: {n}[/]")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    colour = {"PASSED": "green", "UNVERIFIED": "yellow"}.get(report.status, "red")
    console.print(f"[bold {colour}]{report.status}[/] {report.onnx or report.output} (report: {report.report})")


def render_int8(result: Int8Result, console: Any) -> None:
    """The per-block sensitivity table and the INT8 verdict line."""
    from rich.table import Table

    metric = result.metric
    budget = (f"{metric['budget_points']:g} pt of {metric['name']}" if metric is not None
              else f"rel L2 {result.budget:.1e}")
    table = Table(title=f"INT8 sensitivity: one block quantized at a time (budget {budget})", show_edge=False)
    lost = [f"{metric['name']} lost (pt)"] if metric is not None else []
    for col in ("block", "nodes", "rel L2", *lost, "top-1 agreement", "kept floating point"):
        table.add_column(col)
    for s in result.sensitivity:
        agree = f"{s.top1_agreement:.4f}" if s.top1_agreement is not None else ""
        agree += " (not evidence)" if agree and not result.top1_is_evidence else ""
        cost = [f"{s.loss_points:.2f}" if s.loss_points is not None else ""] if metric is not None else []
        table.add_row(s.block, str(s.nodes), _fmt(s.rel_l2), *cost, agree, s.why if s.fallback else "no")
    console.print(table)
    if result.naive_rel_l2 is not None:
        console.print(f"[dim]int8: naive (everything quantized) rel_l2={_fmt(result.naive_rel_l2)}[/]")
    if metric is not None and "naive" in metric:
        console.print(f"[dim]int8: {metric['name']}: original {metric['reference']:.4f}, naive {metric['naive']:.4f} "
                      f"({metric['naive_loss_points']:.2f} pt lost)[/]")
    name = metric["name"] if metric is not None else ""
    for step in metric.get("steps", []) if metric is not None else []:
        kept = ", ".join(step["kept"]) or "none"
        console.print(f"int8: floating point: {kept} -> {name} {step['metric']:.4f} "
                      f"({step['loss_points']:.2f} pt lost), rel_l2={_fmt(step['rel_l2'])}")
    for n in result.notes:
        console.print(f"[dim]int8: {n}[/]")
    console.print(result.line())


def render_val(val: ExportValidation, console: Any) -> None:
    """The table of ``val=DATA`` (``val.render``), its notes and the figure beside the report."""
    from rich.markup import escape

    from .val import render

    render(val.report, console)
    for n in val.notes:
        console.print(f"[dim]val: {escape(n)}[/]")
    if val.plot is not None:
        console.print(f"figure: {escape(val.plot)}")
