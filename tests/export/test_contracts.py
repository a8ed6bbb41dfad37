"""The two files the library writes and the runtime script reads on the Jetson — the ONNX metadata and the engine
sidecar — are one definition each, in ``runtime/infer.py`` (``META_KEYS``, ``Sidecar``): what the writer puts in
is what the reader takes out, key for key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_models  # noqa: E402

from blocks_export.export.metadata import read_metadata  # noqa: E402
from blocks_export.export.options import ExportOptions  # noqa: E402
from blocks_export.export.pipeline import run_export  # noqa: E402
from blocks_export.export.trt.sidecar import Built, encode, record  # noqa: E402
from blocks_export.runtime import infer  # noqa: E402


def test_every_metadata_entry_an_export_writes_is_a_contract_key_the_script_reads(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save(export_models.build(export_models.RefNet), src)
    result = run_export(src, ExportOptions(imgsz=(32, 32), dynamic=True, trust_pickle=True))
    assert result.exit_code == 0
    model = onnx.load(str(src.with_suffix(".onnx")))
    entries = {p.key: p.value for p in model.metadata_props if p.key.startswith(infer.META)}
    assert {k[len(infer.META):] for k in entries} == set(infer.META_KEYS)  # every key, and only those
    decoded = read_metadata(model)
    for key, value in decoded.items():
        assert value is None or isinstance(value, infer.META_KEYS[key]), key
    assert infer.encode_meta(decoded) == entries  # what the reader takes out, the writer puts back
    meta = infer.parse_meta(entries)
    assert meta.labels == decoded["labels"] == ["a", "b", "c", "d", "e"]
    assert meta.export_shape == decoded["export_shape"] == {"images": [1, 3, 32, 32]}
    assert meta.dynamic == {"images": {int(a): b for a, b in decoded["dynamic"]["images"].items()}}
    assert meta.preprocess == decoded["preprocess"] and meta.task == decoded["task"] == "features"


def test_a_metadata_key_or_value_outside_the_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="not a metadata key"):
        infer.encode_meta({"labes": ["a"]})
    with pytest.raises(ValueError, match="takes a list"):
        infer.encode_meta({"labels": "a,b"})
    assert infer.encode_meta({"precision": "fp16", "dynamic": None}) == {
        "blocks_export.precision": "fp16", "blocks_export.dynamic": "null"}


def test_the_sidecar_the_builder_writes_is_the_contract_and_reads_back_whole(tmp_path: Path) -> None:
    built = Built(b"engine bytes", "10.3.0.30", "Orin", "8.7", "fp16", True,
                  [{"name": "images", "shape": [-1, 3, -1, -1], "dtype": "float32"}],
                  [{"name": "output0", "shape": [-1, 5], "dtype": "float32"}],
                  [{"images": {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}}],
                  "jetpack6", "m.onnx", b"onnx bytes", ["ModulatedDeformConv2d"], 12.34567, ["softmax"])
    path = tmp_path / "m.engine.json"
    path.write_bytes(encode(record(built)))
    written = json.loads(path.read_text())
    assert list(written) == ["format", *infer.Sidecar.__dataclass_fields__]  # every field, in the contract's order
    assert written["format"] == infer.SIDECAR_FORMAT and written["build_seconds"] == 12.346
    read = infer.read_sidecar(str(path))
    assert read == record(built) and read.as_dict() == written
    assert infer.profile_from_sidecar(read) == {"trt_profile_min_shapes": "images:1x3x32x32",
                                                "trt_profile_opt_shapes": "images:2x3x64x64",
                                                "trt_profile_max_shapes": "images:4x3x64x64"}


def test_a_sidecar_of_an_older_writer_reads_with_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "old.engine.json"
    path.write_text(json.dumps({"format": infer.SIDECAR_FORMAT, "engine_sha256": "ab" * 32,
                                "tensorrt_version": "8.5.2", "unknown_later_key": 1}))
    read = infer.read_sidecar(str(path))
    assert read.tensorrt_version == "8.5.2" and read.compute_capability is None and read.profiles == []
    path.write_text(json.dumps({"format": infer.SIDECAR_FORMAT}))
    with pytest.raises(infer.SidecarInvalid, match="no valid engine_sha256"):
        infer.read_sidecar(str(path))
