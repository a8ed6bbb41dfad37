"""``export --val DATA``: the validation data checked before any export work, and, once the graphs are built, the
original model and every graph of the run scored on it in one loop (``evaluate``), with a figure beside the report.

The graphs of one run: the floating-point graph (fp32; the file itself when nothing lowers its precision), the fp16
graph with ``--fp16``, the INT8 graph with ``--int8``. Where the run writes only the last of them, the earlier ones
are scored from memory (named ``... (not written)``): the table shows what each precision step costs in the user's
metric. With ``--fp16 --int8`` the fp16 row is the fp16 pass on the fp32 graph (what ``--fp16`` alone converts).

    data = val_data(Path("digits/"), labels, task)       # InputError (one line, exit 2) before any export work
    entry = validate_export(data, original, written, Path("classifier.onnx"), float_graph=fp32_graph, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError, InputError, one_line
from .data import DetectData, ValData, check_data_path, read_data
from .evaluate import ValReport, evaluate

NOT_WRITTEN = " (not written)"
#: Images per run: PyTorch runs them at once; a static-batch graph runs its own batch size (``OnnxPredictor``).
VAL_BATCH = 16


def figure_path(output: Path) -> Path:
    """``model.onnx`` (or ``model.engine``) -> ``model.val.png``, beside the report."""
    return Path(output).with_suffix(".val.png")


def check_val_path(data: Path) -> None:
    """The part of the DATA check that needs no model (run before the model is loaded): it exists and is a folder
    or a dataset yaml."""
    try:
        check_data_path(Path(data), "val")
    except InputError as e:
        raise _as_val(e) from None


def _as_val(e: InputError) -> InputError:
    """The data reader's words name its own option, `data`; here the folder came from `val`."""
    text = str(e).replace("`data`", "`val`")
    return InputError(text if "`val`" in text else f"{text} (`val`)")


def val_data(data: Path, labels: Sequence[str] | None, task: str | None,
             outputs: Sequence[Any] | None = None) -> ValData:
    """The validation set at ``data`` for a model with class names ``labels`` and ``task`` (``classify``, ``detect``
    or None), checked completely before any export work: layout, labels and their range, class names against the
    model's, every image file readable as an image (its header; pixels are decoded while the models run), and the
    COCO evaluator installed for a detection set; with ``outputs`` (the model's, on any input), that the model's
    output can be scored on it (class scores, or the detect layout). Bad DATA is ``InputError`` (one line, exit 2);
    a missing evaluator ``RuntimeMissing`` (exit 3)."""
    from .metrics import check_evaluator, metric_for

    check_val_path(data)
    try:
        dataset = read_data(Path(data), list(labels) if labels else None, task)
    except InputError as e:
        raise _as_val(e) from None
    for image in dataset.images:
        _check_image(image)
    if isinstance(dataset, DetectData):
        check_evaluator()
    if outputs is not None:
        try:
            metric_for(dataset).check([o.detach().cpu().numpy() if hasattr(o, "detach") else o for o in outputs])
        except InputError as e:
            raise _as_val(e) from None
    return dataset


def _check_image(path: str) -> None:
    try:
        from PIL import Image
    except ImportError:  # the runtime reads with OpenCV then: decoding is checked while the models run
        return
    try:
        with Image.open(path) as opened:
            opened.size  # noqa: B018 (the header is parsed on open: a non-image raises here)
    except Exception as e:  # Pillow raises many types for broken files (UnidentifiedImageError, OSError, ...)
        raise InputError(f"cannot read image {path} ({one_line(e)}); fix or remove the file (`val`)") from None


def model_classes(metadata: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
    """Class names and task of a model from its checkpoint metadata (the entries the written graph will carry);
    a model family's own come from its adapter (``adapters.ModelAdapter.classes``)."""
    labels = metadata.get("labels")
    task = metadata.get("task")
    return ([str(x) for x in labels] if isinstance(labels, list | tuple) and labels else None,
            str(task) if task in ("classify", "detect") else None)


@dataclass
class ExportValidation:
    """The report's ``val`` entry: the table (``report``), the figure written beside the report, notes."""

    report: ValReport
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(), "plot": self.plot, "notes": list(self.notes)}

    def line(self) -> str:
        """``top-1 0.9944 (original); fp32 +0.00 pt, int8 -0.28 pt on 360 images``."""
        from .evaluate import METRIC_TITLES

        results = self.report.results
        reference = next((r for r in results if r.reference), results[0])
        changes = ", ".join(f"{r.precision} {100 * r.change:+.2f} pt" for r in results if r.change is not None)
        return (f"{METRIC_TITLES[reference.metric]} {reference.value:.4f} (original)"
                + (f"; {changes}" if changes else "") + f" on {self.report.images} images")


