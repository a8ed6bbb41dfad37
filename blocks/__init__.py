"""The seed's plug-in blocks: faithful reference modules, their export twins, and the conversions between them.

Each block file holds one block whole (reference, twin, ``to_export``, recogniser, ``SPEC``); ``BLOCKS``
(``table.py``) lists the specs, and ``CONVERSIONS`` (reference class -> conversion), ``RECOGNIZERS`` and
``onnx_translations(opset)`` (the ONNX translations of the twins' own ops, for the dynamo exporter) are read from
it. ``to_export(module)`` converts one reference block into its twin. Model-level rewriting takes the tables as
parameters, so callers (and tests) can pass their own.
"""

from __future__ import annotations

from ._init import randomize_
from ._match import NotConvertible
from ._spec import BlockSpec, Conversion, Example, Recognizer
from .acmix import ACmix, ACmixExport
from .context_block import CB2d, CB2dExport, ContextBlock
from .coord_attn import CA, CoordAtt, CoordAttExport, h_sigmoid, h_swish
from .dcn import DCN, DCNExport
from .rewrite import RewriteReport, inspect_model, rewrite_model
from .spd import Conv, SpaceToDepth, SpaceToDepthExport, SPDConv, SPDConvExport, space_to_depth
from .table import (
    BLOCKS,
    CONVERSIONS,
    FP32_OPS,
    INT8_FLOAT_INPUTS,
    INT8_FLOAT_OPS,
    RECOGNIZERS,
    channel_factor,
    onnx_translations,
    to_export,
    traced_as_ops,
)

__all__ = [
    "ACmix", "ACmixExport", "BLOCKS", "BlockSpec", "CA", "CB2d", "CB2dExport", "CONVERSIONS", "ContextBlock", "Conv",
    "Conversion", "CoordAtt", "CoordAttExport", "DCN", "DCNExport", "Example", "FP32_OPS", "INT8_FLOAT_INPUTS",
    "INT8_FLOAT_OPS", "NotConvertible", "RECOGNIZERS", "Recognizer", "RewriteReport", "SPDConv", "SPDConvExport",
    "SpaceToDepth", "SpaceToDepthExport", "channel_factor", "h_sigmoid", "h_swish", "inspect_model",
    "onnx_translations", "randomize_", "rewrite_model", "space_to_depth", "to_export", "traced_as_ops",
]
