import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import export_models  # noqa: E402

import blocks_export.blocks as blocks_package  # noqa: E402
from blocks_export.blocks import rewrite_model
from blocks_export.export.cli import app, with_default_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "blocks-export"


def invoke(*args: str):
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def refnet_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "refnet.pt"
    torch.save(export_models.build(export_models.RefNet), path)
    return path


def test_default_subcommand_is_export() -> None:
    assert with_default_command(["m.pt", "--to", "onnx"]) == ["export", "m.pt", "--to", "onnx"]
    assert with_default_command(["--to", "onnx", "m.pt"])[0] == "export"
    for argv in (["export", "m.pt"], ["inspect", "m.pt"], ["check", "m.onnx"], ["--help"], []):
        assert with_default_command(argv) == argv


def test_console_script_exports_as_written_in_the_readme(tmp_path: Path) -> None:
    src = tmp_path / "net.pt"
    torch.save(export_models.build(export_models.CANet), src)
    proc = subprocess.run([str(EXE), str(src), "--to", "onnx", "--trust-pickle", "--imgsz", "16"], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "net.onnx").is_file() and (tmp_path / "net.report.json").is_file()
    for step in ("load", "rewrite", "export", "simplify", "verify"):
        assert step in proc.stderr  # progress with timings goes to stderr
    assert "PASSED" in proc.stdout


def test_json_report_is_the_only_stdout_and_quiet_silences_progress(tmp_path: Path, refnet_pt: Path) -> None:
    out = tmp_path / "r.onnx"
    result = invoke("export", refnet_pt, "--to", "onnx", "--trust-pickle", "-o", out, "--json", "--quiet",
                    "--target", "jetpack6")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED" and report["output"] == str(out)
    assert report["check"]["passed"] and report["target"] == "jetpack6"  # the static check runs for TensorRT targets
    assert report == json.loads((tmp_path / "r.report.json").read_text())
    assert result.stderr == ""


