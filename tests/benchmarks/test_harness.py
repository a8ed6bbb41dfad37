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
