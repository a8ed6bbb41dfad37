"""Shapes and options the model or the target cannot take: refused before anything is written, exit 2, one
line naming the bad value and what to do."""

from __future__ import annotations

from pathlib import Path

import export_models
import pytest
import torch
from bad_inputs import cli, listing, one_error_line
from torch import nn


def _big_kernel() -> nn.Module:
    """A 7x7 stride-4 stem without padding: inputs under 7 pixels are too small for it."""
    return nn.Sequential(nn.Conv2d(3, 4, 7, stride=4), nn.ReLU()).eval()


def _fixed_linear_head() -> nn.Module:
    """Conv, then a Linear over the flattened 4x8x8 map: only an 8x8 input fits, no size can vary."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()


MODELS = {
    "refnet": lambda: export_models.build(export_models.RefNet),  # stride-2 stem then SPD: H/2, W/2 must be even
    "big_kernel": _big_kernel,
    "fixed_linear_head": _fixed_linear_head,
}

# case -> (model, arguments, words the refusal must contain)
CASES = {
    "imgsz_odd_into_spd": ("refnet", ["--imgsz", "30"], ["cannot run on an input of shape 1x3x30x30", "--imgsz"]),
    "imgsz_too_small_for_stride": ("big_kernel", ["--imgsz", "4"], ["cannot run on an input of shape 1x3x4x4"]),
    "imgsz_zero": ("refnet", ["--imgsz", "0"], ["--imgsz '0'", "positive integers"]),
    "imgsz_not_a_number": ("refnet", ["--imgsz", "big"], ["--imgsz 'big'"]),
    "batch_zero": ("refnet", ["--batch", "0"], ["--batch 0", "positive integer"]),
    "batch_negative": ("refnet", ["--batch", "-2"], ["--batch -2", "positive integer"]),
    "unknown_target": ("refnet", ["--target", "jetson-nano"], ["jetson-nano", "jetpack6", "trt10"]),
    "deform_conv_std_opset_17": ("refnet", ["--deform-conv", "std", "--opset", "17"],
                                 ["--deform-conv std --opset 17", "19"]),
    "deform_conv_std_opset_18": ("refnet", ["--deform-conv", "std", "--opset", "18"],
                                 ["--deform-conv std --opset 18", "19"]),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, build in MODELS.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(build(), paths[name])
    return paths


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_shape_or_option_is_refused_before_anything_is_written(tmp_path: Path, sources: dict[str, Path],
                                                                   case: str) -> None:
    model, extra, words = CASES[case]
    code, _out, err = cli(sources[model], "--to", "onnx", "--trust-pickle", "-o", tmp_path / "m.onnx", *extra)
    line = one_error_line(err)
    assert code == 2, err
    for word in words:
        assert word in line, line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("exporter", ["dynamo"])
def test_dynamic_with_a_model_that_fixes_its_size_names_the_dimension(tmp_path: Path, sources: dict[str, Path],
                                                                     exporter: str) -> None:
    code, _out, err = cli(sources["fixed_linear_head"], "--to", "onnx", "--trust-pickle", "-o", tmp_path / "m.onnx",
                          "--imgsz", "8", "--dynamic", "--exporter", exporter)
    line = one_error_line(err)
    assert code == 2 and "--dynamic" in line and "cannot be dynamic" in line, line
    assert "height" in line or "width" in line, line  # which dimension
    assert "export without --dynamic" in line, line  # what to do
    assert listing(tmp_path) == []


def test_dynamic_with_torchscript_exporter_names_the_dimension_that_cannot_vary(tmp_path: Path,
                                                                                sources: dict[str, Path]) -> None:
    code, _out, err = cli(sources["fixed_linear_head"], "--to", "onnx", "--trust-pickle", "-o", tmp_path / "m.onnx",
                          "--imgsz", "8", "--dynamic", "--exporter", "torchscript")
    line = one_error_line(err)
    assert code == 2 and "--dynamic" in line and ("width" in line or "height" in line), line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("argv", [["m.pt", "--bogus"], ["m.pt", "--batch", "abc"]], ids=["unknown_option",
                                                                                         "not_an_integer"])
def test_option_parsing_error_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from blocks_export.export.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    one_error_line(err)
