"""ONNX export of ``torchvision::deform_conv2d``: one symbolic per exporter, three lowerings, one option.

``lowering`` picks what the op becomes (``deform_conv_lowerings`` has the graphs):

- ``"std"``: ONNX ``DeformConv`` (opset >= 19; onnxruntime >= 1.25, TensorRT >= 10.1);
- ``"portable"``: standard operators only (opset >= 16 for GridSample; JetPack 5's TensorRT 8.5 parses opsets
  up to 17, ../shared/reference/onnx-tensorrt/operators-8.5-GA.md), for runtimes without ``DeformConv``;
- ``"plugin"``: a ``ModulatedDeformConv2d`` node for TensorRT's built-in plugin (opset >= 13).

Dynamo exporter::

    torch.onnx.export(model, args, dynamo=True, opset_version=opset,
                      custom_translation_table=dynamo_translation_table(lowering, opset))

TorchScript exporter::

    with torchscript_symbolic(lowering, opset):
        torch.onnx.export(model, args, f, dynamo=False, opset_version=opset)

``check_lowering`` raises one ``ValueError`` line for a lowering the opset cannot express, before any export.

The dynamo exporter builds at opset >= 18 and converts down with ONNX's version converter: ``std`` and
``portable`` graphs convert; a ``plugin`` graph needs ``opset_down.convert_opset`` (the converter has
no schema for the plugin node in the default domain) or the TorchScript exporter, which emits opset 17 directly
(TensorRT 8.5 and 8.6 parse opsets up to 17: ../shared/reference/onnx-tensorrt/operators-8.5-GA.md, 8.6-GA.md).
The plugin node's default domain fails ``onnx.checker`` by design; ``plugin_trt_domain`` gives the checkable
``trt.plugins`` copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx

from ..plugins.deform_conv_contract import (
    ONNX_DEFORM_CONV_MIN_OPSET,
    PLUGIN_OP_TYPE,
    DeformConvParams,
)
from ..plugins.plugin_node import plugin_trt_domain
from .deform_conv_lowerings import emit_plugin, emit_portable, emit_std

LOWERINGS = ("std", "portable", "plugin")
MIN_OPSET = {"std": ONNX_DEFORM_CONV_MIN_OPSET, "portable": 16, "plugin": 13}
ATEN_OP = "torchvision::deform_conv2d"

__all__ = ["ATEN_OP", "LOWERINGS", "MIN_OPSET", "check_lowering", "dynamo_translation_table",
           "plugin_trt_domain", "torchscript_symbolic"]


def check_lowering(lowering: str, opset: int) -> None:
    """``ValueError`` (one line) unless ``lowering`` is known and expressible at ``opset``."""
    if lowering not in LOWERINGS:
        raise ValueError(f"DeformConv lowering {lowering!r} is unknown; choose one of {', '.join(LOWERINGS)}")
    if opset < MIN_OPSET[lowering]:
        hint = " (ONNX DeformConv exists from opset 19); use lowering 'portable' or 'plugin'" \
            if lowering == "std" else ""
        raise ValueError(f"DeformConv lowering {lowering!r} needs opset >= {MIN_OPSET[lowering]}, "
                         f"got opset {opset}{hint}")


def _lower(e: Any, lowering: str, x: Any, weight: Any, offset: Any, mask: Any, bias: Any,
           params: DeformConvParams, weight_shape: tuple[int, int, int, int], dtype: np.dtype, opset: int) -> Any:
    if lowering == "std":
        return emit_std(e, x, weight, offset, mask, bias, params)
    if lowering == "plugin":
        return emit_plugin(e, x, weight, offset, mask, bias, params, weight_shape[2:], dtype)
    return emit_portable(e, x, weight, offset, mask, bias, params, weight_shape, dtype, opset)


# --- dynamo exporter: onnxscript ops traced by the exporter --------------------------------------------------

def _plugin_schema(domain: str) -> onnx.defs.OpSchema:
    """An OpSchema for the plugin node, so the dynamo exporter's tracer can record it like any op."""
    p = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    ints, int_, text = (onnx.defs.OpSchema.AttrType.INTS, onnx.defs.OpSchema.AttrType.INT,
                        onnx.defs.OpSchema.AttrType.STRING)
    return onnx.defs.OpSchema(
        PLUGIN_OP_TYPE, domain, 1,
        inputs=[p(name, "T") for name in ("x", "offset", "mask", "weight", "bias")],
        outputs=[p("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "x and weights alike")],
        attributes=[attr("stride", ints, "int32[2]"), attr("padding", ints, "int32[2]"),
                    attr("dilation", ints, "int32[2]"), attr("group", int_, "conv groups"),
                    attr("deformable_group", int_, "offset groups"),
                    attr("plugin_version", text, "plugin version"),
                    attr("plugin_namespace", text, "plugin namespace")])


class _ScriptEmitter:
    """Emitter over onnxscript ops (recorded by the dynamo exporter's tracer)."""

    def __init__(self, opset: int):
        import onnxscript

        self._onnx = getattr(onnxscript.onnx_opset, f"opset{opset}")
        self._custom: dict[str, Any] = {}

    def op(self, op_type: str, *inputs: Any, domain: str = "", **attributes: Any) -> Any:
        if op_type == PLUGIN_OP_TYPE:
            return self._plugin(domain)(*inputs, **attributes)
        return getattr(self._onnx, op_type)(*inputs, **attributes)

    def _plugin(self, domain: str) -> Any:
        import onnxscript

        if domain not in self._custom:
            opset = onnxscript.values.Opset(domain, 1) if domain else self._onnx
            self._custom[domain] = onnxscript.values.Op(opset, PLUGIN_OP_TYPE, _plugin_schema(domain))
        return self._custom[domain]

    def const(self, value: np.ndarray) -> Any:
        from onnxscript import ir

        return self._onnx.Constant(value=ir.tensor(value))


def _ir_shape_dtype(value: Any) -> tuple[tuple[int, ...] | None, np.dtype]:
    shape = None if value.shape is None else tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return shape, np.dtype(value.dtype.numpy())


def dynamo_translation_table(lowering: str, opset: int) -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    check_lowering(lowering, opset)
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    def deform_conv2d(input: Any, weight: Any, offset: Any, mask: Any, bias: Any, stride_h: int, stride_w: int,
                      pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, groups: int, offset_groups: int,
                      use_mask: bool) -> Any:
        params = DeformConvParams.from_aten(stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
                                            offset_groups, use_mask)
        weight_shape, _ = _ir_shape_dtype(weight)
        _, dtype = _ir_shape_dtype(input)
        if weight_shape is None or min(weight_shape) < 0:
            raise ValueError(f"deform_conv2d export needs a static weight shape, got {weight.shape}")
        return _lower(_ScriptEmitter(opset), lowering, input, weight, offset, mask, bias, params,
                      weight_shape, dtype, opset)  # type: ignore[arg-type]

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}


# --- TorchScript exporter: register_custom_op_symbolic -------------------------------------------------------

_SCALAR_TYPE_TO_NUMPY = {"Float": np.float32, "Half": np.float16, "Double": np.float64}


class _JitEmitter:
    """Emitter over ``torch.onnx`` TorchScript ``GraphContext.op`` (attribute names carry a type suffix)."""

    def __init__(self, g: Any):
        self._g = g

    @staticmethod
    def _suffix(name: str, value: Any) -> str:
        if isinstance(value, bool | int) or (isinstance(value, list | tuple) and all(isinstance(v, int)
                                                                                     for v in value)):
            return f"{name}_i"
        if isinstance(value, float) or isinstance(value, list | tuple):
            return f"{name}_f"
        if isinstance(value, str):
            return f"{name}_s"
        raise TypeError(f"attribute {name}={value!r} has no TorchScript ONNX type")

    def op(self, op_type: str, *inputs: Any, domain: str = "", **attributes: Any) -> Any:
        kwargs = {self._suffix(k, v): v for k, v in attributes.items()}
        if domain:
            return self._g.op(f"{domain}::{op_type}", *inputs, **kwargs)
        return self._g.op(op_type, *inputs, **kwargs)

    def const(self, value: np.ndarray) -> Any:
        import torch

        return self._g.op("Constant", value_t=torch.from_numpy(np.array(value, copy=True)))



def _torchscript_symbolic(lowering: str) -> Callable[..., Any]:
    from torch.onnx import symbolic_helper as sym_help

    @sym_help.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any, stride_h: int,
                      stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, groups: int,
                      offset_groups: int, use_mask: bool) -> Any:
        params = DeformConvParams.from_aten(stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
                                            offset_groups, use_mask)
        sizes = sym_help._get_tensor_sizes(weight)
        if sizes is None or any(s is None for s in sizes):
            raise ValueError(f"deform_conv2d export needs a static weight shape, got {sizes}")
        scalar = input.type().scalarType() or "Float"
        if scalar not in _SCALAR_TYPE_TO_NUMPY:
            raise ValueError(f"deform_conv2d export: input dtype {scalar} is not one of float, half, double")
        dtype = np.dtype(_SCALAR_TYPE_TO_NUMPY[scalar])
        return _lower(_JitEmitter(g), lowering, input, weight, offset, mask, bias, params,
                      tuple(int(s) for s in sizes), dtype, int(g.opset))  # type: ignore[arg-type]

    return deform_conv2d


@contextlib.contextmanager
def torchscript_symbolic(lowering: str, opset: int) -> Iterator[None]:
    """Register the ``torchvision::deform_conv2d`` symbolic for ``dynamo=False`` exports; unregister on exit."""
    check_lowering(lowering, opset)
    import torch
    import torchvision  # noqa: F401

    torch.onnx.register_custom_op_symbolic(ATEN_OP, _torchscript_symbolic(lowering), opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(ATEN_OP, opset)
