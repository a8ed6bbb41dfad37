"""Every JetPack's target graphs on the onnxruntime and Python that JetPack ships, and ``runtime/infer.py`` run by
that Python.

Per runtime (``jetson_venvs.RUNTIMES``: JetPack 5 = Python 3.8 with onnxruntime 1.14.1 and 1.16.3, 6.0 = 3.10
with 1.17.3, 6.1/6.2 = 3.10 with 1.20.1, 7 = 3.12 with the newest release), the target's graphs of the sample
models and of a user-style deformable-convolution model are exported through the CLI (fp32, fp16, ``--dynamic``,
INT8, every DeformConv lowering that CPU onnxruntime runs there), run in that venv's onnxruntime and compared
with onnxruntime 1.32 here on the same inputs (fp32 rel L2 <= 1e-5, fp16 and INT8 <= 1e-2). ``infer.py`` runs in
the venv on the sample images (same top-1 as here) and on ``--random``. A crash is a failure: every run is a
subprocess and a signal fails the test.

The default run keeps one representative (JetPack 5 with onnxruntime 1.14.1: the release that crashed on our
float16 graphs); the whole matrix is ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from jetson_venvs import RUNTIMES, Runtime, readme_install_line, venv_python, versions
from onnx import TensorProto, helper
from typer.testing import CliRunner

from blocks_export.export.cli import app, with_default_command
from blocks_export.export.targets import ORT_FP16_CRASH, get_target
from blocks_export.runtime import infer
from blocks_export.runtime.parity import rel_l2

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
IMAGES = SAMPLES / "images"
INFER = REPO / "runtime" / "infer.py"
sys.path.insert(0, str(REPO / "tests" / "export"))
import jetson_models  # noqa: E402

TOL = {"fp32": 1e-5, "fp16": 1e-2, "int8": 1e-2}

# Runs one graph on the CPU provider with the feeds of an .npz, writes the outputs to an .npz (Python 3.8 syntax).
RUNNER = """
import sys, numpy as np, onnxruntime as ort
model, feeds, out = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
values = session.run(None, dict(np.load(feeds)))
np.savez(out, *values)
"""


def _invoke(*args: object) -> None:
    result = CliRunner().invoke(app, with_default_command([str(a) for a in args]))
    assert result.exit_code == 0, (args, result.stdout[-2000:], result.stderr[-2000:])


class Graph:
    def __init__(self, path: Path, precision: str, shape: tuple[int, ...]) -> None:
        self.path, self.precision, self.shape = path, precision, shape


def _lowerings(runtime: Runtime) -> list[str]:
    """The DeformConv lowerings CPU onnxruntime runs there: portable always, std from 1.25 (the kernel)."""
    return ["portable", "std"] if runtime.ort_tuple >= (1, 25) else ["portable"]


@pytest.fixture(scope="session")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, str], Graph]:
    """``get(target, kind, lowering)``: the target's graph of one kind, exported through the CLI once."""
    folder = tmp_path_factory.mktemp("jetson_graphs")
    cache: dict[tuple[str, str, str], Graph] = {}
    dcn_pt = folder / "dcn.pt"
    import torch

    torch.save(jetson_models.build(jetson_models.InlineDCNNet, "split", seed=4), dcn_pt)

    def get(target: str, kind: str, lowering: str = "portable") -> Graph:
        key = (target, kind, lowering)
        if key in cache:
            return cache[key]
        out = folder / f"{target}-{kind}-{lowering}.onnx"
        common = ["--to", "onnx", "--target", target, "--deform-conv", lowering, "-o", out, "-q", "--force"]
        model, flags, shape, precision = {
            "classifier-fp32": (SAMPLES / "classifier.pt", [], (1, 1, 32, 32), "fp32"),
            "classifier-fp16": (SAMPLES / "classifier.pt", ["--fp16"], (1, 1, 32, 32), "fp16"),
            "classifier-dynamic": (SAMPLES / "classifier.pt", ["--dynamic"], (2, 1, 40, 48), "fp32"),
            "classifier-int8": (SAMPLES / "classifier.pt", ["--int8", "--calib", IMAGES, "--calib-count", "8"],
                                (1, 1, 32, 32), "int8"),
            "detector-fp32": (SAMPLES / "detector.pt", ["--imgsz", "320"], (1, 3, 320, 320), "fp32"),
            "detector-fp16": (SAMPLES / "detector.pt", ["--imgsz", "320", "--fp16"], (1, 3, 320, 320), "fp16"),
            "detector-dynamic-fp16": (SAMPLES / "detector.pt", ["--imgsz", "320", "--fp16", "--dynamic"],
                                      (1, 3, 256, 384), "fp16"),
            "dcn-fp32": (dcn_pt, ["--imgsz", "48"], (1, 3, 48, 48), "fp32"),
            "dcn-fp16": (dcn_pt, ["--imgsz", "48", "--fp16"], (1, 3, 48, 48), "fp16"),
        }[kind]
        _invoke(model, "--trust-pickle", *common, *flags)
        cache[key] = Graph(out, precision, shape)
        return cache[key]

    return get


