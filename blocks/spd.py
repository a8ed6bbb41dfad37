"""SPD: space-to-depth downsampling, and SPD-Conv.

Sunkara and Luo, "No More Strided Convolutions or Pooling: A New CNN Building Block for Low-Resolution
Images and Small Objects", ECML PKDD 2022. https://arxiv.org/abs/2208.03641

``space_to_depth`` is the reference module, faithful to the widely pasted implementation: channels are
concatenated in the order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
``SPDConv`` is ``space_to_depth`` followed by a YOLO-style convolution (conv + BatchNorm + SiLU).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator

import torch
from torch import nn

from . import spd_onnx
from ._fold import fold_batchnorm
from ._match import (
    children,
    finish,
    is_torch_class,
    own_params,
    plain_bn,
    plain_conv,
    probe,
)
from ._ops import decompose_when_untranslated
from ._spec import BlockSpec, Example


def check_spd_input(h: int, w: int) -> None:
    if h % 2 or w % 2:
        raise ValueError(
            f"space_to_depth: input {h}x{w} must have even H and W (the original concatenation of the four "
            "phases fails on odd sizes); pad or resize the input")


class space_to_depth(nn.Module):  # noqa: N801 (seed name)
    """[N, C, H, W] -> [N, 4C, H/2, W/2]."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        check_spd_input(x.shape[-2], x.shape[-1])
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


SpaceToDepth = space_to_depth


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel, as YOLOv5's ``autopad``."""
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    """YOLO-style convolution: Conv2d (no bias) + BatchNorm2d + SiLU, attributes ``conv``, ``bn``, ``act``."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2)  # nn.Identity in a recognised fused form (see ``_yolo_conv``)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SPDConv(nn.Module):
    """space_to_depth then ``Conv(4 * c1, c2, k, s)``: [N, c1, H, W] -> [N, c2, H/2/s, W/2/s]."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, dimension: int = 1):
        super().__init__()
        self.spd = space_to_depth(dimension)
        self.conv = Conv(4 * c1, c2, k, s)

    def forward(self, x):
        return self.conv(self.spd(x))


def check_spd_rank(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"space_to_depth export twin: input of shape {tuple(x.shape)} must be 4-D [N, C, H, W]")


class SpaceToDepthExport(nn.Module):
    """Export twin of ``space_to_depth``: [N, C, H, W] -> [N, 4C, H/2, W/2], channels in the seed's order.

    Output channel ``(2 * s + r) * C + c`` holds ``x[:, c, 2i + r, 2j + s]`` (phase-major, the column phase
    first). The twin keeps the four strided slices and the concatenation: exported, they are 4 ``Slice`` +
    ``Concat`` with no shape arithmetic, and in onnxruntime 1.32 (CPU, 2 threads, 1x64x80x80) they ran about
    0.2 ms against about 1.2 ms for every Reshape -> 6-D Transpose -> Reshape form (``pixel_unshuffle`` plus
    a channel permutation, or one transpose straight to the seed's order). ONNX ``SpaceToDepth`` (0.1 ms)
    has no PyTorch op that the exporters lower to it. Before a convolution use ``SPDConvExport``, which
    removes the rearrangement entirely.

    Odd H or W raise the same ``ValueError`` as the reference (the seed's concatenation fails there). An
    exported graph checks nothing itself; onnxruntime 1.32 rejects odd sizes at run time (its optimiser turns
    this Slice/Concat pattern into a ``SpaceToDepth`` node, which requires even H and W).

    Export: inside ``export_as_one_op()`` (as the export pipeline traces), ``torch.export`` sees the
    rearrangement as one op, ``blocks_export::space_to_depth`` (output [N, 4C, H/2, W/2]), so no strided-slice
    size arithmetic reaches torch's symbolic shapes; its ONNX graph (the same Slices and Concat) comes from
    ``spd_onnx.translation_table()``. Elsewhere, and for the TorchScript exporter, the slices are traced.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spd_rank(x)
        check_spd_input(x.shape[-2], x.shape[-1])  # traced too: the guard "H and W even" bounds dynamic sizes
        if _ONE_OP.get() and torch.compiler.is_compiling():
            # torch.export inside ``export_as_one_op``: one opaque op of output size (N, 4C, H/2, W/2), instead of
            # four strided slices whose sizes torch's symbolic shapes reason about on every trace.
            return torch.ops.blocks_export.space_to_depth(x)
        return space_to_depth_phases(x)


_ONE_OP: contextvars.ContextVar[bool] = contextvars.ContextVar("blocks_export_spd_one_op", default=False)


@contextlib.contextmanager
def export_as_one_op() -> Iterator[None]:
    """Inside: ``torch.export`` traces ``SpaceToDepthExport`` as ``blocks_export::space_to_depth``, which
    ``spd_onnx.translation_table()`` translates (an exporter without it decomposes the op into the same slices).
    Outside (the default) it traces the slices, which every exporter takes as they are."""
    token = _ONE_OP.set(True)
    try:
        yield
    finally:
        _ONE_OP.reset(token)


def space_to_depth_phases(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, 4C, H/2, W/2]: the four phases (0, 0), (1, 0), (0, 1), (1, 1) as (row, col)."""
    return torch.cat([x[:, :, ::2, ::2], x[:, :, 1::2, ::2], x[:, :, ::2, 1::2], x[:, :, 1::2, 1::2]], 1)


