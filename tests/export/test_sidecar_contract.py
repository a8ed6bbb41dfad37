"""One engine-sidecar contract: the library's engine loader (``export/trt/sidecar.verify_engine``) and the
runtime script (``runtime/infer.py``, copied alone to the Jetson) give the same verdict on the same engine,
sidecar and machine, so the two can never drift apart."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from blocks_export.export.trt.sidecar import EngineNotVerifiedWarning, EngineRefused, verify_engine
from blocks_export.runtime import infer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from infer_fixtures import ctx_model, sidecar  # noqa: E402

ENGINE = b"\x00a crafted plan file\xff" * 4
Sidecar = Callable[[bytes], Any]  # engine bytes -> the sidecar's JSON value (None: no sidecar file)

# case -> (sidecar, TensorRT version here, compute capability here, refused?)
CASES: dict[str, tuple[Sidecar, str | None, str | None, bool]] = {
    "matching": (lambda e: sidecar(e), "10.3.0", "8.7", False),
    "build_number_differs": (lambda e: sidecar(e, tensorrt_version="10.3.0.26"), "10.3.0.30", "8.7", False),
    "other_patch_release": (lambda e: sidecar(e), "10.3.1", "8.7", True),
    "other_major": (lambda e: sidecar(e), "8.6.2", "8.7", True),
    "other_sm": (lambda e: sidecar(e), "10.3.0", "8.6", True),
    "sm_written_as_ep_context_does": (lambda e: sidecar(e, compute_capability="87"), "10.3.0", "8.7", False),
    "sm_8_10_is_not_sm_81_0": (lambda e: sidecar(e, compute_capability="8.10"), "10.3.0", "81.0", True),
    "engine_hash_differs": (lambda e: sidecar(e + b"tampered"), "10.3.0", "8.7", True),
    "hash_in_capitals": (lambda e: sidecar(e, engine_sha256=hashlib.sha256(e).hexdigest().upper()), "10.3.0", "8.7",
                         False),
    "no_valid_hash": (lambda e: sidecar(e, engine_sha256="abc"), "10.3.0", "8.7", True),
    "foreign_format": (lambda e: sidecar(e, format="something-else/1"), "10.3.0", "8.7", True),
    "not_an_object": (lambda e: [sidecar(e)], "10.3.0", "8.7", True),
    "no_sidecar": (lambda e: None, "10.3.0", "8.7", True),
    "version_unknown_here": (lambda e: sidecar(e, tensorrt_version="7.0.0"), None, "8.7", False),
    "sm_unknown_here": (lambda e: sidecar(e, compute_capability="7.2"), "10.3.0", None, False),
    "sidecar_without_version_or_sm": (lambda e: {k: v for k, v in sidecar(e).items()
                                                 if k not in ("tensorrt_version", "compute_capability")},
                                      "10.3.0", "8.7", False),
}


def _deploy(folder: Path, record: Any) -> Path:
    (folder / "model.engine").write_bytes(ENGINE)
    if record is not None:
        (folder / "model.engine.json").write_text(json.dumps(record))
    ctx = folder / "model_ctx.onnx"
    onnx.save(ctx_model("model.engine"), str(ctx))
    return ctx


def _library_refuses(folder: Path, trt_version: str | None, cc: str | None) -> bool:
    try:
        verify_engine(folder / "model.engine", tensorrt_version=trt_version, compute_capability=cc)
    except EngineRefused:
        return True
    return False


def _script_refuses(ctx: Path, trt_version: str | None, cc: str | None) -> bool:
    facts = infer.MachineFacts(trt_version, "test", cc, "test")
    nodes = infer.read_onnx_summary(str(ctx)).nodes
    try:
        infer.verify_ep_context(str(ctx), nodes, verify=True, machine=facts)
    except infer.Unavailable:
        return True
    return False


@pytest.mark.parametrize("case", sorted(CASES))
def test_library_and_runtime_script_give_the_same_verdict(tmp_path: Path, case: str) -> None:
    make, trt_version, cc, refused = CASES[case]
    ctx = _deploy(tmp_path, make(ENGINE))
    library, script = _library_refuses(tmp_path, trt_version, cc), _script_refuses(ctx, trt_version, cc)
    assert library == script, f"library refuses: {library}, runtime script refuses: {script}"
    assert library == refused


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][3]))
def test_every_refusal_is_one_line_saying_why_on_both_sides(tmp_path: Path, case: str) -> None:
    make, trt_version, cc, _ = CASES[case]
    ctx = _deploy(tmp_path, make(ENGINE))
    with pytest.raises(EngineRefused) as lib:
        verify_engine(tmp_path / "model.engine", tensorrt_version=trt_version, compute_capability=cc)
    with pytest.raises(infer.Unavailable) as script:
        infer.verify_ep_context(str(ctx), infer.read_onnx_summary(str(ctx)).nodes, verify=True,
                                machine=infer.MachineFacts(trt_version, "test", cc, "test"))
    for message in (str(lib.value), str(script.value)):
        assert "\n" not in message and "model.engine" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EngineNotVerifiedWarning)
        assert verify_engine(tmp_path / "model.engine", tensorrt_version=trt_version, compute_capability=cc,
                             verify=False)
