"""Ultralytics YOLO models with blocks pasted in the way users do it, saved as Ultralytics checkpoints.

The blocks are written here (or are the original pasted code, ``fixtures.seed_blocks``, or the pasted variants of
``tests/blocks/pasted_variants.py``), never the package's own classes: a DCNv2 in two bottlenecks (the form YOLOv8
forks paste), Coordinate Attention after SPPF and ACmix on the P5 input of the Detect head; or SPD-Conv in place of
two strided convolutions with a Coordinate Attention lookalike after SPPF. The models are built from Ultralytics' own yaml (no downloads) and the blocks are
spliced into ``model.model`` keeping the bookkeeping attributes (``f``, ``i``, ``type``, ``np``) Ultralytics' forward
reads. Importing this module imports ultralytics: only tests that need it do.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from fixtures import seed_blocks
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, PoseModel, SegmentationModel

from blocks_export.blocks._init import randomize_

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blocks"))
import pasted_variants as pv  # noqa: E402


class DCNv2(nn.Module):
    """Modulated deformable conv + BN + SiLU as pasted into YOLOv8 bottlenecks (``conv_offset_mask``)."""

    def __init__(self, c1, c2, k=3, s=1, deformable_groups=1):
        super().__init__()
        self.k, self.s, self.p, self.dg = k, s, k // 2, deformable_groups
        self.weight = nn.Parameter(torch.empty(c2, c1, k, k))
        self.bias = nn.Parameter(torch.zeros(c2))
        self.conv_offset_mask = nn.Conv2d(c1, deformable_groups * 3 * k * k, k, s, self.p, bias=True)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()
        nn.init.kaiming_uniform_(self.weight)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x):
        o1, o2, mask = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        x = torch.ops.torchvision.deform_conv2d(x, self.weight, offset, mask.sigmoid(), self.bias, self.s, self.s,
                                                self.p, self.p, 1, 1, 1, self.dg, True)
        return self.act(self.bn(x))


class CoordAttention(nn.Module):
    """Coordinate Attention as found in blog posts: ``nn.Hardswish``, pooling built in forward."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, oup, 1)
        self.conv_w = nn.Conv2d(mip, oup, 1)

    def forward(self, x):
        n, c, h, w = x.size()
        x_h = nn.AdaptiveAvgPool2d((h, 1))(x)
        x_w = nn.AdaptiveAvgPool2d((1, w))(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return x * self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid() * self.conv_h(x_h).sigmoid()


class SPDConv(pv.SPDConvYolo):
    """SPD-Conv as YOLO forks paste it into ``ultralytics/nn/modules``: the space-to-depth slicing inline, then
    Ultralytics' own ``Conv`` (conv + BN + SiLU), which the model's ``fuse()`` turns into a conv with bias."""

    def __init__(self, inc, ouc, dimension=1):
        super().__init__(inc, ouc, dimension)
        self.conv = Conv(inc * 4, ouc, k=3)


class After(nn.Sequential):
    """``layer`` followed by ``block`` in the slot of ``layer`` (keeps Ultralytics' routing attributes)."""

    def __init__(self, layer, block):
        super().__init__(layer, block)
        self.f, self.i, self.type, self.np = layer.f, layer.i, f"{layer.type}+{type(block).__name__}", layer.np


def out_channels(layer) -> int:
    return layer.cv2.conv.out_channels  # C2f, C3k2 and SPPF end with cv2


def plain(yaml: str = "yolov8n.yaml", nc: int = 3, seed: int = 0, cls_bias: float = -3.0) -> DetectionModel:
    """The model as Ultralytics builds it from ``yaml``, BatchNorm statistics randomised, DFL kept."""
    model = DetectionModel(yaml, nc=nc, verbose=False)
    return _randomise(model, seed, cls_bias)


def with_blocks(yaml: str = "yolov8n.yaml", nc: int = 3, seed: int = 0, cls_bias: float = -3.0) -> DetectionModel:
    """``yaml`` with a DCNv2 in two bottlenecks, Coordinate Attention after SPPF and ACmix before Detect's P5."""
    model = DetectionModel(yaml, nc=nc, verbose=False)
    layers = model.model
    bottlenecks = [m for m in layers.modules() if type(m).__name__ == "Bottleneck"]
    for b in (bottlenecks[1], bottlenecks[-1]):  # one in the backbone, one in the neck
        c = b.cv2.conv
        b.cv2 = DCNv2(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0])
    sppf = next(i for i, m in enumerate(layers) if type(m).__name__ == "SPPF")
    c = out_channels(layers[sppf])
    layers[sppf] = After(layers[sppf], CoordAttention(c, c))
    detect = layers[-1]
    p5 = detect.f[-1]
    c = out_channels(layers[p5])
    layers[p5] = After(layers[p5], seed_blocks.ACmix(c, c))
    return _randomise(model, seed, cls_bias)


