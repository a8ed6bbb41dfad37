"""Target profiles: one word picks everything that depends on the deployment runtime.

=============  ===============  =====  ===============  =========  =============================  ========
target         TensorRT         opset  DeformConv       LayerNorm  fp16                           max opset
=============  ===============  =====  ===============  =========  =============================  ========
``jetpack5``   8.5.2            16     portable         decompose  builder flag (weak typing)     17
``jetpack6.0`` 8.6.2            17     plugin           op         builder flag (weak typing)     17
``jetpack6``   10.3             19     std              op         strongly typed, fp16 ONNX      20
``jetpack7``   10.13+ / 11.4+   19     std              op         strongly typed, fp16 ONNX      20
``trt10``      10.1+            19     std              op         strongly typed, fp16 ONNX      20
``trt11``      11.x             19     std              op         fp16 ONNX only (no FP16 flag)  25
``ort``        --               19     std / portable   op         fp16 ONNX                      --
=============  ===============  =====  ===============  =========  =============================  ========

Each TensorRT target names its parser table (``trt_ops.PARSERS``, keyed by ``TrtVersion``): the opset ceiling,
the operators, the plugins and their precision rules all come from there, so a new target is one row here and,
for a new release line, one ``ParserTable`` there.

JetPack 5.1.x ships TensorRT 8.5.2, JetPack 6.0 ships 8.6.2 and JetPack 6.1/6.2 ship 10.3
(``../shared/reference/README.md``). JetPack 7.x (CUDA 13, Ubuntu 24.04, Python 3.12) ships TensorRT 10.13
(JetPack 7.0/7.1: github.com/dusty-nv/jetson-containers pull 1263 "cudnn 9.12 and tensorrt 10.13 for cuda 13";
github.com/roboflow/inference pull 1935, "JetPack 7.1 (L4T R38.4.0) ... TensorRT 10.13"), and TensorRT 11.4.1
"supports NVIDIA JetPack 7.2.2 or later on Jetson AGX Orin and Jetson Thor" (TensorRT 11.4.1 migration guide,
https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-jetson.html; 11.0-11.3
support no JetPack, and JetPack 6.x stays on 10.x). So ``jetpack7``'s graph must parse and build on 10.13 and on
11.4: it is checked against the 10.13 table (11.x only adds operators) and built strongly typed, which both
lines do (10.12 deprecates ``BuilderFlag.FP16``, 11.x removes it). ``trt11`` is the desktop 11.x target.
Why each cell:

- opset: TensorRT 8.5 and 8.6 parse "operators up to Opset 17", 10.0 "opset 9 to opset 20"
  (``onnx-tensorrt/operators-{8.5,8.6,10.1}-GA.md``); 11.x accepts up to 25 (TensorRT ONNX opset guide,
  https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html). The export opset is 19
  where ONNX ``DeformConv`` (opset 19) is wanted; 17 for JetPack 6.0; 16 for JetPack 5, because
  ``LayerNormalization`` exists from opset 17 only, so at 16 the exporter writes LayerNorm as standard ops
  (GridSample, used by the portable DeformConv, exists from 16).
- exporter: torch 2.14's dynamo exporter writes opset 18 and up, which the 8.x parsers do not read; onnx's
  version converter has no down adapter for Split-18 or Pad-18, so ``opset_down.convert_opset`` rewrites
  those first (``opset_down``) and ``--exporter dynamo`` reaches 17 and 16. The 8.x targets keep the
  TorchScript exporter, which writes 17 and 16 directly, as their default.
- DeformConv: the parser imports ONNX ``DeformConv`` from TensorRT 10.1 (onnx-tensorrt ``docs/Changelog.md``,
  "TensorRT 10.1 GA Release"); the built-in ``ModulatedDeformConv2d`` plugin ships from TensorRT 8.6
  (github.com/NVIDIA/TensorRT/tree/release/8.6/plugin/modulatedDeformConvPlugin), not in 8.5, so JetPack 5
  gets the standard-op decomposition. onnxruntime has a ``DeformConv`` CPU kernel from 1.25.0 (1.24.1 lacks
  it): ``ort`` uses ``std`` when the onnxruntime installed here is >= 1.25, else ``portable``.
- LayerNorm: ``LayerNormalization`` is "N" in the 8.5 table and "Y" from 8.6; for JetPack 5 it is written as
  ReduceMean/Sub/Pow/Sqrt/Div (export opset 16).
- INT8: explicit Q/DQ everywhere; 8.x reads it with ``BuilderFlag.INT8``, 10.x and 11.x strongly typed.
- fp16: 8.x has no strongly typed networks, so fp16 there is ``BuilderFlag.FP16``. 10.x builds strongly typed
  from the mixed-precision fp16 ONNX (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, 10.0+). 11.x removes
  ``BuilderFlag.FP16`` and weak typing altogether: precision lives in the ONNX graph (TensorRT 10.x -> 11.x
  migration guide, "Strongly Typed Networks Are Now Required").
- onnxruntime on the device: ``ort_oldest`` is the oldest onnxruntime whose TensorRT EP is built against the
  target's TensorRT line (onnxruntime docs, TensorRT-ExecutionProvider.md "Requirements": 1.14 <-> 8.5,
  1.15-1.17 <-> 8.6, 1.18 and later <-> 10.x; 11.x from 1.27). Its CPU provider runs every node TensorRT does not
  take, so the graph must not crash it: see ``ORT_FP16_CRASH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from .trt_ops import PARSERS, ParserTable, TrtVersion

DEFAULT_TARGET = "ort"

# onnxruntime 1.25.0 is the first release with a DeformConv CPU kernel (DESIGN.md, "Target profiles").
ORT_MIN_STD_DEFORM_CONV = (1, 25)


@dataclass(frozen=True)
class OrtFp16Crash:
    """onnxruntime releases ``[first, fixed)`` whose CPU provider crashes creating a session for these ops in
    float16; the fp16 pass keeps them float32 for a target whose onnxruntime may be one of them."""

    first: tuple[int, int]
    fixed: tuple[int, int]
    ops: frozenset[str]


# onnxruntime 1.14.0 and 1.14.1 (PyPI x86_64 wheels, CPU provider) end in a segmentation fault at session
# creation on a float16 Relu, Elu, Selu, ThresholdedRelu, HardSigmoid or HardSwish node: one-node opset-16
# graphs, graph optimisation on or off; 1.13.1 and 1.15.1 run the same graphs (found by bisecting the JetPack 5
# fp16 graphs of the sample models node by node in a subprocess, tests/runtime/test_jetson_runtimes.py).
# runtime/infer.py refuses such a graph on those releases (its FP16_CRASH_OPS must equal ``ops``).
ORT_FP16_CRASH = OrtFp16Crash((1, 14), (1, 15), frozenset({
    "Elu", "HardSigmoid", "HardSwish", "Relu", "Selu", "ThresholdedRelu"}))


@dataclass(frozen=True)
class Target:
    """Everything that depends on where the model runs."""

    name: str
    description: str
    trt_version: str | None  # TensorRT release the target stands for, as shown to users; None for onnxruntime
    opset: int  # export opset
    deform_conv: str  # "std" | "portable" | "plugin"
    layernorm: str  # "op" | "decompose"
    fp16: str  # "builder_flag" | "strongly_typed" | "graph"
    parser: TrtVersion | None = None  # key of its table in ``trt_ops.PARSERS``; None: onnxruntime
    trt_majors: tuple[int, ...] = ()  # TensorRT major versions an engine for it may be built with
    exporter: str = "dynamo"  # "dynamo" | "torchscript": the exporter that can write ``opset``
    ort_oldest: tuple[int, int] | None = None  # oldest onnxruntime built for its TensorRT (module docstring)

    @property
    def is_tensorrt(self) -> bool:
        return self.parser is not None

    @property
    def table(self) -> ParserTable | None:
        """The parser table of its TensorRT line (None for onnxruntime)."""
        return PARSERS[self.parser] if self.parser is not None else None

    @property
    def parser_table(self) -> TrtVersion | None:
        return self.parser

    @property
    def max_opset(self) -> int:
        """Newest default-domain opset the runtime parses; 0: no TensorRT limit."""
        table = self.table
        return table.max_opset if table is not None else 0

    @property
    def trt_major(self) -> int | None:
        """Oldest TensorRT major version it is built with, or None for onnxruntime."""
        return self.trt_majors[0] if self.trt_majors else None

    def builds_with(self, major: int) -> bool:
        """Can an engine for this target be built with TensorRT ``major``.x?"""
        return not self.trt_majors or major in self.trt_majors

    def fp16_fp32_ops(self) -> frozenset[str]:
        """Op types its fp16 graph keeps float32 so that its onnxruntime does not crash (``ORT_FP16_CRASH``)."""
        ort = self.ort_oldest
        crash = ORT_FP16_CRASH
        return crash.ops if ort is not None and ort < crash.fixed else frozenset()


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def ort_deform_conv(ort_version: str | None = None) -> str:
    """``"std"`` when onnxruntime (installed, or ``ort_version``) has the DeformConv kernel, else ``"portable"``."""
    if ort_version is None:
        try:
            ort_version = metadata.version("onnxruntime")
        except metadata.PackageNotFoundError:
            ort_version = "0"
    return "std" if _version_tuple(ort_version)[:2] >= ORT_MIN_STD_DEFORM_CONV else "portable"


def _targets() -> dict[str, Target]:
    ort_dc = ort_deform_conv()
    rows = [
        Target("jetpack5", "JetPack 5.1.x, TensorRT 8.5.2", "8.5.2", 16, "portable", "decompose", "builder_flag",
               TrtVersion(8, 5), (8,), "torchscript", (1, 14)),
        Target("jetpack6.0", "JetPack 6.0, TensorRT 8.6.2", "8.6.2", 17, "plugin", "op", "builder_flag",
               TrtVersion(8, 6), (8,), "torchscript", (1, 15)),
        Target("jetpack6", "JetPack 6.1/6.2, TensorRT 10.3", "10.3", 19, "std", "op", "strongly_typed",
               TrtVersion(10, 3), (10,), "dynamo", (1, 18)),
        Target("jetpack7", "JetPack 7.x, TensorRT 10.13 (11.4 from JetPack 7.2.2)", "10.13", 19, "std", "op",
               "strongly_typed", TrtVersion(10, 13), (10, 11), "dynamo", (1, 18)),
        Target("trt10", "TensorRT 10.x desktop (10.1 or newer)", "10.1", 19, "std", "op", "strongly_typed",
               TrtVersion(10, 1), (10,), "dynamo", (1, 18)),
        Target("trt11", "TensorRT 11.x desktop", "11.0", 19, "std", "op", "graph", TrtVersion(11, 0), (11,),
               "dynamo", (1, 27)),
        Target("ort", f"onnxruntime (DeformConv lowering {ort_dc!r} for the onnxruntime installed here)", None,
               19 if ort_dc == "std" else 18, ort_dc, "op", "graph"),
    ]
    return {t.name: t for t in rows}


TARGETS: dict[str, Target] = _targets()


def get_target(name: str | None) -> Target:
    """The profile called ``name`` (``None``: the default, ``ort``); ``ValueError`` listing the known names."""
    key = DEFAULT_TARGET if name is None else name
    try:
        return TARGETS[key]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def tensorrt_targets(major: int | None = None) -> list[str]:
    """Names of the TensorRT targets (built with TensorRT ``major``.x when given)."""
    return [t.name for t in TARGETS.values() if t.is_tensorrt and (major is None or t.builds_with(major))]


__all__ = ["DEFAULT_TARGET", "ORT_FP16_CRASH", "OrtFp16Crash", "TARGETS", "Target", "TrtVersion", "get_target",
           "ort_deform_conv", "tensorrt_targets"]
