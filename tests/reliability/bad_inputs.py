"""Hostile and broken files for the reliability tests: ONNX models, checkpoints, engines (all tiny)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_CASES = ("empty", "random_bytes", "truncated", "unknown_domain", "opset_too_new", "external_data_missing",
              "ctx_escape_parent", "ctx_escape_absolute")


def relu_model(opset: int = 17, *, weight: bool = False) -> onnx.ModelProto:
    """[1, 3, 8, 8] -> Relu (-> + W) -> [1, 3, 8, 8]; ``weight`` adds a 3x8x8 initializer (truncation target)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 8, 8])
    nodes = [helper.make_node("Relu", ["images"], ["r" if weight else "output0"], name="relu")]
    inits = []
    if weight:
        w = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)  # (C, H, W)
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Add", ["r", "w"], ["output0"], name="add"))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def write_onnx_case(case: str, folder: Path) -> Path:
    """Write the bad ONNX file ``case`` into ``folder`` (a fresh folder per case); returns its path."""
    path = folder / "model.onnx"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        data = relu_model(weight=True).SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif case == "unknown_domain":
        model = relu_model()
        model.graph.node.append(helper.make_node("Frobnicate", ["output0"], ["extra"], name="frob",
                                                 domain="com.example.unknown"))
        model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 3, 8, 8]))
        model.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
        onnx.save(model, path)
    elif case == "opset_too_new":
        onnx.save(relu_model(opset=onnx.defs.onnx_opset_version() + 5), path)
    elif case == "external_data_missing":
        onnx.save(relu_model(weight=True), path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=0)
        (folder / "model.onnx.data").unlink()
    elif case in ("ctx_escape_parent", "ctx_escape_absolute"):
        path = folder / "model_ctx.onnx"
        outside = folder.parent / "outside.engine"
        outside.write_bytes(b"not an engine")
        ref = "../../outside.engine" if case == "ctx_escape_parent" else str(outside.resolve())
        write_ctx(path, ref)
    else:
        raise ValueError(f"unknown case {case!r}")
    return path


def write_ctx(path: Path, ref: str) -> None:
    """An EPContext model (as export/epcontext.py writes it) whose ``ep_cache_context`` is ``ref``, unchecked."""
    src = relu_model()
    node = helper.make_node("EPContext", ["images"], ["output0"], name="ctx", domain="com.microsoft",
                            main_context=1, embed_mode=0, ep_cache_context=ref,
                            source="TensorrtExecutionProvider")
    graph = helper.make_graph([node], "ctx", list(src.graph.input), list(src.graph.output))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def listing(folder: Path) -> list[str]:
    return sorted(os.path.relpath(p, folder) for p in Path(folder).rglob("*"))


