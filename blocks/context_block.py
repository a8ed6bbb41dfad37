"""GCNet global context block.

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", ICCVW 2019.
https://arxiv.org/abs/1904.11492

``CB2d`` is the reference module, faithful to the widely pasted implementation (same constructor
arguments, attribute names, ``state_dict`` keys and numerics). ``ContextBlock`` is an alias.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._match import (
    CONTAINERS,
    NotConvertible,
    children,
    finish,
    is_pointwise,
    own_params,
    plain_conv,
)
from ._spec import BlockSpec, Example


def kaiming_init(module, a=0, mode="fan_out", nonlinearity="relu", bias=0, distribution="normal"):
    if distribution not in ("uniform", "normal"):
        raise ValueError(f"kaiming_init: distribution={distribution!r} must be 'uniform' or 'normal'")
    if distribution == "uniform":
        nn.init.kaiming_uniform_(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
    else:
        nn.init.kaiming_normal_(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
    if hasattr(module, "bias") and module.bias is not None:
        nn.init.constant_(module.bias, bias)


def constant_init(module, val, bias=0):
    nn.init.constant_(module.weight, val)
    if hasattr(module, "bias") and module.bias is not None:
        nn.init.constant_(module.bias, bias)


def last_zero_init(m):
    if isinstance(m, nn.Sequential):
        constant_init(m[-1], val=0)
        m[-1].inited = True
    else:
        constant_init(m, val=0)
        m.inited = True


FUSIONS = ("channel_add", "channel_mul")


class CB2d(nn.Module):
    def __init__(self, inplanes, pool="att", fusions=["channel_add", "channel_mul"]):  # noqa: B006 (seed API)
        super().__init__()
        if pool not in ("avg", "att"):
            raise ValueError(f"CB2d: pool={pool!r} must be 'att' or 'avg'")
        if not all(f in FUSIONS for f in fusions):
            raise ValueError(f"CB2d: fusions={fusions!r} may only contain {FUSIONS}")
        if len(fusions) == 0:
            raise ValueError("CB2d: at least one fusion should be used")
        if inplanes < 4:
            raise ValueError(f"CB2d: inplanes={inplanes} must be >= 4 (the bottleneck has inplanes // 4 channels)")
        self.inplanes = inplanes
        self.planes = inplanes // 4
        self.pool = pool
        self.fusions = fusions
        if "att" in pool:
            self.conv_mask = nn.Conv2d(inplanes, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        if "channel_add" in fusions:
            self.channel_add_conv = nn.Sequential(
                nn.Conv2d(self.inplanes, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.inplanes, kernel_size=1),
            )
        else:
            self.channel_add_conv = None
        if "channel_mul" in fusions:
            self.channel_mul_conv = nn.Sequential(
                nn.Conv2d(self.inplanes, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.inplanes, kernel_size=1),
            )
        else:
            self.channel_mul_conv = None
        self.reset_parameters()

    def reset_parameters(self):
        if self.pool == "att":
            kaiming_init(self.conv_mask, mode="fan_in")
            self.conv_mask.inited = True

        if self.channel_add_conv is not None:
            last_zero_init(self.channel_add_conv)
        if self.channel_mul_conv is not None:
            last_zero_init(self.channel_mul_conv)

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        if self.pool == "att":
            input_x = x
            input_x = input_x.view(batch, channel, height * width)
            input_x = input_x.unsqueeze(1)
            context_mask = self.conv_mask(x)
            context_mask = context_mask.view(batch, 1, height * width)
            context_mask = self.softmax(context_mask)
            context_mask = context_mask.unsqueeze(3)
            context = torch.matmul(input_x, context_mask)
            context = context.view(batch, channel, 1, 1)
        else:
            context = self.avg_pool(x)

        return context

    def forward(self, x):
        context = self.spatial_pool(x)

        if self.channel_mul_conv is not None:
            channel_mul_term = torch.sigmoid(self.channel_mul_conv(context))
            out = x * channel_mul_term
        else:
            out = x
        if self.channel_add_conv is not None:
            channel_add_term = self.channel_add_conv(context)
            out = out + channel_add_term
        return out


ContextBlock = CB2d


class ChannelTransform(nn.Module):
    """The bottleneck transform of ``CB2d`` on the pooled context, as [N, C] -> [N, C].

    The reference applies ``Conv1x1 -> LayerNorm([P, 1, 1]) -> ReLU -> Conv1x1`` to an [N, C, 1, 1] map. On a
    1x1 map a 1x1 convolution is a linear layer (``weight[:, :, 0, 0]``), and LayerNorm over [P, 1, 1]
    averages the same P values as LayerNorm over [P]: the same numbers on [N, C]. LayerNorm stays
    ``nn.LayerNorm`` (ONNX ``LayerNormalization``, opset 17); targets without that op replace it later.
    """

    def __init__(self, fc1: nn.Linear, norm: nn.LayerNorm, fc2: nn.Linear):
        super().__init__()
        if fc1.out_features < 1:
            raise ValueError(
                f"ChannelTransform: bottleneck of {fc1.out_features} channels; inplanes={fc1.in_features} "
                "must be >= 4 (the bottleneck has inplanes // 4 channels)")
        self.fc1 = fc1
        self.norm = norm
        self.act = nn.ReLU()
        self.fc2 = fc2

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(context))))  # (N, C)

    @classmethod
    def from_reference(cls, seq: nn.Sequential) -> ChannelTransform:
        """Copy the weights of the reference's ``Sequential(Conv2d, LayerNorm([P, 1, 1]), ReLU, Conv2d)``."""
        conv1, ln, conv2 = seq[0], seq[1], seq[3]
        if not (isinstance(conv1, nn.Conv2d) and isinstance(ln, nn.LayerNorm)
                and isinstance(conv2, nn.Conv2d)):
            raise ValueError(
                f"ChannelTransform.from_reference: expected Conv2d, LayerNorm, ReLU, Conv2d; got {seq}")
        ref = conv1.weight
        norm = nn.LayerNorm(conv1.out_channels, eps=ln.eps, elementwise_affine=ln.elementwise_affine,
                            bias=ln.bias is not None, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if ln.weight is not None:
                norm.weight.copy_(ln.weight.reshape(-1))  # (P, 1, 1) -> (P,)
            if ln.bias is not None:
                norm.bias.copy_(ln.bias.reshape(-1))
        return cls(_linear(conv1), norm, _linear(conv2))


def _linear(conv: nn.Conv2d) -> nn.Linear:
    """The 1x1 ``conv`` as a linear layer on [N, C_in] (exact on a 1x1 map)."""
    fc = nn.Linear(conv.in_channels, conv.out_channels, bias=False)
    fc.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone())  # (out, in, 1, 1) -> (out, in)
    if conv.bias is not None:
        fc.bias = nn.Parameter(conv.bias.detach().clone())
    return fc


