"""Build the sample models, their checkpoints and the demo images, deterministically.

    python sample_models/build.py            # rebuild everything in sample_models/
    python sample_models/build.py --check    # rebuild into a temporary folder and compare with the checked-in files

Classifier: trained on scikit-learn's bundled digits (``sklearn.datasets.load_digits``: 1797 real 8x8
grayscale scans, shipped inside the package, nothing downloaded). Each 8x8 image (values 0..16, 16 = ink) is
stretched to 0..255, upsampled to 32x32 with Pillow's bilinear filter (the uint8 image the demo PNGs store),
scaled by 1/255 and normalised with the training split's mean and std. Stratified 80/20 split, fixed seeds,
one thread, deterministic algorithms: rebuilding on the same machine and library versions reproduces the
weights exactly; on other CPUs float rounding may differ, the test accuracy stays within +-0.5 %.

Detector: random but fixed weights (``blocks_export.blocks.randomize_``), then BatchNorm statistics
measured in train mode over random images, so the feature maps have realistic scales and the model is no
more fp16-sensitive than a trained one.

Each model is written three ways: full pickle (``<name>.pt``), Ultralytics-style checkpoint dict with fp16
weights (``<name>_ckpt.pt``) and ``state_dict`` (``<name>_state_dict.pt``, for ``--arch
sample_models.models:<name>``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `sample_models.models` when run as a script

from blocks_export.blocks import randomize_  # noqa: E402
from sample_models.models import (  # noqa: E402
    CLASSIFIER_PREPROCESS,
    DETECTOR_SIZE,
    DIGIT_LABELS,
    classifier,
    detector,
)

SEED = 0
TEST_FRACTION = 0.2
EPOCHS = 10
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 5e-4
# Fixed, so that rebuilding writes the same checkpoint dict.
BUILD_DATE = "2026-11-25T00:00:00+00:00"
CKPT_VERSION = "blocks-export sample models 1"
ACCURACY_TOLERANCE = 0.005
MAX_FILE_BYTES = 5 * 1024 * 1024
FILE_FORMS = ("", "_ckpt", "_state_dict")


@dataclass(frozen=True)
class DigitsSplit:
    """Upsampled digits [N, 32, 32] uint8 and labels [N] int64, split into train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_indices: np.ndarray  # indices into load_digits(), in test order


def upsample_digits(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, 8, 8] values 0..16 -> [N, H, W] uint8: stretched to 0..255, bilinear upsampling (Pillow)."""
    u8 = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    h, w = size
    return np.stack([np.asarray(Image.fromarray(im, mode="L").resize((w, h), Image.BILINEAR)) for im in u8])


def load_split(test_indices: np.ndarray | None = None) -> DigitsSplit:
    """The digits split; ``test_indices`` (from classifier.json) pins it, else a stratified split is drawn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = upsample_digits(digits.images, tuple(CLASSIFIER_PREPROCESS["size"]))
    labels = digits.target.astype(np.int64)
    if test_indices is None:
        from sklearn.model_selection import train_test_split

        _, test_indices = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                           stratify=labels, random_state=SEED)
    test_indices = np.asarray(test_indices, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_indices] = False
    return DigitsSplit(images[train_mask], labels[train_mask], images[test_indices], labels[test_indices],
                       test_indices)


def normalise(images: np.ndarray) -> torch.Tensor:
    """[N, H, W] uint8 -> [N, 1, H, W] float32 with the classifier's preprocessing."""
    p = CLASSIFIER_PREPROCESS
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) * p["scale"]  # (N, 1, H, W)
    return (x - p["mean"][0]) / p["std"][0]


