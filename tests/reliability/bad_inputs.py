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


PT2_PAYLOAD_PLACES = ("sample_inputs", "pickled_constant", "pickled_weight")


class _WithConstant:
    """A tiny program with a tensor constant and a weight: both places where a ``.pt2`` may hold pickles."""

    @staticmethod
    def build() -> object:
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
                self.k = torch.ones(4, 1, 1)  # a plain attribute: torch.export keeps it as a constant

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.conv(x) + self.k

        return torch.export.export(Net().eval(), (torch.rand(1, 3, 8, 8),))


def hostile_pt2(path: Path, place: str, payload: object) -> Path:
    """A genuine ``torch.export.save`` archive with ``payload`` pickled into ``place`` (members rewritten as
    an attacker would: the JSON config switched to ``use_pickle`` where the loader needs it)."""
    import io
    import json
    import pickle
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.export.save(_WithConstant.build(), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    top = next(iter(members)).split("/", 1)[0]

    def switch_to_pickle(config_name: str, file_prefix: str) -> str:
        config = json.loads(members[f"{top}/data/{config_name}"])
        entry = next(e for e in config["config"].values() if e["path_name"].startswith(file_prefix))
        entry["use_pickle"] = True
        members[f"{top}/data/{config_name}"] = json.dumps(config).encode()
        return entry["path_name"]

    if place == "sample_inputs":
        inner = io.BytesIO()
        torch.save(payload, inner)  # a torch.save zip inside the archive, as torch.export.save writes it
        name = next(n for n in members if "/data/sample_inputs/" in n)
        members[name] = inner.getvalue()
    elif place == "pickled_constant":
        file = switch_to_pickle("constants/model_constants_config.json", "tensor_")
        members[f"{top}/data/constants/{file}"] = pickle.dumps(payload, protocol=2)  # a bare pickle
    elif place == "pickled_weight":
        file = switch_to_pickle("weights/model_weights_config.json", "weight_")
        inner = io.BytesIO()
        torch.save({"w": payload}, inner)
        members[f"{top}/data/weights/{file}"] = inner.getvalue()
    else:
        raise ValueError(f"unknown place {place!r}")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


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