@torch.library.custom_op("blocks_export::space_to_depth", mutates_args=())
def _space_to_depth_op(x: torch.Tensor) -> torch.Tensor:
    return space_to_depth_phases(x)


@_space_to_depth_op.register_fake
def _space_to_depth_fake(x: torch.Tensor) -> torch.Tensor:
    # H and W are even here (``check_spd_input`` ran first), so each phase is H/2 x W/2.
    return x.new_empty((x.shape[0], 4 * x.shape[1], x.shape[2] // 2, x.shape[3] // 2))


# An exporter given no translation decomposes the op into the four slices and the concatenation.
decompose_when_untranslated(torch.ops.blocks_export.space_to_depth.default, space_to_depth_phases,
                            _space_to_depth_fake)


class SPDConvExport(nn.Module):
    """Export twin of ``SPDConv``: [N, c1, H, W] -> [N, c2, H/2/s, W/2/s].

    The seed's four-phase slicing (``SpaceToDepthExport``) followed by one convolution with the BatchNorm
    folded in (``fold_batchnorm``, exact in eval mode) and the activation. The rearrangement stays as
    strided slices + Concat on purpose: onnxruntime's optimiser fuses that pattern into its ``SpaceToDepth``
    kernel, and TensorRT runs strided slices as copies. The alternative without any rearrangement, one
    ``2k x 2k`` convolution with stride ``2s`` (YOLOv5's Focus -> ``Conv(k=6, s=2, p=2)``,
    https://github.com/ultralytics/yolov5/issues/4825), is also exact but measured 1.7x slower in onnxruntime
    1.32 CPU at 1x64x80x80 (``benchmarks/run.py``), so it is not used. Odd H or W raise the reference's
    ``ValueError`` in PyTorch.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.spd = SpaceToDepthExport()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.spd(x)))  # (N, 4 c1, H/2, W/2) -> (N, c2, H/2/s, W/2/s)


def spd_conv_to_export(module: SPDConv) -> SPDConvExport:
    """The eval-mode twin of ``SPDConv`` (copies of its weights; ``module`` is left unchanged).

    The BatchNorm is folded into the convolution (``fold_batchnorm``, which keeps a convolution bias: exact in eval
    mode). A convolution whose BatchNorm was already folded (``bn`` an ``nn.Identity``: Ultralytics' ``fuse()``
    form) is copied as it is, so the twin runs the very same weights and bias.
    """
    if not isinstance(module, SPDConv):
        raise TypeError(f"spd.spd_conv_to_export: expected SPDConv, got {type(module).__name__}")
    conv, bn = module.conv.conv, module.conv.bn
    if isinstance(bn, nn.BatchNorm2d):
        folded = fold_batchnorm(conv, bn)
    elif isinstance(bn, nn.Identity):
        folded = copy.deepcopy(conv)
    else:
        raise TypeError(f"spd.spd_conv_to_export: conv.bn must be BatchNorm2d or Identity, got {type(bn).__name__}")
    return SPDConvExport(folded, copy.deepcopy(module.conv.act)).eval()


def to_export(module: nn.Module) -> nn.Module:
    """The eval-mode twin of a ``space_to_depth`` or ``SPDConv`` module."""
    if isinstance(module, SPDConv):
        return spd_conv_to_export(module)
    if isinstance(module, space_to_depth):
        return SpaceToDepthExport().eval()
    raise TypeError(f"spd.to_export: expected space_to_depth or SPDConv, got {type(module).__name__}")


# --- recognising the blocks in foreign modules (helpers: _match.py) --------------------------------


def _space_to_depth(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def recognize_space_to_depth(module: nn.Module) -> tuple[nn.Module, ...]:
    """Parameter-free modules that compute the seed's 4-phase concat, whatever they are called."""
    if (is_torch_class(module) or children(module) or own_params(module)
            or next(iter(module.buffers()), None) is not None):
        return ()
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)  # (N, C, H, W)
    out = probe(module, x)
    if out is None or out.shape != (2, 12, 2, 3) or not torch.equal(out, _space_to_depth(x)):
        return ()
    return (space_to_depth(int(getattr(module, "d", 1))).eval(),)


@torch.no_grad()
def _square(conv: nn.Conv2d) -> bool:
    """Same kernel, stride, dilation and numeric zero padding along H and W (what ``Conv`` can express)."""
    return (conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.padding[0] == conv.padding[1] and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride[0] == conv.stride[1] and conv.dilation[0] == conv.dilation[1])


@torch.no_grad()
def _yolo_conv(src: nn.Module) -> nn.Module:
    """``src`` as our ``Conv`` (conv, bn, act) with the same eval function, or a copy of ``src``.

    Three forms are read: a conv block (``conv``, ``bn``, ``act``; a convolution bias, which some forks keep before
    the BatchNorm, stays in ``conv`` and folds with it); the same block after Ultralytics' ``fuse()`` (``conv`` with
    the BatchNorm folded into its weights and bias, ``act``, no ``bn``: ``BaseModel.fuse`` in
    ultralytics/nn/tasks.py runs before any export); and a plain ``nn.Conv2d`` (YOLOv5's Focus before v6.0).
    Where no BatchNorm is left, ``bn`` is an ``nn.Identity``: the weights and bias are copied, not refolded.
    """
    kids = children(src)
    conv: nn.Module
    bn: nn.Module
    if type(src) is nn.Conv2d:
        conv, bn, act = src, nn.Identity(), None
    elif set(kids) == {"conv", "bn", "act"} and type(kids["bn"]) is nn.BatchNorm2d:
        conv, bn, act = kids["conv"], plain_bn(kids["bn"]), kids["act"]
    elif set(kids) == {"conv", "act"}:
        conv, bn, act = kids["conv"], nn.Identity(), kids["act"]
    else:
        return copy.deepcopy(src)
    if type(conv) is not nn.Conv2d or not _square(conv):
        return copy.deepcopy(src)
    dst = Conv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], int(conv.padding[0]),
               conv.groups, conv.dilation[0], act=copy.deepcopy(act) if act is not None else False)
    dst.conv = plain_conv(conv) if conv.bias is not None else dst.conv
    if conv.bias is None:
        dst.conv.weight.copy_(conv.weight)
    dst.bn = bn
    return dst.to(device=conv.weight.device, dtype=conv.weight.dtype).eval()


