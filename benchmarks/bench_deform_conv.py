"""Deformable convolution speed on onnxruntime CPU: ``std`` (ONNX DeformConv), ``portable``, ``plugin`` (numpy
reference, for completeness only) and torchvision's eager CPU kernel, measured interleaved in one process.

    python benchmarks/bench_deform_conv.py [--threads 2] [--runs 30] [--with-plugin]

``deform_conv_records(...)`` returns the measurements as records
``{case, variant, shape, median_ms, p10_ms, p90_ms, runs}`` for a broader harness.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from blocks_export.export.deform_conv import dynamo_translation_table
from blocks_export.plugins.ort_cpu import cpu_session

try:  # run as a script: benchmarks/ is on sys.path
    from timing import measure_interleaved
except ImportError:  # imported as benchmarks.bench_deform_conv
    from .timing import measure_interleaved

OPSET = {"std": 19, "portable": 18, "plugin": 18}


class _DeformConv(nn.Module):
    """deform_conv2d with fixed weights; inputs (x, offset, mask)."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in // groups, k, k, generator=g) / (c_in * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.randn(c_out, generator=g))
        self.pad = k // 2

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, padding=(self.pad, self.pad), mask=mask)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], lowering: str) -> bytes:
    opset = OPSET[lowering]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, example, dynamo=True, opset_version=opset, verbose=False,
                                 input_names=["x", "offset", "mask"], output_names=["y"],
                                 custom_translation_table=dynamo_translation_table(lowering, opset))
    return prog.model_proto.SerializeToString()


def deform_conv_records(shape: tuple[int, int, int, int] = (1, 64, 80, 80), k: int = 3, threads: int = 2,
                        runs: int = 30, warmup: int = 3, with_plugin: bool = False) -> list[dict]:
    """Interleaved timings of the lowerings and torchvision eager at input ``shape`` (with mask)."""
    n, c, h, w = shape
    torch.set_num_threads(threads)
    module = _DeformConv(c, c, k).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    offset = torch.randn(n, 2 * k * k, h, w, generator=g) * 2.0
    mask = torch.rand(n, k * k, h, w, generator=g)
    feeds = {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()}
    variants: dict[str, Callable[[], object]] = {}
    lowerings = ["std", "portable"] + (["plugin"] if with_plugin else [])
    for lowering in lowerings:
        sess = cpu_session(_export(module, (x, offset, mask), lowering), threads=threads)
        variants[f"ort-{lowering}"] = lambda sess=sess: sess.run(None, feeds)

    def eager() -> object:
        with torch.inference_mode():
            return module(x, offset, mask)

    variants["torchvision-eager"] = eager
    timings = measure_interleaved(variants, runs=runs, warmup=warmup)
    case = f"deform_conv {k}x{k} mask"
    return [{"case": case, "variant": name, "shape": "x".join(map(str, shape)), "median_ms": t.median_ms,
             "p10_ms": t.p10_ms, "p90_ms": t.p90_ms, "runs": t.runs} for name, t in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--with-plugin", action="store_true", help="also time the plugin graph's CPU reference")
    args = parser.parse_args()
    records = deform_conv_records(threads=args.threads, runs=args.runs, with_plugin=args.with_plugin)
    std = next(r["median_ms"] for r in records if r["variant"] == "ort-std")
    print(f"{'variant':<20} {'shape':<12} {'median ms':>10} {'p10':>8} {'p90':>8} {'vs std':>7}  runs")
    for r in records:
        print(f"{r['variant']:<20} {r['shape']:<12} {r['median_ms']:>10.2f} {r['p10_ms']:>8.2f} "
              f"{r['p90_ms']:>8.2f} {r['median_ms'] / std:>6.2f}x  {r['runs']}")


if __name__ == "__main__":
    main()
