"""The EPContext check reads exactly what protobuf (so onnxruntime) reads, or refuses the file (#13).

Each hostile file is built from raw protobuf bytes the way an attacker would: a second `graph` field
(protobuf merges the two), `embed_mode` sent with another wire type (protobuf leaves `i` at 0 = a path),
an EPContext node hidden in an If branch, a NUL byte in the engine path; and, built with the onnx API (valid
protobuf), EPContext nodes in model-local functions whose engine path the calling node gives by reference. The differential test parses
each file with the real protobuf schema (onnx.ModelProto, functions inlined as onnxruntime inlines them) and
with runtime/infer.py's reader: the reader must either refuse it or see the same EPContext nodes.
"""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest
from infer_fixtures import ctx_model, sidecar
from onnx import TensorProto, helper

ENGINE = b"\x00fake serialized TensorRT plan\xff" * 8


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _ld(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _ctx_node(path: bytes, embed_mode_field: bytes, name: bytes = b"trt_engine") -> bytes:
    """A raw NodeProto: EPContext(com.microsoft) with ep_cache_context=path and the given embed_mode attribute."""
    attr_path = _ld(1, b"ep_cache_context") + _ld(4, path) + _key(20, 0) + _varint(3)  # type STRING
    attr_mode = _ld(1, b"embed_mode") + embed_mode_field
    return (_ld(1, b"x") + _ld(2, b"logits") + _ld(3, name) + _ld(4, b"EPContext")
            + _ld(5, attr_path) + _ld(5, attr_mode) + _ld(7, b"com.microsoft"))


def _graph_with(node: bytes) -> bytes:
    return _ld(1, node)


def _base_model(reference: str = "model.engine", embed_mode: int = 0) -> bytes:
    return ctx_model(reference, embed_mode=embed_mode).SerializeToString()


def _duplicate_graph() -> bytes:
    # The hostile node first, an innocent-looking graph last: a reader keeping the last graph sees only the
    # innocent one, protobuf merges both and onnxruntime loads ../outside.engine.
    model = onnx.ModelProto()
    model.ParseFromString(_base_model())
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()
    evil = _ld(7, _graph_with(_ctx_node(b"../outside.engine", _key(3, 0) + _varint(0), b"evil")))
    return head + evil + _ld(7, graph)


def _embed_mode_wrong_wire_type() -> bytes:
    # embed_mode's `i` sent length-delimited: protobuf keeps it as an unknown field, i stays 0 (a path).
    model = onnx.ModelProto()
    model.ParseFromString(_base_model())
    model.graph.ClearField("node")
    graph = model.graph.SerializeToString() + _ld(1, _ctx_node(b"../outside.engine", _ld(3, b"\x01")))
    model.ClearField("graph")
    return model.SerializeToString() + _ld(7, graph)


def _embed_mode_twice() -> bytes:
    # i = 1 then i = 0 in the same attribute: protobuf keeps the last (0, a path).
    model = onnx.ModelProto()
    model.ParseFromString(_base_model())
    model.graph.ClearField("node")
    node = _ctx_node(b"../outside.engine", _key(3, 0) + _varint(1) + _key(3, 0) + _varint(0))
    graph = model.graph.SerializeToString() + _ld(1, node)
    model.ClearField("graph")
    return model.SerializeToString() + _ld(7, graph)


def _ctx_in_subgraph() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])
    inner = helper.make_node("EPContext", ["x"], ["logits"], name="hidden", domain="com.microsoft",
                             embed_mode=0, ep_cache_context="../outside.engine")
    branch = helper.make_graph([inner], "branch", [], [y])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["logits"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond, x], [y]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def _ctx_attr(literal: str, ref: str | None) -> onnx.AttributeProto:
    attr = helper.make_attribute("ep_cache_context", literal)
    if ref is not None:
        attr.ref_attr_name = ref  # the value comes from the calling node's attribute `ref`
    return attr