def check_pixel_stats(split: DigitsSplit) -> None:
    """The preprocessing constants in models.py must be the training split's statistics."""
    x = split.train_images.astype(np.float64) * CLASSIFIER_PREPROCESS["scale"]
    mean, std = float(x.mean()), float(x.std())
    want_mean, want_std = CLASSIFIER_PREPROCESS["mean"][0], CLASSIFIER_PREPROCESS["std"][0]
    if abs(mean - want_mean) > 1e-3 or abs(std - want_std) > 1e-3:
        raise ValueError(f"training split pixel mean/std {mean:.4f}/{std:.4f} differ from CLASSIFIER_PREPROCESS "
                         f"{want_mean}/{want_std}; update sample_models/models.py")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Top-1 class [N] of ``model`` in eval mode on [N, 1, H, W]."""
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    pred = predict(model, normalise(images))
    return float((pred.numpy() == labels).mean())


def shift_augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels, zero (background) filled; [N, 1, H, W]."""
    n, _, h, w = x.shape
    background = -CLASSIFIER_PREPROCESS["mean"][0] / CLASSIFIER_PREPROCESS["std"][0]
    padded = nn.functional.pad(x, (max_shift,) * 4, value=background)  # (N, 1, H+2s, W+2s)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_classifier(split: DigitsSplit, log: bool = True) -> nn.Sequential:
    torch.manual_seed(SEED)
    model = classifier()
    x, y = normalise(split.train_images), torch.from_numpy(split.train_labels)
    g = torch.Generator().manual_seed(SEED)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch,
                                                pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            xb = shift_augment(x[idx], g)
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            acc = accuracy(model, split.test_images, split.test_labels)
            print(f"  epoch {epoch + 1:2d}/{EPOCHS}  loss {total / len(x):.4f}  test acc {acc:.4f}", flush=True)
    return model.eval()


def calibration_images(batch: int, g: torch.Generator) -> torch.Tensor:
    """Random images [batch, 3, 640, 640] in [0, 1]: smooth low-resolution noise plus fine noise.

    Closer to natural images than white noise alone (most energy at low frequencies, some texture), so the
    BatchNorm statistics measured on them are of the kind a trained detector has.
    """
    size = (DETECTOR_SIZE, DETECTOR_SIZE)
    low = torch.rand(batch, 3, DETECTOR_SIZE // 16, DETECTOR_SIZE // 16, generator=g)
    smooth = nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)  # (B, 3, H, W)
    return 0.7 * smooth + 0.3 * torch.rand(batch, 3, *size, generator=g)


