"""``blocks-export MODEL --int8 --calib DIR``: a Q/DQ graph that the test's own onnxruntime run, on held-out images
it preprocesses itself, finds close to the ORIGINAL PyTorch model; the blocks' gates and softmax stay floating
point; bad calibration folders are refused in one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import CA, DCN, CB2d, randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.runtime.parity import RULES

SIZE = 24


class PastedNet(nn.Module):
    """A classifier as people paste blocks into one: two Coordinate Attention blocks, a modulated DCN and a GCNet
    block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
        self.att1 = CA(8, 8, reduction=4)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.att2 = CA(16, 16, reduction=4)
        self.dcn = DCN(16, 16, 3, 1)
        self.gc = CB2d(16)
        self.fc = nn.Linear(16, 5)
        self.export_metadata = {"task": "classify", "labels": list("abcde")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gc(self.dcn(self.att2(self.down(self.att1(self.stem(x))))))
        return self.fc(y.mean((2, 3)))


def _images(folder: Path, count: int, mode: str = "RGB", seed: int = 0) -> list[Path]:
    """Seeded image-like pictures: a gradient and a few rectangles each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(count):
        img = np.stack([(xx * rng.random() + yy * rng.random()) * 255 / 2 for _ in range(3)], axis=2)
        for _ in range(3):
            y0, x0 = rng.integers(0, SIZE // 2, 2)
            img[y0:y0 + SIZE // 3, x0:x0 + SIZE // 3] = rng.random(3) * 255
        pic = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
        path = folder / f"img_{i:02d}.png"
        (pic.convert("L") if mode == "L" else pic).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = randomize_(PastedNet(), seed=3).eval()
    path = tmp_path_factory.mktemp("int8") / "pasted.pt"
    torch.save(model, path)
    return path


def invoke(*args: object):
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


def _preprocess(path: Path) -> np.ndarray:
    """The test's own preprocessing (the model has no preprocess metadata: RGB, x / 255, no resize)."""
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return x.transpose(2, 0, 1)[None]


def _dq_fed(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    producers = {o: n for n in model.graph.node for o in n.output}
    return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)


def test_int8_graph_matches_the_original_on_held_out_images_and_keeps_gates_floating(
        tmp_path: Path, model_pt: Path) -> None:
    calib = tmp_path / "calib"
    _images(calib, 12)
    out = tmp_path / "pasted_int8.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "--calib", calib, "--calib-count", 9,
                    "-o", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["precision"] == "int8" and report["int8"]["held_out_images"] == 3
    assert {r["block"] for r in report["int8"]["sensitivity"]} >= {"att1", "att2"}

    graph = onnx.load(str(out))
    ops = [n.op_type for n in graph.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantized_convs = [n for n in graph.graph.node if n.op_type == "Conv" and _dq_fed(graph, n)]
    assert quantized_convs, "no convolution reads int8 inputs"
    producers = {o: n for n in graph.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    gates = [n for n in graph.graph.node if n.op_type == "Sigmoid"
             and not all(n.input[0] in c.input for c in consumers.get(n.output[0], []) if c.op_type == "Mul")]
    assert len(gates) == 4  # two per CA block (the GCNet block adds its context: no gate)
    for g in gates:  # the gate, its logits' convolution and what it multiplies stay floating point
        assert not _dq_fed(graph, g)
        logits = producers[g.input[0]]
        assert logits.op_type in ("Conv", "Gemm", "MatMul") and not _dq_fed(graph, logits), logits.name
    for n in graph.graph.node:
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert not _dq_fed(graph, n), n.name
    deform = [n for n in graph.graph.node if n.op_type == "DeformConv"]
    assert len(deform) == 1
    offsets = [producers[deform[0].input[2]]]  # ONNX DeformConv: X, W, offset, B, mask
    while offsets[-1].op_type not in ("Conv", "Gemm", "MatMul"):  # back through Slice/Split/Concat/Sigmoid
        offsets.append(producers[offsets[-1].input[0]])
    assert not _dq_fed(graph, offsets[-1]), "the offset convolution must stay floating point"

    # Verified on the held-out images (not the calibration ones): the test reruns both models on them itself.
    held = [Path(p) for p in report["int8"]["held_out"]]
    assert len(held) == 3 and all(p.parent == calib for p in held)
    original = torch.load(model_pt, weights_only=False).eval()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref, got = [], []
    for p in held:
        x = _preprocess(p)
        with torch.no_grad():
            ref.append(original(torch.from_numpy(x)).numpy())
        got.append(sess.run(None, {name: x})[0])
    r, q = np.concatenate(ref), np.concatenate(got)
    err = float(np.linalg.norm(r - q) / np.linalg.norm(r))
    assert 1e-6 < err <= RULES["int8"].rel_l2  # quantized (not the fp32 graph), within the int8 rule
    assert (r.argmax(1) == q.argmax(1)).mean() >= 2 / 3


def test_top1_agreement_of_a_model_that_predicts_one_class_everywhere_is_said_not_to_be_evidence(
        tmp_path: Path) -> None:
    """A classifier whose own top-1 is the same class on every held-out image: any graph that keeps that class
    "agrees" 100 %, so the report and the terminal say the agreement is no evidence, and the verdict is the
    rel_l2 rule alone. The test's own onnxruntime run shows why: both sides give that one class everywhere."""
    calib = tmp_path / "calib"
    paths = _images(calib, 8)
    model = randomize_(PastedNet(), seed=3).eval()
    x = torch.from_numpy(np.concatenate([_preprocess(p) for p in paths]))
    with torch.no_grad():
        logits = model(x)
        others = torch.cat([logits[:, :2], logits[:, 3:]], 1).amax(1)
        model.fc.bias[2] += float((others - logits[:, 2]).max()) + 0.5  # class 2 wins on every image, by 0.5+
        assert set(model(x).argmax(1).tolist()) == {2}
    src = tmp_path / "one_class.pt"
    torch.save(model, src)
    out = tmp_path / "one_class_int8.onnx"
    result = invoke(src, "--trust-pickle", "--imgsz", SIZE, "--int8", "--calib", calib, "--calib-count", 5, "-o", out)
    assert result.exit_code in (0, 1), result.output
    int8 = json.loads((tmp_path / "one_class_int8.report.json").read_text())["int8"]
    assert int8["reference_classes"] == 1 and int8["top1_agreement"] == 1.0
    assert any("predicts class 2 for every one of the 3 held-out" in n and "not counted" in n for n in int8["notes"])
    assert int8["passed"] == (int8["rel_l2"] <= int8["budget"])  # the verdict: rel_l2 only
    verdict = [line for line in result.stdout.splitlines() if "int8 vs original" in line]
    assert len(verdict) == 1 and "top1_agreement=1.0000 (not evidence" in verdict[0], result.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    assert {int(sess.run(None, {name: _preprocess(Path(p))})[0].argmax()) for p in int8["held_out"]} == {2}


@pytest.mark.slow
def test_a_tiny_budget_keeps_every_block_floating_point_and_says_why(tmp_path: Path, model_pt: Path) -> None:
    calib = tmp_path / "calib"
    _images(calib, 10)
    out = tmp_path / "tiny_budget.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "--calib", calib, "--int8-budget",
                    "1e-9", "-o", out, "--json", "--quiet")
    report = json.loads(result.stdout)
    fallback = set(report["int8"]["fallback"])
    assert {"att1", "att2", "gc"} <= fallback
    rows = {r["block"]: r for r in report["int8"]["sensitivity"]}
    assert all(rows[b]["fallback"] and "budget" in rows[b]["why"] for b in ("att1", "att2", "gc"))
    graph = onnx.load(str(out))
    weighted = [n for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert sum(_dq_fed(graph, n) for n in weighted) <= 1  # at most the one part the loop leaves


# ---- bad calibration input: one line, exit 2, nothing written ---------------------------------------------------

def _refused(tmp_path: Path, model_pt: Path, calib: Path, *extra: object) -> str:
    out = tmp_path / "refused.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "--calib", calib, "-o", out, "--quiet", *extra)
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("blocks-export: error:"), result.stderr
    assert not out.exists() and not (tmp_path / "refused.report.json").exists()
    return lines[0]


def test_int8_without_calibration_images_is_refused(tmp_path: Path, model_pt: Path) -> None:
    out = tmp_path / "refused.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "-o", out)
    assert result.exit_code == 2
    assert "--calib" in result.stderr and not out.exists()


def test_empty_calibration_folder_is_refused(tmp_path: Path, model_pt: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "holds no images" in _refused(tmp_path, model_pt, tmp_path / "empty")


def test_missing_calibration_folder_is_refused(tmp_path: Path, model_pt: Path) -> None:
    assert "does not exist" in _refused(tmp_path, model_pt, tmp_path / "nowhere")


def test_unreadable_calibration_image_is_refused(tmp_path: Path, model_pt: Path) -> None:
    calib = tmp_path / "calib"
    _images(calib, 6)
    (calib / "img_03.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))  # a truncated PNG
    line = _refused(tmp_path, model_pt, calib)
    assert "img_03.png" in line


def test_fewer_images_than_calib_count_is_refused(tmp_path: Path, model_pt: Path) -> None:
    calib = tmp_path / "calib"
    _images(calib, 4)
    line = _refused(tmp_path, model_pt, calib, "--calib-count", 8)
    assert "holds 4 image(s)" in line and "--calib-count 8" in line


# One picture per file mode that real datasets hold (COCO has grayscale JPEGs; PNG folders hold RGBA, palette and
# 16-bit files): what ``Image.open(path).convert("RGB")`` gives, 16-bit values keeping their high byte.
MIXED_MODES = ("L", "LA", "RGBA", "P", "P+transparency", "1", "I;16", "RGB")


def _mixed_images(folder: Path) -> list[Path]:
    pictures = _images(folder / "rgb", len(MIXED_MODES), seed=4)
    paths = []
    for mode, src in zip(MIXED_MODES, pictures, strict=True):
        pic = Image.open(src)
        if mode == "RGBA":
            pic = pic.convert("RGBA")
            pic.putalpha(Image.linear_gradient("L").resize(pic.size))  # alpha varies: dropped, not composited
        elif mode == "P+transparency":
            pic = pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            pic.info["transparency"] = 3
        elif mode == "I;16":
            pic = Image.fromarray(np.asarray(pic.convert("L"), dtype=np.uint16) * 257 + 100)  # 16-bit grey
        elif mode != "RGB":
            pic = pic.convert(mode)
        paths.append(folder / f"{mode.replace(';', '').replace('+', '_')}.png")
        pic.save(paths[-1])
    for src in pictures:
        src.unlink()
    (folder / "rgb").rmdir()
    return paths


def _pillow_rgb(path: Path) -> np.ndarray:
    """This test's own reading: Pillow's convert("RGB"); a 16-bit grey keeps each value's high byte."""
    with Image.open(path) as img:
        if img.mode.startswith("I;16"):
            return np.repeat((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


def test_calibration_reads_every_image_mode_as_pillow_converts_it_to_rgb(tmp_path: Path) -> None:
    from blocks_export.export.calibration import read_calibration
    from blocks_export.runtime.infer import Preprocess

    calib = tmp_path / "mixed"
    paths = _mixed_images(calib)
    assert {Image.open(p).mode for p in paths} >= {"L", "LA", "RGBA", "P", "1", "I;16", "RGB"}
    data = read_calibration(calib, Preprocess(size=(SIZE, SIZE)), 3, 4)
    for name, tensor in zip(data.calibration + data.held_out,
                            np.concatenate([data.calib_tensors, data.held_out_tensors]), strict=True):
        assert np.abs(tensor * 255 - np.rint(tensor * 255)).max() < 1e-4  # x = pixel / 255: pixels exactly
        np.testing.assert_array_equal(np.rint(tensor * 255), _pillow_rgb(Path(name)).transpose(2, 0, 1), name)


def test_int8_from_a_folder_of_grayscale_rgba_palette_and_16_bit_images(tmp_path: Path, model_pt: Path) -> None:
    """The calibration folder no RGB-only reader would take, through the CLI: the held-out images, read by this
    test itself, give the INT8 graph within the int8 rule of the original model."""
    calib = tmp_path / "mixed"
    _mixed_images(calib)
    out = tmp_path / "mixed_int8.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "--calib", calib, "--calib-count", 5,
                    "-o", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    held = [Path(p) for p in json.loads(result.stdout)["int8"]["held_out"]]
    original = torch.load(model_pt, weights_only=False).eval()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.stack([_pillow_rgb(p).astype(np.float32).transpose(2, 0, 1) / 255 for p in held])
    with torch.no_grad():
        ref = original(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    assert float(np.linalg.norm(ref - got) / np.linalg.norm(ref)) <= RULES["int8"].rel_l2


@pytest.mark.slow
def test_int8_with_fp16_runs_what_stays_out_of_int8_in_fp16(tmp_path: Path, model_pt: Path) -> None:
    calib = tmp_path / "calib"
    _images(calib, 10)
    out = tmp_path / "mixed.onnx"
    result = invoke(model_pt, "--trust-pickle", "--imgsz", SIZE, "--int8", "--fp16", "--calib", calib, "-o", out,
                    "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["precision"] == "int8+fp16"
    graph = onnx.load(str(out))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert "DequantizeLinear" in {n.op_type for n in graph.graph.node}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    original = torch.load(model_pt, weights_only=False).eval()
    held = [Path(p) for p in report["int8"]["held_out"]]
    x = np.concatenate([_preprocess(p) for p in held])
    with torch.no_grad():
        ref = original(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    assert np.linalg.norm(ref - got) / np.linalg.norm(ref) <= RULES["int8"].rel_l2
