"""Engine build orchestration through a test double of the documented tensorrt API (``trt_double``).

These tests prove which TensorRT calls the builder makes for each TensorRT flavour and target, and that every
error path gives one clear message and leaves no file behind. They prove nothing about what a real TensorRT
builds; ``test_engine_real.py`` does that where TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from blocks_export.export.cli import error_text, flag_words
from blocks_export.export.trt import api
from blocks_export.export.trt.api import DeviceInfo, EngineBuildError, TensorRTUnavailable, cuda_device
from blocks_export.export.trt.build import build_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trt_double import Knobs, make_tensorrt  # noqa: E402


def _model(dynamic: bool = False, fp16: bool = False, op: str = "Relu") -> onnx.ModelProto:
    dims: list[int | str] = ["n", 3, "h", "w"] if dynamic else [1, 3, 8, 8]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    if fp16:
        nodes = [helper.make_node("Cast", ["x"], ["x16"], name="cast_in", to=TensorProto.FLOAT16),
                 helper.make_node(op, ["x16"], ["y16"], name="act"),
                 helper.make_node("Cast", ["y16"], ["y"], name="cast_out", to=TensorProto.FLOAT)]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], name="act")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def onnx_file(tmp_path: Path):
    def write(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, path)
        return path
    return write


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch):
    """Install a fake tensorrt of a flavour and a fake GPU; returns the module (``.knobs.calls`` records)."""
    def install(flavour: str = "10", knobs: Knobs | None = None, **kw) -> types.ModuleType:
        trt = make_tensorrt(flavour, knobs, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(api, "cuda_device", lambda command, index=0: DeviceInfo("Orin (double)", "8.7"))
        return trt
    return install


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _calls(trt: types.ModuleType, name: str) -> list[tuple]:
    return [c for c in trt.knobs.calls if c[0] == name]


def test_missing_tensorrt_names_what_is_missing_and_the_jetson_command_and_writes_nothing(
        onnx_file, tmp_path, monkeypatch):
    src = onnx_file(_model(fp16=True))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(src, tmp_path / "model.engine", fp16=True, target="jetpack6")
    msg = error_text(e.value)
    assert "\n" not in msg and "\n" not in str(e.value)
    assert "not installed" in msg
    assert msg.endswith("on the Jetson run: blocks-export model.onnx --to trt --target jetpack6 --fp16")
    assert _files(tmp_path) == {"model.onnx"}
    assert e.value.exit_code == 3


def test_missing_tensorrt_gives_the_profile_and_workspace_as_facts_that_the_cli_spells(onnx_file, tmp_path,
                                                                                          monkeypatch):
    src = onnx_file(_model(dynamic=True))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(src, tmp_path / "model.engine", fp16=False, target="trt10", workspace_mb=512,
                     profile={"x": ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96))})
    assert e.value.rebuild == api.Rebuild("model.onnx", "trt10", False, ([1, 3, 32, 32], [2, 3, 64, 64],
                                                                         [4, 3, 96, 96]), 512)
    assert "--" not in str(e.value)  # the library's words; only the CLI spells flags
    assert error_text(e.value).endswith("on the Jetson run: blocks-export model.onnx --to trt --target trt10 "
                                        "--min-shape 1,3,32,32 --opt-shape 2,3,64,64 --max-shape 4,3,96,96 "
                                        "--workspace-mb 512")
    assert _files(tmp_path) == {"model.onnx"}


def test_type_stubs_alone_count_as_missing_tensorrt(onnx_file, tmp_path, monkeypatch):
    # tensorrt-stubs installs a `tensorrt` folder of .pyi files: it imports as an empty namespace package.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(TensorRTUnavailable, match="type stubs"):
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target="trt10")
    assert _files(tmp_path) == {"model.onnx"}


def test_missing_gpu_is_reported_before_anything_is_written(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10"))

    def no_gpu(rebuild: api.Rebuild | None = None, index: int = 0) -> DeviceInfo:
        raise TensorRTUnavailable("no usable CUDA GPU here", rebuild)

    monkeypatch.setattr(api, "cuda_device", no_gpu)
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target="jetpack6")
    assert "on the Jetson run: blocks-export model.onnx --to trt" in error_text(e.value)
    assert _files(tmp_path) == {"model.onnx"}


def test_cuda_device_without_a_driver_raises_tensorrt_unavailable():
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a CUDA driver is present on this machine")
    except OSError:
        pass
    with pytest.raises(TensorRTUnavailable, match="libcuda"):
        cuda_device()


def test_trt10_fp16_onnx_builds_strongly_typed_without_the_fp16_flag_and_writes_all_files(
        fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    src = onnx_file(_model(fp16=True))
    result = build_engine(src, tmp_path / "model.engine", fp16=True, target="jetpack6", workspace_mb=256)
    assert _calls(trt, "create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED only, no EXPLICIT_BATCH
    assert _calls(trt, "set_flag") == []
    assert _calls(trt, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    assert _calls(trt, "init_libnvinfer_plugins") == [("init_libnvinfer_plugins", "")]
    assert _calls(trt, "parse") == [("parse", str(src))]
    names = [c[0] for c in trt.knobs.calls]
    assert names.index("init_libnvinfer_plugins") < names.index("parse") < names.index("build_serialized_network")
    assert result.strongly_typed and result.precision == "fp16"
    assert _files(tmp_path) == {"model.onnx", "model.engine", "model.engine.json", "model_ctx.onnx",
                                "model.timing.cache"}
    assert (tmp_path / "model.engine").read_bytes() == b"ENGINE flags=2 config="
    side = json.loads((tmp_path / "model.engine.json").read_text())
    assert side["format"] == "blocks-export-engine/1"
    assert side["tensorrt_version"] == trt.__version__ and side["compute_capability"] == "8.7"
    assert side["device_name"] == "Orin (double)" and side["strongly_typed"] is True
    assert side["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert side["outputs"] == [{"name": "y", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert side["profiles"] == [{"x": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}}]
    import hashlib
    assert side["engine_sha256"] == hashlib.sha256(b"ENGINE flags=2 config=").hexdigest()
    assert side["source_onnx_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    ctx = onnx.load(tmp_path / "model_ctx.onnx")
    onnx.checker.check_model(ctx)
    node = ctx.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain) == ("EPContext", "com.microsoft")
    assert attrs["ep_cache_context"] == b"model.engine" and attrs["embed_mode"] == 0
    assert attrs["hardware_architecture"] == b"87"


def test_timing_cache_is_read_back_on_the_next_build(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    src = onnx_file(_model(fp16=True))
    build_engine(src, tmp_path / "model.engine", fp16=True, target="trt10")
    first = (tmp_path / "model.timing.cache").read_bytes()
    build_engine(src, tmp_path / "model.engine", fp16=True, target="trt10")
    assert [c[1] for c in _calls(trt, "create_timing_cache")] == [b"", first]
    assert all(c == ("set_timing_cache", False) for c in _calls(trt, "set_timing_cache"))


def test_trt86_fp16_uses_explicit_batch_and_the_builder_flag_with_periodic_progress(
        fake_trt, onnx_file, tmp_path, monkeypatch):
    trt = fake_trt("8.6", Knobs(build_sleep=0.25))
    monkeypatch.setattr(api, "TICK_SECONDS", 0.05)
    lines: list[str] = []
    result = build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=True, target="jetpack6.0",
                          progress=lines.append)
    assert _calls(trt, "create_network") == [("create_network", 1 << 0)]  # EXPLICIT_BATCH
    assert _calls(trt, "set_flag") == [("set_flag", "FP16")]
    assert not result.strongly_typed and result.precision == "fp16"
    assert any(line.startswith("building TensorRT engine...") for line in lines)


def _attention_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="logits_mm"),
             helper.make_node("Softmax", ["logits"], ["att"], name="softmax", axis=-1),
             helper.make_node("Relu", ["att"], ["y"], name="relu")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 16], [0.01] * 256)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def test_weakly_typed_fp16_pins_softmax_and_its_logits_to_fp32(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("8.6")
    result = build_engine(onnx_file(_attention_model()), tmp_path / "model.engine", fp16=True, target="jetpack6.0")
    assert _calls(trt, "set_flag") == [("set_flag", "FP16"), ("set_flag", "PREFER_PRECISION_CONSTRAINTS")]
    assert {c[1] for c in _calls(trt, "layer.precision")} == {"logits_mm", "softmax"}
    assert all(c[2] == "FLOAT" for c in _calls(trt, "layer.precision"))
    assert ("layer.set_output_type", "softmax", 0, "FLOAT") in trt.knobs.calls
    assert result.sidecar.fp32_layers == ["logits_mm", "softmax"]


def _reduction_model(h: int, w: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])
    mean = helper.make_node("ReduceMean", ["x"], ["y"], name="pool", axes=[2, 3], keepdims=1)
    return helper.make_model(helper.make_graph([mean], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("h", "w", "pinned"), [(8, 8, False), (40, 40, True)])
def test_weakly_typed_fp16_pins_a_reduction_exactly_when_the_fp16_policy_keeps_it_fp32(
        fake_trt, onnx_file, tmp_path, h, w, pinned):
    from blocks_export.export.fp16 import LARGE_REDUCTION, fp32_nodes

    model = _reduction_model(h, w)
    assert ("pool" in fp32_nodes(model)) == pinned == (h * w > LARGE_REDUCTION)
    trt = fake_trt("8.6")
    result = build_engine(onnx_file(model), tmp_path / "model.engine", fp16=True, target="jetpack6.0")
    assert result.sidecar.fp32_layers == (["pool"] if pinned else [])
    assert {c[1] for c in _calls(trt, "layer.precision")} == ({"pool"} if pinned else set())


def test_the_pinned_layer_types_are_those_of_the_fp16_policy_ops() -> None:
    from blocks_export.export.fp16 import BLOCKED_OPS
    from blocks_export.export.trt.build import LAYER_TYPES_OF_OP, PINNED_LAYER_TYPES

    assert set(LAYER_TYPES_OF_OP) == set(BLOCKED_OPS)  # every fp32 op of the policy, and no other
    assert set(PINNED_LAYER_TYPES) == {"SOFTMAX", "NORMALIZATION", "GRID_SAMPLE", "PLUGIN_V2", "PLUGIN_V3"}


def test_fp32_builds_pin_nothing(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("8.6")
    build_engine(onnx_file(_attention_model()), tmp_path / "model.engine", fp16=False, target="jetpack6.0")
    assert _calls(trt, "set_flag") == [] and _calls(trt, "layer.precision") == []


def test_mixed_precision_graph_on_tensorrt_8_also_enables_fp16_kernels(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("8.6")
    result = build_engine(onnx_file(_model(fp16=True)), tmp_path / "model.engine", fp16=False, target="jetpack6.0")
    assert _calls(trt, "set_flag") == [("set_flag", "FP16")]  # the graph carries its own fp32 islands
    assert _calls(trt, "layer.precision") == []
    assert result.precision == "fp16" and not result.strongly_typed


def test_progress_monitor_reports_top_level_phases_on_tensorrt_10(fake_trt, onnx_file, tmp_path):
    fake_trt("10")
    lines: list[str] = []
    build_engine(onnx_file(_model(fp16=True)), tmp_path / "model.engine", fp16=True, target="trt10",
                 progress=lines.append)
    assert "TensorRT: Building engine (2 steps)" in lines
    assert "TensorRT: Building engine 2/2" in lines
    assert not any("Tactic timing" in line for line in lines)  # nested phases are not printed


def test_trt11_requires_fp16_in_the_graph(fake_trt, onnx_file, tmp_path):
    fake_trt("11")
    with pytest.raises(EngineBuildError, match="needs the mixed-precision fp16 ONNX"):
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=True, target="trt11")
    assert not (tmp_path / "model.engine").exists()


def test_target_of_another_tensorrt_generation_is_refused_with_the_matching_targets(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("11")
    with pytest.raises(EngineBuildError, match=r"target jetpack6.0 is TensorRT 8.6.2.*matching target \(jetpack7, trt11\)"):
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=True, target="jetpack6.0")
    assert _calls(trt, "Builder") == []


@pytest.mark.parametrize("strongly_typed_flag", [True, False])
def test_trt11_fp16_graph_builds_strongly_typed_with_or_without_the_creation_flag(
        fake_trt, onnx_file, tmp_path, strongly_typed_flag):
    trt = fake_trt("11", strongly_typed_flag=strongly_typed_flag)
    result = build_engine(onnx_file(_model(fp16=True)), tmp_path / "model.engine", fp16=True, target="trt11")
    assert result.strongly_typed
    assert _calls(trt, "create_network") == [("create_network", (1 << 1) if strongly_typed_flag else 0)]
    assert _calls(trt, "set_flag") == []


def test_fp32_build_on_tensorrt_10_is_weakly_typed_fp32(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    result = build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target="trt10")
    assert result.precision == "fp32" and not result.strongly_typed
    assert _calls(trt, "create_network") == [("create_network", 0)]


@pytest.mark.parametrize("flavour", ["8.6", "10"])
def test_parser_errors_name_the_node(fake_trt, onnx_file, tmp_path, flavour):
    # 8.6's ParserError has only the node index: the builder looks the name up in the ONNX graph.
    fake_trt(flavour, Knobs(parse_errors=[(0, "Assertion failed: inputs.size() == 1", "act")]))
    target = "jetpack6.0" if flavour == "8.6" else "trt10"
    with pytest.raises(EngineBuildError) as e:
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target=target)
    assert "node 'act' (Relu): Assertion failed: inputs.size() == 1" in str(e.value)
    assert _files(tmp_path) == {"model.onnx"}


def test_builder_returning_no_engine_is_an_error_with_the_log_and_leaves_no_files(fake_trt, onnx_file, tmp_path):
    fake_trt("10", Knobs(build_returns_none=True))
    with pytest.raises(EngineBuildError, match="returned no engine.*Could not find any implementation"):
        build_engine(onnx_file(_model(fp16=True)), tmp_path / "model.engine", fp16=True, target="trt10")
    assert _files(tmp_path) == {"model.onnx"}


def test_plugin_library_failure_is_an_error(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10", Knobs(plugins_ok=False))
    with pytest.raises(EngineBuildError, match="libnvinfer_plugin"):
        build_engine(onnx_file(_model(fp16=True)), tmp_path / "model.engine", fp16=True, target="trt10")
    assert _calls(trt, "parse") == []
    assert _files(tmp_path) == {"model.onnx"}


def test_dynamic_input_gets_one_profile_with_the_given_shapes(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    profile = {"x": ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))}
    result = build_engine(onnx_file(_model(dynamic=True)), tmp_path / "model.engine", fp16=False,
                          target="trt10", profile=profile)
    assert _calls(trt, "set_shape") == [("set_shape", "x", [1, 3, 32, 32], [2, 3, 64, 64], [4, 3, 128, 128])]
    assert len(_calls(trt, "add_optimization_profile")) == 1
    assert result.sidecar.profiles == [{"x": {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64],
                                                  "max": [4, 3, 128, 128]}}]
    assert result.sidecar.inputs[0]["shape"] == [-1, 3, -1, -1]


def test_profile_in_the_sidecar_form_is_accepted(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    profile = {"x": {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2, 3, 64, 64]}}
    result = build_engine(onnx_file(_model(dynamic=True)), tmp_path / "model.engine", fp16=False,
                          target="trt10", profile=profile)
    assert _calls(trt, "set_shape") == [("set_shape", "x", [1, 3, 32, 32], [1, 3, 64, 64], [2, 3, 64, 64])]
    assert result.as_dict()["engine"] == str(tmp_path / "model.engine")


@pytest.mark.parametrize("profile, match", [
    (None, "input 'x' has dynamic shape"),
    ({"z": ((1, 3, 8, 8),) * 3}, r"names input\(s\) \['z'\]"),
    ({"x": ((1, 4, 8, 8),) * 3}, "does not fit"),
    ({"x": ((2, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))}, "min <= opt <= max"),
])
def test_bad_profiles_are_value_errors_naming_the_input(fake_trt, onnx_file, tmp_path, profile, match):
    fake_trt("10")
    with pytest.raises(ValueError, match=match):
        build_engine(onnx_file(_model(dynamic=True)), tmp_path / "model.engine", fp16=False, target="trt10",
                     profile=profile)
    assert _files(tmp_path) == {"model.onnx"}


def test_target_check_runs_before_tensorrt_is_needed(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln")
    m = helper.make_model(helper.make_graph([ln], "g", [x], [y],
                                            [helper.make_tensor("s", TensorProto.FLOAT, [8], [1.0] * 8)]),
                          opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(EngineBuildError) as e:
        build_engine(onnx_file(m), tmp_path / "model.engine", fp16=False, target="jetpack5")
    assert re.search("ln \\(LayerNormalization\\).*--target jetpack5", flag_words(str(e.value)))


def test_onnxruntime_is_not_an_engine_target(onnx_file, tmp_path):
    with pytest.raises(ValueError, match="not a TensorRT target"):
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target="ort")


def test_missing_output_folder_is_a_value_error_before_building(fake_trt, onnx_file, tmp_path):
    trt = fake_trt("10")
    with pytest.raises(ValueError, match="does not exist"):
        build_engine(onnx_file(_model()), tmp_path / "nope" / "model.engine", fp16=False, target="trt10")
    assert trt.knobs.calls == []


def test_bindings_without_the_tensorrt_libraries_count_as_missing_tensorrt(onnx_file, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(TensorRTUnavailable) as e:
        build_engine(onnx_file(_model()), tmp_path / "model.engine", fp16=False, target="trt10")
    assert re.search("libnvinfer.so.10.*on the Jetson run: blocks-export", error_text(e.value))
