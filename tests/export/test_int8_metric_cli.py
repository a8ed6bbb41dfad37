"""``--int8-budget-metric``: the INT8 budget in the user's metric. On the sample classifier, calibrated on training
digits in label-named folders, the naive INT8 graph loses far more top-1 than the budget; the block-aware fallback
keeps blocks floating point until the held-out top-1 is within the budget, which this test checks with its own
onnxruntime run and preprocessing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from blocks_export.export.cli import app, with_default_command

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # sample_models.build: the digits split the classifier was trained on

BUDGET = 1.0  # points of top-1


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """140 training digits in label-named folders: 80 calibrate, 60 are held out (with their labels)."""
    from sample_models.build import load_split

    record = json.loads((SAMPLES / "classifier.json").read_text())
    split = load_split(np.asarray(record["test_indices"]))
    root = tmp_path_factory.mktemp("digits") / "calib"
    for i in np.random.default_rng(1).choice(len(split.train_labels), 140, replace=False):
        folder = root / str(split.train_labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.train_images[i], mode="L").save(folder / f"train_{i:04d}.png")
    return root


def _own(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images [N, 1, 32, 32] preprocessed as classifier.json says (this test's own code; the PNGs are 32 x 32)
    and their labels from the folder names."""
    p = json.loads((SAMPLES / "classifier.json").read_text())["preprocess"]
    xs = [(np.asarray(Image.open(f), dtype=np.float32) * p["scale"] - p["mean"][0]) / p["std"][0] for f in paths]
    return np.stack(xs)[:, None].astype(np.float32), np.array([int(Path(f).parent.name) for f in paths])


def test_a_metric_budget_the_naive_graph_breaks_is_kept_by_the_block_fallback(tmp_path: Path, calib: Path) -> None:
    out = tmp_path / "classifier_int8.onnx"
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--int8", "--calib", calib, "--calib-count", 80,
                    "--int8-budget-metric", BUDGET, "-o", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    int8 = json.loads(result.stdout)["int8"]
    metric = int8["metric"]
    assert metric["name"] == "top1" and metric["budget_points"] == BUDGET and metric["images"] == 60
    assert metric["naive_loss_points"] > 10 * BUDGET  # the naive graph breaks the budget by far
    assert metric["loss_points"] <= BUDGET and int8["passed"]
    # What each step cost: the parts kept and the metric then; every part's own cost in points.
    # The blocks' float parts are what the naive graph lacks: here no block has to stay floating point.
    assert metric["steps"] and metric["steps"][-1]["kept"] == int8["fallback"] == []
    assert all(isinstance(r["loss_points"], float) for r in int8["sensitivity"])
    _own_top1_within_budget(out, int8, torch.load(SAMPLES / "classifier.pt", weights_only=False))

    table = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--int8", "--calib", calib, "--calib-count", 80,
                   "--int8-budget-metric", BUDGET, "-o", out, "--force")
    assert table.exit_code == 0
    assert f"(budget {BUDGET:g} pt)" in table.stdout


def _own_top1_within_budget(graph: Path, int8: dict[str, Any], model: torch.nn.Module) -> None:
    """This test's own top-1 on the held-out images the report names, for the written graph and the original."""
    x, y = _own(int8["held_out"])
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])
    with torch.no_grad():
        ref = model.float().eval()(torch.from_numpy(x)).argmax(1).numpy()
    own_int8, own_ref = float((got == y).mean()), float((ref == y).mean())
    assert abs(own_int8 - int8["metric"]["value"]) < 1e-9 and abs(own_ref - int8["metric"]["reference"]) < 1e-9
    assert 100 * (own_ref - own_int8) <= BUDGET


def with_an_outlier_channel(gain: float = 1000.0, channel: int = 5) -> torch.nn.Module:
    """The sample classifier with one activation channel far larger than the rest (as trained networks have them):
    the BatchNorm before the context block adds ``gain`` to ``channel``, and every weight that reads it is zeroed,
    so the logits are the original's. Per-tensor int8 activations then spend their range on that channel."""
    model = torch.load(SAMPLES / "classifier.pt", weights_only=False).float().eval()
    with torch.no_grad():
        model[8].bias[channel] += gain
        cb = model[10]
        for w in (cb.conv_mask.weight, cb.channel_add_conv[0].weight, cb.channel_mul_conv[0].weight, model[13].weight):
            w[:, channel] = 0
    return model


def test_the_metric_budget_keeps_the_parts_that_cost_top1_floating_point(tmp_path: Path, calib: Path) -> None:
    model = with_an_outlier_channel()
    source, out = tmp_path / "outlier.pt", tmp_path / "outlier_int8.onnx"
    torch.save(model, source)
    result = invoke(source, "--trust-pickle", "--int8", "--calib", calib, "--calib-count", 80,
                    "--int8-budget-metric", BUDGET, "-o", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    int8 = json.loads(result.stdout)["int8"]
    metric, rows = int8["metric"], {r["block"]: r for r in int8["sensitivity"]}
    # Quantized alone, the output layer (fed the outlier) costs most of the top-1; it stays floating point.
    assert rows["(output layer)"]["loss_points"] > 10 * BUDGET and rows["(output layer)"]["fallback"]
    assert "pt of top1" in rows["(output layer)"]["why"]
    assert "(output layer)" in int8["fallback"] and "1" not in int8["fallback"]  # the rest stays INT8
    assert metric["loss_points"] <= BUDGET and int8["passed"]
    assert [s["kept"] for s in metric["steps"]][-1] == int8["fallback"]
    _own_top1_within_budget(out, int8, model)


def test_a_metric_budget_without_labels_is_refused_before_anything_is_written(tmp_path: Path, calib: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in sorted(calib.rglob("*.png"))[:20]:
        (flat / png.name).write_bytes(png.read_bytes())
    out = tmp_path / "c.onnx"
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--int8", "--calib", flat, "--int8-budget-metric",
                    0.5, "-o", out, "--quiet")
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--int8-budget-metric" in lines[0] and "labelled" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("c.*"))
    bad = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--int8-budget-metric", 0.5, "-o", out)
    assert bad.exit_code == 2 and "--int8" in bad.stderr
