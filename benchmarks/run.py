"""blocks-export benchmark harness: one entry point, every variant of a case timed side by side.

    python benchmarks/run.py                      # everything, writes benchmarks/results/latest.json
    python benchmarks/run.py --only blocks,deform  # a subset
    python benchmarks/run.py --readme README.md    # also rewrite README's performance section
    python benchmarks/run.py --quick               # export times, the ACmix ratio and MobileNetV2-CA: minutes

Threads are pinned (torch and onnxruntime: 2 intra-op threads), every case has a warm-up and >= 20 timed runs,
and variants are interleaved. Each block and DeformConv case also times a plain 3x3 Conv of about its
multiply-adds (``floor conv``): its time scaled to the case's multiply-adds is the case's floor on this machine. Targets are reported as PASS/MISS; the harness never fails on a MISS. The load
average is printed with the results: on a shared machine absolute times are inflated, ratios much less so.

Export times are the ``export`` step of the report of one ``blocks-export`` process per row (``--no-verify
--no-simplify``, so nothing else is timed), the way a user runs it.
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
from typing import Any

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
class ExportTime:
    """The export step of one ``blocks-export`` run: ``seconds`` is ``None`` when the run failed (``why``)."""

    model: str
    mode: str  # static | dynamic
    exporter: str  # dynamo | torchscript
    seconds: float | None
    why: str = ""


@dataclass
class Floor:
    """A case's multiply-adds and the time they take at this machine's best rate (``FLOOR`` scaled), same run."""

    case: str
    shape: list[int]
    macs: int
    floor_ms: float
    conv_macs: int
    conv_ms: float

    @classmethod
    def of(cls, case: str, shape: tuple[int, ...], macs: int, conv_macs: int, conv: Timing) -> Floor:
        return cls(case, list(shape), macs, round(conv.median_ms * macs / conv_macs, 4), conv_macs,
                   round(conv.median_ms, 4))


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    breakdown: dict[str, Any] = field(default_factory=dict)  # where the ACmix twin's time goes (``op_breakdown``)
    extra: dict[str, float] = field(default_factory=dict)
    exports: list[ExportTime] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def floor(self, case: str, shape: tuple[int, ...]) -> Floor | None:
        return next((f for f in self.floors if f.case == case and tuple(f.shape) == tuple(shape)), None)

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


# Blocks with a case of their own (more than one lowering to compare); every other entry of BLOCKS is a block case.
OWN_CASE = {B.DCN: "deform"}


def build_block(spec: B.BlockSpec, channels: int) -> torch.nn.Module:
    """The reference block of ``spec`` at ``channels`` in and out: its constructor's leading required arguments
    (none for a rearrangement such as space_to_depth, one or two channel counts for the rest)."""
    import inspect

    params = [p for p in list(inspect.signature(spec.reference.__init__).parameters.values())[1:]
              if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    return spec.reference(*([channels] * len(params)))


def block_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds one call of the reference block needs: torch's ``FlopCounterMode`` (convolutions, matmuls)
    halved, plus what it does not see: ACmix's window attention, elementwise products summed over the window
    (``q . k`` and ``att . v``: 2 x out x kernel_att^2 per output pixel), and torchvision's ``deform_conv2d``
    (the convolution it applies to the sampled columns: (in / groups) x kh x kw per output element)."""
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    extra = [0]

    def acmix(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        extra[0] += 2 * out.numel() * m.kernel_att ** 2

    def deform(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        extra[0] += out.numel() * m.weight[0].numel()

    hooks = [m.register_forward_hook(acmix) for m in module.modules() if isinstance(m, B.ACmix)]
    hooks += [m.register_forward_hook(deform) for m in module.modules()
              if isinstance(m, torchvision.ops.DeformConv2d)]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return counter.get_total_flops() // 2 + extra[0]


FLOOR = "floor conv"  # the variant that measures this machine's rate: a plain 3x3 Conv of about the case's MACs


def floor_conv(x: torch.Tensor, macs: int) -> tuple[Callable[[], object], int] | None:
    """A plain 3x3 convolution (padding 1, no bias) of ``x``'s channels and size with about ``macs``
    multiply-adds (output channels rounded to a multiple of 8, at least 8): the op onnxruntime runs fastest per
    multiply-add, so its time scaled to ``macs`` is the least time that many multiply-adds take here. Returns its
    runner and its own MAC count; ``None`` for a block without multiply-adds."""
    n, c, h, w = x.shape
    if macs <= 0:
        return None
    per_channel = n * c * 9 * h * w
    out = max(8, 8 * round(macs / per_channel / 8))
    conv = torch.nn.Conv2d(c, out, 3, padding=1, bias=False).eval()
    return ort_runner(export_bytes(conv, x), x), out * per_channel


MIN_SECONDS = 3.0  # per case: enough rounds for stable medians of sub-millisecond variants
SHAPES = [(1, 64, 80, 80), (8, 64, 80, 80), (1, 128, 40, 40), (8, 128, 40, 40)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_blocks(res: Results, runs: int, shapes: list[tuple[int, ...]], names: set[str] | None = None) -> None:
    for spec in B.BLOCKS:
        name = spec.name
        if spec.reference in OWN_CASE or (names is not None and name not in names):
            continue
        for shape in shapes:
            ref = B.randomize_(build_block(spec, shape[1]), seed=0).eval()
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
            macs = block_macs(ref, x)
            floor = floor_conv(x, macs)
            if floor is not None:
                variants[FLOOR] = floor[0]
            log(f"timing {name} {shape} ...")
            timed = measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS)
            for variant, t in timed.items():
                res.records.append(Record.of(name, variant, shape, t))
            if floor is not None:
                res.floors.append(Floor.of(name, shape, macs, floor[1], timed[FLOOR]))
            if name == "ACmix" and shape == (1, 64, 80, 80):
                log(f"profiling {name} {shape} ...")
                res.breakdown = op_breakdown(export_bytes(twin, x, slim=True), x)
                if floor is not None:
                    res.breakdown["floor_gmac_s"] = round(floor[1] / timed[FLOOR].median_ms / 1e6, 1)


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
        macs = block_macs(ref, x)
        floor = floor_conv(x, macs)
        assert floor is not None
        variants[FLOOR] = floor[0]
        log(f"timing dcn {shape} ...")
        timed = measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS)
        for variant, t in timed.items():
            res.records.append(Record.of("dcn", variant, shape, t))
        res.floors.append(Floor.of("dcn", shape, macs, floor[1], timed[FLOOR]))


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


GROUPS = ("export", "blocks", "deform", "detector", "mobilenet")
SAMPLE_MODELS = ("classifier", "detector")
YOLO = "YOLOv8n + DCNv2, CA, ACmix"
MOBILENET = "mobilenet_v2_ca"


def export_step_seconds(source: Path, out: Path, extra: list[str], env: dict[str, str] | None = None
                        ) -> tuple[float | None, str]:
    """The ``export`` step of one ``blocks-export`` process on ``source`` (from its JSON report), or the reason
    it has none."""
    exe = Path(sys.executable).with_name("blocks-export")
    cmd = [str(exe), "export", str(source), "--to", "onnx", "--trust-pickle", "-o", str(out), "--force",
           "--no-verify", "--no-simplify", "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:160]}"
    step = next((st for st in report.get("steps", []) if st["name"] == "export"), None)
    if proc.returncode != 0 or step is None or step["status"] == "failed":
        return None, f"exit {proc.returncode}: {str(report.get('error', ''))[:160]}"
    return float(step["seconds"]), ""


def yolo_checkpoint(folder: Path) -> tuple[Path, dict[str, str]] | str:
    """A YOLOv8n with two DCNv2 bottlenecks, Coordinate Attention and ACmix as an Ultralytics checkpoint (built by
    the tests' ``ultralytics_models``), and the environment that unpickles it; or why it cannot be built."""
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return "the YOLOv8n row needs ultralytics (pip install -e '.[dev]')"
    tests = [str(ROOT / "tests"), str(ROOT / "tests" / "export")]
    for t in tests:
        if t not in sys.path:
            sys.path.insert(0, t)
    import ultralytics_models

    path = ultralytics_models.save_checkpoint(ultralytics_models.with_blocks(), folder / "yolov8n_blocks.pt",
                                              imgsz=640)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*tests, os.environ.get("PYTHONPATH", "")])}
    return path, env