def test_images_for_a_model_without_a_box_check_are_not_used_and_the_report_says_so(tmp_path: Path,
                                                                                       refnet_pt: Path) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(pictures / "a.png")
    result = invoke(refnet_pt, "--trust-pickle", "-o", tmp_path / "r.onnx", "--images", pictures, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.get("detections") is None
    assert any("`images`" in w and "not used" in w for w in report["warnings"]), report["warnings"]


def test_stock_coordinate_attention_fails_verification_keeps_the_onnx_and_names_the_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "ca.pt"
    torch.save(export_models.build(export_models.CANet), src)
    # The stock export path: a rewriter that knows no blocks.
    monkeypatch.setattr(blocks_package, "rewrite_model", lambda model, example: rewrite_model(model, example, {}, {}))
    result = invoke(src, "--to", "onnx", "--trust-pickle", "--imgsz", "20,24", "--dynamic", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "FAILED" and (tmp_path / "ca.onnx").is_file()
    assert json.loads((tmp_path / "ca.report.json").read_text())["status"] == "FAILED"
    assert report["verification"]["first_diverging_block"]["block"] == "ca"


def _refused(tmp_path: Path, *args: str, code: int = 2) -> str:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = invoke(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("blocks-export: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    return lines[0]


def test_hostile_pickle_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}.MARKER"
    torch.save({"model": export_models.Marker(str(marker))}, tmp_path / "evil.pt")
    line = _refused(tmp_path, tmp_path / "evil.pt", "--to", "onnx")
    assert "--trust-pickle" in line and not marker.exists()


@pytest.mark.parametrize("case", ["missing", "empty", "random", "tensor", "two_inputs", "state_dict_no_arch"])
def test_bad_model_files_are_refused_with_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(random.Random(case).randbytes(2048))  # seeded: the same bytes every run
    elif case == "tensor":
        torch.save(torch.zeros(2), path)
    elif case == "two_inputs":
        torch.save(export_models.TwoInputs(), path)
    elif case == "state_dict_no_arch":
        torch.save(export_models.RefNet().state_dict(), path)
    _refused(tmp_path, path, "--to", "onnx", "--trust-pickle")


@pytest.mark.parametrize(("extra", "why"), [
    (["--batch", "0"], "--batch"),
    (["--target", "nope"], "unknown target"),
    (["--deform-conv", "std", "--opset", "17"], "--deform-conv std"),
    (["--imgsz", "0"], "--imgsz"),
    (["--imgsz", "30"], "cannot run on an input of shape 1x3x30x30"),  # odd size into SPD
    (["--exporter", "nope"], "--exporter"),
    (["--fp16-io"], "--fp16-io needs --fp16"),
])
def test_bad_options_are_refused_with_one_line(tmp_path: Path, refnet_pt: Path, extra: list[str], why: str) -> None:
    line = _refused(tmp_path, refnet_pt, "--to", "onnx", "--trust-pickle", "-o", tmp_path / "m.onnx", *extra)
    assert why in line


@pytest.mark.parametrize(("extra", "why"), [
    (["--imgsz", "640,"], "--imgsz '640,'"),
    (["--imgsz", ",640"], "--imgsz ',640'"),
    (["--min-shape", "1x3x32x32"], "--min-shape sets a TensorRT engine profile"),
    (["--max-shape", "1x3x64x64", "--to", "onnx"], "--max-shape sets a TensorRT engine profile"),
    (["--opt-shape", "1x3x32x"], "--opt-shape '1x3x32x'"),
    (["--opset", "NEWEST+1"], "--opset NEWEST+1"),
])
def test_bad_options_are_refused_before_the_model_is_loaded(tmp_path: Path, extra: list[str], why: str) -> None:
    # #13: each was taken silently (or failed late, exit 1). The model does not exist: a refusal naming the
    # option (exit 2, one line) shows the option was checked before anything was loaded.
    import onnx.defs

    newer = str(onnx.defs.onnx_opset_version() + 1)  # one past what the installed onnx knows
    extra, why = [a.replace("NEWEST+1", newer) for a in extra], why.replace("NEWEST+1", newer)
    line = _refused(tmp_path, tmp_path / "not_there.pt", "--trust-pickle", "-o", tmp_path / "m.onnx", *extra)
    assert why in line, line
    assert not (tmp_path / "m.onnx").exists()


def test_output_paths_that_cannot_be_written_are_refused(tmp_path: Path, refnet_pt: Path) -> None:
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"previous")
    assert "--force" in _refused(tmp_path, refnet_pt, "--trust-pickle", "-o", existing)
    assert existing.read_bytes() == b"previous"
    assert "does not exist" in _refused(tmp_path, refnet_pt, "--trust-pickle", "-o", tmp_path / "no" / "m.onnx")
    assert "directory" in _refused(tmp_path, refnet_pt, "--trust-pickle", "-o", tmp_path)
    onnx_in = tmp_path / "in.onnx"
    onnx_in.write_bytes(b"x")
    assert "already ONNX" in _refused(tmp_path, onnx_in, "--to", "onnx")


def test_onnx_to_trt_never_imports_torch(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["output0"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    code = ("import sys\nfrom blocks_export.export.cli import main\n"
            "try:\n    main([sys.argv[1], '--to', 'trt'])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.stdout.split()[0] == "NO-TORCH", proc.stdout + proc.stderr
    # No TensorRT here: exit 3 with one line (or 0 where TensorRT and a GPU exist).
    assert int(proc.stdout.split()[1]) in (0, 3), proc.stderr
    assert not (tmp_path / "m.engine").exists() or int(proc.stdout.split()[1]) == 0


def test_inspect_lists_blocks_without_exporting(tmp_path: Path, refnet_pt: Path) -> None:
    result = invoke("inspect", refnet_pt, "--trust-pickle", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert {r["name"] for r in info["blocks"]["replaced"]} >= {"ca", "spd", "cb"}
    assert not refnet_pt.with_suffix(".onnx").exists() or refnet_pt.with_suffix(".onnx").stat().st_size > 0


def test_check_of_a_missing_file_is_refused(tmp_path: Path) -> None:
    result = invoke("check", tmp_path / "none.onnx", "--target", "jetpack6")
    assert result.exit_code in (2, 3) and "error:" in result.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_export_exits_with_the_signal_code_and_leaves_nothing(tmp_path: Path, sig: int,
                                                                           code: int) -> None:
    src = tmp_path / "slow.pt"
    torch.save(export_models.SlowNet().eval(), src)
    proc = subprocess.Popen([str(EXE), str(src), "--trust-pickle", "--imgsz", "16", "--dynamic"], cwd=tmp_path,
                            env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the export step is running
            if "rewrite" in line:
                break
        time.sleep(0.6)
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == code, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p.name for p in tmp_path.iterdir()] == ["slow.pt"]


def test_fp16_export_is_verified_under_the_fp16_rule(tmp_path: Path) -> None:
    src = tmp_path / "ca.pt"
    torch.save(export_models.build(export_models.CANet), src)
    result = invoke(src, "--trust-pickle", "--imgsz", "16", "--fp16", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["precision"] == "fp16" and report["verification"]["precision"] == "fp16"
    import onnx

    proto = onnx.load(str(tmp_path / "ca.onnx"))
    assert {p.key: p.value for p in proto.metadata_props}["blocks_export.precision"] == "fp16"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 IO by default


def test_to_trt_without_tensorrt_exits_3_after_a_complete_onnx_and_writes_no_engine(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    src = tmp_path / "ca.pt"
    torch.save(export_models.build(export_models.CANet), src)
    result = invoke(src, "--to", "trt", "--trust-pickle", "--imgsz", "16", "--quiet")
    if result.exit_code == 0:
        pytest.skip("TensorRT and a GPU are present: the engine was built")
    assert result.exit_code == 3, result.stderr
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("blocks-export: error:"))
    assert "blocks-export ca.onnx --to trt" in line  # the command to run on the Jetson instead
    assert (tmp_path / "ca.onnx").is_file()
    assert not (tmp_path / "ca.engine").exists() and not (tmp_path / "ca_ctx.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


NETS_PY = '''
import torch
from torch import nn


class CoordAttention(nn.Module):  # a pasted Coordinate Attention under another name
    def __init__(self, c, mip=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        x_h = x.mean(3, keepdim=True)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], 2))))
        a_h, a_w = torch.split(y, [h, w], 2)
        return x * self.conv_h(a_h).sigmoid() * self.conv_w(a_w.permute(0, 1, 3, 2)).sigmoid()


def build(num_classes, width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), CoordAttention(width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
'''


def test_arch_kwargs_pass_json_keyword_arguments_to_the_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import numpy as np
    import onnxruntime as ort

    from blocks_export.blocks import randomize_

    (tmp_path / "nets_kw.py").write_text(NETS_PY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import nets_kw

    model = randomize_(nets_kw.build(num_classes=10, width=16), 3).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result = invoke(tmp_path / "w.pt", "--to", "onnx", "--arch", "nets_kw:build", "--arch-kwargs",
                    '{"num_classes": 10, "width": 16}', "--imgsz", "20,12", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED" and [r["recognized_as"] for r in report["blocks"]["replaced"]] == ["CA"]
    x = torch.randn(1, 3, 20, 12, generator=torch.Generator().manual_seed(4))
    sess = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (1, 10) and np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("kwargs, words", [
    ("{num_classes: 10}", ["--arch-kwargs", "not JSON"]),
    ("[10]", ["--arch-kwargs", "JSON object"]),
    ('{"__import__": 1}', ["--arch", "raised TypeError"]),
])
def test_bad_arch_kwargs_are_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs, words):
    (tmp_path / "nets_bad.py").write_text(NETS_PY)
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "w.pt"
    torch.save({"0.weight": torch.zeros(8, 3, 3, 3)}, src)
    line = _refused(tmp_path, src, "--to", "onnx", "--arch", "nets_bad:build", "--arch-kwargs", kwargs)
    assert all(w in line for w in words), line


def test_arch_kwargs_without_arch_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, src)
    line = _refused(tmp_path, src, "--arch-kwargs", "{}")
    assert "--arch-kwargs" in line and "--arch MODULE:CALLABLE" in line


def test_inspect_help_describes_every_option_and_offers_no_engine() -> None:
    import re

    result = CliRunner().invoke(app, ["inspect", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "--to" not in text and "trt" not in text.replace("trt10", "").replace("trt11", "")
    options = [ln for ln in text.splitlines() if re.match(r"^[│|]?\s+(-\w, )?--[a-z]", ln)]
    assert {"--imgsz", "--batch", "--target", "--deform-conv", "--trust-pickle", "--arch", "--arch-kwargs",
            "--json", "--debug"} <= {m.group(0) for ln in options if (m := re.search(r"--[a-z][a-z-]*", ln))}
    for ln in options:  # every option line carries a description after its name (and type)
        body = re.sub(r"^[│|]?\s+(-\w, )?--[a-z][a-z-]*(\s+-\w)?\s+(TEXT|INTEGER|PATH)?", "", ln).strip(" │|")
        assert body, ln
