"""Operator support of TensorRT's ONNX parser per release line, as data.

Derived from onnx-tensorrt ``docs/operators.md`` (github.com/onnx/onnx-tensorrt, Apache-2.0), stored in
``../shared/reference/onnx-tensorrt/``:

- ``"8.5"``: ``operators-8.5-GA.md`` (TensorRT 8.5, JetPack 5.1.x), operators up to opset 17;
- ``"8.6"``: ``operators-8.6-GA.md`` (JetPack 6.0): 8.5 plus GroupNormalization, IsInf, LayerNormalization;
- ``"10.3"`` and ``"10"``: ``operators-10.1-GA.md`` (10.0 parses opsets 9-20). 10.2 and 10.3 add no operator
  (onnx-tensorrt ``docs/Changelog.md``: 10.2 "minor changes to op importers for GRU and Squeeze", 10.3 "tensor
  axes inputs for Slice"), so JetPack 6.1/6.2's 10.3 is the 10.1 table with tensor Slice axes. ``"10"`` (any
  10.x from 10.1) is the 10.1 table: a graph that passes it parses on every later 10.x;
- ``"11"``: the 10.x table plus what later 10.x releases and 11.0 added (``docs/Changelog.md``: 10.4
  BlackmanWindow/HammingWindow/HannWindow, 10.5 real-valued STFT, 10.14 Attention, 10.15 RMSNormalization,
  RotaryEmbedding, TensorScatter; TensorRT 11.0 release notes, https://github.com/NVIDIA/TensorRT/releases/tag/v11.0:
  "Added support for Swish operator").

An operator absent from a table (or marked "N" there) has no importer; the parser then tries a plugin named
like the op (``docs/faq.md``, "Custom Layer Support"), which exists only for the plugin ops listed in
``BUILTIN_PLUGINS``.
"""

from __future__ import annotations

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
# docs/Changelog.md 10.4-10.15, and TensorRT 11.0 release notes (Swish).
SUPPORTED_11: frozenset[str] = SUPPORTED_10_1 | {
    "BlackmanWindow", "HammingWindow", "HannWindow", "STFT", "Attention", "RMSNormalization", "RotaryEmbedding",
    "TensorScatter", "Swish",
}

SUPPORTED: dict[str, frozenset[str]] = {
    "8.5": SUPPORTED_8_5, "8.6": SUPPORTED_8_6, "10.3": SUPPORTED_10_1, "10": SUPPORTED_10_1, "11": SUPPORTED_11,
}

# Where each table comes from (for messages and reports).
SOURCES: dict[str, str] = {
    "8.5": "onnx-tensorrt 8.5-GA docs/operators.md",
    "8.6": "onnx-tensorrt 8.6-GA docs/operators.md",
    "10.3": "onnx-tensorrt 10.1-GA docs/operators.md + Changelog 10.2-10.3",
    "10": "onnx-tensorrt 10.1-GA docs/operators.md",
    "11": "onnx-tensorrt 10.1-GA docs/operators.md + Changelog 10.4-10.15 + TensorRT 11.0 release notes",
}

# Plugins in libnvinfer_plugin that the parser's fallback importer finds by op_type, with the first release line
# that ships them and the plugin versions each line has. ModulatedDeformConv2d: version 1 (IPluginV2DynamicExt)
# from TensorRT 8.6 (github.com/NVIDIA/TensorRT/tree/release/8.6/plugin/modulatedDeformConvPlugin; 8.5 does not
# ship it), version 2 (IPluginV3) from 10.11 (TensorRT 10.11 release notes: "Migrated ... version 1 of
# modulatedDeformConvPlugin, to version 2"; version 1 is deprecated, still shipped).
BUILTIN_PLUGINS: dict[str, dict[str, frozenset[str]]] = {
    "ModulatedDeformConv2d": {
        "8.5": frozenset(), "8.6": frozenset({"1"}), "10.3": frozenset({"1"}), "10": frozenset({"1"}),
        "11": frozenset({"1", "2"}),
    },
}
