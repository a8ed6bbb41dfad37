"""Reading an ONNX file that a check, an inspection, a build or a validation run is given: parse it without its
weights and refuse, in one line (``InputError``), what no runtime loads.

``read_onnx`` refuses an empty, corrupt or truncated file and a graph no runtime loads (IR version, dangling
inputs, cycles, untyped outputs); ``load_onnx`` adds the external-data files beside the model, tensors that hold
less data than they declare, and onnx's full checker. Reads the file (and the names of its external-data
files); writes nothing.
"""

from __future__ import annotations

import os

import onnx
import onnx.defs
from onnx import TensorProto

from .errors import InputError


def read_onnx(model: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse the ONNX file at ``model`` (no external data); ``InputError`` (one line) for a corrupt, truncated
    or absurdly nested file (protobuf's DecodeError, onnx's errors, a RecursionError all end here) and for a
    graph no runtime loads (``_check_structure``)."""
    path = os.fspath(model)
    # An empty file parses as an empty ModelProto (protobuf's wire format has no header), which would
    # "pass" with 0 nodes: refuse it, and anything else that decodes to a model without a graph.
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty; export the model again or copy it again")
    try:
        # The weights are not needed to check operators; large external data stays on disk.
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and onnx's own errors share no useful base class
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path}: not a valid ONNX model ({type(e).__name__}: {first}); the file may be "
                         "truncated or corrupted: export it again or copy it again") from None
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph in the file); export it again or copy it again")
    _check_structure(proto, path)
    return proto


def load_onnx(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """The model at ``model``; ``InputError`` (one line) for a file that is not a usable ONNX model."""
    if isinstance(model, onnx.ModelProto):
        _check_tensor_data(model, "the model")
        return model
    path = os.fspath(model)
    proto = read_onnx(path)
    _check_external_data(proto, path)
    _check_tensor_data(proto, path)
    _run_onnx_checker(proto, path)
    return proto


def _check_structure(proto: onnx.ModelProto, path: str) -> None:
    """Refuse, in one line, a graph onnxruntime and the TensorRT parser refuse before any operator is looked at:
    an IR version newer than this onnx reads, a node input nothing produces, a cycle, a graph output nothing
    produces or without a type. Kahn's order over the top-level nodes (a subgraph's outer-scope names are the
    top level's, so they are not followed here)."""
    if proto.ir_version > onnx.IR_VERSION:
        raise InputError(f"{path}: IR version {proto.ir_version} is newer than any this toolkit reads "
                         f"(onnx {onnx.__version__} reads up to {onnx.IR_VERSION}); export it again with an "
                         "older opset or update onnx")
    graph = proto.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.name for t in graph.sparse_initializer}
    produced_by: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if out:
                produced_by[out] = k
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for k, node in enumerate(graph.node):
        for name in node.input:
            if name in known:
                continue
            if name not in produced_by:
                raise InputError(f"{path}: node {node.name or node.op_type!r} reads {name!r}, which no node, graph "
                                 "input or initializer produces; export the model again")
            waiting[k] += 1
            readers.setdefault(produced_by[name], []).append(k)
    ready = [k for k, n in enumerate(waiting) if n == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if done != len(graph.node):
        stuck = next(graph.node[k] for k, n in enumerate(waiting) if n > 0)
        raise InputError(f"{path}: the graph has a cycle (through node {stuck.name or stuck.op_type!r}); "
                         "export the model again")
    for out in graph.output:
        if out.name not in produced_by and out.name not in known:
            raise InputError(f"{path}: graph output {out.name!r} is produced by no node; export the model again")
        if not out.type.HasField("tensor_type") and not out.type.HasField("sequence_type") \
                and not out.type.HasField("map_type") and not out.type.HasField("optional_type"):
            raise InputError(f"{path}: graph output {out.name!r} has no type; export the model again")


_PLUGIN_DOMAIN = "blocks_export.unknown_op"  # where the checker sees default-domain operators onnx does not define


def _run_onnx_checker(proto: onnx.ModelProto, path: str) -> None:
    """onnx's full checker (strict shape inference included) on the file at ``path``, after the checks above
    (they say more precisely what is wrong): a graph it refuses is one line. Given the path, the checker finds
    external data beside the model without loading it. Operators onnx does not define (TensorRT plugins, in
    their own domain or the default one; com.microsoft) are left to the per-node rules. A graph input or output without a shape (onnxruntime
    takes it, onnx's checker requires one) is not run through it."""
    if any(v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
           for v in (*proto.graph.input, *proto.graph.output)):
        return
    target: onnx.ModelProto | str = path
    unknown = [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:  # a TensorRT plugin written in the default domain: checked as a custom-domain node, like others
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            return  # the copy would not find the external data the path does
        target = onnx.ModelProto()
        target.CopyFrom(proto)
        for node in target.graph.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                node.domain = _PLUGIN_DOMAIN
        target.opset_import.append(onnx.helper.make_opsetid(_PLUGIN_DOMAIN, 1))
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: the ONNX checker refuses the graph ({first}); export the model again") from None


def _check_tensor_data(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a tensor that declares more elements than it holds (onnxruntime refuses such a model at load:
    a 2^50-element initializer with no data must not PASS)."""
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            continue
        declared = 1
        for d in tensor.dims:
            declared *= d
        if declared == 0:
            continue
        held = (len(tensor.float_data) + len(tensor.int32_data) + len(tensor.int64_data) + len(tensor.double_data)
                + len(tensor.uint64_data) + len(tensor.string_data))
        if not held and tensor.HasField("raw_data"):
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            except Exception:  # a data type numpy has no dtype for (4-bit, float8): not checked by size
                itemsize = 0
            if itemsize and tensor.data_type not in _SUB_BYTE_TYPES and len(tensor.raw_data) != declared * itemsize:
                raise InputError(f"{path}: tensor {tensor.name!r} declares {declared} elements but holds "
                                 f"{len(tensor.raw_data)} bytes; export the model again")
            continue
        if not held:
            raise InputError(f"{path}: tensor {tensor.name!r} declares {declared} elements and holds no data; "
                             "export the model again")


_SUB_BYTE_TYPES = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
                   if hasattr(TensorProto, n)}


def _check_external_data(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a model whose external-data files are missing: the TensorRT parser and onnxruntime need them."""
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        # onnxruntime refuses a location that is absolute or leaves the model's folder
        # (onnxruntime/core/framework/tensorprotoutils.cc, ValidateExternalDataPath); a symlink out of it
        # is refused here too, so what `check` passes is what is loaded from the folder.
        real_folder = os.path.realpath(folder)
        resolved = os.path.realpath(os.path.join(real_folder, location))
        if (not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/")
                or os.path.commonpath([real_folder, resolved]) != real_folder):
            raise InputError(f"{path}: tensor {tensor.name!r} is stored in external-data file {location!r}, "
                             f"outside the model's folder {folder}; copy the data file beside the model and "
                             "reference it by file name")
        if not os.path.isfile(os.path.join(folder, location)):
            raise InputError(f"{path}: tensor {tensor.name!r} is stored in external-data file {location!r}, "
                             f"which is not in {folder}; copy it beside the model")
