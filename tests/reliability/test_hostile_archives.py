"""Hostile ``torch.export`` (.pt2) and TorchScript archives: every pickle inside passes the same gate as a ``.pt``
before a torch loader opens the file; nothing from the file runs without --trust-pickle (marker-file tests)."""

from __future__ import annotations

from pathlib import Path

import export_models
import pytest
from bad_inputs import PT2_PAYLOAD_PLACES, cli, hostile_pt2, listing, one_error_line

MARKER = "PWNED"


@pytest.mark.parametrize("suffix", [".pt2", ".pt"], ids=["pt2", "disguised_as_pt"])
@pytest.mark.parametrize("place", PT2_PAYLOAD_PLACES)
def test_pt2_payload_never_runs_without_trust_pickle(tmp_path: Path, place: str, suffix: str) -> None:
    marker = tmp_path / MARKER
    src = hostile_pt2(tmp_path / f"evil{suffix}", place, export_models.Marker(str(marker)))
    for command in (["export", src, "--to", "onnx", "-o", tmp_path / "out.onnx"], ["inspect", src]):
        code, _out, err = cli(*command)
        line = one_error_line(err)
        assert code == 2, err
        assert "--trust-pickle" in line and "posix.system" in line, line
        assert "corrupted" not in line, line
        assert not marker.exists(), command
    assert listing(tmp_path) == [src.name]


@pytest.mark.parametrize("place", PT2_PAYLOAD_PLACES)
def test_pt2_payload_is_live_so_the_refusal_above_means_something(tmp_path: Path, place: str) -> None:
    """Control: torch.export.load itself runs each crafted payload; --trust-pickle is what lets it through."""
    marker = tmp_path / MARKER
    src = hostile_pt2(tmp_path / "evil.pt2", place, export_models.Marker(str(marker)))
    cli("inspect", src, "--trust-pickle")
    assert marker.exists()


def test_genuine_pt2_with_constants_and_sample_inputs_still_loads(tmp_path: Path) -> None:
    import io

    import torch
    from bad_inputs import _WithConstant

    buf = io.BytesIO()
    torch.export.save(_WithConstant.build(), buf)
    (tmp_path / "ok.pt2").write_bytes(buf.getvalue())
    code, out, err = cli("inspect", tmp_path / "ok.pt2")
    assert code == 0, err
    assert "torch.export" in out


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
