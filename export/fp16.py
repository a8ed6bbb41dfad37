"""Mixed-precision fp16 ONNX: fp16 weights and activations, precision-sensitive parts kept fp32 behind Casts.

The conversion is onnxconverter-common's ``float16.convert_float_to_float16`` (its ``node_block_list`` keeps
nodes in fp32 and inserts the Casts). What stays fp32 is decided by a small, explicit walk over the graph:

1. op types whose fp16 error is large or amplified: ``Softmax``/``LogSoftmax`` (exp of logits),
   ``LayerNormalization``/``GroupNormalization``/``InstanceNormalization`` (variance of small differences),
   wherever they are, every op type a block's twin declares (``BlockSpec.fp32_ops``: DCN's ``DeformConv``,
   ``ModulatedDeformConv2d``, ``GridSample``, whose sampling coordinates lose their fractions in half precision:
   above 512 px its spacing is 0.5 px, above 1024 px 1 px; DESIGN.md on the TensorRT plugin kernel), and
   onnxconverter-common's own default block list (ops it cannot convert);
2. the logits of every softmax: walking backwards from a ``Softmax`` input through the arithmetic and layout
   ops that produce it (MatMul, Mul, Add, ReduceSum, Reshape, ...), so GCNet's spatial logits and ACmix's window
   logits are computed in fp32, and forward one step into the MatMul/Mul/ReduceSum that applies the weights;
3. reductions over large extents (ReduceMean/ReduceSum over more than ``LARGE_REDUCTION`` elements or an
   unknown extent): an fp16 sum of thousands of terms loses the low bits of every term;
4. the sampling-coordinate chain of the portable DeformConv lowering: backwards from the ``grid`` of every
   GridSample and from every ``Floor``/``Ceil`` (the Gather-based bilinear sampling) through element-wise ops,
   then forward to element-wise ops fed only by that chain (the bilinear weights ``y - floor(y)``).

The walks stop at weights, graph inputs and non-element-wise ops (Conv, Gemm, ...), so the bulk of the compute
(convolutions) runs in fp16. IO stays fp32 by default (``keep_io_types``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto

from ..plugins.plugin_node import plugin_trt_domain
from .graph import consumers, infer_shapes, producers, shapes_of
from .metadata import set_metadata_entry

if TYPE_CHECKING:
    from .targets import Target

# Walk 1: op types numerically sensitive in fp16 in any model, and the blocks' own (``blocks.FP32_OPS``, the union
# of every ``BlockSpec.fp32_ops``). The blocks' set is written out here because this module (with the engine
# build that reads it) runs where PyTorch is not installed, the Jetson, and ``blocks`` imports torch;
# tests/blocks/test_contract.py holds the copy equal to ``blocks.FP32_OPS``.
SENSITIVE_OPS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
})
BLOCK_FP32_OPS = frozenset({"Softmax", "LayerNormalization", "DeformConv", "ModulatedDeformConv2d", "GridSample"})
BLOCKED_OPS = SENSITIVE_OPS | BLOCK_FP32_OPS
# Ops through which the logits of a softmax are produced (walk 2).
LOGIT_OPS = frozenset({
    "MatMul", "Gemm", "Einsum", "Mul", "Div", "Add", "Sub", "ReduceSum", "Neg",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Gather", "Expand",
    "Identity", "Cast",
})
# Ops that apply softmax weights (one step forward from a softmax, walk 2).
WEIGHTING_OPS = frozenset({"MatMul", "Mul", "ReduceSum", "Einsum"})
LARGE_REDUCTION = 1024
FP16_MAX = 65504.0  # the largest finite float16
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"})
# Element-wise and layout ops of coordinate arithmetic (walk 4).
COORD_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil", "Clip", "Min", "Max", "Where", "Concat", "Reshape",
    "Transpose", "Unsqueeze", "Squeeze", "Slice", "Split", "Expand", "Tile", "Gather", "Identity", "Cast",
    "Range", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not", "Equal",
})


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the block list names nodes)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_fp16_{i}"
        seen.add(node.name)


def dedupe_value_info(model: onnx.ModelProto) -> None:
    """Keep one ``value_info`` entry per tensor name (the first).

    Exported and simplified graphs can carry two entries for one tensor; the converter retypes only one of
    them, and onnxruntime then rejects the Cast that produces the tensor ("Type (tensor(float)) of output arg
    ... does not match expected type (tensor(float16))").
    """
    seen: set[str] = set()
    keep = []
    for v in model.graph.value_info:
        if v.name not in seen:
            seen.add(v.name)
            keep.append(v)
    if len(keep) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)


def isolate_consumed_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that nodes also consume an internal twin: ``P -> t -> Identity -> output``.

    With ``keep_io_types`` the converter casts a graph output back to fp32 in place, and a node that reads
    the same tensor inside the graph (a detector's feature map that is both an output and the input of the
    next stage) then gets fp32 next to fp16 weights ("Type parameter (T) of Optype (Conv) bound to different
    types"). Consumers read the twin instead; the output names stay.
    """
    g = model.graph
    consumed, producer = consumers(g), producers(g)
    for out in g.output:
        name = out.name
        if name not in consumed or name not in producer:
            continue
        inner = f"{name}__internal"
        node = producer[name]
        node.output[list(node.output).index(name)] = inner
        for n in g.node:
            for k, i in enumerate(n.input):
                if i == name:
                    n.input[k] = inner
        for v in g.value_info:
            if v.name == name:
                v.name = inner
        g.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_output"))


def _const_ints(model: onnx.ModelProto, name: str) -> list[int] | None:
    for t in model.graph.initializer:
        if t.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(t).ravel()]
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            return [int(v) for v in onnx.numpy_helper.to_array(n.attribute[0].t).ravel()]
    return None


