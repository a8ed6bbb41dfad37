"""Hostile ``torch.export`` (.pt2) and TorchScript archives. A ``.pt2`` is opened only with --trust-pickle,
whatever it holds: the payloads below are raw pickle bytes (and, with no pickle at all, JSON strings that
torch.export.load evaluates) inside genuine archives, named ``.pt2`` or renamed ``.pt``; none may run without
--trust-pickle (marker-file tests), and each one runs with it (the control that makes the refusal mean
something)."""

from __future__ import annotations

import itertools
from pathlib import Path

import export_models
import pytest
from bad_inputs import (
    PICKLE_FORMS,
    PT2_JSON_FORMS,
    PT2_PICKLE_PLACES,
    cli,
    hostile_pt2,
    hostile_pt2_json,
    listing,
    one_error_line,
    payload_pickle,
)

MARKER = "PWNED"
_PICKLE_CASES = [f"{place}-{form}" for place, form in itertools.product(PT2_PICKLE_PLACES, PICKLE_FORMS)]
_CASES = _PICKLE_CASES + [f"json-{form}" for form in PT2_JSON_FORMS]


def _hostile(folder: Path, case: str, suffix: str) -> tuple[Path, Path]:
    marker = folder / MARKER
    place, form = case.split("-", 1)
    src = folder / f"evil{suffix}"
    if place == "json":
        hostile_pt2_json(src, form, f"touch {marker}")
    else:
        hostile_pt2(src, place, payload_pickle(form, f"touch {marker}"))
    return src, marker


@pytest.mark.parametrize("suffix", [".pt2", ".pt"], ids=["pt2", "renamed_pt"])
@pytest.mark.parametrize("case", _CASES)
def test_pt2_payload_never_runs_without_trust_pickle(tmp_path: Path, case: str, suffix: str) -> None:
    src, marker = _hostile(tmp_path, case, suffix)
    for command in (["export", src, "--to", "onnx", "-o", tmp_path / "out.onnx"], ["inspect", src]):
        code, _out, err = cli(*command)
        line = one_error_line(err)
        assert code == 2, err
        assert "torch.export program" in line and "--trust-pickle" in line, line
        assert not marker.exists(), command
    assert listing(tmp_path) == [src.name]


@pytest.mark.parametrize("case", _CASES)
def test_pt2_payload_is_live_so_the_refusal_above_means_something(tmp_path: Path, case: str) -> None:
    """Control: torch.export.load itself runs each crafted payload; --trust-pickle is what lets it through."""
    src, marker = _hostile(tmp_path, case, ".pt2")
    cli("inspect", src, "--trust-pickle")
    assert marker.exists()


def test_the_rot13_form_shows_no_dangerous_name_to_a_scan_of_its_bytes() -> None:
    """Why the gate cannot be a scan: the names it would look for are not in the bytes."""
    import io
    import pickletools

    data = payload_pickle("rot13", "touch x")
    assert b"os" not in data and b"system" not in data
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle, all the same


def test_genuine_pt2_is_refused_without_trust_pickle_and_loads_with_it(tmp_path: Path) -> None:
    import io

    import torch
    from bad_inputs import _WithConstant

    buf = io.BytesIO()
    torch.export.save(_WithConstant.build(), buf)
    (tmp_path / "ok.pt2").write_bytes(buf.getvalue())
    code, _out, err = cli("inspect", tmp_path / "ok.pt2")
    assert code == 2 and "--trust-pickle" in one_error_line(err)
    code, out, err = cli("inspect", tmp_path / "ok.pt2", "--trust-pickle")
    assert code == 0, err
    assert "torch.export" in out


@pytest.mark.parametrize("damage", ["truncated_json", "no_archive_version", "no_weight", "bad_weight"])
def test_damaged_pt2_with_trust_pickle_is_one_line_without_torch_s_traceback(tmp_path: Path, damage: str) -> None:
    """torch.export.load logs a failed read with its traceback (torch's own log handler, on the real stderr):
    run as a user does, in a process of its own."""
    import io
    import subprocess
    import sys
    import zipfile

    import torch
    from bad_inputs import _WithConstant, subprocess_env

    buf = io.BytesIO()
    torch.export.save(_WithConstant.build(), buf)
    src = tmp_path / "bad.pt2"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z, zipfile.ZipFile(src, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            name = info.filename
            if damage == "truncated_json" and name.endswith("models/model.json"):
                data = data[: len(data) // 2]
            elif (damage == "no_archive_version" and name.endswith("/archive_version")) or (
                    damage == "no_weight" and name.endswith("/weight_0")):
                continue
            elif damage == "bad_weight" and name.endswith("/weight_0"):
                data = b"short"
            out.writestr(info, data)
    exe = Path(sys.executable).parent / "blocks-export"
    proc = subprocess.run([str(exe), "inspect", str(src), "--trust-pickle"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "torch.export program" in one_error_line(proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_torchscript_archive_with_a_python_payload_member_is_refused(tmp_path: Path) -> None:
    import io
    import pickle
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), buf)
    marker = tmp_path / MARKER
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    top = next(iter(members)).split("/", 1)[0]
    members[f"{top}/extra.pkl"] = pickle.dumps(export_models.Marker(str(marker)), protocol=2)
    src = tmp_path / "evil.torchscript"
    with zipfile.ZipFile(src, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    code, _out, err = cli("inspect", src)
    line = one_error_line(err)
    assert code == 2 and "posix.system" in line and "extra.pkl" in line, line
    assert not marker.exists()
