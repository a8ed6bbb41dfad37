import io
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import export_models  # noqa: E402

from blocks_export.export.cli import flag_words
from blocks_export.export.errors import InputError  # noqa: E402
from blocks_export.export.load import load_model  # noqa: E402


@pytest.fixture(scope="module")
def refnet() -> torch.nn.Module:
    return export_models.build(export_models.RefNet)


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_hostile_pickle_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for i, legacy in enumerate((False, True)):
        path = tmp_path / f"evil{i}.pt"
        with open(path, "wb") as f:
            torch.save({"model": export_models.Marker(str(marker))}, f, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(InputError) as e:
            load_model(path)
        assert "--trust-pickle" in flag_words(str(e.value))
        assert "posix.system" in str(e.value) or "nt.system" in str(e.value)
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_pickled_module_needs_trust_and_then_loads_in_eval_fp32(tmp_path: Path, refnet: torch.nn.Module) -> None:
    path = _save(refnet, tmp_path / "m.pt")
    with pytest.raises(InputError) as e:
        load_model(path)
    assert "--trust-pickle" in flag_words(str(e.value))
    loaded = load_model(path, trust_pickle=True)
    assert loaded.kind == "module" and not loaded.model.training
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), refnet(x), rtol=0, atol=0)
    assert loaded.metadata["task"] == "features"


def test_ultralytics_checkpoint_prefers_ema_and_casts_fp16_to_fp32(tmp_path: Path, refnet: torch.nn.Module) -> None:
    ema = export_models.build(export_models.RefNet, seed=3).half()
    other = export_models.build(export_models.RefNet, seed=4).half()
    path = _save({"epoch": 3, "model": other, "ema": ema, "optimizer": None}, tmp_path / "ckpt.pt")
    loaded = load_model(path, trust_pickle=True)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    expected = {k: v.float() if v.is_floating_point() else v for k, v in ema.state_dict().items()}
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
    path2 = _save({"model": other, "ema": None}, tmp_path / "ckpt2.pt")
    assert load_model(path2, trust_pickle=True).model.state_dict()["head.weight"].dtype == torch.float32


def test_state_dict_with_arch_loads_with_weights_only(tmp_path: Path, refnet: torch.nn.Module) -> None:
    path = _save(refnet.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError) as e:
        load_model(path)
    assert "--arch" in flag_words(str(e.value))
    loaded = load_model(path, arch="export_models:build_refnet")
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), refnet(x), rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "why"), [
    ("no_such_module_xyz:build", "cannot import"),
    ("export_models:NOT_CALLABLE", "not a callable"),
    ("export_models:raises", "raised RuntimeError"),
    ("export_models:missing_attr", "no attribute"),
    ("export_models", "MODULE:CALLABLE"),
])
def test_bad_arch_is_refused_in_one_line(tmp_path: Path, refnet: torch.nn.Module, arch: str, why: str) -> None:
    path = _save(refnet.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError, match=why) as e:
        load_model(path, arch=arch)
    assert "\n" not in str(e.value)


def test_state_dict_mismatch_lists_missing_and_unexpected_keys(tmp_path: Path, refnet: torch.nn.Module) -> None:
    sd = dict(refnet.state_dict())
    sd.pop("head.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = _save(sd, tmp_path / "sd.pt")
    with pytest.raises(InputError) as e:
        load_model(path, arch="export_models:build_refnet")
    assert "missing keys: head.weight" in str(e.value) and "unexpected keys: extra.weight" in str(e.value)


def _truncated(tmp_path: Path, refnet: torch.nn.Module) -> Path:
    data = _save(refnet.state_dict(), tmp_path / "full.pt").read_bytes()
    path = tmp_path / "trunc.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("case", "why"), [
    ("missing", "no such file"),
    ("empty", "empty"),
    ("random", "not a (PyTorch checkpoint|readable PyTorch file)"),
    ("truncated", "truncated or corrupted"),
    ("tensor", "single tensor"),
    ("list", "a list"),
    ("dict", "no 'model' or 'ema'"),
])
def test_unusable_files_are_refused_in_one_line(tmp_path: Path, refnet: torch.nn.Module, case: str, why: str) -> None:
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(7).bytes(4096))
    elif case == "truncated":
        path = _truncated(tmp_path, refnet)
    elif case == "tensor":
        _save(torch.zeros(3, 4), path)
    elif case == "list":
        _save([1, 2, 3], path)
    elif case == "dict":
        _save({"epoch": 3, "best_fitness": 0.5}, path)
    with pytest.raises(InputError, match=why) as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    path = _save(export_models.TwoInputs(), tmp_path / "two.pt")
    with pytest.raises(InputError, match="2 required inputs"):
        load_model(path, trust_pickle=True)


