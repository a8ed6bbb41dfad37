"""blocks-export benchmark harness: one entry point, every variant of a case timed side by side.

    python benchmarks/run.py                      # everything, writes benchmarks/results/latest.json
    python benchmarks/run.py --only blocks,deform  # a subset
    python benchmarks/run.py --readme README.md    # also rewrite README's performance section

Threads are pinned (torch and onnxruntime: 2 intra-op threads), every case has a warm-up and >= 20 timed runs,
and variants are interleaved. Targets are reported as PASS/MISS; the harness never fails on a MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# torch's OpenMP workers busy-wait after each op by default; interleaved with onnxruntime sessions they would
# steal the cores the next variant needs and inflate every eager timing. Passive waiting removes that bias.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from timing import Timing, measure_interleaved  # noqa: E402

from blocks_export import blocks as B  # noqa: E402
from blocks_export.blocks import acmix_onnx  # noqa: E402

torch.set_num_threads(THREADS)


@dataclass
class Record:
    case: str
    variant: str
    shape: list[int]
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, case: str, variant: str, shape: tuple[int, ...], t: Timing) -> Record:
        return cls(case, variant, list(shape), round(t.median_ms, 3), round(t.p10_ms, 3), round(t.p90_ms, 3), t.runs)


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def median(self, case: str, variant: str, shape: tuple[int, ...]) -> float | None:
        for r in self.records:
            if r.case == case and r.variant == variant and tuple(r.shape) == tuple(shape):
                return r.median_ms
        return None


def session(model_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    # Idle worker threads of one session would otherwise spin on the cores the next interleaved session needs,
    # which penalises graphs of many short ops; no spinning keeps the comparison about the graphs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def ort_runner(model_bytes: bytes, x: torch.Tensor) -> Callable[[], object]:
    sess = session(model_bytes)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def eager_runner(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return module(x)
    return run


def export_bytes(module: torch.nn.Module, x: torch.Tensor, table: dict | None = None, opset: int = 18,
                 slim: bool = False) -> bytes:
    table = {**acmix_onnx.translation_table(opset), **(table or {})}  # the ACmix twin's attention op
    prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, custom_translation_table=table,
                             verbose=False)
    model = prog.model_proto
    if slim:
        import onnxslim
        model = onnxslim.slim(model)
    return model.SerializeToString()


BLOCK_BUILDERS: dict[str, Callable[[int], torch.nn.Module]] = {
    "acmix": lambda c: B.ACmix(c, c),
    "context_block": lambda c: B.CB2d(c),
    "coord_attn": lambda c: B.CA(c, c),
    "spd_conv": lambda c: B.SPDConv(c, c),
}
MIN_SECONDS = 3.0  # per case: enough rounds for stable medians of sub-millisecond variants
SHAPES = [(1, 64, 80, 80), (8, 64, 80, 80), (1, 128, 40, 40), (8, 128, 40, 40)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_blocks(res: Results, runs: int, shapes: list[tuple[int, ...]]) -> None:
    for name, build in BLOCK_BUILDERS.items():
        for shape in shapes:
            ref = B.randomize_(build(shape[1]), seed=0).eval()
            twin = B.to_export(ref).eval()
            x = torch.randn(shape)
            variants: dict[str, Callable[[], object]] = {
                "reference eager": eager_runner(ref, x),
                "twin eager": eager_runner(twin, x),
                "twin onnx": ort_runner(export_bytes(twin, x, slim=True), x),
            }
            try:
                variants["stock onnx"] = ort_runner(export_bytes(ref, x), x)
            except Exception as e:  # the stock exporter failing is itself a finding
                log(f"{name} {shape}: stock export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            log(f"timing {name} {shape} ...")
            for variant, t in measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS).items():
                res.records.append(Record.of(name, variant, shape, t))


def bench_deform(res: Results, runs: int, shapes: list[tuple[int, ...]]) -> None:
    from blocks_export.export.deform_conv import dynamo_translation_table
    for shape in shapes:
        ref = B.randomize_(B.DCN(shape[1], shape[1], modulated=True), seed=0).eval()
        with torch.no_grad():  # offsets of a few pixels, as a trained DCN has
            ref.offset.weight.mul_(4.0)
        twin = B.to_export(ref).eval()
        x = torch.randn(shape)
        variants = {"torchvision eager": eager_runner(ref, x)}
        for lowering in ("std", "portable"):
            opset = 19 if lowering == "std" else 18
            table = dynamo_translation_table(lowering, opset)
            variants[f"{lowering} onnx"] = ort_runner(export_bytes(twin, x, table, opset, slim=True), x)
        log(f"timing dcn {shape} ...")
        for variant, t in measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS).items():
            res.records.append(Record.of("dcn", variant, shape, t))


def run_with_peak_rss(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``cmd``; return its result and its peak resident memory in KiB (VmHWM, sampled every 20 ms).

    ``getrusage(RUSAGE_CHILDREN)`` cannot be used here: a child started with vfork reports the *parent's*
    high-water mark once it execs, i.e. this harness's, not the command's.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        status = Path(f"/proc/{popen.pid}/status")
        peak = 0
        while popen.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, popen.returncode, out.read(), err.read()), peak


def bench_detector(res: Results, runs: int) -> None:
    ckpt = ROOT / "sample_models" / "detector.pt"
    if not ckpt.exists():
        log(f"skipping the detector: {ckpt} not found (run sample_models/build.py)")
        return
    exe = Path(sys.executable).with_name("blocks-export")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "detector.onnx"
        t0 = time.perf_counter()
        proc, peak_kb = run_with_peak_rss([str(exe), str(ckpt), "--to", "onnx", "--trust-pickle", "-o", str(out),
                                           "--quiet"])
        wall = time.perf_counter() - t0
        peak_mb = peak_kb / 1024
        if proc.returncode != 0:
            log(f"detector export failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
            return
        res.extra["detector export+verify s"] = round(wall, 2)
        res.extra["detector export+verify peak MB"] = round(peak_mb, 1)
        model = torch.load(ckpt, weights_only=False).float().eval()
        for batch in (1, 8):
            if batch != 1:  # the same command at another static batch
                out = Path(tmp) / f"detector_b{batch}.onnx"
                proc = subprocess.run([str(exe), str(ckpt), "--to", "onnx", "--trust-pickle", "-o", str(out),
                                       "--batch", str(batch), "--quiet", "--no-verify"], capture_output=True, text=True)
                if proc.returncode != 0:
                    log(f"detector export at batch {batch} failed: {proc.stderr.strip()[-400:]}")
                    continue
            x = torch.randn(batch, 3, 640, 640)
            runner = ort_runner(out.read_bytes(), x)
            log(f"timing detector batch {batch} ...")
            variants = {"eager": eager_runner(model, x), "ours onnx": runner}
            for variant, t in measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS).items():
                res.records.append(Record.of("detector", variant, tuple(x.shape), t))


def targets(res: Results) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/MISS) rows."""
    rows: list[tuple[str, str, str]] = []

    def ratio(case: str, slow: str, fast: str, shape: tuple[int, ...]) -> float | None:
        a, b = res.median(case, slow, shape), res.median(case, fast, shape)
        return None if a is None or b is None else a / b

    s = (1, 64, 80, 80)
    r = ratio("acmix", "stock onnx", "twin onnx", s)
    if r is not None:
        rows.append(("ACmix twin >= 5x faster than stock export, ORT 1x64x80x80 (stretch 10x)", f"{r:.1f}x",
                     "PASS" if r >= 5 else "MISS"))
    r = ratio("acmix", "reference eager", "twin eager", s)
    if r is not None:
        rows.append(("ACmix twin eager no slower than reference eager, 1x64x80x80", f"{r:.2f}x",
                     "PASS" if r >= 1 else "MISS"))
    r = ratio("dcn", "std onnx", "portable onnx", s)
    if r is not None:
        rows.append(("DeformConv portable within 3x of native DeformConv, 1x64x80x80", f"{1 / r:.2f}x slower",
                     "PASS" if 1 / r <= 3 else "MISS"))
    r = ratio("dcn", "torchvision eager", "portable onnx", s)
    if r is not None:
        rows.append(("DeformConv portable faster than torchvision eager, 1x64x80x80", f"{r:.2f}x",
                     "PASS" if r > 1 else "MISS"))
    slower = []
    n = 0
    for rec in res.records:
        if rec.variant == "twin onnx":
            r = ratio(rec.case, "stock onnx", "twin onnx", tuple(rec.shape))
            if r is not None:
                n += 1
                if r < 1:
                    slower.append(f"{rec.case}{tuple(rec.shape)} {r:.2f}x")
    if n:
        rows.append(("every twin no slower than the stock export (ORT)", f"{n - len(slower)}/{n} cases"
                     + (f"; slower: {', '.join(slower)}" if slower else ""), "PASS" if not slower else "MISS"))
    r = ratio("detector", "eager", "ours onnx", (1, 3, 640, 640))
    if r is not None:
        rows.append(("detector ONNX in ORT no slower than eager PyTorch, batch 1", f"{r:.2f}x",
                     "PASS" if r >= 1 else "MISS"))
    if "detector export+verify s" in res.extra:
        w = res.extra["detector export+verify s"]
        rows.append(("detector export + verify under 60 s", f"{w:.1f} s, peak "
                     f"{res.extra['detector export+verify peak MB']:.0f} MB", "PASS" if w < 60 else "MISS"))
    return rows


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, {THREADS} threads; Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")