def bench_export(res: Results) -> None:
    """Export step of the sample models and the YOLOv8n-with-blocks model: static and ``--dynamic``, both
    exporters, each in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        models: list[tuple[str, Path, dict[str, str] | None, list[str]]] = []
        for name in SAMPLE_MODELS:
            path = ROOT / "sample_models" / f"{name}.pt"
            if path.exists():
                models.append((name, path, None, []))
            else:
                res.skipped.append(f"{name} export rows: {path} not found (run sample_models/build.py)")
        yolo = yolo_checkpoint(Path(tmp))
        if isinstance(yolo, str):
            res.skipped.append(f"{YOLO} export rows: {yolo}")
        else:
            models.append((YOLO, yolo[0], yolo[1], ["--imgsz", "640"]))
        for name, path, env, extra in models:
            for mode in ("static", "dynamic"):
                for exporter in ("dynamo", "torchscript"):
                    log(f"export {name} {mode} {exporter} ...")
                    flags = [*extra, "--exporter", exporter, *(["--dynamic"] if mode == "dynamic" else [])]
                    seconds, why = export_step_seconds(path, Path(tmp) / "out.onnx", flags, env)
                    res.exports.append(ExportTime(name, mode, exporter, seconds, why))


def bench_mobilenet(res: Results, runs: int) -> None:
    """MobileNetV2 with Coordinate Attention at 224: the ``blocks-export`` graph against the stock
    ``torch.onnx.export`` of the same model, onnxruntime CPU, batch 1 and 8 (each exported at its batch)."""
    from models import mobilenet_v2_ca

    from blocks_export.export.options import ExportOptions
    from blocks_export.export.pipeline import run_export

    model = mobilenet_v2_ca()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "mobilenet_v2_ca.pt"
        torch.save(model, source)
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            out = Path(tmp) / f"ours_b{batch}.onnx"
            result = run_export(source, ExportOptions(imgsz=(224, 224), batch=batch, trust_pickle=True, output=out,
                                                      force=True, quiet=True, verify=False))
            if not result.passed:
                log(f"{MOBILENET} export at batch {batch} failed (exit {result.exit_code})")
                continue
            stock = torch.onnx.export(model, (x,), dynamo=True, opset_version=19, verbose=False)
            assert stock is not None
            variants = {"stock onnx": ort_runner(stock.model_proto.SerializeToString(), x),
                        "ours onnx": ort_runner(out.read_bytes(), x)}
            log(f"timing {MOBILENET} batch {batch} ...")
            for variant, t in measure_interleaved(variants, runs=runs, min_seconds=MIN_SECONDS).items():
                res.records.append(Record.of(MOBILENET, variant, tuple(x.shape), t))


def targets(res: Results) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/MISS) rows."""
    rows: list[tuple[str, str, str]] = []

    def ratio(case: str, slow: str, fast: str, shape: tuple[int, ...]) -> float | None:
        a, b = res.median(case, slow, shape), res.median(case, fast, shape)
        return None if a is None or b is None else a / b

    s = (1, 64, 80, 80)
    for shape in ((1, 64, 80, 80), (1, 128, 40, 40)):
        label = "x".join(map(str, shape))
        r = ratio("ACmix", "stock onnx", "twin onnx", shape)
        if r is not None:
            rows.append((f"ACmix twin >= 15x faster than the stock export, ORT {label}", f"{r:.1f}x",
                         "PASS" if r >= 15 else "MISS"))
        floor, twin = res.floor("ACmix", shape), res.median("ACmix", "twin onnx", shape)
        if floor is not None and twin is not None:
            rows.append((f"ACmix twin <= 2x its floor, ORT {label}",
                         f"{twin / floor.floor_ms:.1f}x ({twin:.2f} ms; floor {floor.floor_ms:.2f} ms)",
                         "PASS" if twin <= 2 * floor.floor_ms else "MISS"))
    r = ratio("ACmix", "reference eager", "twin eager", s)
    if r is not None:
        rows.append(("ACmix twin eager no slower than reference eager, 1x64x80x80", f"{r:.2f}x",
                     "PASS" if r >= 1 else "MISS"))
    for shape in SHAPES:
        r = ratio("dcn", "std onnx", "portable onnx", shape)
        if r is not None:
            rows.append((f"DeformConv portable <= 1.5x native DeformConv, {'x'.join(map(str, shape))}",
                         f"{1 / r:.2f}x", "PASS" if 1 / r <= 1.5 else "MISS"))
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
    for batch in (1, 8):
        r = ratio(MOBILENET, "stock onnx", "ours onnx", (batch, 3, 224, 224))
        if r is not None:
            rows.append((f"MobileNetV2-CA: ours no slower than the stock export (ORT), batch {batch}", f"{r:.2f}x",
                         "PASS" if r >= 1 else "MISS"))
    for e in res.exports:
        if e.mode != "dynamic":
            continue
        limit = 30 if e.model == YOLO else 15
        measured = f"{e.seconds:.1f} s" if e.seconds is not None else f"failed: {e.why}"
        rows.append((f"`--dynamic` export step < {limit} s: {e.model}, {e.exporter}", measured,
                     "PASS" if e.seconds is not None and e.seconds < limit else "MISS"))
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


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores"


