"""``blocks-export val``: top-1 of the sample classifier's original PyTorch model and of its fp32 / fp16 / INT8 graphs
(exported by the CLI here) on held-out digits, in one table, checked against the top-1 this test computes itself
with its own onnxruntime run and preprocessing; bad data refused in one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from blocks_export.export.cli import app, with_default_command

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # sample_models.build: the digits split the classifier was trained on


def invoke(*args: object):
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Held-out digits as a folder of label-named folders (the 360 the classifier never trained on), and 100
    training digits to calibrate INT8 with."""
    from sample_models.build import load_split

    record = json.loads((SAMPLES / "classifier.json").read_text())
    split = load_split(np.asarray(record["test_indices"]))
    root = tmp_path_factory.mktemp("digits")
    for i, (img, label) in enumerate(zip(split.test_images, split.test_labels, strict=True)):
        (root / "val" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / "val" / str(label) / f"{i:04d}.png")
    pick = np.random.default_rng(0).choice(len(split.train_labels), 100, replace=False)
    (root / "calib").mkdir()
    for i in pick:
        Image.fromarray(split.train_images[i], mode="L").save(root / "calib" / f"train_{i:04d}.png")
    return {"val": root / "val", "calib": root / "calib"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory, digits: dict[str, Path]) -> dict[str, Path]:
    """The sample classifier exported by the CLI in fp32, fp16 and INT8 (every default step on)."""
    out = tmp_path_factory.mktemp("graphs")
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--calib", digits["calib"], "--calib-count", 80]}
    paths = {}
    for name, extra in flags.items():
        paths[name] = out / f"classifier_{name}.onnx"
        result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", *extra, "-o", paths[name], "--quiet")
        assert result.exit_code == 0, result.stdout + result.stderr
    return paths


def _own_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits [N, 1, 32, 32] preprocessed as classifier.json says (this test's own code: the PNGs are
    already 32 x 32, so no resize), and their labels [N], in the folder's sorted order."""
    p = json.loads((SAMPLES / "classifier.json").read_text())["preprocess"]
    xs, ys = [], []
    for sub in sorted(folder.iterdir()):
        for png in sorted(sub.iterdir()):
            pixels = np.asarray(Image.open(png), dtype=np.float32)
            xs.append((pixels * p["scale"] - p["mean"][0]) / p["std"][0])
            ys.append(int(sub.name))
    return np.stack(xs)[:, None].astype(np.float32), np.asarray(ys)


def _own_top1(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])


def test_top1_of_the_original_and_every_precision_in_one_table(tmp_path: Path, digits: dict[str, Path],
                                                                graphs: dict[str, Path]) -> None:
    plot = tmp_path / "val.png"
    result = invoke("val", graphs["fp32"], graphs["fp16"], graphs["int8"], "--data", digits["val"], "--model",
                    SAMPLES / "classifier.pt", "--trust-pickle", "--batch", 16, "--plot", plot, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "classify" and report["images"] == 360
    rows = {r["graph"]: r for r in report["results"]}
    assert list(rows) == ["original (PyTorch)", *(p.name for p in graphs.values())]
    assert [r["precision"] for r in report["results"]] == ["fp32", "fp32", "fp16", "int8"]

    x, y = _own_images(digits["val"])
    model = torch.load(SAMPLES / "classifier.pt", weights_only=False).eval()
    with torch.no_grad():
        own = {"original (PyTorch)": float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())}
    own.update({p.name: float((_own_top1(p, x) == y).mean()) for p in graphs.values()})
    for name, r in rows.items():
        assert r["metric"] == "top1" and r["images"] == 360 and r["latency_ms"] > 0
        assert r["value"] == pytest.approx(own[name], abs=1e-12), name
        assert r["change"] == (None if r["reference"] else pytest.approx(own[name] - own["original (PyTorch)"]))
    assert rows["original (PyTorch)"]["reference"] and own["original (PyTorch)"] > 0.98  # a trained classifier
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(plot)

    table = invoke("val", graphs["fp32"], "--data", digits["val"], "--quiet")
    assert table.exit_code == 0 and table.stdout == ""
    table = invoke("val", graphs["fp32"], "--data", digits["val"])
    assert table.exit_code == 0, table.stdout + table.stderr
    (row,) = [line for line in table.stdout.splitlines() if graphs["fp32"].name in line]
    assert f"{own[graphs['fp32'].name]:.4f}" in row and "reference" in row  # the first graph without --model