def _with_meta(graph: Any, written: Any, precision: str) -> Any:
    """A copy of ``graph`` carrying ``written``'s metadata (preprocessing, labels, task) with its own precision."""
    import onnx

    from blocks_export.runtime.infer import META

    out = onnx.ModelProto()
    out.CopyFrom(graph)
    del out.metadata_props[:]
    for p in written.metadata_props:
        out.metadata_props.add(key=p.key, value=precision if p.key == META + "precision" else p.value)
    return out


def graphs_of_run(written: Any, written_path: Path, *, float_graph: Any = None, fp16_target: Any = None) -> list[
        tuple[str, Any]]:
    """(name, ModelProto) of every graph of the run, fp32 first: ``float_graph`` (the graph before the fp16 / INT8
    passes; None or ``written`` itself when they did not run), the fp16 pass on it when ``fp16_target`` is given
    (``--fp16 --int8``: a ``targets.Target``), and the written graph."""
    graphs: list[tuple[str, Any]] = []
    stem = Path(written_path).stem
    if float_graph is not None and float_graph is not written:
        graphs.append((f"{stem} fp32{NOT_WRITTEN}", _with_meta(float_graph, written, "fp32")))
        if fp16_target is not None:
            from ..fp16 import to_fp16

            half = to_fp16(float_graph, keep_io_types=True, target=fp16_target)
            graphs.append((f"{stem} fp16{NOT_WRITTEN}", _with_meta(half, written, "fp16")))
    graphs.append((Path(written_path).name, written))
    return graphs


def validate_export(data: ValData, original: Any, graphs: Sequence[tuple[str, Any]], *, batch: int = VAL_BATCH,
                    progress: Callable[[int, int], None] | None = None, figure: Path | None = None,
                    sensitivity: dict[str, list[dict[str, Any]]] | None = None,
                    write: Callable[[Path, bytes], None] | None = None) -> ExportValidation:
    """Score ``original`` (the PyTorch model, the reference) and ``graphs`` ((name, ModelProto or path), as
    ``graphs_of_run`` lists them) on ``data``; the figure (metric per graph, and the ``sensitivity`` rows per block
    when given) goes to ``figure`` through ``write(path, png)`` (the run's output unit), or a note says why not.

    A graph onnxruntime cannot load on CPU (a TensorRT plugin node) is left out with a note."""
    from .predict import OnnxPredictor, Predictor, TorchPredictor

    notes: list[str] = []
    predictors: list[Predictor] = []
    for name, graph in graphs:
        try:
            predictors.append(OnnxPredictor(graph, name=name))
        except ExportError as e:
            notes.append(f"{name} not validated: {e}")
    if not predictors:
        raise InputError("`val`: no graph of this run runs on onnxruntime CPU "
                         f"({notes[0] if notes else 'none written'}); validate it where it runs")
    first = predictors[0]
    predictors.insert(0, TorchPredictor(original, first.prep, labels=first.labels, task=first.task))
    report = evaluate(data, predictors, batch=batch, progress=progress)
    result = ExportValidation(report, notes=notes)
    if figure is not None:
        from ..errors import RuntimeMissing
        from .plot import export_figure

        try:
            png = export_figure(report, sensitivity or {})
        except RuntimeMissing as e:
            result.notes.append(f"no figure: {e}")
        else:
            if write is None:
                from ..io import atomic_write_bytes

                atomic_write_bytes(Path(figure), png, True)
            else:
                write(Path(figure), png)
            result.plot = str(figure)
    return result


def sensitivity_rows(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per-block rows of the report's precision steps, keyed by the step (``int8``, ``fp16``, ...): every list of
    rows with a ``block`` and a numeric error (``rel_l2`` or ``error``) under a step's ``sensitivity`` or
    ``fallback`` key. Rows say whether the block was kept in higher precision (``fallback`` or ``kept``); each
    carries the step's ``budget`` when it has one."""
    found: dict[str, list[dict[str, Any]]] = {}
    for step, entry in document.items():
        if not isinstance(entry, dict):
            continue
        for key in ("sensitivity", "fallback"):
            rows = entry.get(key)
            if isinstance(rows, list) and rows and all(isinstance(r, dict) and "block" in r for r in rows):
                usable = [r for r in rows if isinstance(r.get("rel_l2", r.get("error")), int | float)]
                budget = entry.get("budget")
                if usable:
                    found.setdefault(step, [{**r, "budget": budget} if isinstance(budget, int | float) else r
                                            for r in usable])
    return found


__all__ = ["NOT_WRITTEN", "VAL_BATCH", "ExportValidation", "check_val_path", "figure_path", "graphs_of_run", "model_classes",
           "sensitivity_rows", "val_data", "validate_export"]