def with_spd(yaml: str = "yolov8n.yaml", nc: int = 3, seed: int = 0) -> DetectionModel:
    """``yaml`` with its first two stride-2 ``Conv`` layers replaced by pasted ``SPDConv`` (space-to-depth, then a
    stride-1 Conv: the same output size), and a Coordinate Attention lookalike (max pooling) after SPPF."""
    model = DetectionModel(yaml, nc=nc, verbose=False)
    layers = model.model
    strided = [i for i, m in enumerate(layers) if type(m).__name__ == "Conv" and m.conv.stride == (2, 2)][1:3]
    for i in strided:
        old = layers[i]
        new = SPDConv(old.conv.in_channels, old.conv.out_channels)
        new.f, new.i, new.type, new.np = old.f, old.i, "SPDConv", sum(p.numel() for p in new.parameters())
        layers[i] = new
    sppf = next(i for i, m in enumerate(layers) if type(m).__name__ == "SPPF")
    c = out_channels(layers[sppf])
    layers[sppf] = After(layers[sppf], pv.CoordAttMaxPool(c, c))  # a lookalike: max pooling
    return _randomise(model, seed, -3.0)


# Ultralytics' model class and yaml per task (the "-seg", "-pose", "-obb", "-cls" variants of YOLOv8n).
TASK_MODELS = {"segment": (SegmentationModel, "yolov8n-seg.yaml"), "pose": (PoseModel, "yolov8n-pose.yaml"),
               "obb": (OBBModel, "yolov8n-obb.yaml"), "classify": (ClassificationModel, "yolov8n-cls.yaml")}


def task_model(task: str, blocks: bool, nc: int = 3, seed: int = 0) -> torch.nn.Module:
    """The YOLOv8n ``task`` model from yaml, BatchNorm statistics randomised; with ``blocks``, a DCNv2 in the last
    bottleneck and Coordinate Attention after SPPF (after the last backbone C2f for the classifier, which has no
    SPPF)."""
    cls, yaml = TASK_MODELS[task]
    model = cls(yaml, nc=nc, verbose=False)
    layers = model.model
    if blocks:
        b = [m for m in layers.modules() if type(m).__name__ == "Bottleneck"][-1]
        c = b.cv2.conv
        b.cv2 = DCNv2(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0])
        kinds = [type(m).__name__ for m in layers]
        slot = kinds.index("SPPF") if "SPPF" in kinds else len(kinds) - 2
        c = out_channels(layers[slot])
        layers[slot] = After(layers[slot], CoordAttention(c, c))
    dfl = {k: v.clone() for k, v in model.state_dict().items() if ".dfl." in k}
    with torch.no_grad():
        randomize_(model, seed=seed)
    model.load_state_dict({**model.state_dict(), **dfl})
    model.names = {i: f"class{i}" for i in range(nc)}
    model.eval()
    if task == "classify":
        _calibrate_classifier(model)
    return model


def _statistics_from(model: nn.Module, norms: list[nn.Module], x: torch.Tensor) -> None:
    """Set the running statistics of ``norms`` (BatchNorms inside ``model``) to those of one pass of ``x``."""
    momenta = [bn.momentum for bn in norms]
    for bn in norms:  # training mode with momentum None: one pass leaves exactly that pass's statistics
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        model(x)
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
        bn.eval()


