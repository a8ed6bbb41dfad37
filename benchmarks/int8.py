"""INT8 acceptance numbers (#15): the sample classifier's held-out top-1 (fp32, block-aware INT8, naive INT8), top-1
agreement with fp32, the sample detector's INT8 rel L2 with its per-block sensitivity table, and onnxruntime CPU
latency of INT8 vs fp32 in the same run.

    .venv/bin/python benchmarks/int8.py [--detector-imgsz 320] [--threads 2]

Classifier data: the calibration folder is written from the TRAINING split of scikit-learn's digits (the split
``sample_models/build.py`` trained on: ``classifier.json`` holds the held-out indices), as the 32x32 PNGs the demo
images are; accuracy is measured on the 360 held-out digits, which neither training nor calibration saw, with
the runtime's own preprocessing (``runtime/infer.py``). Detector: random fixed weights (``sample_models/README.md``),
so only the output error means something; its calibration images are synthetic image-like pictures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402
from timing import measure_interleaved  # noqa: E402

from blocks_export.export import calibration, int8  # noqa: E402
from blocks_export.export.options import ExportOptions  # noqa: E402
from blocks_export.export.pipeline import run_export  # noqa: E402
from blocks_export.runtime import infer  # noqa: E402


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _latency(paths: dict[str, Path], x: np.ndarray, threads: int) -> dict[str, float]:
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    timings = measure_interleaved({k: (lambda k=k: sessions[k].run(None, feeds[k])) for k in sessions},
                                  runs=20, warmup=3, max_seconds=60)
    return {k: t.median_ms for k, t in timings.items()}


def classifier(work: Path, threads: int) -> dict:
    from sample_models.build import load_split

    info = json.loads((ROOT / "sample_models" / "classifier.json").read_text())
    key = next(k for k in info if "indices" in k)
    split = load_split(np.asarray(info[key]))
    rng = np.random.default_rng(0)
    calib = work / "digits_calib"
    calib.mkdir()
    for i in rng.choice(len(split.train_labels), 240, replace=False):
        Image.fromarray(split.train_images[i], mode="L").save(calib / f"train_{i:04d}.png")
    src = ROOT / "sample_models" / "classifier.pt"
    fp32_out, int8_out = work / "classifier.onnx", work / "classifier_int8.onnx"
    for out, extra in ((fp32_out, {}), (int8_out, {"int8": True, "calib": calib, "calib_count": 200})):
        result = run_export(src, ExportOptions(output=out, trust_pickle=True, force=True, **extra))
        assert result.passed, f"{out.name}: {result.report.status}"
    report = json.loads(int8_out.with_suffix(".report.json").read_text())["int8"]

    # Held-out digits through the runtime's preprocessing, from the graph's own metadata.
    model = onnx.load(str(fp32_out))
    meta = {p.key: p.value for p in model.metadata_props}
    prep = infer.make_preprocess(infer.parse_meta(meta), [1, 1, 32, 32], None)
    x = np.stack([infer.preprocess_image(img, prep) for img in split.test_images]).astype(np.float32)
    labels = split.test_labels

    # Naive INT8: everything onnxruntime quantizes by default, same calibration images, same preprocessing.
    data = calibration.read_calibration(calib, prep, 1, 200)
    with tempfile.TemporaryDirectory() as tmp:
        naive = int8.quantize(model, data.calib_tensors, 1, Path(tmp) / "ranges.json", op_types=None)
    naive_out = work / "classifier_naive_int8.onnx"
    onnx.save(naive, str(naive_out))

    preds = {k: _predict(_session(p, threads), x).argmax(1)
             for k, p in (("fp32", fp32_out), ("int8", int8_out), ("naive int8", naive_out))}
    acc = {k: float((v == labels).mean()) for k, v in preds.items()}
    agree = {k: float((v == preds["fp32"]).mean()) for k, v in preds.items() if k != "fp32"}
    lat = _latency({"fp32": fp32_out, "int8": int8_out}, x[:1], threads)
    return {"held_out": len(labels), "accuracy": acc, "agreement_with_fp32": agree, "latency_ms": lat,
            "fallback": report["fallback"], "sensitivity": report["sensitivity"],
            "tool_held_out_rel_l2": report["rel_l2"]}


def _synthetic_images(folder: Path, count: int, size: tuple[int, int] = (480, 640)) -> None:
    """Image-like RGB pictures: smooth gradients, rectangles and texture (seeded)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(count):
        img = np.stack([(xx * rng.random() + yy * rng.random()) * 200 for _ in range(3)], axis=2)
        for _ in range(8):
            y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
            img[y0:y0 + rng.integers(h // 10, h // 4), x0:x0 + rng.integers(w // 10, w // 4)] = rng.random(3) * 255
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"img_{i:02d}.png")


def detector(work: Path, imgsz: int, threads: int) -> dict:
    calib = work / "det_calib"
    _synthetic_images(calib, 12)
    src = ROOT / "sample_models" / "detector.pt"
    fp32_out, int8_out = work / "detector.onnx", work / "detector_int8.onnx"
    for out, extra in ((fp32_out, {}), (int8_out, {"int8": True, "calib": calib, "calib_count": 8})):
        result = run_export(src, ExportOptions(output=out, trust_pickle=True, force=True, imgsz=(imgsz, imgsz),
                                               **extra))
        assert result.passed, f"{out.name}: {result.report.status}"
    report = json.loads(int8_out.with_suffix(".report.json").read_text())["int8"]
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    lat = _latency({"fp32": fp32_out, "int8": int8_out}, x, threads)
    return {"imgsz": imgsz, "rel_l2": report["rel_l2"], "budget": report["budget"], "naive_rel_l2": report["naive_rel_l2"],
            "held_out": report["held_out_images"], "fallback": report["fallback"],
            "sensitivity": report["sensitivity"], "latency_ms": lat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector-imgsz", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-detector", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, onnxruntime "
          f"{ort.__version__}, onnx {onnx.__version__}, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory(prefix="blocks-export-int8-bench-") as tmp:
        c = classifier(Path(tmp), args.threads)
        print(f"classifier, {c['held_out']} held-out digits: top-1 fp32 {c['accuracy']['fp32']:.4f} | int8 "
              f"{c['accuracy']['int8']:.4f} | naive int8 {c['accuracy']['naive int8']:.4f}")
        print(f"classifier top-1 agreement with fp32: int8 {c['agreement_with_fp32']['int8']:.4f} | naive int8 "
              f"{c['agreement_with_fp32']['naive int8']:.4f}; kept floating point: {c['fallback'] or 'none'}")
        lat = c["latency_ms"]
        print(f"classifier onnxruntime CPU latency: fp32 {lat['fp32']:.3f} ms, int8 {lat['int8']:.3f} ms, "
              f"int8/fp32 {lat['int8'] / lat['fp32']:.2f}")
        if not args.skip_detector:
            d = detector(Path(tmp), args.detector_imgsz, args.threads)
            print(f"detector {d['imgsz']}x{d['imgsz']}, {d['held_out']} held-out images: int8 rel_l2 {d['rel_l2']:.3e} "
                  f"(rule {d['budget']:.1e}), naive {d['naive_rel_l2']:.3e}; kept floating point: "
                  f"{d['fallback'] or 'none'}")
            print("| block | quantized nodes | rel L2 alone | kept floating point |")
            print("|---|---|---|---|")
            for r in d["sensitivity"]:
                print(f"| {r['block']} | {r['nodes']} | {r['rel_l2']:.3e} | {'yes' if r['fallback'] else 'no'} |")
            lat = d["latency_ms"]
            print(f"detector onnxruntime CPU latency: fp32 {lat['fp32']:.1f} ms, int8 {lat['int8']:.1f} ms, "
                  f"int8/fp32 {lat['int8'] / lat['fp32']:.2f}")


if __name__ == "__main__":
    main()
