"""The engine's sidecar, ``model.engine.json`` (format ``blocks-export-engine/1``): what an engine was built
from and for, written beside it by ``build``, and checked before anything deserializes the engine.

Its fields and its check are ONE contract, the runtime script's: ``runtime/infer.py`` stays a single file that
runs alone on the Jetson, and this module writes its ``Sidecar`` and imports its ``read_sidecar`` and
``engine_mismatches``. The sidecar is not a signature
(README, Security): it catches a wrong, modified or truncated engine and an engine for another TensorRT or GPU,
not a forged pair.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...runtime.infer import (
    SIDECAR_FORMAT,
    MachineFacts,
    Sidecar,
    SidecarInvalid,
    engine_mismatches,
    read_sidecar,
    sha256_file,
)
from ..errors import EXIT_MISSING_RUNTIME, ExportError
from ..metadata import toolkit_version

ENGINE_FORMAT = SIDECAR_FORMAT


class EngineRefused(ExportError):
    """An engine that does not match its sidecar (hash, TensorRT version, GPU): never deserialized."""

    exit_code = EXIT_MISSING_RUNTIME  # as the runtime script: 3 = engine unavailable or refused here


class EngineNotVerifiedWarning(UserWarning):
    """An engine loaded with ``verify=False``: what was not checked, or what would have been refused."""


def default_paths(engine_path: Path) -> tuple[Path, Path, Path]:
    """Sidecar, EPContext model and timing cache paths beside ``engine_path``."""
    engine_path = Path(engine_path)
    return (engine_path.with_name(engine_path.name + ".json"),
            engine_path.with_name(f"{engine_path.stem}_ctx.onnx"),
            engine_path.with_name(f"{engine_path.stem}.timing.cache"))


@dataclass(frozen=True)
class Built:
    """What one build produced and for what, as the sidecar records it."""

    engine: bytes
    tensorrt_version: str
    device_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    profiles: list[dict[str, dict[str, list[int]]]]
    target: str
    source_name: str
    source: bytes
    plugins: list[str]
    build_seconds: float
    fp32_layers: list[str]


def record(built: Built) -> Sidecar:
    """The sidecar of ``built`` (``runtime/infer.py``'s ``Sidecar``: the contract the runtime script reads)."""
    return Sidecar(
        engine_sha256=hashlib.sha256(built.engine).hexdigest(),
        tensorrt_version=built.tensorrt_version,
        device_name=built.device_name,
        compute_capability=built.compute_capability,
        precision=built.precision,
        strongly_typed=built.strongly_typed,
        inputs=built.inputs,
        outputs=built.outputs,
        profiles=built.profiles,
        toolkit_version=toolkit_version(),
        target=built.target,
        source_onnx=built.source_name,
        source_onnx_sha256=hashlib.sha256(built.source).hexdigest(),
        plugins=built.plugins,
        build_seconds=round(built.build_seconds, 3),
        fp32_layers=built.fp32_layers,
    )


def encode(sidecar: Sidecar) -> bytes:
    return (json.dumps(sidecar.as_dict(), indent=2) + "\n").encode()


def verify_engine(engine_path: Path, *, tensorrt_version: str | None, compute_capability: str | None,
                  verify: bool = True) -> list[str]:
    """Check ``engine_path`` against its sidecar (``<engine>.json``) before anything deserializes it.

    The contract is the runtime script's (``runtime/infer.py``: ``read_sidecar``, ``engine_mismatches``), so
    the library and the script on the Jetson refuse the same engines. SHA-256 always; TensorRT version and
    compute capability where given (``None``: not determinable here, not checked). ``EngineRefused`` (one line)
    on a missing or unusable sidecar or any mismatch; with ``verify=False`` the same findings are returned (and
    warned as ``EngineNotVerifiedWarning``) instead.
    """
    engine_path = Path(engine_path)
    sidecar_path = default_paths(engine_path)[0]
    problems: list[str] = []
    if not sidecar_path.is_file():
        problems.append(f"its sidecar {sidecar_path.name} is missing")
    else:
        try:
            sidecar = read_sidecar(os.fspath(sidecar_path))
        except SidecarInvalid as e:
            problems.append(e.reason)
        else:
            machine = MachineFacts(tensorrt_version, "the tensorrt module" if tensorrt_version else "not given",
                                   compute_capability, "the CUDA driver" if compute_capability else "not given")
            problems += engine_mismatches(sidecar, sha256_file(os.fspath(engine_path)), machine)[0]
    if problems and verify:
        raise EngineRefused(f"refused engine {engine_path.name}: {'; '.join(problems)}; rebuild it here "
                            "(blocks-export MODEL.onnx `to=trt`) or load it with verify=False")
    if not verify:
        import warnings

        found = "; ".join(problems) if problems else "no mismatch found"
        warnings.warn(f"engine {engine_path.name} loaded WITHOUT verification (verify=False): {found}",
                      EngineNotVerifiedWarning, stacklevel=3)
    return problems