def test_torchscript_and_torch_export_archives_load_as_they_are_with_a_warning(tmp_path: Path,
                                                                               refnet: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 32, 32)
    ts = tmp_path / "m.torchscript"
    torch.jit.save(torch.jit.trace(refnet, x), str(ts))
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(export_models.build(export_models.Stride16), (torch.rand(1, 3, 32, 32),)),
                      str(pt2))
    assert zipfile.is_zipfile(ts) and zipfile.is_zipfile(pt2)
    a = load_model(ts)
    assert a.kind == "torchscript" and "cannot apply" in a.warnings[0]
    torch.testing.assert_close(a.model(x), refnet(x))
    with pytest.raises(InputError, match="torch.export program runs code"):
        load_model(pt2)
    b = load_model(pt2, trust_pickle=True)
    assert b.kind == "exported_program" and "cannot apply" in b.warnings[0]


def test_onnx_input_is_not_loaded_with_torch(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not parsed here")
    loaded = load_model(path)
    assert loaded.kind == "onnx" and loaded.model is None and len(loaded.sha256) == 64


# The loader is total over garbage: whatever the bytes, an InputError (exit 2) of one line, never another error.
# In-process and bounded; derandomize makes the examples the same every run.
_GARBAGE = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _refused_in_one_line(data: bytes, suffix: str, trust_pickle: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        try:
            load_model(path, trust_pickle=trust_pickle)
        except InputError as e:
            assert e.exit_code == 2 and "\n" not in str(e), str(e)
        else:  # garbage that loads would have to be a model: it never is
            pytest.fail(f"{data[:32]!r}... loaded")


@_GARBAGE
@given(data=st.binary(min_size=1, max_size=4096), suffix=st.sampled_from([".pt", ".pth", ".pt2", ".bin"]),
       trust_pickle=st.booleans())
def test_random_bytes_are_refused_in_one_line(data: bytes, suffix: str, trust_pickle: bool) -> None:
    _refused_in_one_line(data, suffix, trust_pickle)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@_GARBAGE
@given(body=st.binary(max_size=2048), protocol=st.sampled_from([b"\x80\x02", b"\x80\x04", b""]),
       envelope=st.sampled_from(["pickle", "torch_zip", "torchscript_zip", "pt2_zip"]))
def test_random_bytes_in_a_pickle_or_zip_envelope_are_refused_in_one_line(body: bytes, protocol: bytes,
                                                                          envelope: str) -> None:
    stream = protocol + body
    if envelope == "pickle":
        data = stream
    elif envelope == "torch_zip":
        data = _zip({"archive/data.pkl": stream, "archive/byteorder": b"little", "archive/version": b"3\n"})
    elif envelope == "torchscript_zip":
        data = _zip({"archive/data.pkl": stream, "archive/constants.pkl": stream, "archive/code/__torch__.py": body,
                     "archive/version": b"3\n"})
    else:
        data = _zip({"archive/archive_format": b"pt2", "archive/models/model.json": body,
                     "archive/data/sample_inputs/model.pt": stream, "archive/version": b"3\n"})
    _refused_in_one_line(data, ".pt2" if envelope == "pt2_zip" else ".pt", False)
