"""What TensorRT's ONNX parser reads, per release line, as ordered data: ``PARSERS[TrtVersion(8, 6)]``.

A ``ParserTable`` holds one release line's operator set, its opset range and the built-in plugins (with their
precision rule) that the parser's fallback importer finds. Rules elsewhere compare versions
(``table.version >= TrtVersion(10, 3)``), never strings; a new release line is one more ``ParserTable`` here,
and a new target one more row in ``targets.py`` naming it.

Operator sets, from onnx-tensorrt ``docs/operators.md`` (github.com/onnx/onnx-tensorrt, Apache-2.0), stored in
``../shared/reference/onnx-tensorrt/``, and onnx-tensorrt ``docs/Changelog.md``:

- 8.5: ``operators-8.5-GA.md`` (TensorRT 8.5, JetPack 5.1.x), operators up to opset 17;
- 8.6: ``operators-8.6-GA.md`` (JetPack 6.0): 8.5 plus GroupNormalization, IsInf, LayerNormalization;
- 10.1 (any 10.x from 10.1) and 10.3 (JetPack 6.1/6.2): ``operators-10.1-GA.md`` (10.0 parses opsets 9-20).
  10.2 and 10.3 add no operator (Changelog: 10.2 "minor changes to op importers for GRU and Squeeze", 10.3
  "tensor axes inputs for Slice"), so 10.3 is the 10.1 table with tensor Slice axes;
- 10.13 (JetPack 7.x, whose ONNX must also parse on TensorRT 11.4 from JetPack 7.2.2): the 10.1 table plus
  what 10.4-10.13 added (Changelog: 10.4 BlackmanWindow/HammingWindow/HannWindow and tensor Pad axes, 10.5
  real-valued STFT, 10.7 dynamic Squeeze/Unsqueeze axes). Its opset ceiling is kept at 10.0's 20: the 10.13
  operators.md is not stored here (10.15's reads "opset 9 to opset 24"), so 20 is the documented lower bound;
- 11.0: the 10.x table plus what later 10.x releases and 11.0 added (Changelog: 10.14 Attention, 10.15
  RMSNormalization, RotaryEmbedding, TensorScatter; TensorRT 11.0 release notes,
  https://github.com/NVIDIA/TensorRT/releases/tag/v11.0: "Added support for Swish operator"); opsets up to 25
  (TensorRT ONNX opset guide, https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html).

An operator absent from a table (or marked "N" there) has no importer; the parser then tries a plugin named
like the op (``docs/faq.md``, "Custom Layer Support"), which exists only for the plugins a table lists.

The ``ModulatedDeformConv2d`` plugin (github.com/NVIDIA/TensorRT, ``plugin/modulatedDeformConvPlugin/``; the
parser also lowers ONNX ``DeformConv`` to it from 10.1): absent in 8.5; version 1 (IPluginV2DynamicExt) from
8.6; version 2 (IPluginV3) from 10.11 (TensorRT 10.11 release notes: "Migrated ... version 1 of
modulatedDeformConvPlugin, to version 2"; version 1 is deprecated, still shipped). Its input types, from
``supportsFormatCombination``: release/8.6 ``modulatedDeformConvPlugin.cpp`` accepts ``inOut[0]`` of
``kFLOAT`` only and every other input and the output of ``inOut[0]``'s type (fp32 only); release/10.0,
release/10.3, release/10.13 and release/11.1 (``modulatedDeformConvPlugin.cpp`` and
``modulatedDeformConvPluginLegacy.cpp``) accept ``kFLOAT`` or ``kHALF`` for ``inOut[0]``, the rest again of
``inOut[0]``'s type (fp32 or fp16, all inputs one type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class TrtVersion(NamedTuple):
    """A TensorRT release line, ordered: ``TrtVersion(10, 3) >= (10, 1)``."""

    major: int
    minor: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``"10.3.0.26"`` -> ``TrtVersion(10, 3)``; ``ValueError`` for text without a major number."""
        parts = [int("".join(ch for ch in p if ch.isdigit()) or -1) for p in text.split(".")[:2]]
        if not parts or parts[0] < 0:
            raise ValueError(f"not a TensorRT version: {text!r}")
        return cls(parts[0], max(parts[1], 0) if len(parts) > 1 else 0)


@dataclass(frozen=True)
class PluginRule:
    """A built-in plugin of one release line: the versions shipped and the element types its inputs may have."""

    versions: frozenset[str]
    first_input_types: frozenset[int]  # TensorProto types accepted for input 0 (x)
    same_type: bool  # every other input must have input 0's type
    source: str

    def type_names(self) -> str:
        return " or ".join(sorted(_TYPE_NAMES.get(t, str(t)) for t in self.first_input_types))


@dataclass(frozen=True)
class ParserTable:
    """What one TensorRT release line's ONNX parser reads."""

    version: TrtVersion
    ops: frozenset[str]
    max_opset: int
    source: str
    plugins: Mapping[str, PluginRule] = field(default_factory=dict)

    def plugin(self, op_type: str) -> PluginRule | None:
        """The built-in plugin ``op_type`` in this line, or None when it ships none."""
        rule = self.plugins.get(op_type)
        return rule if rule is not None and rule.versions else None


PLUGIN_OP = "ModulatedDeformConv2d"

# ``Y`` rows of operators-8.5-GA.md.
SUPPORTED_8_5: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum",
    "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements",
    "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN",
    "LRN", "LSTM", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool",
    "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "PRelu", "Pad", "ParametricSoftplus", "Pow",
    "QuantizeLinear", "RNN", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
    "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})
