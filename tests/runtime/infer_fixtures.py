"""Tiny ONNX models for the Jetson inference script tests, built with onnx.helper (no export pipeline)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "runtime" / "infer.py"
LABELS = ["r", "g", "b", "rb", "neg"]
# logits = mean over H, W of each channel @ W: classes R, G, B, R+B, -R.
CLASSIFIER_W = np.array([[1, 0, 0, 1, -1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=np.float32)


def _with_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def classifier_model(batch: int | str = "batch", size: int = 4, metadata: dict[str, str] | None = None
                     ) -> onnx.ModelProto:
    """[N, 3, size, size] -> logits [N, 5] = channel means @ CLASSIFIER_W, with classifier metadata."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "W"], ["logits"])]
    inits = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
             numpy_helper.from_array(CLASSIFIER_W, "W")]
    model = helper.make_model(helper.make_graph(nodes, "classifier", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "blocks_export.version": "0.1.0",
        "blocks_export.task": "classify",
        "blocks_export.labels": json.dumps(LABELS),
        "blocks_export.preprocess": json.dumps({"size": [size, size], "resize": "stretch", "color": "RGB",
                                                "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}),
        "blocks_export.precision": "fp32",
        "blocks_export.export_shape": json.dumps({"x": [1, 3, size, size]}),
        "blocks_export.dynamic": json.dumps({"x": {"0": {"min": 1, "max": 8}}} if isinstance(batch, str) else None),
    }
    meta.update(metadata or {})
    onnx.checker.check_model(model)
    return _with_metadata(model, meta)


def features_model(metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """x [N, 3, H, W] (dynamic) -> feat = 2 * x + 1, task 'features'."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["n", 3, "h", "w"])
    nodes = [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["feat"])]
    inits = [numpy_helper.from_array(np.array(2, np.float32), "two"),
             numpy_helper.from_array(np.array(1, np.float32), "one")]
    model = helper.make_model(helper.make_graph(nodes, "features", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"blocks_export.task": "features",
            "blocks_export.export_shape": json.dumps({"x": [1, 3, 8, 6]}),
            "blocks_export.dynamic": json.dumps({"x": {"0": {"min": 1, "max": 4}, "2": {"min": 4, "max": 16},
                                                       "3": {"min": 4, "max": 16}}})}
    meta.update(metadata or {})
    return _with_metadata(model, meta)


def ctx_model(ep_cache_context: str | bytes, embed_mode: int = 0) -> onnx.ModelProto:
    """An EPContext model as onnxruntime's TensorRT EP writes it (one com.microsoft EPContext node)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])
    node = helper.make_node("EPContext", ["x"], ["logits"], name="trt_engine", domain="com.microsoft",
                            embed_mode=embed_mode, ep_cache_context=ep_cache_context, hardware_architecture="87")
    model = helper.make_model(helper.make_graph([node], "ctx", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return _with_metadata(model, {"blocks_export.task": "classify", "blocks_export.labels": json.dumps(LABELS)})


def sidecar(engine_bytes: bytes, **overrides: object) -> dict:
    record = {"format": "blocks-export-engine/1", "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
              "tensorrt_version": "10.3.0", "device_name": "Orin", "compute_capability": "8.7",
              "precision": "fp16", "strongly_typed": False,
              "inputs": [{"name": "x", "shape": [1, 3, 4, 4], "dtype": "float32"}],
              "outputs": [{"name": "logits", "shape": [1, 5], "dtype": "float32"}],
              "profiles": [{"x": {"min": [1, 3, 4, 4], "opt": [1, 3, 4, 4], "max": [1, 3, 4, 4]}}],
              "toolkit_version": "0.1.0", "source_onnx": "model.onnx", "source_onnx_sha256": "0" * 64,
              "plugins": []}
    record.update(overrides)
    return record


def run_script(args: list[str], *, prelude: str = "", script: Path = SCRIPT, cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    """Run ``script`` as __main__ in a fresh interpreter after ``prelude`` (e.g. blocking torch)."""
    code = (f"import sys, runpy\n{prelude}\nsys.argv = {[str(script)] + [str(a) for a in args]!r}\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
