"""``ExportOptions``: every choice of one export run, explicit and frozen (no environment configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

DESTINATIONS = ("onnx", "trt")
EXPORTERS = ("dynamo", "torchscript")
DEFORM_CONV_CHOICES = ("auto", "std", "portable", "plugin")


@dataclass(frozen=True)
class ExportOptions:
    """Options of ``blocks-export MODEL``; see ``blocks-export --help`` for each one."""

    to: str = "onnx"
    output: Path | None = None
    imgsz: tuple[int, int] | None = None
    batch: int = 1
    channels: int | None = None  # None: found by running the model (``pipeline.channel_candidates``)
    dynamic: bool = False
    opset: int | None = None
    target: str | None = None
    deform_conv: str = "auto"
    fp16: bool = False
    fp16_io: bool = False
    exporter: str | None = None  # None: the target's exporter (``targets.Target.exporter``)
    simplify: bool = True
    verify: bool = True
    trust_pickle: bool = False
    arch: str | None = None
    arch_kwargs: Mapping[str, object] = field(default_factory=dict)  # keyword arguments of the ``arch`` callable
    force: bool = False
    quiet: bool = False
    json: bool = False
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    workspace_mb: int | None = None
    verify_with: tuple[str, ...] = ("onnxruntime",)  # runtimes that verify the graph (``export/runners.py``)
    int8: bool = False  # explicit-quantization INT8 (Q/DQ) graph, calibrated on the images in ``calib``
    calib: Path | None = None  # folder of calibration images (part of them is held out for verification)
    calib_count: int | None = None  # calibration images (None: ``calibration.DEFAULT_CALIB_COUNT``, at most 80 %)
    int8_budget: float | None = None  # worst output rel L2 vs the original (None: ``parity.RULES["int8"]``)
    # Points of top-1 / mAP the INT8 graph may lose against the original on labelled held-out images (replaces
    # ``int8_budget`` as the fallback's budget; ``int8.metric_budget``)
    int8_budget_metric: float | None = None
    rtol: float | None = None  # the user's own tolerance, elementwise (``runtime/parity.py``); None: the rules table
    atol: float | None = None
    images: Path | None = None  # a detector's box check runs on these pictures (None: synthetic; ``export/boxes.py``)
    val: Path | None = None  # labelled images: the original and every graph scored in top-1 / mAP (``val/step.py``)

    def __post_init__(self) -> None:
        from .runners import check_runtime_names

        object.__setattr__(self, "verify_with", check_runtime_names(self.verify_with))
        if self.to not in DESTINATIONS:
            raise UsageError(f"`to={self.to!r}`: expected one of {', '.join(DESTINATIONS)}")
        if self.exporter is not None and self.exporter not in EXPORTERS:
            raise UsageError(f"`exporter={self.exporter!r}`: expected one of {', '.join(EXPORTERS)}")
        if self.deform_conv not in DEFORM_CONV_CHOICES:
            raise UsageError(f"`deform_conv={self.deform_conv!r}`: expected one of {', '.join(DEFORM_CONV_CHOICES)}")
        if self.batch < 1:
            raise UsageError(f"`batch={self.batch}`: the batch size must be a positive integer")
        if self.channels is not None and self.channels < 1:
            raise UsageError(f"`channels={self.channels}`: the input channels must be a positive integer")
        if self.imgsz is not None and (len(self.imgsz) != 2 or min(self.imgsz) < 1):
            raise UsageError(f"`imgsz={self.imgsz}`: expected one or two positive integers (N or H,W)")
        if self.opset is not None:
            import onnx.defs

            newest = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx knows
            if not 7 <= self.opset <= newest:
                raise UsageError(f"`opset={self.opset}`: expected an ONNX opset between 7 and {newest} "
                                 f"(the newest onnx {onnx.__version__} knows)")
        if self.fp16_io and not self.fp16:
            raise UsageError("`fp16_io=True` needs `fp16=True` (fp16 inputs and outputs only exist in an fp16 graph)")
        self._check_int8()
        for name, tol in (("rtol", self.rtol), ("atol", self.atol)):
            if tol is not None and not tol >= 0:
                raise UsageError(f"`{name}={tol}`: a tolerance must be a number >= 0")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise UsageError(f"workspace_mb={self.workspace_mb}: must be a positive number of MiB")
        for flag, shape in (("`min_shape`", self.min_shape), ("`opt_shape`", self.opt_shape),
                            ("`max_shape`", self.max_shape)):
            if shape is not None and (not shape or min(shape) < 1):
                raise UsageError(f"{flag} {shape}: expected positive integers such as 1x3x640x640")
            if shape is not None and self.to != "trt":
                raise UsageError(f"{flag} sets a TensorRT engine profile and has no effect with `to={self.to}`; "
                                 "drop it or set `to=trt`")

    def _check_int8(self) -> None:
        if self.int8 and self.calib is None:
            raise UsageError("`int8=True` needs calibration images: give a folder of images like the deployment's "
                             "with `calib=DIR` (random data is not calibration)")
        if not self.int8 and (self.calib is not None or self.calib_count is not None or self.int8_budget is not None
                              or self.int8_budget_metric is not None):
            raise UsageError("`calib`, `calib_count`, `int8_budget` and `int8_budget_metric` go with `int8=True`; add "
                             "it or drop them")
        if self.calib_count is not None and self.calib_count < 1:
            raise UsageError(f"`calib_count={self.calib_count}`: must be a positive number of images")
        if self.int8_budget is not None and not self.int8_budget > 0:
            raise UsageError(f"`int8_budget={self.int8_budget}`: must be a positive relative L2 error, e.g. 0.05")
        if self.int8_budget_metric is not None and not 0 <= self.int8_budget_metric <= 100:
            raise UsageError(f"`int8_budget_metric={self.int8_budget_metric}`: must be the points of top-1 or mAP "
                             "the INT8 graph may lose, between 0 and 100, e.g. 0.5")
        if self.int8 and self.fp16_io:
            raise UsageError("`int8=True` with `fp16_io=True`: the INT8 graph keeps fp32 inputs and outputs; drop "
                             "`fp16_io=True`")
        if self.int8 and self.deform_conv == "plugin":
            raise UsageError("`int8=True` with `deform_conv=plugin`: calibration runs onnxruntime, which has no "
                             "kernel for the TensorRT plugin node; use `deform_conv=std` or `deform_conv=portable`")


def parse_imgsz(text: str) -> tuple[int, int]:
    """``"640"`` -> (640, 640); ``"480,640"`` -> (480, 640) (H, W)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]  # "640," is a typo, not 640
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"`imgsz={text!r}`: expected N or H,W with positive integers, e.g. 640 or 480,640") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UsageError(f"`imgsz={text!r}`: expected N or H,W with positive integers, e.g. 640 or 480,640")
    return values[0], values[1]


def parse_shape(flag: str, text: str) -> tuple[int, ...]:
    """``"1x3x640x640"`` (or comma-separated) -> (1, 3, 640, 640)."""
    parts = [p.strip() for p in text.replace(",", "x").split("x")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected positive integers such as 1x3x640x640") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: expected positive integers such as 1x3x640x640")
    return values