# operators-8.6-GA.md: three rows turn from N to Y (LayerNormalization, IsInf) or are new (GroupNormalization).
SUPPORTED_8_6: frozenset[str] = SUPPORTED_8_5 | {"GroupNormalization", "IsInf", "LayerNormalization"}
# operators-10.1-GA.md: 8.6 plus these five.
SUPPORTED_10_1: frozenset[str] = SUPPORTED_8_6 | {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"}
# docs/Changelog.md 10.4 and 10.5.
SUPPORTED_10_13: frozenset[str] = SUPPORTED_10_1 | {"BlackmanWindow", "HammingWindow", "HannWindow", "STFT"}
# docs/Changelog.md 10.14-10.15, and TensorRT 11.0 release notes (Swish).
SUPPORTED_11: frozenset[str] = SUPPORTED_10_13 | {
    "Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter", "Swish",
}

# onnx.TensorProto element types (onnx/onnx.proto: FLOAT = 1, FLOAT16 = 10), as plain ints so that the target
# table imports without onnx (the CLI's help lists the targets).
FLOAT, FLOAT16 = 1, 10
_TYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16"}
_FP32 = frozenset({FLOAT})
_FP32_FP16 = frozenset({FLOAT, FLOAT16})
_MDC_SRC = "github.com/NVIDIA/TensorRT {}, plugin/modulatedDeformConvPlugin/{}, supportsFormatCombination"
_MDC_NONE = PluginRule(frozenset(), frozenset(), True, "not in TensorRT 8.5 (the plugin ships from 8.6)")
_MDC_8_6 = PluginRule(frozenset({"1"}), _FP32, True, _MDC_SRC.format("release/8.6", "modulatedDeformConvPlugin.cpp"))
_MDC_10 = PluginRule(frozenset({"1"}), _FP32_FP16, True,
                     _MDC_SRC.format("release/10.0, release/10.3", "modulatedDeformConvPlugin.cpp"))
_MDC_10_11 = PluginRule(frozenset({"1", "2"}), _FP32_FP16, True,
                        _MDC_SRC.format("release/10.13, release/11.1",
                                        "modulatedDeformConvPlugin.cpp and modulatedDeformConvPluginLegacy.cpp"))

PARSERS: dict[TrtVersion, ParserTable] = {t.version: t for t in (
    ParserTable(TrtVersion(8, 5), SUPPORTED_8_5, 17, "onnx-tensorrt 8.5-GA docs/operators.md",
                {PLUGIN_OP: _MDC_NONE}),
    ParserTable(TrtVersion(8, 6), SUPPORTED_8_6, 17, "onnx-tensorrt 8.6-GA docs/operators.md",
                {PLUGIN_OP: _MDC_8_6}),
    ParserTable(TrtVersion(10, 1), SUPPORTED_10_1, 20, "onnx-tensorrt 10.1-GA docs/operators.md",
                {PLUGIN_OP: _MDC_10}),
    ParserTable(TrtVersion(10, 3), SUPPORTED_10_1, 20, "onnx-tensorrt 10.1-GA docs/operators.md + Changelog 10.2-10.3",
                {PLUGIN_OP: _MDC_10}),
    ParserTable(TrtVersion(10, 13), SUPPORTED_10_13, 20,
                "onnx-tensorrt 10.1-GA docs/operators.md + Changelog 10.2-10.13", {PLUGIN_OP: _MDC_10_11}),
    ParserTable(TrtVersion(11, 0), SUPPORTED_11, 25,
                "onnx-tensorrt 10.1-GA docs/operators.md + Changelog 10.2-10.15 + TensorRT 11.0 release notes",
                {PLUGIN_OP: _MDC_10_11}),
)}


def parser(version: TrtVersion) -> ParserTable:
    """The table of release line ``version``; ``KeyError`` naming the known lines."""
    try:
        return PARSERS[version]
    except KeyError:
        raise KeyError(f"no parser table for TensorRT {version}; known: "
                       f"{', '.join(str(v) for v in sorted(PARSERS))}") from None


def first_with(op_type: str, after: TrtVersion) -> ParserTable | None:
    """The oldest release line newer than ``after`` whose parser imports ``op_type``."""
    return next((PARSERS[v] for v in sorted(PARSERS) if v > after and op_type in PARSERS[v].ops), None)


class _View(Mapping[TrtVersion, object]):
    """A live view of ``PARSERS`` (a line added to ``PARSERS`` shows up here too)."""

    def __init__(self, get: Callable[[ParserTable], object]) -> None:
        self._get = get

    def __getitem__(self, key: TrtVersion) -> object:
        return self._get(PARSERS[key])

    def __iter__(self) -> Iterator[TrtVersion]:
        return iter(PARSERS)

    def __len__(self) -> int:
        return len(PARSERS)


# Views by release line: operator sets, sources, and the plugin versions each line ships.
SUPPORTED: Mapping[TrtVersion, frozenset[str]] = _View(lambda t: t.ops)  # type: ignore[assignment]
SOURCES: Mapping[TrtVersion, str] = _View(lambda t: t.source)  # type: ignore[assignment]
BUILTIN_PLUGINS: dict[str, Mapping[TrtVersion | None, frozenset[str]]] = {
    PLUGIN_OP: _View(lambda t: rule.versions if (rule := t.plugins.get(PLUGIN_OP)) else frozenset()),  # type: ignore[dict-item]
}

__all__ = ["BUILTIN_PLUGINS", "PARSERS", "PLUGIN_OP", "ParserTable", "PluginRule", "SOURCES", "SUPPORTED",
           "TrtVersion", "first_with", "parser"]
