"""The benchmark harness's own logic (no timing here: figures come from running benchmarks/run.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_every_block_of_blocks_table_gets_a_case(run):
    """Each BLOCKS entry without a case of its own builds at the benchmark's channel count and runs."""
    from blocks_export import blocks as B

    built = []
    for spec in B.BLOCKS:
        if spec.reference in run.OWN_CASE:
            continue
        module = run.build_block(spec, 16).eval()
        assert isinstance(module, spec.reference)
        with torch.no_grad():
            out = module(torch.randn(1, 16, 8, 8))
        assert out.shape[0] == 1
        built.append(spec.name)
    assert len(built) == len(B.BLOCKS) - len(run.OWN_CASE)


def test_export_rows_side_by_side_and_their_targets(run):
    res = run.Results()
    res.exports += [run.ExportTime("classifier", "static", "dynamo", 4.0),
                    run.ExportTime("classifier", "dynamic", "dynamo", 10.0),
                    run.ExportTime("classifier", "dynamic", "torchscript", 16.0),
                    run.ExportTime(run.YOLO, "dynamic", "dynamo", None, "exit 1: boom")]
    table = run.export_table(res).splitlines()
    assert table[2].startswith("| classifier | 4.0 | - | 10.0 | 16.0 | 2.50x |")
    assert "failed (exit 1: boom)" in table[3]
    verdicts = {t: s for t, _, s in run.targets(res)}
    assert verdicts["`--dynamic` export step < 15 s: classifier, dynamo"] == "PASS"
    assert verdicts["`--dynamic` export step < 15 s: classifier, torchscript"] == "MISS"
    assert verdicts[f"`--dynamic` export step < 30 s: {run.YOLO}, dynamo"] == "MISS"


def test_unknown_group_is_refused(run, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--only", "nonsense"])
    assert e.value.code == 2
    assert "unknown nonsense" in capsys.readouterr().err


def test_block_macs_count_the_reference_blocks_multiply_adds(run):
    """ACmix(16, 16) at 2x16x10x12, counted by hand from the reference: conv1-3, conv_p, fc, dep_conv, and the
    window products q.k and att.v (kernel_att 7); DCN: its offset conv and the deformable convolution."""
    from blocks_export import blocks as B

    n, c, h, w, head, k = 2, 16, 10, 12, 4, 7
    d = c // head
    by_hand = (3 * c * c * h * w + 9 * 3 * head * d * h * w + c * 9 * 9 * h * w + 2 * c * k * k * h * w) * n \
        + 2 * d * h * w  # conv_p runs once, on the batch-1 position grid
    assert run.block_macs(B.ACmix(c, c).eval(), torch.randn(n, c, h, w)) == by_hand
    dcn = B.DCN(c, 8, modulated=True).eval()
    assert run.block_macs(dcn, torch.randn(1, c, h, w)) == (27 * c * 9 + 8 * c * 9) * h * w


def test_floor_rows_and_the_floor_and_deformconv_targets(run):
    res = run.Results()
    shape = (1, 64, 80, 80)
    for variant, ms in [("twin onnx", 4.0), ("stock onnx", 80.0), (run.FLOOR, 2.0)]:
        res.records.append(run.Record("ACmix", variant, list(shape), ms, ms, ms, 20))
    res.floors.append(run.Floor("ACmix", list(shape), 100_000_000, 1.0, 200_000_000, 2.0))
    for s in run.SHAPES:
        res.records += [run.Record("dcn", "std onnx", list(s), 10.0, 10.0, 10.0, 20),
                        run.Record("dcn", "portable onnx", list(s), 16.0 if s[0] == 8 else 14.0, 0, 0, 20)]
    verdicts = {t: (m, v) for t, m, v in run.targets(res)}
    assert verdicts["ACmix twin >= 15x faster than the stock export, ORT 1x64x80x80"] == ("20.0x", "PASS")
    assert verdicts["ACmix twin <= 2x its floor, ORT 1x64x80x80"][1] == "MISS"  # 4 ms against a 1 ms floor
    assert verdicts["DeformConv portable <= 1.5x native DeformConv, 1x64x80x80"] == ("1.40x", "PASS")
    assert verdicts["DeformConv portable <= 1.5x native DeformConv, 8x64x80x80"] == ("1.60x", "MISS")
    table = run.floor_table(res).splitlines()
    assert table[2].startswith("| ACmix | 1x64x80x80 | 100.0 M | 200.0 M, 2.00 | 1.000 | twin onnx 4.00, 4.0x")


def test_floor_conv_has_about_the_requested_multiply_adds(run):
    x = torch.randn(1, 16, 12, 12)
    runner, macs = run.floor_conv(x, 16 * 9 * 144 * 40)
    assert macs == 16 * 9 * 144 * 40  # 40 output channels: a multiple of 8
    assert runner()[0].shape == (1, 40, 12, 12)
    assert run.floor_conv(x, 0) is None