def _run_in(python: Path, model: Path, feeds: dict[str, np.ndarray], folder: Path) -> list[np.ndarray]:
    feeds_path, out_path = folder / "feeds.npz", folder / "out.npz"
    np.savez(feeds_path, **feeds)
    done = subprocess.run([str(python), "-c", RUNNER, str(model), str(feeds_path), str(out_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{model.name} on {python}: exit {done.returncode} {done.stderr[-1500:]}"
    with np.load(out_path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    name = onnx.load(str(graph.path), load_external_data=False).graph.input[0].name
    return {name: np.random.default_rng(seed).random(graph.shape, dtype=np.float32)}


def _assert_matches_here(runtime: Runtime, graph: Graph, tmp_path: Path) -> None:
    python = venv_python(runtime)
    feeds = _feeds(graph)
    got = _run_in(python, graph.path, feeds, tmp_path)
    want = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.isfinite(g).all()
        assert rel_l2(w, g) <= TOL[graph.precision], (runtime.key, graph.path.name, rel_l2(w, g))
    worst = max(rel_l2(w, g) for g, w in zip(got, want, strict=True))
    print(f"matrix | {runtime.key} | {graph.path.stem} | rel_l2 {worst:.1e}")


def _infer_json(python: Path | str, *args: object) -> dict:
    done = subprocess.run([str(python), str(INFER), *map(str, args), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"infer.py {args} on {python}: exit {done.returncode}: {done.stderr[-1500:]}"
    return json.loads(done.stdout)


def _assert_infer_py_runs(runtime: Runtime, classifier: Graph, detector: Graph) -> None:
    python = venv_python(runtime)
    there = _infer_json(python, classifier.path, IMAGES)
    here = _infer_json(sys.executable, classifier.path, IMAGES)
    assert [p["topk"][0]["label"] for p in there["predictions"]] == [p["topk"][0]["label"] for p in here["predictions"]]
    assert len(there["predictions"]) == len(list(IMAGES.glob("*.png")))
    rand = _infer_json(python, detector.path, "--random")
    assert rand["outputs"] and all(o.get("nonfinite", 0) == 0 for o in rand["outputs"])


# ---- the default-run representative: JetPack 5, onnxruntime 1.14.1, Python 3.8 ----------------------------------

JP5 = RUNTIMES["jp5-ort1.14"]


def test_readme_jetson_install_line_installs_on_python_38() -> None:
    python = venv_python(JP5)  # built with README's line as written (jetson_venvs)
    found = versions(python)
    assert found["python"].startswith("3.8.") and found["onnxruntime"] == "1.14.1"
    assert int(found["numpy"].split(".")[0]) < 2
    assert "numpy" in readme_install_line() and "pillow" in readme_install_line().lower()


@pytest.mark.parametrize("kind", ["classifier-fp16", "detector-fp16", "classifier-fp32"])
def test_jetpack5_graphs_run_on_onnxruntime_114_and_match(graphs, tmp_path: Path, kind: str) -> None:
    _assert_matches_here(JP5, graphs("jetpack5", kind), tmp_path)


def test_infer_py_runs_on_python_38_with_onnxruntime_114(graphs) -> None:
    _assert_infer_py_runs(JP5, graphs("jetpack5", "classifier-fp16"), graphs("jetpack5", "detector-fp16"))


def _one_node(op: str, dtype: int) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="n")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", dtype, [1, 4, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


def _session_exit(python: Path, path: Path) -> int:
    code = f"import onnxruntime as o; o.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])"
    return subprocess.run([str(python), "-c", code], capture_output=True, timeout=120).returncode


def test_the_ops_onnxruntime_114_crashes_on_in_float16_are_the_ones_the_jetpack5_graph_keeps_float32(
        tmp_path: Path) -> None:
    """The fact behind ``targets.ORT_FP16_CRASH``, re-measured: each op alone in float16 ends 1.14.1's process with
    a signal; in float32, and other float16 activations, it does not."""
    python = venv_python(JP5)
    for op in sorted(ORT_FP16_CRASH.ops) + ["Sigmoid", "LeakyRelu", "Tanh"]:
        for dtype in (TensorProto.FLOAT16, TensorProto.FLOAT):
            path = tmp_path / f"{op}-{dtype}.onnx"
            onnx.save(_one_node(op, dtype), path)
            code = _session_exit(python, path)
            crashes = op in ORT_FP16_CRASH.ops and dtype == TensorProto.FLOAT16
            assert (code < 0) == crashes, (op, TensorProto.DataType.Name(dtype), code)
    assert ORT_FP16_CRASH.ops == infer.FP16_CRASH_OPS
    assert get_target("jetpack5").fp16_fp32_ops() == ORT_FP16_CRASH.ops


def test_infer_py_refuses_a_float16_graph_onnxruntime_114_would_crash_on(graphs, tmp_path: Path) -> None:
    """An fp16 graph made without the jetpack5 target's care (its float16 Relu/HardSwish) gets one line and exit 3
    from infer.py on 1.14.1, never a signal; the jetpack5 export of the same model runs."""
    from blocks_export.export.fp16 import to_fp16

    fp32 = onnx.load(str(graphs("jetpack5", "classifier-fp32").path))
    careless = to_fp16(fp32)
    assert any(n.op_type in ORT_FP16_CRASH.ops for n in careless.graph.node)
    path = tmp_path / "careless.onnx"
    onnx.save(careless, path)
    python = venv_python(JP5)
    assert _session_exit(python, path) < 0  # what a user would get from onnxruntime itself
    done = subprocess.run([str(python), str(INFER), str(path), "--random"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == infer.EXIT_UNAVAILABLE, (done.returncode, done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "onnxruntime 1.14.1" in lines[0] and "1.15 or newer" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "--target jetpack5" in lines[0]


def test_refusal_reads_the_graph_not_the_file_name(tmp_path: Path) -> None:
    """infer.py's check on its own: float16 Relu refused on 1.14, the same Relu behind a Cast to float passes, and
    onnxruntime 1.15 or a TensorRT-first provider chain is never refused. (A graph counts as float16 by its precision
    metadata or a Cast to float16: the script has no type inference.)"""
    relu16 = tmp_path / "relu16.onnx"
    onnx.save(_one_node("Relu", TensorProto.FLOAT16), relu16)
    with pytest.raises(infer.Unavailable, match="Relu"):
        infer.refuse_crashing_graph("1.14.1", str(relu16), [infer.CPU_EP], "fp16")
    infer.refuse_crashing_graph("1.15.1", str(relu16), [infer.CPU_EP], "fp16")
    infer.refuse_crashing_graph("1.14.1", str(relu16), [infer.TRT_EP, infer.CPU_EP], "fp16")
    casted = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT), helper.make_node("Relu", ["x32"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 16)])
    path = tmp_path / "casted.onnx"
    onnx.save(casted, path)
    infer.refuse_crashing_graph("1.14.1", str(path), [infer.CPU_EP], "fp16")
    fp32_relu = tmp_path / "relu32.onnx"
    onnx.save(_one_node("Relu", TensorProto.FLOAT), fp32_relu)
    infer.refuse_crashing_graph("1.14.1", str(fp32_relu), [infer.CPU_EP], "fp32")


def test_int8_graph_gives_every_consumer_its_own_dequantize(graphs) -> None:
    """onnxruntime 1.16 duplicates a shared per-channel DequantizeLinear itself and loses its axis (the slow matrix
    runs the graph there); the INT8 export leaves nothing for it to duplicate."""
    model = onnx.load(str(graphs("jetpack5", "classifier-int8").path))
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    reads = [i for n in model.graph.node for i in n.input if i in dq]
    assert dq and len(reads) == len(set(reads))


# ---- the whole matrix (slow) -------------------------------------------------------------------------------------

KINDS = ["classifier-fp32", "classifier-fp16", "classifier-dynamic", "classifier-int8", "detector-fp32",
         "detector-fp16", "detector-dynamic-fp16", "dcn-fp32", "dcn-fp16"]
MATRIX = [(r, k, low) for r in RUNTIMES for k in KINDS for low in _lowerings(RUNTIMES[r])
          if low == "portable" or k.startswith(("dcn", "classifier-fp"))]


@pytest.mark.slow
@pytest.mark.parametrize(("key", "kind", "lowering"), MATRIX, ids=[f"{r}-{k}-{low}" for r, k, low in MATRIX])
def test_target_graph_runs_on_the_jetpack_onnxruntime_and_matches(graphs, tmp_path: Path, key: str, kind: str,
                                                                 lowering: str) -> None:
    runtime = RUNTIMES[key]
    _assert_matches_here(runtime, graphs(runtime.target, kind, lowering), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(RUNTIMES))
def test_infer_py_runs_on_every_jetpack_python(graphs, key: str) -> None:
    runtime = RUNTIMES[key]
    _assert_infer_py_runs(runtime, graphs(runtime.target, "classifier-fp16"), graphs(runtime.target, "detector-fp16"))
