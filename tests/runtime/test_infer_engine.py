"""EPContext models and engines: path escapes, SHA-256 / TensorRT / GPU checks, hostile model files."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from infer_fixtures import LABELS, classifier_model, ctx_model, sidecar

ENGINE = b"\x00fake serialized TensorRT plan\xff" * 8
HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()


def _ctx_folder(tmp_path, reference="model.engine", record=None, engine=ENGINE):
    (tmp_path / "model.engine").write_bytes(engine)
    if record is not False:
        (tmp_path / "model.engine.json").write_text(json.dumps(record or sidecar(engine)))
    path = tmp_path / "model_ctx.onnx"
    onnx.save(ctx_model(reference), str(path))
    return path


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_protobuf_reader_matches_onnx(infer, tmp_path):
    model = classifier_model()
    summary = infer.parse_onnx_summary(model.SerializeToString())
    assert summary.metadata == {p.key: p.value for p in model.metadata_props}
    assert summary.opsets == {o.domain: o.version for o in model.opset_import}
    assert [(n.op_type, n.domain) for n in summary.nodes] == [(n.op_type, n.domain) for n in model.graph.node]
    ctx = infer.parse_onnx_summary(ctx_model("model.engine").SerializeToString())
    (node,) = ctx.nodes
    assert (node.op_type, node.domain, node.name) == ("EPContext", "com.microsoft", "trt_engine")
    assert node.attributes == {"embed_mode": 0, "ep_cache_context": b"model.engine", "hardware_architecture": b"87"}


@pytest.mark.skipif(HAS_TRT, reason="this onnxruntime has the TensorRT EP")
def test_valid_ctx_model_is_verified_then_needs_the_tensorrt_ep_on_cpu(cli, tmp_path):
    code, out, err = cli(_ctx_folder(tmp_path), "--random")
    assert code == 3
    line = _one_error_line(err)
    assert "EPContext model" in line and "needs the TensorRT EP" in line and "TensorRT EP is not available" in line
    assert "verified against model.engine.json (SHA-256)" in err
    assert "refused" not in err


@pytest.mark.parametrize("reference", ["../../etc/model.engine", "../model.engine", "sub/../../model.engine",
                                       "/tmp/model.engine", "\\\\server\\share\\model.engine", "C:/engines/model.engine"])
def test_engine_path_escaping_the_model_folder_is_refused(cli, tmp_path, reference):
    model_dir = tmp_path / "deploy"
    model_dir.mkdir()
    code, out, err = cli(_ctx_folder(model_dir, reference), "--random")
    assert code == 3
    line = _one_error_line(err)
    assert "refused" in line and "escapes the model's folder" in line


def test_engine_path_through_a_symlink_out_of_the_folder_is_refused(infer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.engine").write_bytes(ENGINE)
    model_dir = tmp_path / "deploy"
    model_dir.mkdir()
    os.symlink(outside / "model.engine", model_dir / "model.engine")
    with pytest.raises(infer.Unavailable, match="outside the model's folder"):
        infer.check_engine_path(str(model_dir), "model.engine")
    assert infer.check_engine_path(str(outside), "model.engine") == str((outside / "model.engine").resolve())


def test_engine_hash_mismatch_is_refused(cli, tmp_path):
    path = _ctx_folder(tmp_path, record=sidecar(b"another engine"))
    code, out, err = cli(path, "--random")
    assert code == 3
    line = _one_error_line(err)
    assert "refused model.engine" in line and "SHA-256" in line and "--no-verify-engine" in line


def test_no_verify_engine_loads_a_mismatching_engine_loudly(cli, tmp_path):
    path = _ctx_folder(tmp_path, record=sidecar(b"another engine"))
    code, out, err = cli(path, "--random", "--no-verify-engine")
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert any("WITHOUT checking its SHA-256" in w for w in warnings)
    assert any("would have refused model.engine" in w and "SHA-256" in w for w in warnings)
    if code:
        assert "refused" not in _one_error_line(err)
    if not HAS_TRT:
        assert code == 3 and "needs the TensorRT EP" in _one_error_line(err)


def test_missing_engine_file_is_bad_input(cli, tmp_path):
    path = _ctx_folder(tmp_path)
    (tmp_path / "model.engine").unlink()
    code, out, err = cli(path, "--random")
    assert code == 2
    assert "copy it beside model_ctx.onnx" in _one_error_line(err)


def test_sidecar_that_is_not_a_blocks_export_sidecar_is_refused(cli, tmp_path):
    path = _ctx_folder(tmp_path, record={"format": "something-else"})
    code, out, err = cli(path, "--random")
    assert code == 3 and "is not a blocks-export-engine/1 engine sidecar" in _one_error_line(err)


def test_engine_without_sidecar_is_refused_unless_verification_is_off(infer, tmp_path):
    path = _ctx_folder(tmp_path, record=False)
    nodes = infer.read_onnx_summary(str(path)).nodes
    with pytest.raises(infer.Unavailable, match="no model.engine.json"):
        infer.verify_ep_context(str(path), nodes, verify=True)
    (check,) = infer.verify_ep_context(str(path), nodes, verify=False)
    assert any("no model.engine.json" in w for w in check.warnings)


def test_embedded_engine_is_hashed_from_the_model(infer, tmp_path):
    path = tmp_path / "model_ctx.onnx"
    onnx.save(ctx_model(ENGINE, embed_mode=1), str(path))
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar(b"other")))
    nodes = infer.read_onnx_summary(str(path)).nodes
    with pytest.raises(infer.Unavailable, match="SHA-256"):
        infer.verify_ep_context(str(path), nodes, verify=True)
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar(ENGINE)))
    (check,) = infer.verify_ep_context(str(path), nodes, verify=True)
    assert check.warnings == []


def _facts(infer, version, capability):
    return infer.MachineFacts(version, "test", capability, "test")


def test_tensorrt_version_and_compute_capability_mismatches_are_refused(infer, tmp_path):
    path = _ctx_folder(tmp_path)
    nodes = infer.read_onnx_summary(str(path)).nodes
    same = _facts(infer, "10.3.0.30", "8.7")
    (check,) = infer.verify_ep_context(str(path), nodes, verify=True, machine=same)
    assert any("TensorRT version, compute capability" in n for n in check.notes)
    with pytest.raises(infer.Unavailable, match=r"TensorRT 10\.3\.0, this machine has TensorRT 8\.6\.2"):
        infer.verify_ep_context(str(path), nodes, verify=True, machine=_facts(infer, "8.6.2", "8.7"))
    with pytest.raises(infer.Unavailable, match=r"compute capability 8\.7 \(Orin\), this GPU is 9\.0"):
        infer.verify_ep_context(str(path), nodes, verify=True, machine=_facts(infer, "10.3.0", "9.0"))
    (loud,) = infer.verify_ep_context(str(path), nodes, verify=False, machine=_facts(infer, "8.6.2", "9.0"))
    assert any("TensorRT 8.6.2" in w and "9.0" in w for w in loud.warnings)


def test_undeterminable_machine_facts_are_reported_not_guessed(infer):
    record = sidecar(ENGINE)
    digest = hashlib.sha256(ENGINE).hexdigest()
    mismatches, unchecked = infer.engine_mismatches(infer.Sidecar.from_dict(record), digest, _facts(infer, None, None))
    assert mismatches == []
    assert len(unchecked) == 2
    assert "TensorRT version of this machine not determined" in unchecked[0]
    assert "compute capability of this GPU not determined" in unchecked[1]
    record["compute_capability"] = "sm_87?"
    mismatches, unchecked = infer.engine_mismatches(infer.Sidecar.from_dict(record), digest,
                                                    _facts(infer, "10.3.0", "8.7"))
    assert mismatches == [] and "'sm_87?' is unreadable" in unchecked[0]


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a valid ONNX model"),
    (classifier_model().SerializeToString()[:-7], "not a valid ONNX model"),
    (b"\x08\x09", "no graph"),
])
def test_hostile_or_broken_model_file_exits_2_with_one_line(cli, tmp_path, content, why):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    code, out, err = cli(path, "--random")
    assert code == 2
    assert why in _one_error_line(err)


def _unknown_domain(model):
    model.graph.node[1].domain = "com.example.custom"
    model.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))


def _future_opset(model):
    model.opset_import[0].version = 99


@pytest.mark.parametrize("break_model", [_unknown_domain, _future_opset, "external data missing"])
def test_model_onnxruntime_cannot_load_exits_2_with_one_line(cli, tmp_path, break_model):
    model = classifier_model()
    path = tmp_path / "broken.onnx"
    if callable(break_model):
        break_model(model)
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="broken.data", size_threshold=0)
        (tmp_path / "broken.data").unlink()
    code, out, err = cli(path, "--random", "--provider", "cpu")
    assert code == 2
    assert "onnxruntime could not load broken.onnx" in _one_error_line(err)


@pytest.mark.skipif(HAS_TRT, reason="this onnxruntime has the TensorRT EP")
def test_ctx_model_from_the_exporters_writer_is_validated_and_keeps_its_metadata(cli, infer, tmp_path):
    from blocks_export.export.epcontext import write_ep_context

    onnx.save(classifier_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "model.engine").write_bytes(ENGINE)
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar(ENGINE)))
    write_ep_context(tmp_path / "model.engine", tmp_path / "model.onnx", tmp_path / "model_ctx.onnx")
    meta = infer.parse_meta(infer.read_onnx_summary(str(tmp_path / "model_ctx.onnx")).metadata)
    assert (meta.task, meta.labels) == ("classify", LABELS)
    code, out, err = cli(tmp_path / "model_ctx.onnx", "--random")
    assert code == 3
    assert "verified against model.engine.json (SHA-256)" in err
    assert "needs the TensorRT EP" in _one_error_line(err)
    (tmp_path / "model.engine").write_bytes(ENGINE + b"tampered")
    code, out, err = cli(tmp_path / "model_ctx.onnx", "--random")
    assert code == 3 and "refused model.engine" in _one_error_line(err)
