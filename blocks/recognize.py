"""Recognisers: find the seed's blocks inside foreign modules by structure and behaviour.

A recogniser reads one module's children and parameters (never its class name or source; attribute names
only order the candidates) and returns the candidate reference blocks (``ACmix``, ``CB2d``, ``CA``, ``space_to_depth``, ``SPDConv``, ``DCN``) that
would compute the same function, with the foreign weights transferred. Several candidates are returned where
structure alone cannot decide (which of two 1x1 convolutions is the H branch, whether a context-block
branch adds or multiplies, how an offset convolution's channels are laid out); the rewriter keeps the first
candidate that matches the foreign module on the inputs it really sees. An empty tuple means "not this
block". ``NotConvertible`` means "this block, but it cannot be mapped exactly" (its message says why).

Weight transfer copies tensors into fresh ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.LayerNorm`` modules; a
missing convolution bias becomes a zero bias, which adds nothing, so the copy is exact.

Recognisers never modify the module they read. Some run a small probe tensor through a parameter-free part,
which can only be told apart by what it computes: the CA activation (hard-swish under any name), a
``space_to_depth`` module, the slicing in front of an SPD convolution (on a copy, in eval mode).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from .acmix import ACmix
from .context_block import CB2d
from .coord_attn import CA
from .dcn import DCN
from .spd import Conv, SPDConv, space_to_depth


class NotConvertible(Exception):
    """The module has a block's structure but cannot be mapped onto the reference block exactly."""


Recognizer = Callable[[nn.Module], tuple[nn.Module, ...]]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _own_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return dict(module.named_parameters(recurse=False))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        raise NotConvertible(f"padding {v!r} is not numeric")
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise NotConvertible(f"expected an int or a pair, got {v!r}")
    return (t[0], t[1])


def _is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1, stride-1, unpadded, ungrouped convolution."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