def _reduction_extent(model: onnx.ModelProto, node: onnx.NodeProto,
                      shapes: dict[str, list[int | None]]) -> int | None:
    """Number of elements summed per output element, or None when unknown."""
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _const_ints(model, node.input[1])
        if axes is None:
            return None
    axes = list(range(len(shape))) if not axes else [a % len(shape) for a in axes]
    extent = 1
    for a in axes:
        if shape[a] is None:
            return None
        extent *= int(shape[a])  # type: ignore[arg-type]
    return extent


def fp32_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes kept in fp32 (the walks of the module docstring). Nodes must be named."""
    graph = model.graph
    producer, readers = producers(graph), consumers(graph)
    shapes = shapes_of(infer_shapes(model) or model)  # best effort: unknown extents count as large
    keep: set[str] = {n.name for n in graph.node if n.op_type in BLOCKED_OPS}

    def walk_back(starts: Iterable[str], allowed: frozenset[str]) -> set[str]:
        found: set[str] = set()
        queue = deque(starts)
        while queue:
            node = producer.get(queue.popleft())
            if node is None or node.name in found or node.op_type not in allowed:
                continue
            found.add(node.name)
            queue.extend(i for i in node.input if i)
        return found

    for n in graph.node:
        if n.op_type in ("Softmax", "LogSoftmax"):
            keep |= walk_back([n.input[0]], LOGIT_OPS)
            keep |= {c.name for c in readers.get(n.output[0], []) if c.op_type in WEIGHTING_OPS}
        elif n.op_type in REDUCTIONS:
            extent = _reduction_extent(model, n, shapes)
            if extent is None or extent > LARGE_REDUCTION:
                keep.add(n.name)
    coord_starts = [n.input[1] for n in graph.node if n.op_type == "GridSample" and len(n.input) > 1]
    coord_starts += [n.input[0] for n in graph.node if n.op_type in ("Floor", "Ceil")]
    coords = walk_back(coord_starts, COORD_OPS)
    # Forward: element-wise ops fed only by the coordinate chain or by constants are coordinates too.
    coord_tensors = {o for n in graph.node if n.name in coords for o in n.output}
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.name in coords or n.op_type not in COORD_OPS or not n.input:
                continue
            if all((not i) or i in coord_tensors or i in constants for i in n.input) and \
                    any(i in coord_tensors for i in n.input):
                coords.add(n.name)
                coord_tensors.update(o for o in n.output if o)
                changed = True
    return keep | coords


def _detach_kept_outputs(model: onnx.ModelProto, keep: set[str]) -> None:
    """Put an Identity between a graph output and the node in ``keep`` that produces it (in place).

    With fp32 outputs kept, the converter wraps a kept node's output in Cast(fp16) -> Cast(fp32) before the graph
    output and then refuses its own cast pair ("The downstream node of the second cast node should be graph
    output", onnxconverter-common 1.16); an fp16 Identity between them keeps the pair apart (the output is
    rounded to fp16 once, as every fp16 graph's output is).
    """
    g = model.graph
    producer = producers(g)
    for out in g.output:
        node = producer.get(out.name)
        if node is None or node.name not in keep:
            continue
        inner = f"{out.name}__kept_fp32"
        node.output[list(node.output).index(out.name)] = inner
        for n in g.node:
            for k, i in enumerate(n.input):
                if i == out.name:
                    n.input[k] = inner
        g.node.append(onnx.helper.make_node("Identity", [inner], [out.name], name=f"{out.name}_kept_output"))


def _retarget_float_casts(model: onnx.ModelProto) -> None:
    """A ``Cast(to=FLOAT)`` whose output the converter typed fp16 (e.g. ``torch.arange(w).type_as(x)`` in a
    dynamic anchor grid, Ultralytics' ``make_anchors``) casts to fp16 instead; left as is, onnxruntime refuses
    the graph (output type does not match)."""
    outputs = {v.name for v in model.graph.output}  # their type is the graph's contract (keep_io_types)
    fp16_values = {v.name for v in model.graph.value_info
                   if v.type.tensor_type.elem_type == TensorProto.FLOAT16 and v.name not in outputs}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.output and n.output[0] in fp16_values:
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16


def to_fp16(model: onnx.ModelProto, *, keep_io_types: bool = True, target: Target | None = None,
            keep: Iterable[str] = ()) -> onnx.ModelProto:
    """Mixed-precision copy of ``model`` (the input is not modified); passes ``onnx.checker`` (plugin nodes
    aside, which have no ONNX schema).

    ``target`` (a ``targets.Target``) adds what its runtimes need: the op types its onnxruntime cannot run in
    float16 stay float32 (``Target.fp16_fp32_ops``), and every ``ModulatedDeformConv2d`` / ``DeformConv`` node
    gets inputs of one type its TensorRT plugin accepts (``trt_ops.PluginRule``; float32, which every line
    takes and which keeps the sampling coordinates exact). ``ValueError`` when no type satisfies the rule.
    ``keep``: names of more nodes kept float32 (the blocks the fp16 fallback keeps, ``fallback.fp16_fallback``);
    ``model``'s nodes must then be named uniquely already (``name_nodes``), so that the names still match.
    """
    from onnxconverter_common import float16

    work = onnx.ModelProto()
    work.CopyFrom(model)
    dedupe_value_info(work)
    isolate_consumed_outputs(work)
    name_nodes(work)
    blocked = fp32_nodes(work) | set(keep)
    if keep and keep_io_types:
        _detach_kept_outputs(work, set(keep))
    if target is not None:
        keep32 = target.fp16_fp32_ops()
        blocked |= {n.name for n in work.graph.node if n.op_type in keep32}
    # Passing op_block_list replaces the library's default list, so extend it instead.
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | BLOCKED_OPS)
    # max_finite_val: fp16's own largest value (the library's default, 1e4, would clamp representable weights)
    out = float16.convert_float_to_float16(work, keep_io_types=keep_io_types, disable_shape_infer=False,
                                           op_block_list=op_block, node_block_list=sorted(blocked),
                                           max_finite_val=FP16_MAX)
    _retarget_float_casts(out)
    for _ in range(8):  # each round's Casts can change the types downstream; stale type hints go first
        if not cast_mixed_inputs(out, blocked):
            break
        del out.graph.value_info[:]
    # The converter can leave a float value_info on a tensor it made fp16 (an Expand of a shared constant that
    # feeds a Cast into a blocked CumSum: onnxruntime refuses the graph, "does not match expected type");
    # intermediate value_info entries are hints that onnxruntime and TensorRT infer again, so none is kept.
    del out.graph.value_info[:]
    deform_conv_inputs_fp32(out, target)
    set_metadata_entry(out, "precision", "fp16")
    # A TensorRT plugin node sits in the default domain, where ONNX has no schema for it; check a copy whose
    # plugin nodes are in their onnxruntime domain (a custom domain, which the checker does not validate).
    onnx.checker.check_model(plugin_trt_domain(out))
    return out


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph types (inference on the plugin-domain copy; plugin outputs take
    their first input's type, as the plugin computes in its input's precision)."""
    def infer(m: onnx.ModelProto) -> dict[str, int]:
        inferred = infer_shapes(plugin_trt_domain(m))  # best effort here: untyped tensors are left alone
        g = m.graph if inferred is None else inferred.graph
        found = {t.name: t.data_type for t in g.initializer}
        found |= {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)
                  if v.type.tensor_type.elem_type}
        for n in m.graph.node:
            if n.op_type == "Cast":
                found[n.output[0]] = next(a.i for a in n.attribute if a.name == "to")
            elif n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                found[n.output[0]] = n.attribute[0].t.data_type
        return found

    types = infer(model)
    plugin_outputs = {n.output[0]: types[n.input[0]] for n in model.graph.node
                      if not _has_schema(n) and n.input and n.input[0] in types and n.output[0] not in types}
    if plugin_outputs:  # type them, so that inference carries their type through the ops that follow
        typed = onnx.ModelProto()
        typed.CopyFrom(model)
        typed.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, t, None)
                                      for name, t in plugin_outputs.items())
        types = infer(typed) | plugin_outputs
    return types