def export_table(res: Results) -> str:
    """Markdown: per model, the export step in seconds for static/dynamic x dynamo/TorchScript, side by side."""
    cols = [(m, e) for m in ("static", "dynamic") for e in ("dynamo", "torchscript")]
    lines = ["| model | " + " | ".join(f"{m} {e} s" for m, e in cols) + " | dynamic / static (dynamo) |",
             "|---|" + "---|" * (len(cols) + 1)]
    by_model: dict[str, dict[tuple[str, str], ExportTime]] = {}
    for e in res.exports:
        by_model.setdefault(e.model, {})[(e.mode, e.exporter)] = e
    for model, cells in by_model.items():
        row = []
        for key in cols:
            e = cells.get(key)
            row.append("-" if e is None else f"{e.seconds:.1f}" if e.seconds is not None else f"failed ({e.why})")
        st, dy = cells.get(("static", "dynamo")), cells.get(("dynamic", "dynamo"))
        ratio = (f"{dy.seconds / st.seconds:.2f}x" if st and dy and st.seconds and dy.seconds is not None else "-")
        lines.append(f"| {model} | " + " | ".join(row) + f" | {ratio} |")
    return "\n".join(lines)


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


def _kernel_macs(op: str, args: dict[str, Any]) -> tuple[str, int]:
    """(label, multiply-adds) of one profiled kernel, from the input/output shapes onnxruntime records."""
    shapes = [list(d.values())[0] for d in args.get("input_type_shape", [])]
    outs = [list(d.values())[0] for d in args.get("output_type_shape", [])]
    if op in ("MatMul", "FusedMatMul") and len(shapes) >= 2 and len(shapes[0]) >= 2 and len(shapes[1]) >= 2:
        a, b = shapes[0], shapes[1]
        k = a[-1]
        n = b[-1] if b[-2] == k else b[-2]  # FusedMatMul with a transposed right operand
        batch = int(np.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))) if len(a) > 2 or len(b) > 2 else 1
        return op, batch * a[-2] * k * n
    if op == "Conv" and len(shapes) >= 2 and outs:
        x, w = shapes[0], shapes[1]
        channels = x[1] * (x[4] if len(x) == 5 else 1)  # NCHWc: [N, C / block, H, W, block]
        groups = max(1, round(channels / w[1])) if w[1] else 1
        label = "Conv" if groups == 1 else ("Conv (depthwise)" if groups == channels else f"Conv ({groups} groups)")
        return label, int(np.prod(w)) * int(np.prod(outs[0])) // w[0]
    return op, 0


