"""Outputs that appear while an export runs, the report file as an output, and file modes (#13)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from bad_inputs import export_tiny, listing, one_error_line, tiny_model_file

OTHER = b"another run's export, must survive"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("src"))


_export = export_tiny


def test_output_that_appears_during_the_export_is_not_replaced(tmp_path: Path, source: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A second export into the same new output wins the race: its file lands at the path after our
    # start-up check and before our final step. The real save runs; only the competitor is staged here.
    out = tmp_path / "m.onnx"
    real_save = onnx.save_model

    def save_model(model: onnx.ModelProto, f: str, *args: object, **kwargs: object) -> None:
        out.write_bytes(OTHER)
        real_save(model, f, *args, **kwargs)

    monkeypatch.setattr(onnx, "save_model", save_model)
    code, _, err = _export(source, out)
    assert code == 2
    line = one_error_line(err)
    assert "already exists" in line and "--force" in line
    assert out.read_bytes() == OTHER
    assert not [p for p in listing(tmp_path) if p.endswith(".tmp")], listing(tmp_path)


def test_a_users_report_file_is_not_overwritten_without_force(tmp_path: Path, source: Path) -> None:
    report = tmp_path / "m.report.json"
    report.write_bytes(OTHER)
    code, _, err = _export(source, tmp_path / "m.onnx")
    assert code == 2 and "m.report.json already exists" in one_error_line(err)
    assert report.read_bytes() == OTHER and not (tmp_path / "m.onnx").exists()
    code, _, err = _export(source, tmp_path / "m.onnx", "--force")
    assert code == 0, err
    assert report.read_bytes() != OTHER


def test_outputs_follow_the_umask_and_force_keeps_the_existing_mode(tmp_path: Path, source: Path) -> None:
    old = os.umask(0o027)
    try:
        code, _, err = _export(source, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("m.onnx", "m.report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    os.chmod(tmp_path / "m.onnx", 0o604)
    code, _, err = _export(source, tmp_path / "m.onnx", "--force")
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o604


def test_stale_temporaries_of_ours_are_removed_and_nothing_else(tmp_path: Path, source: Path) -> None:
    # What a SIGKILL during the write leaves behind: .m.onnx.XXXXXXXX.tmp, here dated two days back.
    day = 24 * 3600
    stale = tmp_path / ".m.onnx.k3j9_x2a.tmp"
    fresh = tmp_path / ".m.onnx.abcdefgh.tmp"  # another run's, still writing
    other_name = tmp_path / ".other.onnx.k3j9_x2a.tmp"
    not_ours = tmp_path / ".m.onnx.keep.tmp"
    target = tmp_path / "precious.bin"
    target.write_bytes(OTHER)
    link = tmp_path / ".m.onnx.linklink.tmp"
    for p in (stale, fresh, other_name, not_ours):
        p.write_bytes(b"partial")
    os.symlink(target, link)
    old = os.stat(stale).st_mtime - 2 * day
    for p in (stale, other_name, not_ours):
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    code, _, err = _export(source, tmp_path / "m.onnx")
    assert code == 0, err
    assert not stale.exists()
    assert fresh.exists() and other_name.exists() and not_ours.exists() and link.is_symlink()
    assert target.read_bytes() == OTHER


def test_stale_temporary_folders_of_ours_are_removed_and_nothing_else(tmp_path: Path, source: Path) -> None:
    # What a SIGKILL while a multi-file output (external data, engine files) was staged leaves behind:
    # .blocks-export.XXXXXXXX.tmp/ holding the partial files, here dated two days back.
    old = os.stat(tmp_path).st_mtime - 2 * 24 * 3600
    stale = tmp_path / ".blocks-export.k3j9_x2a.tmp"
    fresh = tmp_path / ".blocks-export.abcdefgh.tmp"  # another run's, still writing
    with_a_link = tmp_path / ".blocks-export.linkdir0.tmp"  # not what we leave: a link inside
    with_a_folder = tmp_path / ".blocks-export.userdata.tmp"  # not what we leave: a folder inside
    a_file = tmp_path / ".blocks-export.zz9plur.tmp"  # a file, not a folder (and 7 characters)
    no_dot = tmp_path / "blocks-export.k3j9_x2a.tmp"
    target = tmp_path / "precious.bin"
    target.write_bytes(OTHER)
    for folder in (stale, fresh, with_a_link, with_a_folder, no_dot):
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"partial")
    os.symlink(target, with_a_link / "m.onnx.data")
    (with_a_folder / "notes").mkdir()
    a_file.write_bytes(OTHER)
    for p in (stale, with_a_link, with_a_folder, no_dot, a_file, stale / "m.onnx"):
        os.utime(p, (old, old))
    code, _, err = _export(source, tmp_path / "m.onnx")
    assert code == 0, err
    assert not stale.exists()
    for kept in (fresh, with_a_link, with_a_folder, no_dot):
        assert (kept / "m.onnx").read_bytes() == b"partial", kept
    assert (with_a_link / "m.onnx.data").is_symlink() and (with_a_folder / "notes").is_dir()
    assert a_file.read_bytes() == OTHER and target.read_bytes() == OTHER


@pytest.fixture
def trt_double(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensorrt test double on a fake Orin: the engine build runs here, without a GPU."""
    import sys

    import trt_double as double

    from blocks_export.export.trt import api

    monkeypatch.setitem(sys.modules, "tensorrt", double.make_tensorrt("10"))
    monkeypatch.setattr(api, "cuda_device", lambda command, index=0: api.DeviceInfo("Orin", "8.7"))


def _onnx_input(folder: Path) -> Path:
    from bad_inputs import relu_model

    onnx.save(relu_model(), folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("name", ["m.engine.json", "m_ctx.onnx"])
def test_an_existing_engine_sidecar_is_refused_without_force(tmp_path: Path, trt_double: None, name: str) -> None:
    from bad_inputs import cli

    src = _onnx_input(tmp_path)
    (tmp_path / name).write_bytes(OTHER)
    code, _, err = cli(src, "--to", "trt", "--target", "jetpack6", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "already exists" in line and "--force" in line, line
    assert (tmp_path / name).read_bytes() == OTHER
    assert listing(tmp_path) == sorted(["m.onnx", name])


@pytest.mark.parametrize("name", ["m.engine", "m.engine.json", "m_ctx.onnx"])
def test_an_engine_file_that_appears_during_the_build_is_not_replaced(tmp_path: Path, trt_double: None,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      name: str) -> None:
    # Another build into the same new engine lands its file after our start-up check and before our final
    # step. The real build runs; only the competitor's file is staged, while the EPContext model is made.
    from bad_inputs import cli

    from blocks_export.export.trt import build

    src = _onnx_input(tmp_path)
    real = build.ep_context_model

    def competitor_lands(*args: object, **kwargs: object) -> object:
        (tmp_path / name).write_bytes(OTHER)
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "ep_context_model", competitor_lands)
    code, _, err = cli(src, "--to", "trt", "--target", "jetpack6", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "already exists" in line and "--force" in line, line
    assert (tmp_path / name).read_bytes() == OTHER
    # The build's files are one unit: none of them landed beside the competitor's (the cache is not an output).
    assert set(listing(tmp_path)) - {"m.timing.cache"} == {"m.onnx", name}