def _tiny_detect_graph(path: Path, labels: list[str]) -> Path:
    """A detect-layout graph [1, 3, 32, 32] -> [1, 4 + nc, 1024] with the metadata an export writes (no real model:
    the data is refused before anything runs)."""
    nc = len(labels)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4 + nc, 3, 1, 1], np.ones(3 * (4 + nc), np.float32).tolist())
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 4 + nc, 1024])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["output0"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, 1024])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"blocks_export.task": "detect", "blocks_export.labels": json.dumps(labels),
                 "blocks_export.preprocess": json.dumps({"size": [32, 32], "resize": "letterbox"})}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


def _detect_set(root: Path, label_line: str = "1 0.5 0.5 0.2 0.2", names: str = "[a, b, c]") -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(root / "images" / "val" / "one.png")
    (root / "labels" / "val" / "one.txt").write_text(label_line + "\n")
    (root / "data.yaml").write_text(f"path: {root}\nval: images/val\nnames: {names}\n")
    return root / "data.yaml"


def _bad(tmp: Path, case: str) -> Path:
    """The data of one bad case, written under ``tmp``."""
    data = tmp / case
    if case == "missing":
        return data
    data.mkdir()
    if case == "loose images":  # images but no class folders
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "a.png")
    elif case == "unknown class":
        (data / "cat").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "cat" / "a.png")
    elif case == "unreadable image":
        (data / "3").mkdir()
        (data / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif case == "empty class folders":
        (data / "3").mkdir()
    elif case == "label out of range":
        return _detect_set(data, "3 0.5 0.5 0.2 0.2")
    elif case == "label not normalised":
        return _detect_set(data, "0 12 14 5 5")
    elif case == "malformed label":
        return _detect_set(data, "0 0.5 0.5 0.2")
    elif case == "names differ":
        return _detect_set(data, names="[a, b, dog]")
    elif case == "no labels folder":
        (data / "images").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "images" / "a.png")
    elif case == "not a yaml":
        (data / "x.txt").write_text("hello")
        return data / "x.txt"
    return data


CLASSIFY_CASES = ["missing", "empty", "loose images", "unknown class", "unreadable image", "empty class folders"]
DETECT_CASES = ["label out of range", "label not normalised", "malformed label", "names differ", "no labels folder",
                "not a yaml"]


@pytest.mark.parametrize("case", CLASSIFY_CASES + DETECT_CASES)
def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path: Path, graphs: dict[str, Path], case: str) -> None:
    graph = graphs["fp32"] if case in CLASSIFY_CASES else _tiny_detect_graph(tmp_path / "tiny.onnx", ["a", "b", "c"])
    data = _bad(tmp_path, case)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    plot = tmp_path / "val.png"
    result = invoke("val", graph, "--data", data, "--plot", plot)
    assert result.exit_code == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blocks-export: error: "), lines
    assert result.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_a_detection_set_for_a_classifier_is_refused(tmp_path: Path, graphs: dict[str, Path]) -> None:
    result = invoke("val", graphs["fp32"], "--data", _detect_set(tmp_path / "d"), "--json")
    assert result.exit_code == 2
    assert "classify model" in json.loads(result.stdout)["error"]


# ---- export --val: the run's own graphs in the user's metric -----------------------------------------------------

def test_export_val_scores_the_original_and_every_graph_of_the_run(tmp_path: Path, digits: dict[str, Path],
                                                                   graphs: dict[str, Path]) -> None:
    """``--fp16 --int8 --val``: the written INT8 graph, and the fp32 and fp16 graphs the run made on the way, each
    scored against the original; every top-1 equals this test's own (the unwritten graphs are the ones the CLI
    writes with no flag and with --fp16, exported in the fixture)."""
    out = tmp_path / "c.onnx"
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--fp16", "--int8", "--calib", digits["calib"],
                    "--calib-count", 80, "--val", digits["val"], "-o", out, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert json.loads((tmp_path / "c.report.json").read_text())["val"] == report["val"]
    val = report["val"]
    assert val["task"] == "classify" and val["images"] == 360 and val["notes"] == []
    names = ["original (PyTorch)", "c fp32 (not written)", "c fp16 (not written)", "c.onnx"]
    assert [r["graph"] for r in val["results"]] == names
    assert [r["precision"] for r in val["results"]] == ["fp32", "fp32", "fp16", "int8"]

    x, y = _own_images(digits["val"])
    model = torch.load(SAMPLES / "classifier.pt", weights_only=False).eval()
    with torch.no_grad():
        original = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    own = [original, *(float((_own_top1(p, x) == y).mean()) for p in (graphs["fp32"], graphs["fp16"], out))]
    for r, top1 in zip(val["results"], own, strict=True):
        assert r["metric"] == "top1" and r["images"] == 360 and r["latency_ms"] > 0, r
        assert r["value"] == pytest.approx(top1, abs=1e-12), r["graph"]
        assert r["change"] == (None if r["reference"] else pytest.approx(top1 - original)), r["graph"]
    assert val["results"][0]["reference"] and original > 0.98
    figure = tmp_path / "c.val.png"
    assert val["plot"] == str(figure) and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["steps"][-1]["name"] == "val" and report["status"] == "PASSED"