def op_breakdown(model_bytes: bytes, x: torch.Tensor, runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Where a graph's time goes in onnxruntime (same session settings as the timings, profiler on): per op
    type, mean ms per run, multiply-adds and the rate they ran at."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    timed = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    lo = timed[0]["ts"]
    ops: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= lo:
            label, macs = _kernel_macs(e["args"].get("op_name", "?"), e["args"])
            row = ops.setdefault(label, {"ms": 0.0, "macs": 0})
            row["ms"] += e["dur"] / 1000 / runs
            row["macs"] += macs / runs
    whole = sum(r["dur"] for r in timed) / 1000 / len(timed)
    rows = [{"op": k, "ms": round(v["ms"], 3), "share": round(v["ms"] / whole, 3), "macs": int(v["macs"]),
             "gmac_s": round(v["macs"] / v["ms"] / 1e6, 1) if v["macs"] and v["ms"] else None}
            for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["ms"])]
    return {"shape": list(x.shape), "whole_ms": round(whole, 3), "ops": rows}


def breakdown_md(b: dict[str, Any]) -> str:
    shape = "x".join(map(str, b["shape"]))
    lines = [f"Where the ACmix twin's time goes, onnxruntime profiler at {shape} ({b['whole_ms']:.2f} ms per run "
             "profiled, same session settings):", "",
             "| op | ms | share | multiply-adds | GMAC/s |", "|---|---|---|---|---|"]
    for r in b["ops"]:
        rate = f"{r['gmac_s']:.1f}" if r["gmac_s"] else "-"
        macs = f"{r['macs'] / 1e6:.1f} M" if r["macs"] else "-"
        lines.append(f"| {r['op']} | {r['ms']:.3f} | {100 * r['share']:.1f}% | {macs} | {rate} |")
    if "floor_gmac_s" in b:
        compute = sum(r["macs"] for r in b["ops"]) / b["floor_gmac_s"] / 1e6
        movement = sum(r["ms"] for r in b["ops"] if not r["macs"])
        lines += ["", f"The floor conv ran at {b['floor_gmac_s']:.1f} GMAC/s in the timed run. At that rate the twin's "
                      f"{sum(r['macs'] for r in b['ops']) / 1e6:.0f} M kernel multiply-adds (halo and mask waste "
                      f"included) would take {compute:.2f} ms; the ops without multiply-adds (Gather, Softmax, Add, "
                      f"Transpose, reorders) take {movement:.2f} ms."]
    return "\n".join(lines)