def cli(*args: object) -> tuple[int, str, str]:
    """Run ``blocks-export ARGS`` in-process: (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from blocks_export.export.cli import app, with_default_command

    result = CliRunner().invoke(app, with_default_command([str(a) for a in args]))
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str, prefix: str = "blocks-export: error:") -> str:
    """The single refusal line of ``stderr`` (asserts there is exactly one and no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a ``blocks-export`` subprocess: the test shim (``shim/sitecustomize.py``) and test modules."""
    here = Path(__file__).resolve().parent
    path = [str(here / "shim"), str(here), str(here.parent / "export"), str(here.parent)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", **extra}


def signals_as_at_a_terminal() -> None:
    """``preexec_fn`` of a subprocess that is sent signals: SIGINT back to its default, as a terminal's foreground
    job has it (a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: One payload, ``os.system(command)``, in the raw pickle forms an attacker writes by hand (opcode by opcode):
#: a plain GLOBAL; STACK_GLOBAL on two strings; the strings routed through the memo (MEMOIZE, BINPUT/BINGET);
#: and the names built at load time by an allowed call, ``_codecs.encode("bf", "rot13") == "os"``, so that no
#: disassembler or scan of the bytes sees ``os`` or ``system`` (the last strings before STACK_GLOBAL, pushed and
#: popped, are an allowed name).
PICKLE_FORMS = ("global", "stack_global", "memo_memoize", "memo_binput", "rot13")
#: Members of a ``.pt2`` that torch.export.load unpickles with a code-running unpickler (directly, or as the
#: fallback after a weights-only try).
PT2_PICKLE_PLACES = ("sample_inputs", "pickled_constant", "pickled_weight", "opaque_constant")
#: No pickle at all: strings of the program's JSON that torch.export.load evaluates (a symbolic shape's
#: ``expr_str`` goes through ``sympy.sympify``; a graph input's name is pasted into generated Python source).
PT2_JSON_FORMS = ("sympy_expr", "input_name")


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE (protocol 4)


def payload_pickle(form: str, command: str) -> bytes:
    """Raw pickle bytes that run ``os.system(command)`` when a full unpickler loads them (see ``PICKLE_FORMS``)."""
    call = _unicode(command) + b"\x85R."  # (command,) TUPLE1, REDUCE, STOP
    if form == "global":
        return b"\x80\x02cos\nsystem\nX" + len(command.encode()).to_bytes(4, "little") + command.encode() + b"\x85R."
    if form == "stack_global":
        return b"\x80\x04" + _unicode("os") + _unicode("system") + b"\x93" + call
    if form == "memo_memoize":  # both names memoized and popped, then fetched back from the memo
        return (b"\x80\x04" + _unicode("os") + b"\x940" + _unicode("system") + b"\x940" + b"h\x00h\x01\x93" + call)
    if form == "memo_binput":
        return b"\x80\x04" + _unicode("os") + b"q\x070" + _unicode("system") + b"q\x090" + b"h\x07h\x09\x93" + call
    if form == "rot13":
        rot13 = _unicode("rot13") + b"\x86R"  # (text, "rot13") TUPLE2, REDUCE -> _codecs.encode(text, "rot13")
        decoy = _unicode("collections") + _unicode("OrderedDict") + b"00"  # pushed and popped: the last names read
        return (b"\x80\x04" + _unicode("_codecs") + _unicode("encode") + b"\x93\x94"  # memo 0: _codecs.encode
                + _unicode("bf") + rot13 + b"h\x00" + _unicode("flfgrz") + rot13 + decoy + b"\x93" + call)
    raise ValueError(f"unknown pickle form {form!r}")


def torch_zip_around(pickle_bytes: bytes) -> bytes:
    """A ``torch.save`` zip whose ``data.pkl`` is ``pickle_bytes`` (the envelope torch.load opens)."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save(torch.zeros(1), buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


class _WithConstant:
    """A tiny program with a tensor constant and a weight: both places where a ``.pt2`` may hold pickles.
    ``dynamic``: its height is a symbolic dimension (the JSON then holds a sympy ``expr_str``)."""

    @staticmethod
    def build(dynamic: bool = False) -> object:
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
                self.k = torch.ones(4, 1, 1)  # a plain attribute: torch.export keeps it as a constant

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.conv(x) + self.k

        shapes = {"x": {2: torch.export.Dim("h", min=4, max=64)}} if dynamic else None
        return torch.export.export(Net().eval(), (torch.rand(1, 3, 8, 8),), dynamic_shapes=shapes)


def _pt2_members(dynamic: bool = False) -> tuple[dict[str, bytes], str]:
    """The members of a genuine ``torch.export.save`` archive, and its top folder."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.export.save(_WithConstant.build(dynamic), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    return members, next(iter(members)).split("/", 1)[0]


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def hostile_pt2(path: Path, place: str, payload: bytes) -> Path:
    """A genuine ``torch.export.save`` archive with the raw pickle ``payload`` in ``place`` (``PT2_PICKLE_PLACES``),
    rewritten as an attacker would: the JSON config switched to ``use_pickle`` where the loader needs it."""
    import json

    members, top = _pt2_members()

    def config(name: str) -> dict:  # type: ignore[type-arg]
        return json.loads(members[f"{top}/data/{name}"])  # type: ignore[no-any-return]

    def switch_to_pickle(config_name: str, file_prefix: str) -> str:
        cfg = config(config_name)
        entry = next(e for e in cfg["config"].values() if e["path_name"].startswith(file_prefix))
        entry["use_pickle"] = True
        members[f"{top}/data/{config_name}"] = json.dumps(cfg).encode()
        return str(entry["path_name"])

    if place == "sample_inputs":  # a torch.save zip inside the archive, as torch.export.save writes it
        members[next(n for n in members if "/data/sample_inputs/" in n)] = torch_zip_around(payload)
    elif place == "pickled_constant":  # a bare pickle: torch.load's legacy reader unpickles it first thing
        file = switch_to_pickle("constants/model_constants_config.json", "tensor_")
        members[f"{top}/data/constants/{file}"] = payload
    elif place == "pickled_weight":
        file = switch_to_pickle("weights/model_weights_config.json", "weight_")
        members[f"{top}/data/weights/{file}"] = torch_zip_around(payload)
    elif place == "opaque_constant":  # an opaque object: torch.export.load calls pickle.loads on it
        cfg = config("constants/model_constants_config.json")
        cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                 "tensor_meta": None}
        members[f"{top}/data/constants/model_constants_config.json"] = json.dumps(cfg).encode()
        members[f"{top}/data/constants/opaque_obj_0"] = payload
    else:
        raise ValueError(f"unknown place {place!r}")
    return _write_zip(path, members)


def hostile_pt2_json(path: Path, form: str, command: str) -> Path:
    """A genuine ``torch.export.save`` archive without any pickle payload whose JSON runs ``command`` when
    torch.export.load reads it (``PT2_JSON_FORMS``)."""
    import json

    members, top = _pt2_members(dynamic=form == "sympy_expr")
    name = f"{top}/models/model.json"
    text = members[name].decode()
    code = f"__import__('os').system({command!r})"
    if form == "sympy_expr":
        expr = json.loads(text)["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][2]["as_expr"]["expr_str"]
        text = text.replace(json.dumps(expr), json.dumps(f"{code} or {expr}"))
    elif form == "input_name":  # the input "x" becomes "x=<code>": a default value in the generated forward
        text = text.replace('"x"', json.dumps(f"x={code}"))
    else:
        raise ValueError(f"unknown form {form!r}")
    members[name] = text.encode()
    return _write_zip(path, members)


def tiny_model_file(folder: Path) -> Path:
    """A full-pickle checkpoint of a tiny conv model in ``folder`` (exports in a second)."""
    import torch
    from torch import nn

    path = folder / "tiny.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), path)
    return path


def export_tiny(source: Path, output: Path, *extra: str) -> tuple[int, str, str]:
    """``blocks-export SOURCE --to onnx`` at 8 px into ``output``, quietly, with ``extra`` options."""
    return cli(source, "--to", "onnx", "--trust-pickle", "--imgsz", "8", "--quiet", "-o", output, *extra)
