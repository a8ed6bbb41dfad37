"""Opset-18 forms rewritten into what an older opset reads, before ``onnx.version_converter`` runs.

The dynamo exporter writes opset 18 or newer; the TensorRT 8.x targets parse up to opset 17 (16 for JetPack 5).
onnx's converter has no down adapter for some opset-18 operators (``No Adapter From Version $18 for Split``),
so a graph holding one cannot be converted at all. Each such operator is rewritten here into a form that means
the same in the old and the new opset, and then kept out of the converter (``PASS_THROUGH``): the node is valid
as it stands at the target opset.

- ``Split``: opset 18 added the ``num_outputs`` attribute; opsets 13-17 take the sizes as the ``split`` input
  only. "If the tensor is not evenly splittable into ``num_outputs``, the last chunk will be smaller"
  (https://onnx.ai/onnx/operators/onnx__Split.html); onnx's reference implementation and onnxruntime read that
  as chunks of ``ceil(d / n)`` and the remainder last (onnx/onnx#4742). The sizes are constants where the
  axis has a static size (channels, the usual case), else computed in the graph from ``Shape``. A Split with a
  ``split`` input means the same from opset 13 on.
- ``Pad``: opset 18 added the optional ``axes`` input (https://onnx.ai/onnx/operators/onnx__Pad.html); without it
  the node is Pad-13's (``data``, ``pads``, ``constant_value``; modes constant/reflect/edge). ``axes`` is folded
  into full-rank ``pads`` (zeros on the other axes) by one ``Gather``, where the rank is known.

``convert_opset`` is the package's one opset converter: these rewrites, then ``onnx.version_converter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ExportFailed, one_line
from .graph import infer_shapes

# Operator -> the oldest opset at which its rewritten form is valid unchanged (Split's ``split`` input: 13).
PASS_THROUGH = {"Split": 13, "Pad": 13}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def split_sizes(length: int, parts: int) -> list[int]:
    """Split-18's sizes for ``num_outputs=parts`` over an axis of ``length``: ``ceil(length / parts)`` each, the
    remainder last."""
    chunk = -(-length // parts)
    return [chunk] * (parts - 1) + [length - chunk * (parts - 1)]


def held_back(op_type: str, source: int, opset: int) -> bool:
    """Whether a (lowered) ``op_type`` node goes from opset ``source`` to ``opset`` unchanged, past the converter."""
    return source >= 18 > opset >= PASS_THROUGH.get(op_type, 18)


def _opset18_form(node: Any) -> bool:
    """Whether ``node`` (NodeProto) uses a form ``lower_for_opset`` rewrites."""
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Split":
        return any(a.name == "num_outputs" for a in node.attribute)
    return node.op_type == "Pad" and len(node.input) > 3 and bool(node.input[3])


def lower_for_opset(proto: Any, opset: int) -> tuple[Any, int]:
    """``proto`` with every opset-18-only form in ``PASS_THROUGH`` rewritten for ``opset``; (model, count).

    The input is not changed. Static sizes come from ONNX shape inference where it knows them. ``ExportFailed``
    (one line) for a form that cannot be rewritten.
    """
    import onnx_ir as ir

    from blocks_export.plugins.onnx_graph import nodes

    if opset >= 18 or not any(_opset18_form(n) for n in nodes(proto.graph)):
        return proto, 0
    # Unknown ops or a graph inference cannot read: sizes are then computed in the graph.
    inferred = infer_shapes(proto) or proto
    model = ir.from_proto(inferred)
    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        if node.op_type == "Split" and "num_outputs" in node.attributes:
            lower = _lower_split
        elif node.op_type == "Pad" and len(node.inputs) > 3 and node.inputs[3] is not None:
            lower = _lower_pad
        else:
            continue
        try:
            lower(node, f"{node.name or node.op_type.lower()}_{count}")  # node names need not be unique
        except ValueError as e:
            raise ExportFailed(f"the graph cannot be converted to opset {opset}: {e}; try `exporter=torchscript` "
                               "or a target with a newer opset") from e
        count += 1
    if not count:
        return proto, 0
    lowered = ir.to_proto(model)
    # Shapes inferred here are not the exporter's; keep the graph's value_info as it came.
    del lowered.graph.value_info[:]
    lowered.graph.value_info.extend(proto.graph.value_info)
    return lowered, count


def _lower_split(node: Any, prefix: str) -> None:
    """Give ``node`` (Split with ``num_outputs``) an explicit ``split`` input, in place."""
    import onnx_ir as ir

    graph = node.graph
    x = node.inputs[0]
    parts = int(node.attributes["num_outputs"].as_int())
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    if len(node.outputs) != parts:
        raise ValueError(f"node {node.name}: Split has num_outputs={parts} but {len(node.outputs)} outputs")
    shape = x.shape
    if shape is not None:
        axis %= len(shape)
    length = shape[axis] if shape is not None else None
    prefix = f"{prefix}_sizes"
    meta = dict(node.metadata_props)
    new: list[Any] = []

    def add(op: str, inputs: list[Any], name: str, **attrs: Any) -> Any:
        made = ir.node(op, inputs, attrs or None, name=f"{prefix}_{name}", metadata_props=dict(meta))
        made.outputs[0].name = f"{prefix}_{name}"
        new.append(made)
        return made.outputs[0]

    def const(values: list[int], name: str) -> Any:
        return add("Constant", [], name, value=ir.tensor(np.asarray(values, dtype=np.int64), name=f"{prefix}_{name}"))

    if isinstance(length, int):
        sizes = const(split_sizes(length, parts), "static")
    else:
        # d = Shape(x)[axis]; chunk = (d + parts - 1) / parts; sizes = [chunk] * (parts - 1) ++ [d - chunk * (parts - 1)]
        # Shape's start/end (opset 15) count from the back when negative, as Split's axis does.
        bounds = {"start": axis} if axis == -1 else {"start": axis, "end": axis + 1}
        dim = add("Shape", [x], "dim", **bounds)  # [1]
        chunk = add("Div", [add("Add", [dim, const([parts - 1], "round_up")], "padded"), const([parts], "parts")],
                    "chunk")
        head = add("Expand", [chunk, const([parts - 1], "heads")], "head")
        last = add("Sub", [dim, add("Mul", [chunk, const([parts - 1], "n_heads")], "covered")], "last")
        sizes = add("Concat", [head, last], "dynamic", axis=0)
    graph.insert_before(node, new)
    del node.attributes["num_outputs"]
    node.resize_inputs(2)
    node.replace_input_with(1, sizes)


def _lower_pad(node: Any, prefix: str) -> None:
    """Fold ``node``'s ``axes`` input (Pad-18) into full-rank ``pads``, in place."""
    import onnx_ir as ir

    x, pads, axes_value = node.inputs[0], node.inputs[1], node.inputs[3]
    axes = axes_value.const_value if axes_value.const_value is not None else None
    if axes is None and axes_value.producer() is not None and axes_value.producer().op_type == "Constant":
        axes = axes_value.producer().attributes["value"].as_tensor()
    if axes is None or x.shape is None:
        raise ValueError(f"node {node.name}: Pad's axes are not constant or its input's rank is unknown")
    rank = len(x.shape)
    picked = [int(a) % rank for a in np.asarray(axes.numpy()).reshape(-1)]
    # pads = [b_a0, b_a1, ..., e_a0, e_a1, ...] over ``picked``; index len(pads) reads the appended zero.
    n = len(picked)
    index = [picked.index(d) if d in picked else 2 * n for d in range(rank)]
    index += [picked.index(d) + n if d in picked else 2 * n for d in range(rank)]
    prefix = f"{prefix}_full_pads"
    meta = dict(node.metadata_props)
    zero = ir.node("Constant", [], {"value": ir.tensor(np.zeros(1, np.int64), name=f"{prefix}_zero")},
                   name=f"{prefix}_zero", metadata_props=dict(meta))
    where = ir.node("Constant", [], {"value": ir.tensor(np.asarray(index, np.int64), name=f"{prefix}_index")},
                    name=f"{prefix}_index", metadata_props=dict(meta))
    padded = ir.node("Concat", [pads, zero.outputs[0]], {"axis": 0}, name=f"{prefix}_with_zero",
                     metadata_props=dict(meta))
    full = ir.node("Gather", [padded.outputs[0], where.outputs[0]], {"axis": 0}, name=prefix,
                   metadata_props=dict(meta))
    for made in (zero, where, padded, full):
        made.outputs[0].name = made.name
    node.graph.insert_before(node, [zero, where, padded, full])
    node.replace_input_with(1, full.outputs[0])
    node.resize_inputs(3)


