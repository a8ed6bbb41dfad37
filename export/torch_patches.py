"""Patches of private torch / onnxscript code that make the dynamo ONNX exporter faster, behind one context:
``exporter_patches``. Each writes the graph the exporter would write without it (tests/export/test_onnx_export.py
compares both) and leaves everything as it is where the internals it patches are not as expected.

- ``torchlib_registry_once``: the torchlib registry built once per process and opset, not on every export;
- ``decompose_without_retrace``: the exporter's decomposition done node by node where that is exact (a program
  of CNN blocks: eval BatchNorm, flatten, global pooling, in-place activations), without its second trace;
- ``type_promotion_from_meta``: the exporter's type promotion reads each node's traced value instead of running
  the graph again on fake tensors.

Written for the torch and onnxscript in ``WRITTEN_FOR``; tests/export/test_torch_patches.py fails on other
versions and says what to check again.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator
from typing import Any

# The releases these patches were written and measured against (``torch.__version__``, ``onnxscript.__version__``
# prefixes); what each patch reads from them is listed in tests/export/test_torch_patches.py.
WRITTEN_FOR = {"torch": "2.14", "onnxscript": "0.7"}


@contextlib.contextmanager
def exporter_patches(program_traced_here: bool) -> Iterator[None]:
    """Inside: ``torch.onnx.export(..., dynamo=True)`` with the patches of this module. ``program_traced_here``:
    the program is ours to change (traced by the caller, not a user's ``.pt2``): it is decomposed in place and
    its type promotion read from its traced values; a user's program goes through the exporter's own passes."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torchlib_registry_once())
        if program_traced_here:
            stack.enter_context(decompose_without_retrace())
            stack.enter_context(type_promotion_from_meta())
        yield


class _Signature:
    """What ``onnxscript``'s torchlib listing reads from a traced function's IR: its domain only."""

    def __init__(self, domain: str) -> None:
        self.domain = domain


_REGISTRIES: dict[int, Any] = {}  # opset -> the torchlib ONNXRegistry built once per process


@contextlib.contextmanager
def torchlib_registry_once() -> Iterator[None]:
    """Inside: ``torch.onnx.export(..., dynamo=True)`` builds its torchlib registry once per process and opset.

    Every dynamo export starts with ``ONNXRegistry.from_torchlib`` (torch/onnx/_internal/exporter/_compat.py),
    which lists ~560 torchlib functions; for each of the ~500 traced ones onnxscript's listing reads
    ``function_ir.domain``, and ``TracedOnnxFunction.function_ir`` parses the function's source anew on every
    access (onnxscript/_internal/values.py). That is about 4 s of every export on a 2-core machine, the same
    registry each time. Here the first build reads the domain where the parse would have found it (the
    function's opset: onnxscript's converter names the IR function after ``this_module.domain``, the opset it
    was given), and later exports get a copy of the finished registry (``custom_translation_table`` entries are
    registered into the copy, as before). Private APIs: when they are not as expected, nothing is changed.
    """
    try:
        from onnxscript._internal import values
        from torch.onnx._internal.exporter import _registration

        registry_cls = _registration.ONNXRegistry
        original = registry_cls.__dict__["from_torchlib"]
        traced = values.TracedOnnxFunction
        function_ir = traced.__dict__["function_ir"]
        if not isinstance(original, classmethod) or not isinstance(function_ir, property):
            raise TypeError("unexpected exporter internals")
    except (ImportError, AttributeError, KeyError, TypeError):
        yield
        return

    def from_torchlib(cls: Any, opset_version: int = 18) -> Any:
        key = int(opset_version)
        if key not in _REGISTRIES:
            setattr(traced, "function_ir", property(lambda f: _Signature(f.opset.domain)))  # noqa: B010
            try:
                _REGISTRIES[key] = original.__func__(cls, opset_version)
            finally:
                setattr(traced, "function_ir", function_ir)  # noqa: B010
        built = _REGISTRIES[key]
        copy = cls()
        copy._opset_version = built._opset_version
        copy.functions = {target: list(metas) for target, metas in built.functions.items()}
        return copy

    setattr(registry_cls, "from_torchlib", classmethod(from_torchlib))  # noqa: B010
    try:
        yield
    finally:
        setattr(registry_cls, "from_torchlib", original)  # noqa: B010


def _unchanged_by_decomposition(table: dict[Any, Any]) -> Callable[[Any], bool]:
    """``op -> bool``: whether ``ExportedProgram.run_decompositions(table)`` leaves a node calling ``op`` as it is.

    As ``run_decompositions`` splits the table (torch/export/exported_program.py,
    ``_split_decomp_table_to_cia_and_python_decomp``): an op with a Python decomposition in it is rewritten; a
    CompositeImplicitAutograd op is kept only where the split marks it to be preserved; a mutating op is
    functionalized. Everything else (convolution, silu, slice, the twins' own ops, ...) is traced unchanged.
    """
    import torch
    from torch._export.utils import _is_cia_op, _special_op_to_preserve_cia
    from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

    cia, python_table = _split_decomp_table_to_cia_and_python_decomp(dict(table))

    def unchanged(op: Any) -> bool:
        if not isinstance(op, torch._ops.OpOverload) or op._schema.is_mutable or op in python_table:
            return False
        return cia.get(op) is _special_op_to_preserve_cia if _is_cia_op(op) else True

    return unchanged


def _decompose_in_place(program: Any, table: dict[Any, Any]) -> bool:
    """Do what the ONNX exporter's ``run_decompositions(table)`` would do to ``program``, in place, without its
    second trace of the whole graph; ``False`` (nothing changed) where that is not known to be exact.

    The exporter's decomposition re-traces every node with symbolic shapes (as long as ``torch.export`` itself)
    to rewrite what its registry does not translate. In programs of CNN blocks that is eval-mode
    ``aten.batch_norm``, which it turns into ``aten._native_batch_norm_legit_no_training`` + ``getitem``
    (torch/_decomp/decompositions.py), ``aten.flatten``, which it turns into ``aten.view``, and global
    ``adaptive_avg_pool2d``, which it turns into ``aten.mean``; that is done here node by node (the view takes
    -1 for the flattened axes: the same Reshape, without the size arithmetic). Any other op the decomposition would
    change, and any node that is not a plain op call, leaves the program untouched for the full decomposition.
    """
    import torch

    aten = torch.ops.aten
    unchanged = _unchanged_by_decomposition(table)
    graph = program.graph
    output = next(n for n in graph.nodes if n.op == "output")
    norms, flats, pools, inplace = [], [], [], []
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op != "call_function":
            return False
        target = node.target
        if target is aten.batch_norm.default:
            x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
            if training or mean is None or var is None or node.kwargs or output in node.users:
                return False
            norms.append((node, (x, weight, bias, mean, var, momentum, eps)))
        elif target is aten.adaptive_avg_pool2d.default:
            if node.kwargs or output in node.users or list(node.args[1]) not in ([1], [1, 1]):
                return False
            pools.append(node)
        elif target is aten.flatten.using_ints:
            if node.kwargs or output in node.users or len(node.args) not in (2, 3):
                return False
            flats.append(node)
        elif (functional := _out_of_place(node, unchanged)) is not None:
            inplace.append((node, functional))
        elif not (unchanged(target) or getattr(target, "__module__", None) in ("_operator", "operator")):
            return False
    for node, args in norms:
        val = node.meta["val"]
        with graph.inserting_after(node):
            call = graph.call_function(aten._native_batch_norm_legit_no_training.default, args)
        with graph.inserting_after(call):
            item = graph.call_function(operator.getitem, (call, 0))
        call.meta = {**node.meta, "val": (val, val.new_empty((0,)), val.new_empty((0,)))}
        item.meta = dict(node.meta)
        node.replace_all_uses_with(item)
        graph.erase_node(node)
    for node in flats:
        # flatten(x, start, end) -> view(x, sizes) with -1 for the flattened axes and the other sizes read from x
        # (``sym_size``) where they are symbolic, as the decomposition's ``view`` does.
        x, start, end = (*node.args, -1)[:3]
        shape = list(x.meta["val"].shape)
        start, end = start % len(shape), end % len(shape)
        sizes: list[Any] = []
        with graph.inserting_before(node):
            for axis, size in enumerate(shape):
                if start < axis <= end:
                    continue
                if axis == start:
                    sizes.append(-1)
                elif isinstance(size, torch.SymInt):
                    read = graph.call_function(aten.sym_size.int, (x, axis))
                    read.meta = {**node.meta, "val": size}
                    sizes.append(read)
                else:
                    sizes.append(int(size))
            view = graph.call_function(aten.view.default, (x, sizes))
        view.meta = dict(node.meta)
        node.replace_all_uses_with(view)
        graph.erase_node(node)
    for node in pools:  # adaptive_avg_pool2d(x, 1) -> mean(x, [-1, -2], keepdim), as the decomposition writes it
        with graph.inserting_before(node):
            mean = graph.call_function(aten.mean.dim, (node.args[0], [-1, -2], True))
        mean.meta = dict(node.meta)
        node.replace_all_uses_with(mean)
        graph.erase_node(node)
    for node, functional in inplace:  # relu_(x) -> relu(x): x has no other use, nothing else sees the mutation
        node.target = functional
    if norms or flats or pools or inplace:
        graph.lint()
        program.graph_module.recompile()
    return True


def _out_of_place(node: Any, unchanged: Callable[[Any], bool]) -> Any:
    """The functional op for an in-place activation (``aten.relu_`` -> ``aten.relu``, as ``SiLU(inplace=True)``
    traces) whose input is an op's fresh result used by this node alone, or ``None``.

    Functionalization rewrites exactly these to the out-of-place op (nothing else can see the mutation: the input is
    no graph input, no view of another tensor and has no other user)."""
    import torch

    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or len(node.args) != 1 or node.kwargs:
        return None
    name = target._schema.name.split("::")[-1]
    if not (target._schema.is_mutable and name.endswith("_") and name.rstrip("_") in _INPLACE_ACTIVATIONS):
        return None
    functional = getattr(getattr(torch.ops.aten, name.rstrip("_"), None), target._overloadname, None)
    (x,) = node.args
    producer = getattr(x, "target", None)
    if (functional is None or not unchanged(functional) or getattr(x, "op", None) != "call_function"
            or len(x.users) != 1 or not isinstance(producer, torch._ops.OpOverload)
            or producer._schema.is_mutable or any(r.alias_info for r in producer._schema.returns)):
        return None
    return functional


_INPLACE_ACTIVATIONS = frozenset({"relu", "silu", "hardswish", "hardsigmoid", "sigmoid", "gelu", "mish", "tanh"})


@contextlib.contextmanager
def decompose_without_retrace() -> Iterator[None]:
    """Inside: ``torch.onnx.export(program, dynamo=True)`` decomposes ``program`` with ``_decompose_in_place``
    where that is exact, with its own ``run_decompositions`` otherwise.

    The exporter's ``decompose_with_registry`` (torch/onnx/_internal/exporter/_fx_passes.py) builds the
    ONNX-friendly table from the registry and re-traces the program with it: about 40% of a dynamic export of
    the sample detector on a 2-core machine, to rewrite its BatchNorms. Here the same table is built and, when
    the program holds nothing else to decompose, those nodes are rewritten in place (the program is changed:
    only for programs traced here). Private APIs: when they are not as expected, nothing is changed.
    """
    try:
        from torch.onnx._internal.exporter import _decomp, _fx_passes

        original = _fx_passes.decompose_with_registry
        _decomp.create_onnx_friendly_decomposition_table  # noqa: B018 (present, or nothing is changed)
        _decomp.get_onnx_implemented_overloads  # noqa: B018
    except (ImportError, AttributeError):
        yield
        return

    def decompose_with_registry(exported_program: Any, registry: Any) -> Any:
        ops = set(_decomp.get_onnx_implemented_overloads(registry))
        table = _decomp.create_onnx_friendly_decomposition_table(ops)
        try:
            done = _decompose_in_place(exported_program, table)
        except (ImportError, AttributeError, KeyError, TypeError, ValueError):
            done = False
        return exported_program if done else exported_program.run_decompositions(table)

    setattr(_fx_passes, "decompose_with_registry", decompose_with_registry)  # noqa: B010
    try:
        yield
    finally:
        setattr(_fx_passes, "decompose_with_registry", original)  # noqa: B010


@contextlib.contextmanager
def type_promotion_from_meta() -> Iterator[None]:
    """Inside: the ONNX exporter's explicit type promotion reads each node's traced value (``node.meta["val"]``)
    instead of running the node again on fake tensors.

    ``insert_type_promotion_nodes`` (torch/onnx/_internal/exporter/_fx_passes.py) interprets the whole graph with
    fake tensors (torch/onnx/_internal/fx/passes/type_promotion.py, ``_TypePromotionInterpreter``) only to know
    the dtypes of the inputs of the nodes that have a promotion rule; with symbolic shapes every node re-derives
    its size expressions, about a sixth of a dynamic export of the sample detector. The pass never writes those
    values back into unchanged nodes, and ``torch.export`` has already stored them there; so here a node the
    pass does not change returns its stored value, and a node it changes (or one without a stored value) runs
    on fake tensors as before. The graph written is the same. Private APIs: when they are not as expected,
    nothing is changed.
    """
    try:
        import torch.fx
        from torch.onnx._internal.exporter import _fx_passes
        from torch.onnx._internal.fx.passes import type_promotion

        original = _fx_passes.insert_type_promotion_nodes
        interpreter_cls = type_promotion._TypePromotionInterpreter
        get_rule = type_promotion.get_type_promotion_rule
        interpreter_cls._maybe_promote_node  # noqa: B018 (present, or nothing is changed)
        pass_cls = type_promotion.InsertTypePromotion
    except (ImportError, AttributeError):
        yield
        return

    class FromMeta(interpreter_cls):  # type: ignore[misc, valid-type]
        def run_node(self, n: Any) -> Any:
            target, args, kwargs = n.target, n.args, n.kwargs
            if n.op == "call_function" and (rule := get_rule(n, self.type_promotion_table)):
                with self._set_current_node(n):
                    self._maybe_promote_node(n, rule)  # replaces args/kwargs/target where it promotes
            if (n.op == "call_function" and n.target is target and n.args is args and n.kwargs is kwargs
                    and n.meta.get("val") is not None):
                return n.meta["val"]
            return torch.fx.Interpreter.run_node(self, n)

    def insert_type_promotion_nodes(graph_module: Any) -> None:
        for module in graph_module.modules():
            if not isinstance(module, torch.fx.GraphModule):
                raise AssertionError(f"Expected GraphModule, got {type(module)}")
            promote = pass_cls(module)
            promote.interpreter = FromMeta(module, promote.interpreter.type_promotion_table)
            promote.run()

    setattr(_fx_passes, "insert_type_promotion_nodes", insert_type_promotion_nodes)  # noqa: B010
    try:
        yield
    finally:
        setattr(_fx_passes, "insert_type_promotion_nodes", original)  # noqa: B010
