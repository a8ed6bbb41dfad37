"""Run any graph of ours on onnxruntime's CPU provider, plugin nodes included.

A graph with ``ModulatedDeformConv2d`` nodes (the TensorRT plugin lowering) is run through a copy whose plugin
nodes are moved to domain ``ai.onnx.contrib``, where an onnxruntime-extensions Python custom op computes them
with the numpy reference (``deform_conv_reference``). Only that copy is changed, the graph handed to TensorRT
stays as exported. Two adaptations, both inside the copy:

- onnxruntime-extensions' Python ops read int64, float and string attributes only, so the ``int[2]`` plugin
  fields (stride, padding, dilation) travel as strings ``"a,b"``;
- the custom op is declared for float32, so a plugin node in a float16 graph is computed in float32 between
  two Casts (what ``DESIGN.md`` recommends for fp16 engines too: keep DeformConv in fp32).

onnxruntime-extensions is imported only when a graph has plugin nodes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .deform_conv_contract import PLUGIN_DOMAIN_ORT_CPU, PLUGIN_OP_TYPE, DeformConvParams
from .deform_conv_reference import modulated_deform_conv2d
from .plugin_node import plugin_nodes, with_plugin_domain

_PAIR_FIELDS = ("stride", "padding", "dilation")
_registered = False


def has_plugin_nodes(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds a ``ModulatedDeformConv2d`` plugin node."""
    return bool(plugin_nodes(model))


def _extensions() -> Any:
    try:
        import onnxruntime_extensions
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("running a ModulatedDeformConv2d plugin graph on CPU needs onnxruntime-extensions: "
                          "pip install 'blocks-export[plugins]'") from e
    return onnxruntime_extensions


def _parse_pair(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(","))
    return a, b


def _register_plugin_op() -> None:
    """Register the CPU reference as ``ai.onnx.contrib::ModulatedDeformConv2d`` (once per process)."""
    global _registered
    if _registered:
        return
    ext = _extensions()
    f32, i64, text = ext.PyCustomOpDef.dt_float, ext.PyCustomOpDef.dt_int64, ext.PyCustomOpDef.dt_string

    @ext.onnx_op(op_type=PLUGIN_OP_TYPE, inputs=[f32] * 5, outputs=[f32],
                 attrs={"stride": text, "padding": text, "dilation": text, "group": i64, "deformable_group": i64,
                        "plugin_version": text, "plugin_namespace": text})
    def _modulated_deform_conv2d(x: np.ndarray, offset: np.ndarray, mask: np.ndarray, weight: np.ndarray,
                                 bias: np.ndarray, **attrs: Any) -> np.ndarray:
        params = DeformConvParams(_parse_pair(attrs["stride"]), _parse_pair(attrs["padding"]),
                                  _parse_pair(attrs["dilation"]), int(attrs["group"]),
                                  int(attrs["deformable_group"]), True)
        return modulated_deform_conv2d(x, offset, mask, weight, bias, params)

    _registered = True


def _float16_inputs(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    fp16 = onnx.TensorProto.FLOAT16
    names = {v.name for v in (*g.value_info, *g.input, *g.output) if v.type.tensor_type.elem_type == fp16}
    names |= {t.name for t in g.initializer if t.data_type == fp16}
    return names


def cpu_plugin_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The copy of a plugin graph that onnxruntime CPU runs with the reference op (see the module docstring)."""
    fp16 = _float16_inputs(model)
    out = with_plugin_domain(model, PLUGIN_DOMAIN_ORT_CPU)
    graph = out.graph
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != PLUGIN_OP_TYPE or node.domain != PLUGIN_DOMAIN_ORT_CPU:
            new_nodes.append(node)
            continue
        attrs = [onnx.helper.make_attribute(a.name, ",".join(str(v) for v in a.ints))
                 if a.name in _PAIR_FIELDS and a.type == onnx.AttributeProto.INTS
                 else onnx.AttributeProto.FromString(a.SerializeToString()) for a in node.attribute]
        del node.attribute[:]
        node.attribute.extend(attrs)
        if node.input[0] in fp16:
            for i, name in enumerate(node.input):
                cast_name = f"{node.name or node.output[0]}_in{i}_fp32"
                new_nodes.append(onnx.helper.make_node("Cast", [name], [cast_name], to=onnx.TensorProto.FLOAT))
                node.input[i] = cast_name
            result = node.output[0]
            node.output[0] = f"{result}_fp32"
            new_nodes.append(node)
            new_nodes.append(onnx.helper.make_node("Cast", [node.output[0]], [result], to=onnx.TensorProto.FLOAT16))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return out


def cpu_session(model: onnx.ModelProto | bytes | str | os.PathLike, threads: int = 1) -> ort.InferenceSession:
    """onnxruntime CPU session for ``model``; plugin nodes run the numpy reference op."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        proto = onnx.load(os.fspath(model))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if has_plugin_nodes(proto):
        _register_plugin_op()
        so.register_custom_ops_library(_extensions().get_library_path())
        proto = cpu_plugin_copy(proto)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
