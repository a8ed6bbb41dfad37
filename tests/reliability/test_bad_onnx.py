"""Broken and hostile ONNX files given to `blocks-export check`, `blocks-export MODEL.onnx --to trt` and the
runtime script: each is refused (non-zero documented exit code, one reason), no engine is written, and an
EPContext model whose engine path leaves its folder is never loaded."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from bad_inputs import ONNX_CASES, cli, listing, one_error_line, write_onnx_case

from blocks_export.runtime import infer

# (consumer, case) -> (exit code, words in the reason). Exit 1 = the target check failed (the reason is the
# check's FAILED line on stdout); 2 = bad input; 3 = refused by the runtime script's engine checks.
EXPECTED = {
    ("check", "empty"): (2, "the file is empty"),
    ("check", "random_bytes"): (2, "not a valid ONNX model"),
    ("check", "truncated"): (2, "not a valid ONNX model"),
    ("check", "unknown_domain"): (1, "custom domain 'com.example.unknown'"),
    ("check", "opset_too_new"): (1, "is newer than TensorRT 10.3's parser supports"),
    ("check", "external_data_missing"): (2, "external-data file 'model.onnx.data'"),
    ("check", "ctx_escape_parent"): (1, "EPContext"),
    ("check", "ctx_escape_absolute"): (1, "EPContext"),
    ("trt", "empty"): (2, "the file is empty"),
    ("trt", "random_bytes"): (2, "not a valid ONNX model"),
    ("trt", "truncated"): (2, "not a valid ONNX model"),
    ("trt", "unknown_domain"): (1, "custom domain 'com.example.unknown'"),
    ("trt", "opset_too_new"): (1, "is newer than TensorRT 10.3's parser supports"),
    ("trt", "external_data_missing"): (2, "model.onnx.data"),
    ("trt", "ctx_escape_parent"): (1, "EPContext"),
    ("trt", "ctx_escape_absolute"): (1, "EPContext"),
    ("infer", "empty"): (2, "is not a valid ONNX model (the file is empty)"),
    ("infer", "random_bytes"): (2, "is not a valid ONNX model"),
    ("infer", "truncated"): (2, "truncated file?"),
    ("infer", "unknown_domain"): (2, "com.example.unknown:Frobnicate"),
    ("infer", "opset_too_new"): (2, "Opset"),
    ("infer", "external_data_missing"): (2, "model.onnx.data"),
    ("infer", "ctx_escape_parent"): (3, "refused: EPContext engine path '../../outside.engine' escapes"),
    ("infer", "ctx_escape_absolute"): (3, "is absolute and escapes the model's folder"),
}


def _run_infer(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = infer.main([str(path), "--random", "--provider", "cpu"])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("consumer", ["check", "trt", "infer"])
@pytest.mark.parametrize("case", ONNX_CASES)
def test_bad_onnx_is_refused_with_one_reason(tmp_path: Path, case: str, consumer: str) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = write_onnx_case(case, folder)
    before = listing(tmp_path)
    if consumer == "check":
        code, out, err = cli("check", path, "--target", "jetpack6")
    elif consumer == "trt":
        code, out, err = cli(path, "--to", "trt", "--target", "jetpack6", "-o", folder / "model.engine")
    else:
        code, out, err = _run_infer(path)
    want_code, words = EXPECTED[(consumer, case)]
    assert code == want_code, (out, err)
    if code == 1:  # the target check's verdict: FAILED with the node, why and the fix
        assert "Traceback" not in err
        failed = [ln for ln in out.splitlines() if ln.startswith("FAILED |") and words in ln]
        assert failed, out
    else:
        line = one_error_line(err, "error:" if consumer == "infer" else "blocks-export: error:")
        assert words in line, line
    after = set(listing(tmp_path)) - set(before)
    # Only a failed check's report may be written (it says FAILED); never an engine or an EPContext model.
    assert after <= {"a/b/model.report.json"}, after
    assert not any(p.endswith((".engine", "_ctx.onnx", ".tmp")) for p in after)


# case -> the hint the refusal ends with (None: onnxruntime's own words alone)
LOAD_HINTS = {
    "unknown_domain": "export it for this onnxruntime",
    "opset_too_new": "export it for this onnxruntime",
    "external_data_missing": "every file of the model was copied",
    "invalid_graph": None,
    "type_mismatch": None,
}


def _onnxruntime_refuses(case: str, folder: Path) -> Path:
    """A model that parses (protobuf, infer.py's own checks) and that onnxruntime refuses as invalid."""
    import onnx
    from bad_inputs import relu_model
    from onnx import TensorProto

    if case not in ("invalid_graph", "type_mismatch"):
        return write_onnx_case(case, folder)
    model = relu_model()
    if case == "invalid_graph":
        model.graph.node[0].input[0] = "ghost"  # produced by nothing
    else:
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64  # Relu gives float
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


@pytest.mark.parametrize("case", sorted(LOAD_HINTS))
def test_runtime_refusal_of_a_model_onnxruntime_cannot_load_says_what_onnxruntime_said(tmp_path: Path,
                                                                                      case: str) -> None:
    """Through the script, as a device runs it: onnxruntime's reason, and a hint only where one helps."""
    import subprocess
    import sys

    import onnxruntime as ort

    path = _onnxruntime_refuses(case, tmp_path)
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # the attack's precondition: onnxruntime itself refuses this file
        said = str(e).splitlines()[0]
    else:
        pytest.fail("onnxruntime loads it")
    proc = subprocess.run([sys.executable, str(Path(infer.__file__)), str(path), "--random", "--provider", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = one_error_line(proc.stderr, "error:")
    assert proc.returncode == 2, proc.stderr
    assert said.split("failed:")[-1][:60] in line, (said, line)
    hint = LOAD_HINTS[case]
    if hint is None:
        assert "copied" not in line and "external data" not in line and " -- " not in line, line
    else:
        assert hint in line, line
