"""Engine integrity: the sidecar records the engine's SHA-256, TensorRT version and compute capability, and
every engine loader (the runtime script, ``trt.run.run_engine``, the verification layer's ``EngineRunner``)
refuses, with one line and before deserializing, an engine that does not match it; the override says loudly what
it skipped.

The engine is built through the tensorrt test double (``tests/export/trt_double.py``) on a fake GPU (8.7)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trt_double
from bad_inputs import relu_model

from blocks_export.export.runners import EngineRunner
from blocks_export.export.trt import api, sidecar
from blocks_export.export.trt.build import build_engine
from blocks_export.export.trt.run import run_engine
from blocks_export.runtime import infer

BUILT_TRT = trt_double.VERSIONS["10"]
BUILT_CC = "8.7"


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``model.engine`` + sidecar + ``model_ctx.onnx`` built by the double; the double stays installed."""
    import onnx

    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10"))
    monkeypatch.setattr(api, "cuda_device", lambda command, index=0: api.DeviceInfo("Orin", BUILT_CC))
    onnx.save(relu_model(), tmp_path / "model.onnx")
    result = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", fp16=False, target="jetpack6")
    assert result.ctx_path == tmp_path / "model_ctx.onnx"
    return tmp_path / "model.engine"


def test_sidecar_records_engine_hash_tensorrt_version_and_compute_capability(built: Path) -> None:
    sidecar = json.loads((built.parent / "model.engine.json").read_text())
    assert sidecar["engine_sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert sidecar["tensorrt_version"] == BUILT_TRT
    assert sidecar["compute_capability"] == BUILT_CC


def _tamper(engine_path: Path) -> None:
    engine_path.write_bytes(engine_path.read_bytes() + b"\x00")


def _foreign_sidecar(engine_path: Path) -> None:
    Path(str(engine_path) + ".json").write_text(json.dumps({"format": "something-else/1"}))


# case -> (what is changed, TensorRT version here, compute capability here, words in the refusal)
MISMATCHES = {
    "engine_modified": (_tamper, BUILT_TRT, BUILT_CC, "SHA-256"),
    "other_tensorrt_version": (None, "10.4.0.1", BUILT_CC, "TensorRT 10.4.0.1"),
    "other_compute_capability": (None, BUILT_TRT, "8.6", "this GPU is 8.6"),
    "foreign_sidecar": (_foreign_sidecar, BUILT_TRT, BUILT_CC, "sidecar"),
}


def _infer(ctx: Path, *extra: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = infer.main([str(ctx), "--random", *extra])
    return code, err.getvalue()


def _machine(monkeypatch: pytest.MonkeyPatch, trt_version: str, cc: str) -> None:
    facts = infer.MachineFacts(trt_version, "test", cc, "test")
    monkeypatch.setattr(infer, "detect_machine", lambda device_id: facts)


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_runtime_script_refuses_a_mismatched_engine_with_one_line(built: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   case: str) -> None:
    change, trt_here, cc_here, words = MISMATCHES[case]
    if change:
        change(built)
    _machine(monkeypatch, trt_here, cc_here)
    code, err = _infer(built.parent / "model_ctx.onnx")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0] and "--no-verify-engine" in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_runtime_script_override_loads_past_the_mismatch_and_says_so(built: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      case: str) -> None:
    change, trt_here, cc_here, words = MISMATCHES[case]
    if change:
        change(built)
    _machine(monkeypatch, trt_here, cc_here)
    code, err = _infer(built.parent / "model_ctx.onnx", "--no-verify-engine")
    assert "WARNING: --no-verify-engine: loading model.engine WITHOUT checking" in err, err
    # No TensorRT EP here: it then stops at the provider (exit 3), never at the engine check.
    assert not any(ln.startswith("error:") and "refused" in ln for ln in err.splitlines()), err


def test_runtime_script_accepts_the_engine_it_was_built_with(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, BUILT_TRT, BUILT_CC)
    code, err = _infer(built.parent / "model_ctx.onnx")
    assert "model.engine verified against model.engine.json (SHA-256, TensorRT version, compute capability)" in err


def _missing_sidecar(engine_path: Path) -> None:
    Path(str(engine_path) + ".json").unlink()


LOADER_MISMATCHES = {**MISMATCHES, "sidecar_missing": (_missing_sidecar, BUILT_TRT, BUILT_CC, "missing")}


@pytest.mark.parametrize("case", sorted(LOADER_MISMATCHES))
def test_engine_loader_refuses_a_mismatched_engine_before_deserializing(built: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         case: str) -> None:
    change, trt_here, cc_here, words = LOADER_MISMATCHES[case]
    if change:
        change(built)
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", trt_here)
    monkeypatch.setattr(api, "cuda_device", lambda command, index=0: api.DeviceInfo("GPU", cc_here))
    feeds = {"images": np.zeros((1, 3, 8, 8), np.float32)}
    for load in (lambda: run_engine(built, feeds),
                 lambda: EngineRunner(built, ["images"], ["output0"]).run(feeds)):
        with pytest.raises(sidecar.EngineRefused) as e:  # the double has no Runtime: refused before it is used
            load()
        assert words in str(e.value) and len(str(e.value).splitlines()) == 1 and e.value.exit_code == 3


@pytest.mark.parametrize("case", sorted(LOADER_MISMATCHES))
def test_engine_loader_override_warns_what_it_skipped(built: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    change, trt_here, cc_here, words = LOADER_MISMATCHES[case]
    if change:
        change(built)
    with pytest.warns(sidecar.EngineNotVerifiedWarning, match="WITHOUT verification") as record:
        problems = sidecar.verify_engine(built, tensorrt_version=trt_here, compute_capability=cc_here, verify=False)
    assert problems and words in str(record[0].message)


def test_engine_loader_accepts_the_engine_it_was_built_with(built: Path) -> None:
    assert sidecar.verify_engine(built, tensorrt_version=BUILT_TRT, compute_capability=BUILT_CC) == []