@torch.no_grad()
def build_detector(calibration_batches: int = 4, batch: int = 2) -> nn.Module:
    """Random fixed weights, then BatchNorm running statistics measured on random images at 640x640."""
    torch.manual_seed(SEED)
    model = detector()
    # scale 0.25 (not randomize_'s 0.5): with larger random biases and rates, ACmix's attention logits and the
    # DCN offsets are so large that fp16-rounded weights alone move the outputs by > 1 % (relative L2), far
    # more sensitive than a trained detector; at 0.25 it is ~0.15 %.
    randomize_(model, seed=SEED, scale=0.25)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    g = torch.Generator().manual_seed(SEED + 1)
    for _ in range(calibration_batches):
        model(calibration_images(batch, g))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def save_three_ways(model: nn.Module, out_dir: Path, name: str, extra: dict) -> list[Path]:
    """``<name>.pt`` (full pickle), ``<name>_ckpt.pt`` (Ultralytics-style dict, fp16), ``<name>_state_dict.pt``."""
    model = model.eval()
    paths = [out_dir / f"{name}{form}.pt" for form in FILE_FORMS]
    torch.save(model, paths[0])
    half = copy.deepcopy(model).half()
    # GraphModule.__deepcopy__ rebuilds the module and drops attributes it does not know.
    half.export_metadata = copy.deepcopy(model.export_metadata)
    ckpt = {
        "date": BUILD_DATE,
        "version": CKPT_VERSION,
        "epoch": -1,  # Ultralytics' strip_optimizer convention for a final checkpoint
        "best_fitness": extra.get("test_accuracy"),
        "model": half,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": extra.get("train_args", {}),
        "train_metrics": {k: v for k, v in extra.items() if k.endswith("accuracy")},
    }
    torch.save(ckpt, paths[1])
    torch.save(model.state_dict(), paths[2])
    for p in paths:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{p} is {p.stat().st_size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    return paths


def write_demo_images(split: DigitsSplit, out_dir: Path) -> list[Path]:
    """One 32x32 grayscale PNG per digit from the test split: ``images/digit_<label>_<dataset index>.png``."""
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in range(10):
        pos = int(np.flatnonzero(split.test_labels == label)[0])
        path = img_dir / f"digit_{label}_{int(split.test_indices[pos])}.png"
        Image.fromarray(split.test_images[pos], mode="L").save(path, optimize=False)
        paths.append(path)
    return paths


def build(out_dir: Path, log: bool = True) -> dict:
    """Build everything into ``out_dir``; returns the classifier record written to ``classifier.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    split = load_split()
    check_pixel_stats(split)
    if log:
        print(f"classifier: training on {len(split.train_labels)} digits, testing on {len(split.test_labels)}")
    model = train_classifier(split, log=log)
    test_acc = round(accuracy(model, split.test_images, split.test_labels), 6)
    train_acc = round(accuracy(model, split.train_images, split.train_labels), 6)
    model.export_metadata["test_accuracy"] = test_acc
    train_args = {"epochs": EPOCHS, "batch": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY, "seed": SEED,
                  "optimizer": "AdamW", "schedule": "OneCycleLR", "label_smoothing": 0.05,
                  "augment": "random shift <= 2 px"}
    record = {
        "dataset": "sklearn.datasets.load_digits",
        "labels": list(DIGIT_LABELS),
        "preprocess": dict(CLASSIFIER_PREPROCESS),
        "preprocess_notes": ("8x8 values 0..16 (16 = ink) -> x * 255/16 rounded to uint8 -> Pillow bilinear "
                             "resize to 32x32 -> * scale -> (x - mean) / std; one channel, no letterboxing"),
        "input": {"shape": [1, 1, 32, 32], "dtype": "float32"},
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "n_train": int(len(split.train_labels)),
        "n_test": int(len(split.test_labels)),
        "train_args": train_args,
        "test_indices": [int(i) for i in split.test_indices],
    }
    save_three_ways(model, out_dir, "classifier", {"test_accuracy": test_acc, "train_accuracy": train_acc,
                                                   "train_args": train_args})
    (out_dir / "classifier.json").write_text(json.dumps(record, indent=1) + "\n")
    write_demo_images(split, out_dir)
    if log:
        print(f"classifier: test accuracy {test_acc:.4f} ({time.perf_counter() - t0:.1f} s)")

    det = build_detector()
    save_three_ways(det, out_dir, "detector", {"train_args": {"seed": SEED, "weights": "random, fixed"}})
    if log:
        print(f"detector: written ({time.perf_counter() - t0:.1f} s total)")
    return record


def check(reference_dir: Path) -> list[str]:
    """Rebuild into a temporary folder; return what differs from ``reference_dir`` (empty when all matches)."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        record = build(out, log=True)
        ref_record = json.loads((reference_dir / "classifier.json").read_text())
        if abs(record["test_accuracy"] - ref_record["test_accuracy"]) > ACCURACY_TOLERANCE:
            problems.append(f"classifier test accuracy {record['test_accuracy']:.4f} vs checked-in "
                            f"{ref_record['test_accuracy']:.4f} (tolerance {ACCURACY_TOLERANCE})")
        for key in ("labels", "preprocess", "test_indices", "n_train", "n_test"):
            if record[key] != ref_record[key]:
                problems.append(f"classifier.json {key!r} differs")
        for name in ("classifier", "detector"):
            same = [form or "pickle" for form in FILE_FORMS
                    if (out / f"{name}{form}.pt").read_bytes() == (reference_dir / f"{name}{form}.pt").read_bytes()]
            print(f"{name}: byte-identical files: {', '.join(same) or 'none'}")
            new = torch.load(out / f"{name}_state_dict.pt", weights_only=True)
            old = torch.load(reference_dir / f"{name}_state_dict.pt", weights_only=True)
            if new.keys() != old.keys():
                problems.append(f"{name}: state_dict keys differ")
                continue
            worst = max(float((new[k].double() - old[k].double()).abs().max()) for k in new if new[k].numel())
            exact = all(torch.equal(new[k], old[k]) for k in new)
            print(f"{name}: weights {'identical' if exact else f'differ, max abs {worst:.3e}'}")
            if name == "detector" and worst > 1e-4:
                problems.append(f"detector weights differ by up to {worst:.3e}")
        for png in sorted((out / "images").glob("*.png")):
            ref_png = reference_dir / "images" / png.name
            if not ref_png.exists():
                problems.append(f"images/{png.name} is missing")
            elif np.asarray(Image.open(png)).tolist() != np.asarray(Image.open(ref_png)).tolist():
                problems.append(f"images/{png.name} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary folder and compare with the checked-in files")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: sample_models/)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for p in problems:
            print(f"MISMATCH | {p}")
        print("check: OK" if not problems else f"check: {len(problems)} mismatch(es)")
        return 1 if problems else 0
    build(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
