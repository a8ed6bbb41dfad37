"""Shared helpers of the recognisers (each block file holds its own ``recognize``).

A recogniser reads one module's children and parameters (never its class name or source; attribute names
only order the candidates) and returns the candidate reference blocks that would compute the same function,
with the foreign weights transferred. Several candidates are returned where structure alone cannot decide
(which of two 1x1 convolutions is the H branch, whether a context-block branch adds or multiplies, how an
offset convolution's channels are laid out); the rewriter keeps the first candidate that matches the foreign
module on the inputs it really sees. An empty tuple means "not this block". ``NotConvertible`` means "this
block, but it cannot be mapped exactly" (its message says why).

Weight transfer copies tensors into fresh ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.LayerNorm`` modules; a
missing convolution bias becomes a zero bias, which adds nothing, so the copy is exact.

Recognisers never modify the module they read. Some run a small probe tensor through a parameter-free part,
which can only be told apart by what it computes: the CA activation (hard-swish under any name), a
``space_to_depth`` module, the slicing in front of an SPD convolution (on a copy, in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class NotConvertible(Exception):
    """The module has a block's structure but cannot be mapped onto the reference block exactly."""


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def own_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return dict(module.named_parameters(recurse=False))


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        raise NotConvertible(f"padding {v!r} is not numeric")
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise NotConvertible(f"expected an int or a pair, got {v!r}")
    return (t[0], t[1])


def is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1, stride-1, unpadded, ungrouped convolution."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


@torch.no_grad()
def plain_conv(src: nn.Conv2d) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` with ``src``'s configuration and weights; a missing bias becomes a zero bias."""
    padding = (0, 0) if src.padding == "valid" else src.padding
    if src.padding_mode != "zeros" or isinstance(padding, str):
        raise NotConvertible(f"convolution with padding={src.padding!r}, padding_mode={src.padding_mode!r}")
    dst = nn.Conv2d(src.in_channels, src.out_channels, pair(src.kernel_size), pair(src.stride), pair(padding),
                    pair(src.dilation), src.groups, bias=True)
    assert dst.bias is not None
    dst.weight.copy_(src.weight)
    if src.bias is None:
        dst.bias.zero_()
    else:
        dst.bias.copy_(src.bias)
    return dst.to(device=src.weight.device, dtype=src.weight.dtype)


@torch.no_grad()
def plain_bn(src: nn.BatchNorm2d) -> nn.BatchNorm2d:
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


def behaves_like(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """True when ``module`` computes ``fn`` on a probe covering the kinks of the hard activations."""
    probe = torch.linspace(-8.0, 8.0, 257).reshape(1, 1, 1, 257)  # (N, C, H, W)
    try:
        with torch.no_grad():
            got = module(probe.clone())
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(got, torch.Tensor) and got.shape == probe.shape and torch.allclose(
        got, fn(probe), rtol=1e-6, atol=1e-6)


def finish(ref: nn.Module, src: nn.Module) -> nn.Module:
    """``ref`` in eval mode (the function that is compared and exported), on ``src``'s device and dtype."""
    t: torch.Tensor | None = next(iter(src.parameters()), None)
    if t is None:
        t = next(iter(src.buffers()), None)
    ref = ref if t is None else ref.to(device=t.device, dtype=t.dtype)
    return ref.eval()


def size2(size: int | None | Sequence[int | None]) -> tuple[int | None, ...]:
    return (size, size) if size is None or isinstance(size, int) else tuple(size)


def name_hint(name: str, axis: str) -> bool:
    """Attribute ``name`` mentions the spatial ``axis`` ('h' or 'w'): conv_h, a_h, fc_w, convh, ..."""
    n = name.lower()
    return n.endswith("_" + axis) or n.endswith(axis) or ("_" + axis + "_") in n



def is_torch_class(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] in ("torch", "torchvision")


def probe(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            out = module(x.clone())
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return None
    return out if isinstance(out, torch.Tensor) else None