def recognize_spd_conv(module: nn.Module) -> tuple[nn.Module, ...]:
    """A module with one convolution-like child that it feeds the 4-phase concat of its input (SPD + Conv):
    the concat written inline (YOLO forks, Focus), or held as a second, parameter-free ``space_to_depth``-like
    child (the seed's layout, pasted whole)."""
    kids = children(module)
    if is_torch_class(module) or own_params(module):
        return ()
    if len(kids) == 2:
        spd_like = [n for n, m in kids.items() if isinstance(m, space_to_depth) or recognize_space_to_depth(m)]
        if len(spd_like) != 1:
            return ()
        kids = {n: m for n, m in kids.items() if n != spd_like[0]}
    if len(kids) != 1:
        return ()
    ((child_name, child),) = kids.items()
    if isinstance(child, space_to_depth):
        return ()
    convs = [m for m in child.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or len(list(child.children())) > 3 or convs[0].in_channels % 4:
        return ()
    c1 = convs[0].in_channels // 4
    conv = convs[0]
    x = torch.randn(1, c1, 8, 8, generator=torch.Generator().manual_seed(0)).to(conv.weight)  # (N, C, H, W)
    probed = copy.deepcopy(module).eval()  # a probe in training mode would update BatchNorm statistics
    got = probe(probed, x)
    want = probe(probed.get_submodule(child_name), _space_to_depth(x))
    if got is None or want is None or got.shape != want.shape or not torch.allclose(got, want, 1e-5, 1e-6):
        return ()
    k = conv.kernel_size[0]
    ref = SPDConv(c1, conv.out_channels, k, conv.stride[0])
    ref.conv = _yolo_conv(child)  # type: ignore[assignment]  # any conv block with the same function
    return (finish(ref, module),)


def _example_spd() -> Example:
    return Example(space_to_depth(), ((1, 3, 12, 12), (2, 3, 8, 14), (1, 3, 6, 10), (3, 3, 16, 20)))


def _example_spd_conv() -> Example:
    return Example(SPDConv(8, 16), ((1, 8, 12, 12), (2, 8, 8, 14), (1, 8, 6, 10), (3, 8, 16, 20)))


SPACE_TO_DEPTH = BlockSpec("space_to_depth", space_to_depth, SpaceToDepthExport, to_export, recognize_space_to_depth,
                           _example_spd, onnx_translations=spd_onnx.translation_table, op_trace=export_as_one_op,
                           channel_factor=4)
SPEC = BlockSpec("SPDConv", SPDConv, SPDConvExport, to_export, recognize_spd_conv, _example_spd_conv,
                 onnx_translations=spd_onnx.translation_table, op_trace=export_as_one_op, channel_factor=4)
