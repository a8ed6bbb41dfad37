"""``blocks-export profile`` and ``--profile``: per-block cost tables from onnxruntime's profiler and from a TensorRT
layer profile, checked through the CLI on the sample detector, and their node-to-block mapping piece by piece."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from blocks_export.export import profile as P
from blocks_export.export.diagnose import SCOPES_KEY
from blocks_export.export.profile_blocks import _ort_origin

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "blocks-export"
DETECTOR = ROOT / "sample_models" / "detector.pt"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The sample detector exported the way the README's first command does, with ``--profile --json``."""
    out = tmp_path_factory.mktemp("profile") / "detector.onnx"
    proc = _cli(str(DETECTOR), "--to", "onnx", "--trust-pickle", "-o", str(out), "--profile", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout)


def _blocks_of_report(report: dict) -> list[str]:
    return [b["name"] for b in report["blocks"]["replaced"]]


# --- acceptance: the sample detector through the CLI ---------------------------------------------------------

def test_profile_lists_every_rewritten_block_and_its_parts_sum_to_the_measured_whole(detector):
    onnx_path, report = detector
    proc = _cli("profile", str(onnx_path), "--json", "--runs", "8", "--threads", "2", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    names = [p["name"] for p in doc["parts"]]
    rewritten = _blocks_of_report(report)
    assert len(rewritten) == 6 and names[:len(rewritten)] == rewritten  # every instance, in the report's order
    assert names[-1] == P.OUTSIDE
    assert all(p["ms"] > 0 and p["nodes"] > 0 for p in doc["parts"])  # each block ran kernels of its own
    parts = sum(p["ms"] for p in doc["parts"])
    assert abs(parts - doc["whole_ms"]) <= 0.10 * doc["whole_ms"], (parts, doc["whole_ms"])
    assert doc["inputs"] == {"images": [1, 3, 640, 640]}  # the export shape recorded in the graph


def test_export_profile_flag_adds_the_same_table_to_the_report_and_a_chart_beside_the_onnx(detector):
    onnx_path, report = detector
    costs = report["profile"]
    assert report["status"] == "PASSED"
    assert [p["name"] for p in costs["parts"]] == _blocks_of_report(report) + [P.OUTSIDE]
    assert costs["chart"] == str(P.chart_path(onnx_path))
    assert Path(costs["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_terminal_table_names_the_chart_and_without_matplotlib_says_how_to_get_it(detector, tmp_path,
                                                                                   monkeypatch, capsys):
    from blocks_export.export import cli

    onnx_path, _ = detector
    model = tmp_path / "m.onnx"
    shutil.copy(onnx_path, model)
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", str(model), "--runs", "1", "--warmup", "0"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"bar chart: {tmp_path / 'm.profile.png'}" in out
    assert "backbone.9" in out and "ACmix" in out and "whole run" in out
    (tmp_path / "m.profile.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", str(model), "--runs", "1", "--warmup", "0"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert P.PLOT_HINT in out
    assert not (tmp_path / "m.profile.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize(("args", "match"), [
    (["missing.onnx"], "no such file"),
    (["model.pt"], "not an ONNX model"),
    (["model.onnx", "--runs", "0"], "at least one run"),
    (["model.onnx", "--engine", "model.onnx", "--trt-profile", "model.onnx"], "give one"),
    (["model.onnx", "--trt-layer-info", "model.onnx"], "goes with --trt-profile"),
    (["model.onnx", "--trt-profile", "model.pt"], "not a trtexec profile"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, match):
    (tmp_path / "model.pt").write_bytes(b"\x80\x02not onnx")
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "model.onnx")
    proc = _cli("profile", *args, "--no-plot", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr


def test_a_dynamic_graph_without_export_shape_asks_for_shape_and_takes_it(tmp_path):
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "dyn.onnx")
    proc = _cli("profile", str(tmp_path / "dyn.onnx"), "--no-plot")
    assert proc.returncode == 2 and "--shape" in proc.stderr, proc.stderr
    proc = _cli("profile", str(tmp_path / "dyn.onnx"), "--no-plot", "--shape", "4x3", "--json", "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["inputs"] == {"x": [4, 3]}
    assert [p["name"] for p in doc["parts"]] == [P.OUTSIDE]
    assert any("no `blocks` metadata" in n for n in doc["notes"])


@pytest.mark.slow
def test_profile_of_the_torchscript_fp16_detector_places_the_casts_and_lists_every_block(tmp_path):
    """jetpack5: TorchScript node names instead of scope metadata, and the fp16 step's Casts."""
    out = tmp_path / "det.onnx"
    proc = _cli(str(DETECTOR), "--to", "onnx", "--trust-pickle", "-o", str(out), "--target", "jetpack5", "--fp16",
                "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    proc = _cli("profile", str(out), "--json", "--runs", "5", "--threads", "2", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [p["name"] for p in doc["parts"]] == _blocks_of_report(report) + [P.OUTSIDE]
    assert abs(doc["parts_ms"] - doc["whole_ms"]) <= 0.10 * doc["whole_ms"]
    graph = onnx.load(out, load_external_data=False).graph
    blocks = P.node_blocks(onnx.load(out, load_external_data=False))
    casts = [n for n in graph.node if n.op_type == "Cast" and "/backbone.9/" in n.name]
    assert casts and all(blocks[n.name] == "backbone.9" for n in casts)


# --- the mapping, piece by piece -------------------------------------------------------------------------------

def _node(op: str, inputs: list[str], outputs: list[str], name: str, scopes: list[str] | None = None):
    n = helper.make_node(op, inputs, outputs, name=name)
    if scopes is not None:
        n.metadata_props.add(key=SCOPES_KEY, value=repr(scopes + ["op"]))
    return n


def test_module_paths_read_dynamo_scopes_and_torchscript_names():
    assert P.module_paths(_node("Relu", ["a"], ["b"], "n", ["", "backbone", "backbone.9"])) == \
        ["backbone", "backbone.9"]
    assert P.module_paths(_node("Conv", ["a"], ["b"], "/backbone.9/f/Conv")) == ["backbone.9", "backbone.9.f"]
    assert P.module_paths(_node("Cast", ["a"], ["b"], "images_cast_to_/backbone.0/conv/Conv")) == []
    # Ultralytics models: modules named inside the module that called them (C2f's "m.0"), by both exporters
    assert P.module_paths(_node("DeformConv", ["a"], ["b"], "n", ["", "model.21", "model.21.0", "m.0", "m.0.cv2"])) \
        == ["model.21", "model.21.0", "model.21.0.m.0", "model.21.0.m.0.cv2"]
    assert P.module_paths(_node("Conv", ["a"], ["b"], "/model.9/model.9.1/cv1/conv/Conv")) == \
        ["model.9", "model.9.1", "model.9.1.cv1", "model.9.1.cv1.conv"]


def _graph(nodes):
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    model.metadata_props.add(key="blocks_export.blocks",
                             value=json.dumps([{"name": "a", "recognized_as": "CA"},
                                               {"name": "a.inner", "recognized_as": "ACmix"},
                                               {"name": "b", "recognized_as": "DCN"}]))
    return model


def test_nodes_without_a_path_take_the_block_their_neighbours_share():
    model = _graph([
        _node("Relu", ["x"], ["t1"], "n1", ["a"]),
        _node("Cast", ["t1"], ["t2"], "c1"),  # between two nodes of a: a
        _node("Cast", ["t2"], ["t3"], "c2"),  # a chain of them: a
        _node("Mul", ["t3"], ["t4"], "n2", ["a", "a.inner", "a.inner.q"]),  # the deepest block
        _node("Cast", ["t4"], ["t5"], "c3"),  # between a.inner and b: outside
        _node("Relu", ["t5"], ["t6"], "n3", ["b"]),
        _node("Relu", ["t6"], ["t7"], "n4", ["head"]),  # in no block
    ])
    assert P.node_blocks(model) == {"n1": "a", "c1": "a", "c2": "a", "n2": "a.inner", "c3": None, "n3": "b",
                                    "n4": None}


@pytest.mark.parametrize(("name", "origin"), [
    ("fused node_linear_1", "node_linear_1"), ("getitem_4_nchwc", "getitem_4"),
    ("node_MatMul_199/MatmulTransposeFusion/", "node_MatMul_199"), ("node_silu/QuickGeluFusion/", "node_silu"),
    ("ReorderOutput_token_81", "ReorderOutput"), ("node_Conv_3", "node_Conv_3"),
])
def test_onnxruntime_optimiser_names_lead_back_to_the_written_node(name, origin):
    assert _ort_origin(name) == origin


def test_every_kernel_of_a_small_twin_graph_is_placed_in_its_block(tmp_path):
    """onnxruntime fuses and reorders (NCHWc) the ACmix twin; every kernel still lands in the block."""
    import torch

    from blocks_export.blocks import ACmix, randomize_, to_export
    from blocks_export.export.onnx_export import translation_table

    twin = to_export(randomize_(ACmix(16, 16), seed=1).eval()).eval()
    program = torch.onnx.export(twin, (torch.randn(1, 16, 24, 24),), dynamo=True, opset_version=18, verbose=False,
                                custom_translation_table=translation_table(18))
    model = program.model_proto
    model.metadata_props.add(key="blocks_export.blocks", value=json.dumps([{"name": "mix", "recognized_as": "ACmix"}]))
    for n in model.graph.node:  # the whole graph is one block instance named "mix", as if nested in a model
        kept = [(p.key, p.value) for p in n.metadata_props if p.key != SCOPES_KEY]
        del n.metadata_props[:]
        for key, value in [*kept, (SCOPES_KEY, repr(["mix", "op"]))]:
            n.metadata_props.add(key=key, value=value)
    onnx.save(model, tmp_path / "twin.onnx")
    costs = P.profile_onnx(tmp_path / "twin.onnx", runs=2, warmup=1, threads=1)
    assert [p.name for p in costs.parts] == ["mix", P.OUTSIDE]
    assert costs.parts[1].nodes == 0 and costs.parts[0].nodes > 0


# --- TensorRT: layer names, a trtexec profile, the engine profiler ----------------------------------------------

ORDER = {n: i for i, n in enumerate(["a", "b", "c", "d", "e", "/m.1/Conv", "/m.1/Relu"])}


@pytest.mark.parametrize(("layer", "metadata", "nodes"), [
    ("a", "", ["a"]),
    ("a + b", "", ["a", "b"]),
    ("PWN(PWN(b, c), d)", "", ["b", "c", "d"]),
    ("{ForeignNode[b...d]}", "", ["b", "c", "d"]),
    ("Reformatting CopyNode for Input Tensor 0 to c", "", ["c"]),
    ("/m.1/Conv + /m.1/Relu", "", ["/m.1/Conv", "/m.1/Relu"]),
    ("__myl_MulAdd_0x1", "[ONNX Layer: d]\x1f[ONNX Layer: e]", ["d", "e"]),
    ("[trainStation1]", "", []),
])
def test_engine_layer_names_and_metadata_lead_to_their_onnx_nodes(layer, metadata, nodes):
    assert P.layer_nodes(layer, metadata, ORDER) == nodes


def _trtexec_profile(graph: onnx.GraphProto, ms_per_node: float) -> tuple[list[dict], dict[str, float]]:
    """A profile in the form ``trtexec --exportProfile`` writes for an engine of ``graph``, its layers named in
    TensorRT's documented forms (built here from the graph's node names: no TensorRT on this machine): runs of
    nodes fused as ``A + B``, every third run as a ``{ForeignNode[first...last]}`` region, plus one reformat copy
    that names no node. Returns it and the expected ms per node."""
    names = [n.name for n in graph.node]
    rows: list[dict] = [{"count": 50}]
    expected = {}
    for k, start in enumerate(range(0, len(names), 3)):
        group = names[start:start + 3]
        layer = f"{{ForeignNode[{group[0]}...{group[-1]}]}}" if k % 3 == 2 else " + ".join(group)
        rows.append({"name": layer, "timeMs": 50 * ms_per_node * len(group), "averageMs": ms_per_node * len(group),
                     "medianMs": ms_per_node * len(group), "percentage": 1.0})
        expected.update({n: ms_per_node for n in group})
    rows.append({"name": "Reformatting CopyNode for Network Input images", "averageMs": 0.5, "timeMs": 25.0})
    return rows, expected


def test_a_trtexec_profile_of_the_detector_maps_onto_its_blocks(detector, tmp_path):
    onnx_path, report = detector
    model = onnx.load(onnx_path, load_external_data=False)
    rows, per_node = _trtexec_profile(model.graph, 0.01)
    (tmp_path / "prof.json").write_text(json.dumps(rows))
    proc = _cli("profile", str(onnx_path), "--trt-profile", str(tmp_path / "prof.json"), "--json", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [p["name"] for p in doc["parts"]] == _blocks_of_report(report) + [P.OUTSIDE]
    assert doc["runs"] == 50
    total = sum(per_node.values()) + 0.5
    assert doc["whole_ms"] == pytest.approx(total) and doc["parts_ms"] == pytest.approx(total)
    # ACmix's nodes, by the exporter's scopes read here directly: at least their time is in its row
    acmix = [n.name for n in model.graph.node if any(p.key == SCOPES_KEY and "'backbone.9'" in p.value
                                                      for p in n.metadata_props)]
    row = next(p for p in doc["parts"] if p["name"] == "backbone.9")
    assert len(acmix) > 10 and row["ms"] >= 0.01 * len(acmix) - 1e-9
    assert any("name no ONNX node" in n for n in doc["notes"])


@pytest.fixture()
def double(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from trt_double import HostMemory, Knobs, make_tensorrt

    from blocks_export.export.trt import api, run

    knobs = Knobs(layer_ms=0.125)
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10", knobs))
    monkeypatch.setattr(api, "cuda_device", lambda rebuild=None, index=0: api.DeviceInfo("Orin (double)", "8.7"))
    monkeypatch.setattr(run, "device_memory", HostMemory)
    return knobs


def test_engine_profile_through_the_documented_api_orchestration(detector, double, tmp_path):
    """The test double stands in for TensorRT (orchestration only): one layer per ONNX node, with TensorRT 10's
    metadata; every layer is reported once per timed run, none from the warm-up."""
    onnx_path, report = detector
    engine = tmp_path / "detector.engine"
    engine.write_bytes(b"engine-of-detector")
    double.engines[b"engine-of-detector"] = onnx_path.read_bytes()
    costs = P.profile_engine(engine, onnx_path, runs=3, warmup=2)
    nodes = len(onnx.load(onnx_path, load_external_data=False).graph.node)
    assert [p.name for p in costs.parts] == _blocks_of_report(report) + [P.OUTSIDE]
    assert costs.parts_ms == pytest.approx(0.125 * nodes)  # per run: 3 reports per layer divided by 3 runs
    assert sum(p.nodes for p in costs.parts) == nodes
    assert costs.runtime.startswith("TensorRT 10.") and "Orin (double)" in costs.runtime
    assert sum(1 for c in double.calls if c[0] == "execute_async_v3") == 5


def _tensorrt_and_gpu() -> str | None:
    from blocks_export.export.trt.api import TensorRTUnavailable, cuda_device, load_tensorrt

    try:
        load_tensorrt()
        cuda_device()
    except TensorRTUnavailable as e:
        return e.reason
    return None


@pytest.mark.trt
def test_engine_profile_on_real_tensorrt(detector, tmp_path):
    reason = _tensorrt_and_gpu()
    if reason is not None:
        pytest.skip(f"needs TensorRT and a GPU: {reason}")
    import tensorrt

    from blocks_export.export.trt.build import build_engine

    onnx_path, report = detector
    target = {8: "jetpack6.0", 10: "trt10"}.get(int(tensorrt.__version__.split(".")[0]), "trt11")
    result = build_engine(onnx_path, tmp_path / "det.engine", fp16=False, target=target)
    costs = P.profile_engine(result.engine_path, onnx_path, runs=10, warmup=3)
    assert [p.name for p in costs.parts] == _blocks_of_report(report) + [P.OUTSIDE]
    assert all(p.ms > 0 for p in costs.parts[:-1])


def test_profile_module_type_checks_against_tensorrt_stubs():
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "mypy-trt"), "export/profile.py",
                           "export/profile_trt.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_is_written_atomically_beside_the_model(tmp_path):
    pytest.importorskip("matplotlib")
    costs = P.Profile("m.onnx", "rt", {"x": [1]}, 1, 0, 2.0, [P.Part("a", "CA", 1.5, 3), P.Part(P.OUTSIDE, "", 0.5, 1)])
    path = P.chart_path(tmp_path / "m.onnx")
    assert P.write_chart(costs, path) == str(path) and path.name == "m.profile.png"
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["m.profile.png"]
    assert np.isclose(costs.gap, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ort", "jetpack5"])
def test_profile_of_a_yolov8n_with_blocks_gives_every_block_its_kernels(tmp_path, target):
    """Ultralytics models nest blocks inside C2f/Sequential modules, whose scopes both exporters write relative
    to the calling module: every block instance still gets its own kernels."""
    pytest.importorskip("ultralytics")
    sys.path.insert(0, str(Path(__file__).parent))
    import ultralytics_models

    ckpt = ultralytics_models.save_checkpoint(ultralytics_models.with_blocks(), tmp_path / "y.pt", imgsz=320)
    out = tmp_path / "y.onnx"
    env_path = os.pathsep.join([str(ROOT / "tests"), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([str(EXE), str(ckpt), "--trust-pickle", "-o", str(out), "--target", target, "--imgsz", "320",
                           "--no-verify", "--json"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": env_path})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    proc = _cli("profile", str(out), "--json", "--runs", "3", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    blocks = _blocks_of_report(report)
    assert len(blocks) == 4 and [p["name"] for p in doc["parts"]] == blocks + [P.OUTSIDE]
    assert all(p["nodes"] > 0 and p["ms"] > 0 for p in doc["parts"]), doc["parts"]