def _ctx_in_function(literal: str, ref: str | None, *, in_branch: bool = False,
                     caller_value: str | None = "../outside.engine") -> bytes:
    """A model-local function (com.example:Wrapped) whose body is an EPContext node; the main graph calls it.
    ``ref``: the body's ep_cache_context takes the caller's attribute ``ref`` (onnxruntime's inliner replaces
    the literal with it); ``in_branch``: the EPContext node sits in an If branch inside the function body."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])
    inner = helper.make_node("EPContext", ["x"], ["logits"], name="in_function", domain="com.microsoft",
                             embed_mode=0)
    inner.attribute.append(_ctx_attr(literal, ref))
    if in_branch:
        branch = helper.make_graph([inner], "branch", [], [y])
        body = [helper.make_node("If", ["cond"], ["logits"], then_branch=branch, else_branch=branch)]
        inputs = ["cond", "x"]
    else:
        body, inputs = [inner], ["x"]
    function = helper.make_function("com.example", "Wrapped", inputs, ["logits"], body,
                                    [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                                    attributes=[ref] if ref else [])
    call_attrs = {ref: caller_value} if ref and caller_value is not None else {}
    call = helper.make_node("Wrapped", inputs, ["logits"], name="call", domain="com.example", **call_attrs)
    graph_inputs = ([helper.make_tensor_value_info("cond", TensorProto.BOOL, [])] if in_branch else []) + [x]
    model = helper.make_model(helper.make_graph([call], "g", graph_inputs, [y]), functions=[function],
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1),
                                             helper.make_opsetid("com.example", 1)])
    return model.SerializeToString()


def _ref_attr_in_main_graph() -> bytes:
    model = onnx.ModelProto()
    model.ParseFromString(_base_model())
    attr = next(a for a in model.graph.node[0].attribute if a.name == "ep_cache_context")
    attr.ref_attr_name = "engine_path"
    return model.SerializeToString()


HOSTILE = {
    "duplicate graph": _duplicate_graph,
    "embed_mode wire type": _embed_mode_wrong_wire_type,
    "embed_mode twice": _embed_mode_twice,
    "EPContext in a subgraph": _ctx_in_subgraph,
    # The literal beside ref_attr_name is a decoy: onnxruntime loads the caller's ../outside.engine.
    "EPContext in a function, path by reference": lambda: _ctx_in_function("model.engine", "path"),
    "EPContext in a function, reference not given": lambda: _ctx_in_function("model.engine", "path",
                                                                             caller_value=None),
    "EPContext in a function, literal path": lambda: _ctx_in_function("../outside.engine", None),
    "EPContext in an If branch of a function": lambda: _ctx_in_function("model.engine", "path", in_branch=True),
    "ref_attr_name in the main graph": _ref_attr_in_main_graph,
    "plain model": _base_model,
}


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _protobuf_view(buf: bytes) -> list[tuple[str, int, bytes]]:
    """What onnxruntime's TensorRT EP reads of each EPContext node (onnx_ctx_model_helper.cc: embed_mode
    defaults to 1 when the attribute is absent, else attrs.at("embed_mode").i()), after model-local functions
    are inlined into their callers as onnxruntime does before any EP sees the graph (onnx's inliner: an
    attribute with ref_attr_name takes the caller's value, or is dropped when the caller gives none)."""
    import onnx.inliner

    model = onnx.ModelProto()
    model.ParseFromString(buf)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    view = []
    for node in _all_nodes(model.graph):
        if node.op_type != "EPContext":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["embed_mode"].i if "embed_mode" in attrs else 1
        view.append((node.name, mode, attrs["ep_cache_context"].s if "ep_cache_context" in attrs else None))
    return view


@pytest.mark.parametrize("build", HOSTILE.values(), ids=list(HOSTILE))
def test_reader_refuses_or_agrees_with_protobuf(infer, build):
    buf = build()
    expected = _protobuf_view(buf)
    try:
        summary = infer.parse_onnx_summary(buf)
    except ValueError:  # _ProtoError: refused as ambiguous or malformed
        return
    ctx = [n for n in summary.nodes if n.op_type == "EPContext"]
    if any(n.function or n.ref_attributes for n in ctx):  # the verification refuses these before any file access
        with pytest.raises(infer.Unavailable, match="refused"):
            infer.verify_ep_context("/nonexistent/model_ctx.onnx", ctx, verify=True)
        return
    seen = [(n.name, n.attributes.get("embed_mode", 1), n.attributes.get("ep_cache_context")) for n in ctx]
    assert seen == expected


def test_the_function_cases_are_live_so_refusing_them_means_something():
    """Control: after inlining, the engine path onnxruntime loads is the caller's, not the literal the body shows."""
    view = _protobuf_view(HOSTILE["EPContext in a function, path by reference"]())
    assert [path for _name, _mode, path in view] == [b"../outside.engine"]
    view = _protobuf_view(HOSTILE["EPContext in a function, reference not given"]())
    assert [path for _name, _mode, path in view] == [None]  # the literal is dropped, not used


@pytest.mark.parametrize("build", [b for name, b in HOSTILE.items() if name != "plain model"],
                         ids=[name for name in HOSTILE if name != "plain model"])
def test_hostile_ctx_model_is_refused_not_verified(cli, tmp_path, build):
    # A sidecar that hashes the path string would make the reader "verify" an embedded engine it imagined.
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (tmp_path / "outside.engine").write_bytes(ENGINE)
    (deploy / "model.engine").write_bytes(ENGINE)
    (deploy / "model.engine.json").write_text(json.dumps(sidecar(ENGINE)))
    fake = sidecar(ENGINE, engine_sha256=hashlib.sha256(b"../outside.engine").hexdigest())
    (deploy / "model_ctx.engine.json").write_text(json.dumps(fake))
    path = deploy / "model_ctx.onnx"
    path.write_bytes(build())
    code, out, err = cli(path, "--random")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (2, 3), err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "verified" not in err + out
    assert "refused" in lines[0] or "not a valid ONNX model" in lines[0], lines[0]


def test_nul_byte_in_engine_path_is_a_refusal(cli, tmp_path):
    (tmp_path / "model.engine").write_bytes(ENGINE)
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar(ENGINE)))
    path = tmp_path / "model_ctx.onnx"
    onnx.save(ctx_model(b"model.engine\x00.bak"), str(path))
    code, out, err = cli(path, "--random")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3, err
    assert len(lines) == 1 and "NUL" in lines[0] and "unexpected" not in err, err
