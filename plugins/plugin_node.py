"""``ModulatedDeformConv2d`` plugin nodes in an ONNX graph: find them and move them between domains.

The exported graph carries the nodes in the default domain, which is what TensorRT's ONNX parser reads;
``plugin_trt_domain`` gives the copy that onnxruntime's TensorRT execution provider wants.
"""

from __future__ import annotations

import onnx

from .deform_conv_contract import PLUGIN_DOMAIN_ORT_TRT_EP, PLUGIN_DOMAINS, PLUGIN_OP_TYPE
from .onnx_graph import nodes


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """All ``ModulatedDeformConv2d`` nodes (any of our plugin domains), subgraphs included."""
    return [n for n in nodes(model.graph) if n.op_type == PLUGIN_OP_TYPE and n.domain in PLUGIN_DOMAINS]


def with_plugin_domain(model: onnx.ModelProto, domain: str, version: int = 1) -> onnx.ModelProto:
    """Copy of ``model`` whose plugin nodes are in ``domain`` (declared in ``opset_import`` when not default)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in plugin_nodes(out):
        node.domain = domain
    if domain and plugin_nodes(out) and all(o.domain != domain for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return out


def plugin_trt_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose ``ModulatedDeformConv2d`` nodes are in domain ``trt.plugins`` (ORT TensorRT EP)."""
    return with_plugin_domain(model, PLUGIN_DOMAIN_ORT_TRT_EP)
