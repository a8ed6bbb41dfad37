"""Provider choice TensorRT EP -> CUDA EP -> CPU, its one-line announcements, and TensorRT EP options."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from infer_fixtures import classifier_model, features_model, sidecar

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def test_full_gpu_build_uses_tensorrt_then_cuda_then_cpu_without_announcement(infer):
    plan = infer.plan_providers([TRT, CUDA, CPU])
    assert plan.chain == [TRT, CUDA, CPU]
    assert plan.notes == []


def test_missing_tensorrt_ep_falls_back_to_cuda_in_one_line(infer):
    plan = infer.plan_providers([CUDA, CPU])
    assert plan.chain == [CUDA, CPU]
    assert len(plan.notes) == 1
    assert "TensorRT EP not available" in plan.notes[0] and plan.notes[0].endswith("using " + CUDA)


def test_cpu_only_build_falls_back_to_cpu_in_one_line(infer):
    plan = infer.plan_providers(["AzureExecutionProvider", CPU])
    assert plan.chain == [CPU]
    assert len(plan.notes) == 1
    note = plan.notes[0]
    assert "TensorRT EP and CUDA EP not available" in note and "AzureExecutionProvider" in note
    assert note.endswith("using " + CPU)


@pytest.mark.parametrize("forced, name", [("trt", TRT), ("cuda", CUDA), ("cpu", CPU)])
def test_forced_provider_is_used_alone(infer, forced, name):
    assert infer.plan_providers([TRT, CUDA, CPU], forced).chain == [name]


@pytest.mark.parametrize("forced", ["trt", "cuda"])
def test_forced_provider_missing_from_the_build_is_refused(infer, forced):
    with pytest.raises(infer.Unavailable, match="not available in this onnxruntime build"):
        infer.plan_providers([CPU], forced)


def test_tensorrt_only_model_without_tensorrt_ep_is_refused(infer):
    with pytest.raises(infer.Unavailable, match="plugin nodes.*TensorRT EP is not available"):
        infer.plan_providers([CUDA, CPU], None, "the model has TensorRT plugin nodes")
    with pytest.raises(infer.Unavailable, match="use --provider trt"):
        infer.plan_providers([TRT, CUDA, CPU], "cuda", "the model has TensorRT plugin nodes")
    assert infer.plan_providers([TRT, CUDA, CPU], None, "plugin nodes").chain == [TRT, CUDA]


def test_provider_that_fails_to_start_is_announced_or_refused_when_forced(infer):
    plan = infer.ProviderPlan([TRT, CUDA, CPU], [])
    assert infer.confirm_providers(plan, [TRT, CUDA, CPU], strict=False) == []
    notes = infer.confirm_providers(plan, [CUDA, CPU], strict=False)
    assert len(notes) == 1 and "could not be started" in notes[0] and notes[0].endswith(CUDA)
    with pytest.raises(infer.Unavailable, match="fell back to " + CUDA):
        infer.confirm_providers(plan, [CUDA, CPU], strict=True)


def test_cli_on_this_onnxruntime_announces_the_fallback_on_stderr(cli, save):
    available = ort.get_available_providers()
    code, out, err = cli(save(classifier_model()), "--random", "--json")
    assert code == 0
    report = json.loads(out)
    if TRT not in available:
        assert any(line.startswith("note: TensorRT EP") for line in err.splitlines())
        assert report["notes"] and "not available in this onnxruntime build" in report["notes"][0]
    assert report["providers"][0] == report["providers_requested"][0]


@pytest.mark.skipif(TRT in ort.get_available_providers(), reason="this onnxruntime has the TensorRT EP")
def test_cli_forced_tensorrt_without_it_exits_3_with_one_line(cli, save):
    code, out, err = cli(save(classifier_model()), "--random", "--provider", "trt")
    assert code == 3
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --provider trt")
    assert "Traceback" not in err


def test_profile_shapes_from_dynamic_metadata_bracket_the_export_shape(infer):
    meta = infer.parse_meta({m.key: m.value for m in features_model().metadata_props})
    assert infer.profile_from_meta(meta) == {
        "trt_profile_min_shapes": "x:1x3x4x4",
        "trt_profile_opt_shapes": "x:1x3x8x6",
        "trt_profile_max_shapes": "x:4x3x16x16",
    }


def test_static_model_or_unknown_bound_gives_no_profile(infer):
    static = infer.parse_meta({"blocks_export.dynamic": "null", "blocks_export.export_shape": '{"x": [1, 3, 4, 4]}'})
    assert infer.profile_from_meta(static) is None
    unbounded = infer.parse_meta({"blocks_export.dynamic": '{"x": {"0": {"min": 1, "max": null}}}',
                                  "blocks_export.export_shape": '{"x": [1, 3, 4, 4]}'})
    assert infer.profile_from_meta(unbounded) is None


def test_profile_shapes_from_engine_sidecar(infer):
    record = sidecar(b"engine", profiles=[{"images": {"min": [1, 3, 320, 320], "opt": [2, 3, 640, 640],
                                                      "max": [4, 3, 960, 960]}}])
    assert infer.profile_from_sidecar(infer.Sidecar.from_dict(record)) == {
        "trt_profile_min_shapes": "images:1x3x320x320",
        "trt_profile_opt_shapes": "images:2x3x640x640",
        "trt_profile_max_shapes": "images:4x3x960x960",
    }


def test_tensorrt_options_cache_beside_the_model_fp16_from_metadata_and_plugins(infer, tmp_path):
    model = tmp_path / "det.onnx"
    fp16 = infer.parse_meta({"blocks_export.precision": "fp16"})
    options = infer.tensorrt_options(str(model), fp16, fp16=False, is_ep_context=False,
                                     plugin_libs=["/opt/a.so", "/opt/b.so"], profile={"trt_profile_min_shapes": "x:1"})
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "det_trt_cache")
    assert options["trt_timing_cache_path"] == str(tmp_path / "det_trt_cache")
    assert options["trt_extra_plugin_lib_paths"] == "/opt/a.so;/opt/b.so"
    assert options["trt_profile_min_shapes"] == "x:1"
    fp32 = infer.tensorrt_options(str(model), infer.ModelMeta(), fp16=False, is_ep_context=False)
    assert "trt_fp16_enable" not in fp32
    assert infer.tensorrt_options(str(model), infer.ModelMeta(), fp16=True, is_ep_context=False)["trt_fp16_enable"] == "True"
    ctx = infer.tensorrt_options(str(model), infer.ModelMeta(), fp16=False, is_ep_context=True)
    assert "trt_engine_cache_enable" not in ctx  # a prebuilt engine is not rebuilt or cached again


class _FallingBackOrt:
    """Stands in for onnxruntime's Python wrapper where the TensorRT EP is built in but its libraries are
    missing: like onnxruntime_inference_collection.py it prints an "EP Error" notice on stdout and retries
    with the fallback providers."""

    class SessionOptions:
        pass

    class GraphOptimizationLevel:
        ORT_DISABLE_ALL = 0

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=()):
            self.requested = providers
            self.fallback_disabled = False
            print("*************** EP Error ***************")
            print("EP Error RegisterTensorRTPluginsAsCustomOps ... Falling back to ['CUDAExecutionProvider']")

        def get_providers(self):
            return [CUDA, CPU]

        def disable_fallback(self):
            self.fallback_disabled = True


def test_session_creation_keeps_stdout_clean_and_disables_silent_run_time_fallback(infer, capsys):
    session, seconds = infer.create_session(_FallingBackOrt, "m.onnx", [TRT, CUDA, CPU], {"trt_fp16_enable": "True"},
                                            device_id=0, threads=2, is_ep_context=False, verbose=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "EP Error" in captured.err
    assert session.fallback_disabled
    assert session.requested == [(TRT, {"trt_fp16_enable": "True"}), (CUDA, {"device_id": "0"}), CPU]
    assert seconds >= 0
    notes = infer.confirm_providers(infer.ProviderPlan([TRT, CUDA, CPU], []), session.get_providers(), strict=False)
    assert len(notes) == 1 and "TensorRT EP is in this onnxruntime build but could not be started" in notes[0]
