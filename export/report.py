"""The export report: a JSON document (stdout with ``--json``, and ``model.report.json`` beside the output)
and its rendering as rich tables on the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .io import atomic_write_text


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


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=False)


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, to_json(report) + "\n")


def _fmt(v: Any) -> str:
    return f"{v:.3e}" if isinstance(v, float) else str(v)


def render(report: dict[str, Any], console: Any) -> None:
    """Block rewrites, parity per shape and output, and the verdict, on ``console`` (rich)."""
    from rich.table import Table

    replaced = (report.get("blocks") or {}).get("replaced") or []
    if replaced and isinstance(replaced[0], dict):
        blocks = Table(title="blocks replaced", show_edge=False)
        for col in ("module", "class", "twin", "rel_l2"):
            blocks.add_column(col)
        for r in replaced:
            blocks.add_row(r.get("name") or "(model)", r.get("original_class", ""), r.get("twin_class", ""),
                           _fmt(r.get("rel_l2", "")))
        console.print(blocks)

    ver = report.get("verification")
    if ver:
        parity = Table(title=f"parity vs the original model ({ver['precision']}, CPU)", show_edge=False)
        for col in ("runtime", "shape", "output", "result", "max abs", "max rel", "rel L2", "cosine"):
            parity.add_column(col)
        for run in ver["runs"]:
            shape, rt = "x".join(map(str, run["shape"])), run.get("runtime", "onnxruntime")
            for err in run["errors"]:
                parity.add_row(rt, shape, "", "[red]FAILED[/]", err, "", "", "")
            for o in run["outputs"]:
                res = "[green]PASSED[/]" if o["passed"] else "[red]FAILED[/]"
                parity.add_row(rt, shape, o["name"], res, _fmt(o["max_abs"]), _fmt(o["max_rel"]), _fmt(o["rel_l2"]),
                               f"{o['cosine']:.9f}" if isinstance(o["cosine"], float) else str(o["cosine"]))
        console.print(parity)
        for n in ver.get("notes", []) or []:
            console.print(f"[dim]verification: {n}[/]")
        div = ver.get("first_diverging_block")
        if div:
            console.print(divergence_line(div))
    check = report.get("check")
    if check and not check.get("passed", True):
        for line in check.get("lines", []) or []:
            console.print(f"[red]{line}[/]")
    for n in report.get("notes", []):
        console.print(f"[dim]note: {n}[/]")
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    status = report.get("status", "?")
    colour = {"PASSED": "green", "UNVERIFIED": "yellow"}.get(status, "red")
    console.print(f"[bold {colour}]{status}[/] {report.get('onnx') or report.get('output')} "
                  f"(report: {report.get('report')})")


def divergence_line(div: dict[str, Any]) -> str:
    if not div.get("block"):
        return f"first diverging block: none found ({div.get('why', '')})"
    inner = f", inside it {div['inner']} ({div['inner_class']})" if div.get("inner") else ""
    at = "x".join(map(str, div["shape"]))
    if div.get("error"):
        return f"first diverging block: {div['block']} ({div['class']}){inner}: {div['error']} ({at})"
    return (f"first diverging block: {div['block']} ({div['class']}){inner}: rel_l2={_fmt(div['rel_l2'])} "
            f"max_abs={_fmt(div['max_abs'])} at {at}")
