"""``ModulatedDeformConv2d`` plugin nodes in an ONNX graph: find them and move them between domains.

The exported graph carries the nodes in the default domain, which is what TensorRT's ONNX parser reads;
``plugin_trt_domain`` gives the copy that onnxruntime's TensorRT execution provider wants.
"""

from __future__ import annotations

import onnx

from .deform_conv_contract import (
    PLUGIN_DOMAIN_ORT_TRT_EP,
    PLUGIN_DOMAIN_TRT_PARSER,
    PLUGIN_DOMAINS,
    PLUGIN_OP_TYPE,
)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """All ``ModulatedDeformConv2d`` nodes (any of our plugin domains), subgraphs included."""
    return [n for g in _graphs(model.graph) for n in g.node
            if n.op_type == PLUGIN_OP_TYPE and n.domain in PLUGIN_DOMAINS]


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


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``onnx.version_converter.convert_version`` for a graph with plugin nodes.

    The converter needs a schema for every default-domain node, which a plugin node in the TensorRT parser's
    (default) domain lacks; the nodes are moved to ``trt.plugins`` for the conversion and back afterwards.
    """
    import onnx.version_converter

    had_plugins = bool(plugin_nodes(model))
    moved = with_plugin_domain(model, PLUGIN_DOMAIN_ORT_TRT_EP) if had_plugins else model
    converted = onnx.version_converter.convert_version(moved, opset)
    if not had_plugins:
        return converted
    out = with_plugin_domain(converted, PLUGIN_DOMAIN_TRT_PARSER)
    kept = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN_ORT_TRT_EP]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out