def floor_table(res: Results) -> str:
    """Markdown: per case, its multiply-adds, the floor they imply (the floor conv's time scaled to them, same
    run) and each ONNX variant's time as a multiple of it."""
    lines = ["| case | shape | multiply-adds | floor conv (its MACs, ms) | floor ms | ONNX variant: ms, x floor |",
             "|---|---|---|---|---|---|"]
    for f in res.floors:
        shape = tuple(f.shape)
        onnx_rows = [r for r in res.records if r.case == f.case and tuple(r.shape) == shape
                     and r.variant.endswith("onnx")]
        cells = "; ".join(f"{r.variant} {r.median_ms:.2f}, {r.median_ms / f.floor_ms:.1f}x" for r in onnx_rows)
        lines.append(f"| {f.case} | {'x'.join(map(str, shape))} | {f.macs / 1e6:.1f} M | {f.conv_macs / 1e6:.1f} M, "
                     f"{f.conv_ms:.2f} | {f.floor_ms:.3f} | {cells} |")
    return "\n".join(lines)


def report_md(res: Results, command: str, loads: list[str]) -> str:
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [f"Measured by `{command}` on {date}: {machine_line()}; {'; '.join(loads)}.", ""]
    if res.exports:
        out += ["Export step (seconds, one `blocks-export` process per cell, `--no-verify --no-simplify`):", "",
                export_table(res), ""]
    if res.records:
        out += [table(res), ""]
    if res.floors:
        out += ["Floor: each case's multiply-adds (the reference block's convolutions and matmuls, ACmix's window "
                "products, DeformConv's convolution), timed at the rate of a plain 3x3 Conv measured in the same "
                "interleaved run (`floor conv`):", "", floor_table(res), ""]
    if res.breakdown:
        out += [breakdown_md(res.breakdown), ""]
    out += [f"Skipped: {s}" for s in res.skipped]
    if res.skipped:
        out.append("")
    out += ["| target | measured | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {s} |" for t, m, s in targets(res)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated: {', '.join(GROUPS)}")
    p.add_argument("--blocks", help="comma-separated BLOCKS names for the block cases (default: all), e.g. ACmix")
    p.add_argument("--quick", action="store_true",
                   help="export times, the ACmix case and MobileNetV2-CA at batch-1 shapes (a few minutes)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per variant (>= 20 for reported numbers)")
    p.add_argument("--shapes", default="all", choices=["all", "batch1"], help="batch1: only the batch-1 shapes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    p.add_argument("--readme", type=Path, help="rewrite the section between the bench markers of this file")
    args = p.parse_args(argv)
    if args.quick:
        args.only, args.blocks, args.shapes = "export,blocks,mobilenet", args.blocks or "ACmix", "batch1"
    shapes = SHAPES if args.shapes == "all" else [s for s in SHAPES if s[0] == 1]
    only = set(args.only.split(","))
    if unknown := only - set(GROUPS):
        p.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    names = set(args.blocks.split(",")) if args.blocks else None
    if names is not None and (unknown := names - {s.name for s in B.BLOCKS}):
        p.error(f"--blocks: unknown {', '.join(sorted(unknown))}; choose from {', '.join(s.name for s in B.BLOCKS)}")
    command = "python benchmarks/run.py" + ("".join(f" {a}" for a in sys.argv[1:]) if argv is None else
                                            "".join(f" {a}" for a in argv))
    loads = [load_line("at start")]
    log(loads[0])
    res = Results()
    if "export" in only:
        bench_export(res)
    if "blocks" in only:
        bench_blocks(res, args.runs, shapes, names)
    if "deform" in only:
        bench_deform(res, args.runs, shapes)
    if "detector" in only:
        bench_detector(res, args.runs)
    if "mobilenet" in only:
        bench_mobilenet(res, args.runs)
    loads.append(load_line("at end"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_line(), "threads": THREADS, "command": command, "load": loads,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "records": [r.__dict__ for r in res.records], "floors": [f.__dict__ for f in res.floors],
               "breakdown": res.breakdown, "exports": [e.__dict__ for e in res.exports],
               "skipped": res.skipped, "extra": res.extra,
               "targets": [dict(target=t, measured=m, status=s) for t, m, s in targets(res)]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    md = report_md(res, command, loads)
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