def _calibrate_classifier(model: ClassificationModel, imgsz: int = 64, spread: float = 2.0) -> None:
    """A classifier whose top-1 depends on the image, as a trained one's does. With random BatchNorm statistics
    every image gets the same probabilities (the pooled features vary 20000 times less over images than their size;
    an fp16 checkpoint's rounding alone then decides the class). Here every BatchNorm takes the statistics of 16
    seeded images (coarse noise enlarged, fine grain; as training leaves them, affine weights stay random) and the
    last Linear is rescaled so that each logit varies by ``spread`` over those images around 0 (weights below 1).
    Unlike a trained network this random one stays sensitive: one grey level on a fifth of the pixels moves its
    probabilities by up to 0.07, and the one-level differences of Pillow 13's pass order by up to 0.08 (measured),
    which a comparison of top-1s must allow for in close calls."""
    g = torch.Generator().manual_seed(99)
    coarse = torch.rand((16, 3, imgsz // 8, imgsz // 8), generator=g)
    x = nn.functional.interpolate(coarse, size=(imgsz, imgsz), mode="bicubic", align_corners=False)
    x = (x + torch.randn(x.shape, generator=g) * (12 / 255)).clamp(0, 1)  # plus fine grain, as the tests' images
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    _statistics_from(model, norms, x)
    linear = model.model[-1].linear
    features = []
    hook = linear.register_forward_hook(lambda m, i, o: features.append(i[0]))
    with torch.no_grad():
        model(x)
        hook.remove()
        logits = features[0] @ linear.weight.T
        scale = spread / logits.std(dim=0).clamp_min(1e-6)
        linear.weight.mul_(scale[:, None])
        linear.bias.copy_(-logits.mean(dim=0) * scale)


def _randomise(model: DetectionModel, seed: int, cls_bias: float) -> DetectionModel:
    dfl = {k: v.clone() for k, v in model.state_dict().items() if ".dfl." in k}
    with torch.no_grad():
        randomize_(model, seed=seed)
    model.load_state_dict({**model.state_dict(), **dfl})
    model.eval()
    _calibrate_class_batchnorm(model)
    _calibrate_class_logits(model, cls_bias)
    model.names = {i: f"class{i}" for i in range(model.model[-1].nc)}
    return model


def _calibrate_class_batchnorm(model: DetectionModel, imgsz: int = 640) -> None:
    """The BatchNorm statistics of the Detect head's class branches (``cv3``) as training leaves them: the mean and
    variance of what each one sees, on two seeded images (affine weights stay random). With random statistics
    those features are a constant plus a variation 30-300 times smaller (std over positions): the class logits then
    needed weights of 135-210 to vary at all, and so turned fp16 rounding of their input into score errors of 0.026
    (YOLO11n + blocks), which a trained head does not do. Calibrated, those weights come out at 0.6-1.2 and the
    same rounding moves scores by 0.003 (YOLOv8n) to 0.006 (YOLO11n). Only there: calibrating every BatchNorm of a
    random network makes it chaotic (0.1 for YOLO11n), nothing like a trained one either, and calibrating the box
    branches too makes their DFL logits spread so far that fp16 moves small boxes off IoU 0.99 (0.989, YOLOv8n).
    Measured at 640, the slow matrix's size (statistics of pooling and attention shift with the image size)."""
    x = torch.rand((2, 3, imgsz, imgsz), generator=torch.Generator().manual_seed(4321))
    norms = [m for m in model.model[-1].cv3.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    _statistics_from(model, norms, x)


def _calibrate_class_logits(model: DetectionModel, centre: float, spread: float = 1.5) -> None:
    """Random weights give class logits that hardly vary over the image (every anchor ties, NMS then picks among
    equals arbitrarily). Rescale each last class conv so its logits vary by ``spread`` (std over positions)
    around ``centre`` on a fixed image: distinct scores, some above predict's 0.25 confidence. After
    ``_calibrate_class_batchnorm`` this is a gain of ordinary size (weights up to about 1)."""
    x = torch.rand((1, 3, 320, 320), generator=torch.Generator().manual_seed(1234))
    stats = []
    hooks = [seq[-1].register_forward_hook(lambda m, i, o: stats.append((m, o - m.bias.view(1, -1, 1, 1))))
             for seq in model.model[-1].cv3]
    with torch.no_grad():
        model(x)
        for conv, out in stats:
            mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3)).clamp_min(1e-6)
            scale = spread / std
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_(centre - mean * scale)
    for h in hooks:
        h.remove()


def save_checkpoint(model: torch.nn.Module, path: Path, imgsz: int = 320, task: str = "detect") -> Path:
    """An Ultralytics training checkpoint: fp16 weights under ``model``, ``ema`` None, ``train_args``."""
    half = copy.deepcopy(model).half()
    torch.save({"epoch": -1, "best_fitness": None, "model": half, "ema": None, "updates": None,
                "optimizer": None, "train_args": {"task": task, "imgsz": imgsz, "data": "coco8.yaml"},
                "date": "2026-01-01T00:00:00", "version": "8.4"}, path)
    return path
