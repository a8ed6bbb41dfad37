"""Target profiles: one word picks everything that depends on the deployment runtime.

=============  ==========  =====  ===============  =========  =============================  ========
target         TensorRT    opset  DeformConv       LayerNorm  fp16                           max opset
=============  ==========  =====  ===============  =========  =============================  ========
``jetpack5``   8.5.2       16     portable         decompose  builder flag (weak typing)     17
``jetpack6.0`` 8.6.2       17     plugin           op         builder flag (weak typing)     17
``jetpack6``   10.3        19     std              op         strongly typed, fp16 ONNX      20
``trt10``      10.1+       19     std              op         strongly typed, fp16 ONNX      20
``trt11``      11.x        19     std              op         fp16 ONNX only (no FP16 flag)  25
``ort``        --          19     std / portable   op         fp16 ONNX                      --
=============  ==========  =====  ===============  =========  =============================  ========

JetPack 5.1.x ships TensorRT 8.5.2, JetPack 6.0 ships 8.6.2 and JetPack 6.1/6.2 ship 10.3
(``../shared/reference/README.md``); TensorRT 11.x does not support JetPack (TensorRT 11.3/11.4 migration guide,
https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x.html), so Jetsons stay on
10.x and ``trt11`` is a desktop target. Why each cell:

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
- fp16: 8.x has no strongly typed networks, so fp16 there is ``BuilderFlag.FP16``. 10.x builds strongly typed
  from the mixed-precision fp16 ONNX (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, 10.0+). 11.x removes
  ``BuilderFlag.FP16`` and weak typing altogether: precision lives in the ONNX graph (TensorRT 10.x -> 11.x
  migration guide, "Strongly Typed Networks Are Now Required").
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

DEFAULT_TARGET = "ort"

# onnxruntime 1.25.0 is the first release with a DeformConv CPU kernel (DESIGN.md, "Target profiles").
ORT_MIN_STD_DEFORM_CONV = (1, 25)


@dataclass(frozen=True)
class Target:
    """Everything that depends on where the model runs."""

    name: str
    description: str
    trt_version: str | None  # TensorRT release line the target stands for; None for onnxruntime
    opset: int  # export opset
    deform_conv: str  # "std" | "portable" | "plugin"
    layernorm: str  # "op" | "decompose"
    fp16: str  # "builder_flag" | "strongly_typed" | "graph"
    is_tensorrt: bool
    max_opset: int = 0  # newest default-domain opset the runtime parses; 0: no TensorRT limit
    parser_table: str = ""  # key of the operator table in ``trt_ops`` ("8.5", "8.6", "10.3", "10", "11")
    exporter: str = "dynamo"  # "dynamo" | "torchscript": the exporter that can write ``opset``

    @property
    def trt_major(self) -> int | None:
        """Major TensorRT version, or None for onnxruntime."""
        return int(self.trt_version.split(".")[0]) if self.trt_version else None


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
        Target("jetpack5", "JetPack 5.1.x, TensorRT 8.5.2", "8.5.2", 16, "portable", "decompose",
               "builder_flag", True, 17, "8.5", "torchscript"),
        Target("jetpack6.0", "JetPack 6.0, TensorRT 8.6.2", "8.6.2", 17, "plugin", "op",
               "builder_flag", True, 17, "8.6", "torchscript"),
        Target("jetpack6", "JetPack 6.1/6.2, TensorRT 10.3", "10.3", 19, "std", "op",
               "strongly_typed", True, 20, "10.3"),
        Target("trt10", "TensorRT 10.x desktop (10.1 or newer)", "10.1", 19, "std", "op",
               "strongly_typed", True, 20, "10"),
        Target("trt11", "TensorRT 11.x desktop", "11.0", 19, "std", "op", "graph", True, 25, "11"),
        Target("ort", f"onnxruntime (DeformConv lowering {ort_dc!r} for the onnxruntime installed here)", None,
               19 if ort_dc == "std" else 18, ort_dc, "op", "graph", False, 0, ""),
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


__all__ = ["DEFAULT_TARGET", "TARGETS", "Target", "get_target", "ort_deform_conv"]
