"""A YOLO detect model that sees real boxes: YOLOv8n with pasted blocks (``ultralytics_models.with_blocks``: DCNv2 in
two bottlenecks, Coordinate Attention after SPPF, ACmix before Detect's P5) whose Detect head is fitted, in a few
seconds of CPU, to seeded synthetic images of three shapes, each its own colour, so that it detects them.

How: the blocks and the rest of the backbone and neck keep their seeded random weights, with BatchNorm statistics
measured on the fitting images (as training leaves them); the features entering Detect are computed once, and a
fresh Detect head (Ultralytics' own initialisation, seeded) is fitted on them with Ultralytics' detection loss
(``v8DetectionLoss``). The seed's ACmix is swapped for the package's reference ACmix (same code and weights, its
position grid in the input's dtype) so that the export's float64 reference runs. The fitted weights are cached (pytest's cache folder, keyed by ``FIT_VERSION`` and the torch
and ultralytics versions), so only a clean checkout pays for the fit. Importing this module imports ultralytics.

    ckpt = fitted_checkpoint(folder)            # an Ultralytics training checkpoint (fp16 weights, train_args)
    data = write_shapes_dataset(root, count=8)  # images/val, labels/val and data.yaml
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
import ultralytics_models as um  # noqa: E402

IMGSZ = 160
NAMES = ["square", "circle", "triangle"]
COLOURS = [(230, 40, 40), (40, 200, 40), (50, 80, 230)]  # one per shape
FIT_VERSION = "2"
FIT_IMAGES = 96
FIT_STEPS = 300
FIT_SEED = 0
VAL_SIZES = [(160, 160), (120, 200), (200, 150), (144, 176)]  # (H, W): letterboxed both ways


def shapes_image(rng: np.random.Generator, hw: tuple[int, int] = (IMGSZ, IMGSZ),
                 max_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One picture [H, W, 3] uint8 (flat background, 1..max_objects shapes, pixel noise) and its labels [K, 5]:
    class, cx, cy, w, h normalised to the picture."""
    h, w = hw
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.random(3) * 80 + 40))
    draw = ImageDraw.Draw(img)
    labels = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, len(NAMES)))
        side = float(rng.uniform(0.15, 0.4) * min(h, w))
        x0, y0 = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[cls])
        box = [x0, y0, x0 + side, y0 + side]
        if cls == 0:
            draw.rectangle(box, fill=colour)
        elif cls == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour)
        labels.append((cls, (x0 + side / 2) / w, (y0 + side / 2) / h, side / w, side / h))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), np.asarray(labels, dtype=np.float64).reshape(-1, 5)


def write_shapes_dataset(root: Path, count: int = 8, seed: int = 1,
                         sizes: list[tuple[int, int]] | None = None) -> Path:
    """``count`` seeded shape pictures (sizes cycling through ``sizes``) as a YOLO dataset under ``root``:
    images/val, labels/val and data.yaml (path, val, names). Returns the yaml."""
    rng = np.random.default_rng(seed)
    sizes = sizes or VAL_SIZES
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, labels = shapes_image(rng, sizes[i % len(sizes)])
        Image.fromarray(img).save(root / "images" / "val" / f"shapes_{i:03d}.png")
        lines = [f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}" for c, cx, cy, bw, bh in labels]
        (root / "labels" / "val" / f"shapes_{i:03d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    (root / "data.yaml").write_text(f"path: {root.resolve()}\ntrain: images/val\nval: images/val\nnames:\n{names}")
    return root / "data.yaml"


def _fit(model: torch.nn.Module) -> None:
    """BatchNorm statistics from the fitting images, then a fresh Detect head fitted on the features it sees."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    rng = np.random.default_rng(FIT_SEED)
    pictures = [shapes_image(rng) for _ in range(FIT_IMAGES)]
    x = torch.from_numpy(np.stack([p for p, _ in pictures])).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    um._statistics_from(model, norms, x[:32])
    detect = model.model[-1]
    torch.manual_seed(FIT_SEED)
    detect.load_state_dict(DetectionModel("yolov8n.yaml", nc=len(NAMES), verbose=False).model[-1].state_dict())
    feats: list[list[torch.Tensor]] = []
    hook = detect.register_forward_pre_hook(lambda m, a: feats.append([t.detach() for t in a[0]]))
    with torch.no_grad():
        for i in range(0, FIT_IMAGES, 16):
            model(x[i:i + 16])
    hook.remove()
    levels = [torch.cat([f[k] for f in feats]) for k in range(len(feats[0]))]
    model.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from the model's args
    loss_fn = v8DetectionLoss(model)
    for p in detect.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(detect.parameters(), lr=1e-3)
    detect.train()  # BatchNorm statistics of the head follow its new weights
    g = torch.Generator().manual_seed(FIT_SEED)
    for _ in range(FIT_STEPS):
        idx = torch.randperm(FIT_IMAGES, generator=g)[:16]
        rows = [(j, *obj) for j, k in enumerate(idx.tolist()) for obj in pictures[k][1]]
        t = torch.tensor(rows, dtype=torch.float32)  # (objects, 6): image in batch, class, cx, cy, w, h
        loss, _ = loss_fn(detect([lv[idx] for lv in levels]), {"batch_idx": t[:, 0], "cls": t[:, 1:2],
                                                                  "bboxes": t[:, 2:]})
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    del model.args
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _acmix_follows_dtype(model: torch.nn.Module) -> None:
    """The seed's ACmix builds its position grid in float32 whatever the input, so the export's float64 copy of
    the model (which sets the fp32 noise floor the parity rule allows) cannot run. Swap it for the package's
    reference ACmix (the same code and state_dict keys, the grid in the input's dtype), weights carried over."""
    from fixtures import seed_blocks

    from blocks_export.blocks import ACmix

    for layer in model.model:
        for i, block in enumerate(layer.children()) if isinstance(layer, um.After) else ():
            if isinstance(block, seed_blocks.ACmix):
                twin = ACmix(block.in_planes, block.out_planes)
                twin.load_state_dict(block.state_dict())
                layer[i] = twin


def fitted_model(cache: Path) -> torch.nn.Module:
    """The fitted detector (float32, eval), its weights read from ``cache`` when an earlier run fitted them."""
    import ultralytics

    model = um.with_blocks("yolov8n.yaml", nc=len(NAMES), seed=0)
    _acmix_follows_dtype(model)
    key = f"detect_shapes_v{FIT_VERSION}_torch{torch.__version__}_ul{ultralytics.__version__}.pt".replace("+", "_")
    path = cache / key
    cache.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # a dependency of torch: two test workers fit once between them

    with FileLock(str(path) + ".lock"):
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            _fit(model)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    model.names = dict(enumerate(NAMES))
    return model.eval()


def fitted_checkpoint(folder: Path, cache: Path) -> Path:
    """The fitted detector saved as an Ultralytics training checkpoint in ``folder`` (``detect_shapes.pt``)."""
    return um.save_checkpoint(fitted_model(cache), folder / "detect_shapes.pt", IMGSZ)


def cache_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache folder (kept between runs), else a temporary one (cache provider off)."""
    with contextlib.suppress(AttributeError, ValueError):
        return Path(request.config.cache.mkdir("blocks-export-detect"))
    return tmp_path_factory.mktemp("detect-cache")


@pytest.fixture(scope="session")
def detect_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Ultralytics checkpoint of the fitted shapes detector (import this fixture into a test module)."""
    return fitted_checkpoint(tmp_path_factory.mktemp("detect"), cache_folder(request, tmp_path_factory))