def table(res: Results) -> str:
    """Markdown: per (case, shape), each variant's median and its speed relative to the first baseline."""
    lines = ["| case | shape | variant | median ms (p10-p90) | speed-up vs baseline |", "|---|---|---|---|---|"]
    groups: dict[tuple[str, tuple[int, ...]], list[Record]] = {}
    for r in res.records:
        groups.setdefault((r.case, tuple(r.shape)), []).append(r)
    for (case, shape), recs in groups.items():
        base = next((r for r in recs if r.variant in ("stock onnx", "torchvision eager", "eager")), recs[0])
        for r in recs:
            lines.append(f"| {case} | {'x'.join(map(str, shape))} | {r.variant} | {r.median_ms:.2f} "
                         f"({r.p10_ms:.2f}-{r.p90_ms:.2f}) | {base.median_ms / r.median_ms:.2f}x vs {base.variant} |")
    return "\n".join(lines)


def report_md(res: Results) -> str:
    out = [f"Measured by `python benchmarks/run.py` on: {machine_line()}.", "", table(res), "",
           "| target | measured | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {s} |" for t, m, s in targets(res)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="blocks,deform,detector", help="comma-separated: blocks, deform, detector")
    p.add_argument("--runs", type=int, default=20, help="timed runs per variant (>= 20 for reported numbers)")
    p.add_argument("--shapes", default="all", choices=["all", "batch1"], help="batch1: only the batch-1 shapes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    p.add_argument("--readme", type=Path, help="rewrite the section between the bench markers of this file")
    args = p.parse_args(argv)
    shapes = SHAPES if args.shapes == "all" else [s for s in SHAPES if s[0] == 1]
    only = set(args.only.split(","))
    res = Results()
    if "blocks" in only:
        bench_blocks(res, args.runs, shapes)
    if "deform" in only:
        bench_deform(res, args.runs, shapes)
    if "detector" in only:
        bench_detector(res, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_line(), "threads": THREADS, "records": [r.__dict__ for r in res.records],
               "extra": res.extra, "targets": [dict(target=t, measured=m, status=s) for t, m, s in targets(res)]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    md = report_md(res)
    print(md)
    if args.readme:
        text = args.readme.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start not in text or end not in text:
            log(f"{args.readme}: no {start} ... {end} markers; README not changed")
            return 2
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        args.readme.write_text(f"{head}{start}\n{md}\n{end}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