@torch.no_grad()
def _plain_conv(src: nn.Conv2d) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` with ``src``'s configuration and weights; a missing bias becomes a zero bias."""
    padding = (0, 0) if src.padding == "valid" else src.padding
    if src.padding_mode != "zeros" or isinstance(padding, str):
        raise NotConvertible(f"convolution with padding={src.padding!r}, padding_mode={src.padding_mode!r}")
    dst = nn.Conv2d(src.in_channels, src.out_channels, _pair(src.kernel_size), _pair(src.stride), _pair(padding),
                    _pair(src.dilation), src.groups, bias=True)
    assert dst.bias is not None
    dst.weight.copy_(src.weight)
    if src.bias is None:
        dst.bias.zero_()
    else:
        dst.bias.copy_(src.bias)
    return dst.to(device=src.weight.device, dtype=src.weight.dtype)


@torch.no_grad()
def _plain_bn(src: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A fresh ``nn.BatchNorm2d`` holding ``src``'s statistics (eval-mode function preserved exactly)."""
    if src.running_mean is None or src.running_var is None:
        raise NotConvertible("BatchNorm without running statistics normalises with batch statistics")
    dst = nn.BatchNorm2d(src.num_features, eps=src.eps, momentum=src.momentum)
    assert dst.running_mean is not None and dst.running_var is not None and dst.num_batches_tracked is not None
    dst.running_mean.copy_(src.running_mean)
    dst.running_var.copy_(src.running_var)
    if src.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
    if src.weight is not None and src.bias is not None:
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    return dst.to(device=src.running_mean.device, dtype=src.running_mean.dtype)


def _behaves_like(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """True when ``module`` computes ``fn`` on a probe covering the kinks of the hard activations."""
    probe = torch.linspace(-8.0, 8.0, 257).reshape(1, 1, 1, 257)  # (N, C, H, W)
    try:
        with torch.no_grad():
            got = module(probe.clone())
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(got, torch.Tensor) and got.shape == probe.shape and torch.allclose(
        got, fn(probe), rtol=1e-6, atol=1e-6)


def _finish(ref: nn.Module, src: nn.Module) -> nn.Module:
    """``ref`` in eval mode (the function that is compared and exported), on ``src``'s device and dtype."""
    t: torch.Tensor | None = next(iter(src.parameters()), None)
    if t is None:
        t = next(iter(src.buffers()), None)
    ref = ref if t is None else ref.to(device=t.device, dtype=t.dtype)
    return ref.eval()


def _size2(size: int | None | Sequence[int | None]) -> tuple[int | None, ...]:
    return (size, size) if size is None or isinstance(size, int) else tuple(size)


def _name_hint(name: str, axis: str) -> bool:
    """Attribute ``name`` mentions the spatial ``axis`` ('h' or 'w'): conv_h, a_h, fc_w, convh, ..."""
    n = name.lower()
    return n.endswith("_" + axis) or n.endswith(axis) or ("_" + axis + "_") in n


# --- Coordinate Attention -------------------------------------------------------------------------------


def recognize_coord_attention(module: nn.Module) -> tuple[nn.Module, ...]:
    """CA layouts: a squeeze 1x1 conv (C -> mip), BatchNorm(mip), a hard-swish, two 1x1 convs (mip -> C).

    Covers the seed (conv1/bn1/act/conv_h/conv_w), the paper's MobileNetV2 form (pool_h/pool_w modules with
    ``(None, 1)``/``(1, None)`` sizes, conv2 -> a_h, conv3 -> a_w, the activation called ``relu``), and any
    renaming; the activation is identified by what it computes (``h_swish``, ``nn.Hardswish``, ...).
    Candidates: the name-hinted (or registration-order) H/W assignment first, then the swapped one.
    """
    if isinstance(module, _CONTAINERS) or _own_params(module):
        return ()
    kids = _children(module)
    pools = {n: m for n, m in kids.items() if isinstance(m, nn.AdaptiveAvgPool2d)}
    convs = {n: m for n, m in kids.items() if isinstance(m, nn.Conv2d)}
    bns = {n: m for n, m in kids.items() if isinstance(m, nn.BatchNorm2d)}
    rest = {n: m for n, m in kids.items() if n not in pools and n not in convs and n not in bns}
    if len(convs) != 3 or len(bns) != 1 or len(pools) not in (0, 2) or len(rest) > 3:
        return ()
    # Some pastes hold the gate as a module (``self.sigmoid = nn.Sigmoid()``): part of the block, not its act.
    rest = {n: m for n, m in rest.items() if not _behaves_like(m, torch.sigmoid)}
    if len(rest) > 1:
        return ()
    if pools and {_size2(p.output_size) for p in pools.values()} != {(None, 1), (1, None)}:
        return ()
    if not all(_is_pointwise(c) for c in convs.values()):
        return ()
    bn = next(iter(bns.values()))
    mip = bn.num_features
    names = list(convs)
    squeeze_name = next((n for n in names if convs[n].out_channels == mip), None)
    if squeeze_name is None:
        return ()
    inp = convs[squeeze_name].in_channels
    excite = [n for n in names if n != squeeze_name]
    if any(convs[n].in_channels != mip or convs[n].out_channels != inp for n in excite):
        return ()
    if rest:
        act_name, act = next(iter(rest.items()))
        if not _behaves_like(act, F.hardswish):
            raise NotConvertible(
                f"activation {act_name} ({type(act).__name__}) is not hard-swish; the CA reference uses h_swish")
    first, second = excite
    if _name_hint(second, "h") and _name_hint(first, "w"):
        first, second = second, first
    reduction = next((r for r in range(1, inp + 1) if max(8, inp // r) == mip), 32)
    candidates = []
    for h_name, w_name in ((first, second), (second, first)):
        ref = CA(inp, inp, reduction)
        # The reference forward does not depend on mip, so the copied layers also cover mip != max(8, inp // r).
        ref.conv1 = _plain_conv(convs[squeeze_name])
        ref.bn1 = _plain_bn(bn)
        ref.conv_h = _plain_conv(convs[h_name])
        ref.conv_w = _plain_conv(convs[w_name])
        candidates.append(_finish(ref, module))
    return tuple(candidates)


# --- GCNet context block --------------------------------------------------------------------------------


def _context_branch(seq: nn.Module, channels: int) -> nn.Sequential | None:
    """Copy of a ``Conv(C, P) - LayerNorm([P, 1, 1]) - ReLU - Conv(P, C)`` branch, or None if it is not one."""
    if not isinstance(seq, nn.Sequential) or len(seq) != 4:
        return None
    c1, ln, relu, c2 = seq
    if not (_is_pointwise(c1) and _is_pointwise(c2) and isinstance(ln, nn.LayerNorm) and type(relu) is nn.ReLU):
        return None
    planes = c1.out_channels
    if (c1.in_channels != channels or c2.in_channels != planes or c2.out_channels != channels
            or tuple(ln.normalized_shape) != (planes, 1, 1)):
        return None
    norm = nn.LayerNorm([planes, 1, 1], eps=ln.eps)
    with torch.no_grad():
        if ln.weight is not None:
            norm.weight.copy_(ln.weight)
        if ln.bias is not None:
            norm.bias.copy_(ln.bias)
    assert isinstance(c1, nn.Conv2d) and isinstance(c2, nn.Conv2d)  # checked by _is_pointwise
    return nn.Sequential(_plain_conv(c1), norm, nn.ReLU(inplace=True), _plain_conv(c2))


def recognize_context_block(module: nn.Module) -> tuple[nn.Module, ...]:
    """GCNet context blocks: seed ``CB2d`` (pool/fusions) and mmcv ``ContextBlock`` (pooling_type/fusion_types).

    Attention pooling is a 1x1 conv to one channel (``conv_mask``) plus a softmax; average pooling is an
    ``AdaptiveAvgPool2d(1)``. Branches named ``*add*``/``*mul*`` are assigned by name; otherwise every
    assignment is a candidate. The bottleneck width may differ from ``inplanes // 4`` (mmcv's ``ratio``).
    """
    if isinstance(module, _CONTAINERS) or _own_params(module):
        return ()
    kids = _children(module)
    masks = {n: m for n, m in kids.items() if isinstance(m, nn.Conv2d) and m.out_channels == 1}
    avg = {n: m for n, m in kids.items() if isinstance(m, nn.AdaptiveAvgPool2d)}
    seqs = {n: m for n, m in kids.items() if isinstance(m, nn.Sequential)}
    soft = {n: m for n, m in kids.items() if isinstance(m, nn.Softmax)}
    if len(kids) != len(masks) + len(avg) + len(seqs) + len(soft) or not 1 <= len(seqs) <= 2:
        return ()
    if len(masks) + len(avg) != 1 or (avg and next(iter(avg.values())).output_size not in (1, (1, 1))):
        return ()
    if masks:
        mask = next(iter(masks.values()))
        if not _is_pointwise(mask):
            return ()
        channels = mask.in_channels
        if any(s.dim not in (2, -1) for s in soft.values()):
            raise NotConvertible("the context mask softmax is not taken over H*W (dim=2)")
    else:
        first = next(iter(seqs.values()))
        if len(first) == 0 or not isinstance(first[0], nn.Conv2d):
            return ()
        channels = first[0].in_channels
    branches = {n: _context_branch(s, channels) for n, s in seqs.items()}
    if any(b is None for b in branches.values()):
        return ()
    if channels < 4:
        raise NotConvertible(f"inplanes={channels} < 4")
    names = list(branches)
    hinted = {n: ("add" if "add" in n.lower() else "mul" if "mul" in n.lower() else None) for n in names}
    if len(names) == 2:
        a, b = names
        if hinted[a] and hinted[b] and hinted[a] != hinted[b]:
            assignments = [{hinted[a]: a, hinted[b]: b}]
        else:
            assignments = [{"add": a, "mul": b}, {"add": b, "mul": a}]
    else:
        (a,) = names
        assignments = [{hinted[a]: a}] if hinted[a] else [{"add": a}, {"mul": a}]
    candidates = []
    for assignment in assignments:
        fusions = [f"channel_{k}" for k in ("add", "mul") if k in assignment]
        ref = CB2d(channels, "att" if masks else "avg", fusions)
        if masks:
            ref.conv_mask = _plain_conv(next(iter(masks.values())))
        ref.channel_add_conv = copy.deepcopy(branches[assignment["add"]]) if "add" in assignment else None
        ref.channel_mul_conv = copy.deepcopy(branches[assignment["mul"]]) if "mul" in assignment else None
        candidates.append(_finish(ref, module))
    return tuple(candidates)


# --- ACmix ----------------------------------------------------------------------------------------------

_ACMIX_CHILDREN = {"conv1", "conv2", "conv3", "conv_p", "pad_att", "unfold", "softmax", "fc", "dep_conv"}


def recognize_acmix(module: nn.Module) -> tuple[nn.Module, ...]:
    """ACmix copies: the seed's attribute layout under any class name; configuration read from the layers."""
    kids = _children(module)
    if set(kids) != _ACMIX_CHILDREN or set(_own_params(module)) != {"rate1", "rate2"}:
        return ()
    conv1, fc, unfold, dep = kids["conv1"], kids["fc"], kids["unfold"], kids["dep_conv"]
    if not (isinstance(conv1, nn.Conv2d) and isinstance(fc, nn.Conv2d) and isinstance(unfold, nn.Unfold)
            and isinstance(dep, nn.Conv2d)):
        return ()
    if fc.in_channels % 3:
        return ()
    head = fc.in_channels // 3
    kernel_conv = math.isqrt(fc.out_channels)
    if kernel_conv * kernel_conv != fc.out_channels:
        return ()
    kernel_att = unfold.kernel_size if isinstance(unfold.kernel_size, int) else unfold.kernel_size[0]
    stride = unfold.stride if isinstance(unfold.stride, int) else unfold.stride[0]
    dilation = int(getattr(module, "dilation", 1))
    if dep.bias is not None and bool(dep.bias.detach().ne(0).any()):
        raise NotConvertible("dep_conv has a non-zero bias; the ACmix reference has none")
    try:
        ref = ACmix(conv1.in_channels, conv1.out_channels, kernel_att, head, kernel_conv, stride, dilation)
    except ValueError as e:
        raise NotConvertible(str(e)) from e
    state = {k: v for k, v in module.state_dict().items() if k != "dep_conv.bias"}
    try:
        ref.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NotConvertible(f"weights do not fit ACmix{(conv1.in_channels, conv1.out_channels)}: {e}") from e
    return (_finish(ref, module),)


# --- Deformable convolution -----------------------------------------------------------------------------

_DG_ATTRS = ("deform_groups", "deformable_groups", "deform_group", "offset_groups", "dg")


def _offset_permutation(dg: int, taps: int) -> torch.Tensor:
    """Output-channel order turning an offset conv laid out [all dy | all dx] (per group) into torchvision's
    interleaved (dy, dx) per tap: new channel 2*(g*taps + t) + a reads old channel a*dg*taps + g*taps + t."""
    n = dg * taps
    idx = torch.arange(n)  # g * taps + t
    return torch.stack([idx, idx + n], dim=1).reshape(-1)  # (2 * n,)


def recognize_deform_conv(module: nn.Module) -> tuple[nn.Module, ...]:
    """Deformable convolutions built from an offset conv and a deformable convolution.

    Two layouts: (a) the module owns ``weight`` [c2, c1/g, kh, kw] (and ``bias``) and calls
    ``torchvision.ops.deform_conv2d`` itself (mmcv ``ModulatedDeformConv2dPack``/``DeformConv2dPack`` style,
    ``conv_offset``); stride/padding/dilation are read from its attributes, else from the offset conv;
    (b) a ``torchvision.ops.DeformConv2d`` child next to the offset conv (the seed's section 5).
    Either may end with a BatchNorm and an activation (the DCNv2 pasted into YOLO forks); the candidate is
    then ``nn.Sequential(DCN, BatchNorm2d, activation)``.

    The offset conv outputs ``2*dg*kh*kw`` (v1) or ``3*dg*kh*kw`` (v2: offsets then mask) channels. mmcv's
    ``o1, o2, mask = chunk(3); offset = cat(o1, o2)`` is exactly the first two thirds, and its kernel reads
    that tensor as torchvision does: per deformable group, channel ``2*(i*kw + j)`` is dy and the next dx,
    then one mask channel per tap (open-mmlab/mmcv ``mmcv/ops/csrc/common/cuda/
    modulated_deform_conv_cuda_kernel.cuh``, ``data_offset_h_ptr``/``data_offset_w_ptr``/``data_mask_hw_ptr``).
    So the mmcv names ``o1``/``o2`` do not mean "all dy, all dx", and the weights map unpermuted. A module
    that really lays out all dy before all dx (and interleaves them itself) is mapped by permuting the offset
    conv's output channels; which layout a module uses is decided by the rewriter's behaviour check.
    """
    kids = _children(module)
    params = _own_params(module)
    deforms = [m for m in kids.values() if isinstance(m, DeformConv2d)]
    convs = [m for m in kids.values() if type(m) is nn.Conv2d]
    rest = [m for m in kids.values() if not (type(m) is nn.Conv2d or isinstance(m, DeformConv2d))]
    norms = [m for m in rest if type(m) is nn.BatchNorm2d]
    acts = [m for m in rest if type(m) is not nn.BatchNorm2d]
    # YOLO-fork DCNv2 pastes put BatchNorm and an activation after the deformable conv in the same module.
    if len(convs) != 1 or (rest and (len(norms) != 1 or len(acts) > 1 or any(_own_params(a) for a in acts))):
        return ()
    offset_conv = convs[0]
    if deforms:
        if len(deforms) != 1 or params:
            return ()
        dc = deforms[0]
        weight, bias = dc.weight, dc.bias
        s, p, d, g = dc.stride, dc.padding, dc.dilation, dc.groups
    else:
        if set(params) - {"weight", "bias"} or "weight" not in params or params["weight"].dim() != 4:
            return ()
        weight, bias = params["weight"], params.get("bias")
        s = _pair(getattr(module, "stride", offset_conv.stride))
        p = _pair(getattr(module, "padding", offset_conv.padding))  # type: ignore[arg-type]
        d = _pair(getattr(module, "dilation", offset_conv.dilation))
        # deform_conv2d takes no groups argument: it infers them from the weight, and so do we.
        g = offset_conv.in_channels // params["weight"].shape[1] if params["weight"].shape[1] else 0
    c1 = offset_conv.in_channels
    c2, cin_g, kh, kw = weight.shape
    if g < 1 or cin_g * g != c1 or c2 % g:
        return ()
    taps = kh * kw
    hint = next((int(getattr(module, a)) for a in _DG_ATTRS if isinstance(getattr(module, a, None), int)), None)
    configs = [(per_tap, offset_conv.out_channels // (per_tap * taps)) for per_tap in (3, 2)
               if offset_conv.out_channels % (per_tap * taps) == 0]
    configs = [(pt, dg) for pt, dg in configs if dg >= 1 and c1 % dg == 0 and (hint is None or hint == dg)]
    if not configs:
        raise NotConvertible(
            f"offset conv has {offset_conv.out_channels} channels, not 2 or 3 x deformable_groups x {kh}x{kw}")
    if norms and norms[0].num_features != c2:
        return ()
    candidates = []
    for per_tap, dg in configs:
        for permuted in (False, True) if dg * taps > 1 else (False,):
            dcn = DCN(c1, int(c2), (kh, kw), s, p, d, g, dg, bias=bias is not None, modulated=per_tap == 3)
            off = _plain_conv(offset_conv)
            if permuted:
                n_off = 2 * dg * taps
                order = torch.cat([_offset_permutation(dg, taps), torch.arange(n_off, offset_conv.out_channels)])
                with torch.no_grad():
                    off.weight.copy_(off.weight[order])
                    off.bias.copy_(off.bias[order])  # type: ignore[index, union-attr]  # _plain_conv sets a bias
            dcn.offset = off
            with torch.no_grad():
                dcn.dcn.weight.copy_(weight)
                if bias is not None:
                    dcn.dcn.bias.copy_(bias)
            # With the module's BatchNorm and activation after it, the rewriter converts it part by part.
            ref = nn.Sequential(dcn, _plain_bn(norms[0]), *(copy.deepcopy(a) for a in acts)) if norms else dcn
            candidates.append(_finish(ref, module))
    return tuple(candidates)


# --- SPD ------------------------------------------------------------------------------------------------


def _space_to_depth(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def _is_torch_class(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] in ("torch", "torchvision")


def _probe(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            out = module(x.clone())
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return None
    return out if isinstance(out, torch.Tensor) else None


def recognize_space_to_depth(module: nn.Module) -> tuple[nn.Module, ...]:
    """Parameter-free modules that compute the seed's 4-phase concat, whatever they are called."""
    if (_is_torch_class(module) or _children(module) or _own_params(module)
            or next(iter(module.buffers()), None) is not None):
        return ()
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)  # (N, C, H, W)
    out = _probe(module, x)
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

    A plain ``nn.Conv2d`` (YOLOv5's Focus before v6.0) becomes ``Conv`` with an identity BatchNorm that holds
    its bias: mean 0, variance 1, gamma sqrt(1 + eps), beta = bias, so BN(y) = y + bias up to rounding.
    """
    kids = _children(src)
    conv, bn, act = kids.get("conv"), kids.get("bn"), kids.get("act")
    if (set(kids) == {"conv", "bn", "act"} and type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
            and conv.bias is None and _square(conv)):
        dst = Conv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], int(conv.padding[0]),
                   conv.groups, conv.dilation[0], act=copy.deepcopy(act) if act is not None else False)
        dst.conv.weight.copy_(conv.weight)
        dst.bn = _plain_bn(bn)
        return dst
    if type(src) is nn.Conv2d and _square(src):
        dst = Conv(src.in_channels, src.out_channels, src.kernel_size[0], src.stride[0], int(src.padding[0]),
                   src.groups, src.dilation[0], act=False)
        dst.conv.weight.copy_(src.weight)
        dst.bn.eval()
        assert dst.bn.running_var is not None and dst.bn.running_mean is not None
        dst.bn.running_mean.zero_()
        dst.bn.running_var.fill_(1.0)
        dst.bn.weight.fill_((1.0 + dst.bn.eps) ** 0.5)
        dst.bn.bias.copy_(src.bias if src.bias is not None else torch.zeros_like(dst.bn.bias))
        return dst.to(device=src.weight.device, dtype=src.weight.dtype)
    return copy.deepcopy(src)


def recognize_spd_conv(module: nn.Module) -> tuple[nn.Module, ...]:
    """A module with one convolution-like child that it feeds the 4-phase concat of its input (SPD + Conv)."""
    kids = _children(module)
    if _is_torch_class(module) or len(kids) != 1 or _own_params(module):
        return ()
    (child,) = kids.values()
    if isinstance(child, space_to_depth):
        return ()
    convs = [m for m in child.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or len(list(child.children())) > 3 or convs[0].in_channels % 4:
        return ()
    c1 = convs[0].in_channels // 4
    conv = convs[0]
    x = torch.randn(1, c1, 8, 8, generator=torch.Generator().manual_seed(0)).to(conv.weight)  # (N, C, H, W)
    probed = copy.deepcopy(module).eval()  # a probe in training mode would update BatchNorm statistics
    got = _probe(probed, x)
    want = _probe(next(probed.children()), _space_to_depth(x))
    if got is None or want is None or got.shape != want.shape or not torch.allclose(got, want, 1e-5, 1e-6):
        return ()
    k = conv.kernel_size[0]
    ref = SPDConv(c1, conv.out_channels, k, conv.stride[0])
    ref.conv = _yolo_conv(child)  # type: ignore[assignment]  # any conv block with the same function
    return (_finish(ref, module),)


RECOGNIZERS: Mapping[str, Recognizer] = MappingProxyType({
    "ACmix": recognize_acmix,
    "DCN": recognize_deform_conv,
    "CA": recognize_coord_attention,
    "CB2d": recognize_context_block,
    "SPDConv": recognize_spd_conv,
    "space_to_depth": recognize_space_to_depth,
})