# While the converter runs, default-domain nodes it has no schema for (TensorRT plugin nodes, which the parser
# reads in the default domain) sit in this domain; they go back afterwards.
_UNCONVERTED_DOMAIN = "blocks_export.unconverted"


def convert_opset(proto: Any, opset: int) -> Any:
    """``proto`` converted to ``opset`` by ``onnx.version_converter`` (the package's one opset converter).

    The dynamo exporter builds opset 18 or newer and converts before its own optimisation, where e.g.
    ReduceMean's axes are not yet constants and the conversion fails; after optimisation it succeeds. The
    converter needs a schema for every default-domain node and refuses the others, so those (TensorRT plugin
    nodes, subgraphs included) wait in a domain of their own during the conversion and return afterwards; so do
    the operators it has no adapter for (Split-18, Pad-18), once ``lower_for_opset`` has rewritten them into forms the
    target opset reads. ``ExportFailed`` (one line) when the graph cannot be converted.
    """
    import onnx
    import onnx.version_converter

    from blocks_export.plugins.onnx_graph import nodes

    work = onnx.ModelProto()
    work.CopyFrom(lower_for_opset(proto, opset)[0])
    source = next((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), opset)
    moved = [n for n in nodes(work.graph) if n.domain in ("", "ai.onnx")
             and (not onnx.defs.has(n.op_type) or held_back(n.op_type, source, opset))]
    for n in moved:
        n.domain = _UNCONVERTED_DOMAIN
    if moved:
        work.opset_import.append(onnx.helper.make_opsetid(_UNCONVERTED_DOMAIN, 1))
    try:
        converted = onnx.version_converter.convert_version(work, opset)
    except Exception as e:
        raise ExportFailed(f"the graph cannot be converted to opset {opset} ({one_line(e)}); try "
                           "`exporter=torchscript` or a target with a newer opset") from e
    version = next((o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")), None)
    if version != opset:
        raise ExportFailed(f"the graph stayed at opset {version}, not {opset}; try `exporter=torchscript`")
    _drop_unknown_attributes(converted, opset)
    if moved:
        for n in nodes(converted.graph):
            if n.domain == _UNCONVERTED_DOMAIN:
                n.domain = ""
        kept = [o for o in converted.opset_import if o.domain != _UNCONVERTED_DOMAIN]
        del converted.opset_import[:]
        converted.opset_import.extend(kept)
    return converted


def _drop_unknown_attributes(model: Any, opset: int) -> None:
    """Remove attributes the target opset's schema does not define.

    The converter keeps attributes introduced later, e.g. ReduceMean's ``noop_with_empty_axes`` (opset 18,
    https://onnx.ai/onnx/operators/onnx__ReduceMean.html); runtimes reject unknown attributes. Default
    (empty) values only: a set value would change the meaning, so that is an error.
    """
    import onnx

    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue
        unknown = [a for a in node.attribute if a.name not in schema.attributes]
        for a in unknown:
            if onnx.helper.get_attribute_value(a) not in (0, None, b"", ""):
                raise ExportFailed(f"node {node.name} ({node.op_type}) uses attribute {a.name}, which opset "
                                   f"{opset} does not have; try `exporter=torchscript`")
            node.attribute.remove(a)
