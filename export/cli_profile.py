"""The per-block profile as the command line shows it, after an export (``--profile``) and for ``profile``: the
bar chart written beside the ONNX, the table's lines, the export's JSON report with the profile added. Writes the
chart file; the rest goes to stdout and stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cli_run import stderr_console
from .cli_words import shown


def profile_written(result: Any, quiet: bool) -> Any:
    """The per-block profile of the ONNX an export wrote (``--profile``), its bar chart beside it."""
    from .profile import chart_path, profile_onnx

    written = result.report.onnx or (str(result.output) if result.output is not None else None)
    if written is None or not str(written).endswith(".onnx"):
        return None
    if not quiet:
        stderr_console().print("[dim]profiling the written ONNX on onnxruntime CPU ...[/]")
    costs = profile_onnx(written)
    profile_chart(costs, chart_path(written))
    return costs


def with_profile(report_json: str, costs: Any) -> str:
    import json

    doc = json.loads(report_json)
    doc["profile"] = costs.as_dict()
    return json.dumps(doc, indent=2)


def profile_chart(costs: Any, path: Path) -> None:
    """Write the bar chart (sets ``costs.chart``), or say in a note how to get one."""
    from .profile import PLOT_HINT, write_chart

    costs.chart = write_chart(costs, path)
    if costs.chart is None:
        costs.notes.append(PLOT_HINT)


def print_profile(costs: Any, out: Any) -> None:

    for line in costs.lines():
        out.print(shown(line))
