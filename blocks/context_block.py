"""GCNet global context block.

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", ICCVW 2019.
https://arxiv.org/abs/1904.11492

``CB2d`` is the reference module, faithful to the widely pasted implementation (same constructor
arguments, attribute names, ``state_dict`` keys and numerics). ``ContextBlock`` is an alias.
"""

from __future__ import annotations

from torch import nn
import torch


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


class CB2dExport(nn.Module):
    """Export twin of ``CB2d`` (placeholder until the twin lands)."""


def to_export(module: CB2d) -> nn.Module:
    raise NotImplementedError("CB2d twin")