DEFORM_OPS = ("ModulatedDeformConv2d", "DeformConv")


def deform_conv_inputs_fp32(model: onnx.ModelProto, target: Target | None = None) -> int:
    """Cast every floating input of the deformable convolutions (plugin and ONNX ``DeformConv`` nodes) that is not
    float32 to float32, in place; returns how many Casts.

    The TensorRT ``ModulatedDeformConv2d`` plugin takes float32 only in 8.6 and "all inputs one type" (float32
    or float16) from 10.0 (``trt_ops``, from each release's ``supportsFormatCombination``); float32 is the one
    type every line takes. ``target`` names the rule to honour: ``ValueError`` if its plugin refuses float32.
    """
    table = target.table if target is not None else None
    rule = table.plugin("ModulatedDeformConv2d") if table is not None else None
    if rule is not None and TensorProto.FLOAT not in rule.first_input_types:
        raise ValueError(f"target {target.name if target else '?'}: the ModulatedDeformConv2d plugin refuses "
                         "float32 inputs")
    nodes = [n for n in model.graph.node if n.op_type in DEFORM_OPS]
    if not nodes:
        return 0
    types = elem_types(model)
    added = 0
    out: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type in DEFORM_OPS:
            for i, name in enumerate(node.input):
                if name and types.get(name) in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE):
                    _cast_input(node, i, TensorProto.FLOAT, f"{name}__as_fp32_for_{node.name or node.op_type}_{i}",
                                "to_fp32", out)
                    added += 1
        out.append(node)
    return _set_nodes(model, out, added)