def test_export_val_prints_the_table_and_the_figure(tmp_path: Path, digits: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp32 run scores the original and its one graph; the terminal shows the table and where the figure is;
    without matplotlib the export still passes and says in one note why there is no figure."""
    some = tmp_path / "some"
    for digit in ("3", "7"):
        shutil.copytree(digits["val"] / digit, some / digit)
    x, y = _own_images(some)
    out = tmp_path / "f.onnx"
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--val", some, "-o", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    own = float((_own_top1(out, x) == y).mean())
    (row,) = [line for line in result.stdout.splitlines() if " f.onnx " in line]
    assert f"{own:.4f}" in row and f" {len(y)} " in row
    assert any(line.startswith("original (PyTorch)") or " original (PyTorch) " in line
               for line in result.stdout.splitlines())
    assert f"figure: {tmp_path / 'f.val.png'}" in result.stdout and (tmp_path / "f.val.png").is_file()

    from blocks_export.export.errors import RuntimeMissing
    from blocks_export.export.val import plot

    def no_matplotlib() -> None:
        raise RuntimeMissing(f"the figure needs matplotlib: {plot.PLOT_HINT}")

    monkeypatch.setattr(plot, "_pyplot", no_matplotlib)
    again = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--val", some, "-o", tmp_path / "g.onnx", "--json")
    assert again.exit_code == 0, again.stdout + again.stderr
    val = json.loads(again.stdout)["val"]
    assert val["plot"] is None and not (tmp_path / "g.val.png").exists()
    assert val["notes"] == [f"no figure: the figure needs matplotlib: {plot.PLOT_HINT}"]
    assert [r["value"] for r in val["results"]][1] == pytest.approx(own, abs=1e-12)


@pytest.mark.parametrize("case", ["missing", "loose images", "unknown class", "unreadable image",
                                  "empty class folders", "not a yaml", "detection set"])
def test_export_val_bad_data_is_refused_before_the_export(tmp_path: Path, case: str) -> None:
    data = _detect_set(tmp_path / case) if case == "detection set" else _bad(tmp_path, case)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--val", data, "-o", tmp_path / "c.onnx")
    assert result.exit_code == 2, (case, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("blocks-export: error: ")]
    assert len(errors) == 1 and "--val" in errors[0], result.stderr
    steps = [line.split()[1] for line in result.stderr.splitlines() if line[:1] in "✓✗!-" and len(line.split()) > 1]
    assert "export" not in steps and "rewrite" not in steps, steps  # refused before any export work
    assert result.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_export_val_refuses_a_model_whose_output_is_not_class_scores_before_the_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tmp_path / "features.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(), model)
    data = tmp_path / "classes"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / label / "x.png")
    result = invoke(model, "--trust-pickle", "--imgsz", 16, "--val", data, "-o", tmp_path / "f.onnx")
    assert result.exit_code == 2, result.stdout + result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("blocks-export: error: ")]
    assert "not class scores" in error and "--val" in error
    assert not (tmp_path / "f.onnx").exists() and not (tmp_path / "f.report.json").exists()
    steps = [line.split()[1] for line in result.stderr.splitlines() if line[:1] in "✓✗!-" and len(line.split()) > 1]
    assert "export" not in steps, steps


def test_the_export_progress_turns_into_a_bar_while_val_counts_images() -> None:
    import io
    import re

    from rich.console import Console

    from blocks_export.export.cli import RichProgress
    from blocks_export.export.report import StepRecord

    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=True, width=100))
    progress.start("val")
    for done in (16, 32):
        progress.count(done, 360)
    progress.done(StepRecord("val", seconds=1.5))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # no terminal control sequences
    assert "32/360" in text and "━" in text  # the bar, with images done of all
    assert text.rstrip().endswith("1.50s") and "val" in text.splitlines()[-1]  # then the step's line, as always


def test_export_val_of_an_onnx_input_points_to_the_val_command(tmp_path: Path, digits: dict[str, Path]) -> None:
    result = invoke(SAMPLES / "classifier.onnx", "--to", "trt", "--val", digits["val"], "-o", tmp_path / "c.engine")
    assert result.exit_code == 2, result.stdout + result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("blocks-export: error: ")]
    assert "--val" in error and "`blocks-export val`" in error
    assert list(tmp_path.iterdir()) == []