class CB2dExport(nn.Module):
    """Export twin of ``CB2d``: [N, C, H, W] -> [N, C, H, W], the same function in eval mode at any shape.

    Why each rewrite is exact:

    - Attention pooling: the reference views x as [N, 1, C, H*W] and the mask as [N, 1, H*W, 1] with sizes
      read from ``x.size()``; the twin flattens once (``flatten(2)``, no sizes read) and computes the same
      softmax over H*W and the same product [N, C, H*W] @ [N, H*W, 1]. Any batch, any H and W.
    - The mask convolution (1x1, one output channel) is the product ``w [1, C] @ x [N, C, H*W]``, and its
      bias is dropped: it adds the same number to every logit, and softmax is shift-invariant
      (``softmax(z + b) = softmax(z)``). One flatten of x serves both products; in onnxruntime this was the
      fastest form measured (the Conv + second Reshape form was slower than the stock export).
    - Average pooling: ``AdaptiveAvgPool2d(1)`` is the mean over (H, W).
    - The channel transforms run on the [N, C] context (``ChannelTransform``), and their result is broadcast
      back with ``[:, :, None, None]``; the fusions (multiply first, then add) are applied in the
      reference's order.
    """

    def __init__(self, mask_weight: torch.Tensor | None, channel_mul: ChannelTransform | None,
                 channel_add: ChannelTransform | None):
        super().__init__()
        if channel_mul is None and channel_add is None:
            raise ValueError("CB2dExport: at least one of channel_mul and channel_add must be given")
        if mask_weight is not None and (mask_weight.dim() != 2 or mask_weight.shape[0] != 1):
            raise ValueError(f"CB2dExport: mask_weight of shape {tuple(mask_weight.shape)} must be [1, C]")
        # [1, C], the attention-pool mask convolution; None: average pooling
        self.mask_weight = nn.Parameter(mask_weight.detach().clone()) if mask_weight is not None else None
        self.channel_mul = channel_mul
        self.channel_add = channel_add

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Context vector [N, C] of x [N, C, H, W]."""
        if self.mask_weight is None:
            return x.mean((2, 3))  # (N, C)
        x_flat = x.flatten(2)  # (N, C, H*W)
        mask = torch.softmax(torch.matmul(self.mask_weight, x_flat), dim=2)  # (N, 1, H*W)
        return torch.matmul(x_flat, mask.transpose(1, 2)).squeeze(2)  # (N, C, H*W) @ (N, H*W, 1) -> (N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)  # (N, C)
        out = x
        if self.channel_mul is not None:
            out = out * torch.sigmoid(self.channel_mul(context))[:, :, None, None]  # (N, C, 1, 1)
        if self.channel_add is not None:
            out = out + self.channel_add(context)[:, :, None, None]  # (N, C, 1, 1)
        return out


def to_export(module: CB2d) -> CB2dExport:
    """The eval-mode twin of ``module`` (copies of its weights; ``module`` is left unchanged)."""
    if not isinstance(module, CB2d):
        raise TypeError(f"context_block.to_export: expected CB2d, got {type(module).__name__}")
    # (1, C, 1, 1) -> (1, C)
    mask_weight = module.conv_mask.weight[:, :, 0, 0] if module.pool == "att" else None
    mul_conv, add_conv = module.channel_mul_conv, module.channel_add_conv
    mul = ChannelTransform.from_reference(mul_conv) if mul_conv is not None else None
    add = ChannelTransform.from_reference(add_conv) if add_conv is not None else None
    return CB2dExport(mask_weight, mul, add).eval()


# --- recognising the block in foreign modules (helpers: _match.py) ---------------------------------


def _context_branch(seq: nn.Module, channels: int) -> nn.Sequential | None:
    """Copy of a ``Conv(C, P) - LayerNorm([P, 1, 1]) - ReLU - Conv(P, C)`` branch, or None if it is not one."""
    if not isinstance(seq, nn.Sequential) or len(seq) != 4:
        return None
    c1, ln, relu, c2 = seq
    if not (is_pointwise(c1) and is_pointwise(c2) and isinstance(ln, nn.LayerNorm) and type(relu) is nn.ReLU):
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
    return nn.Sequential(plain_conv(c1), norm, nn.ReLU(inplace=True), plain_conv(c2))


def recognize(module: nn.Module) -> tuple[nn.Module, ...]:
    """GCNet context blocks: seed ``CB2d`` (pool/fusions) and mmcv ``ContextBlock`` (pooling_type/fusion_types).

    Attention pooling is a 1x1 conv to one channel (``conv_mask``) plus a softmax; average pooling is an
    ``AdaptiveAvgPool2d(1)``. Branches named ``*add*``/``*mul*`` are assigned by name; otherwise every
    assignment is a candidate. The bottleneck width may differ from ``inplanes // 4`` (mmcv's ``ratio``).
    """
    if isinstance(module, CONTAINERS) or own_params(module):
        return ()
    kids = children(module)
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
        if not is_pointwise(mask):
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
            ref.conv_mask = plain_conv(next(iter(masks.values())))
        ref.channel_add_conv = copy.deepcopy(branches[assignment["add"]]) if "add" in assignment else None
        ref.channel_mul_conv = copy.deepcopy(branches[assignment["mul"]]) if "mul" in assignment else None
        candidates.append(finish(ref, module))
    return tuple(candidates)


def _example() -> Example:
    return Example(CB2d(16), ((1, 16, 12, 12), (2, 16, 9, 14), (1, 16, 5, 7), (3, 16, 20, 16)))


SPEC = BlockSpec("CB2d", CB2d, CB2dExport, to_export, recognize, _example,
                 fp32_ops=frozenset({"Softmax", "LayerNormalization"}), int8_float_ops=frozenset({"Sigmoid"}))