def _cast_input(node: onnx.NodeProto, index: int, to: int, output: str, suffix: str,
                out: list[onnx.NodeProto]) -> str:
    """Append to ``out`` a Cast of ``node``'s input ``index`` to ``to`` named ``output``, and read it instead."""
    out.append(onnx.helper.make_node("Cast", [node.input[index]], [output], to=to,
                                     name=f"{node.name or node.op_type}_input{index}_{suffix}"))
    node.input[index] = output
    return output


def _set_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], added: int) -> int:
    """The graph's nodes become ``nodes`` when ``added`` Casts were inserted; returns ``added``."""
    if added:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return added


def _has_schema(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and onnx.defs.has(node.op_type)


def cast_mixed_inputs(model: onnx.ModelProto, fp32: Iterable[str]) -> int:
    """Cast inputs so that no node reads float and float16 under one type constraint; returns how many Casts.

    The converter leaves such nodes where one tensor feeds both precisions: a constant that the simplifier
    merged and that both the fp32 DeformConv chain and an fp16 block read, a plugin output read by fp16 nodes,
    a Cast to FLOAT of the exported graph meeting fp16 tensors. A node kept fp32 (``fp32``, by name) reads
    float, every other node float16.
    """
    keep = set(fp32)
    types = elem_types(model)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    added = 0
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if _has_schema(node) and node.op_type != "Cast":
            schema = onnx.defs.get_schema(node.op_type, opset)
            groups: dict[str, list[int]] = {}
            for i, name in enumerate(node.input):
                if name and types.get(name) in floats:
                    formal = schema.inputs[min(i, len(schema.inputs) - 1)].type_str
                    groups.setdefault(formal, []).append(i)
            for idx in groups.values():
                if len({types[node.input[i]] for i in idx}) < 2:
                    continue
                want = TensorProto.FLOAT if node.name in keep else TensorProto.FLOAT16
                for i in idx:
                    if types[node.input[i]] != want:
                        cast = f"{node.input[i]}__as_{'fp32' if want == TensorProto.FLOAT else 'fp16'}_{added}"
                        types[_cast_input(node, i, want, cast, "cast", nodes)] = want
                        added += 1
        nodes.append(node)
    return _set_nodes(model, nodes, added)


def float_types(model: onnx.ModelProto) -> set[int]:
    """Floating element types present in ``model``: initializers, typed tensors, Cast targets, Constants."""
    g = model.graph
    kinds = {t.data_type for t in g.initializer}
    kinds |= {v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                kinds.add(a.i)
            elif n.op_type == "Constant" and a.type == onnx.AttributeProto.TENSOR:
                kinds.add(a.t.data_type)
    return kinds & {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


__all__ = ["BLOCKED_OPS", "LARGE_REDUCTION", "cast_mixed_inputs", "dedupe_value_info", "deform_conv_inputs_fp32",
           "elem_types", "float_types", "fp32_nodes", "isolate_consumed_outputs", "name_nodes", "to_fp16"]
