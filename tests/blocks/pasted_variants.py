"""The blocks as users paste them into their models: other class names and attribute names, other
activations and pooling modules, mmcv layouts, functional deformable convolutions, inline SPD slicing;
plus a few lookalikes that must NOT be swapped, modules with export hazards, and small models nesting them.

Written the way such code is found in the wild (blog posts, mmcv, YOLO forks), not the way the package
writes it: the recogniser must not depend on our class names or attribute names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from fixtures import seed_blocks
from torch import nn
from torchvision.ops import DeformConv2d

# --- Coordinate Attention -----------------------------------------------------------------------------------


class CoordAtt(nn.Module):
    """The seed's layout under the paper's class name, with ``nn.Hardswish`` instead of ``h_swish``."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = nn.AdaptiveAvgPool2d((h, 1))(x)
        x_w = nn.AdaptiveAvgPool2d((1, w))(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        return identity * self.conv_w(x_w).sigmoid() * self.conv_h(x_h).sigmoid()


class h_sigmoid(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAttMBv2(nn.Module):
    """The paper's public MobileNetV2 form (houqb/CoordAttention ``mobilenetv2.py``): pooling modules with
    ``None`` sizes held as attributes, conv2 -> a_h, conv3 -> a_w, the activation called ``relu``."""

    def __init__(self, inp, oup, groups=32):
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv3 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.relu = h_swish()

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.conv1(y)
        y = self.bn1(y)
        y = self.relu(y)
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        x_h = self.conv2(x_h).sigmoid()
        x_w = self.conv3(x_w).sigmoid()
        x_h = x_h.expand(-1, -1, h, w)
        x_w = x_w.expand(-1, -1, h, w)
        return identity * x_w * x_h


class HSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class CoordinateAttention(nn.Module):
    """Renamed everything, W branch registered first, bias-free squeeze conv, functional pooling by means,
    mip not of the form max(8, inp // r)."""

    def __init__(self, channels, mip=6):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mip, 1, bias=False)
        self.norm = nn.BatchNorm2d(mip)
        self.hs = HSwish()
        self.attn_w = nn.Conv2d(mip, channels, 1)
        self.attn_h = nn.Conv2d(mip, channels, 1)

    def forward(self, x):
        h = x.shape[2]
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)
        y = self.hs(self.norm(self.reduce(pooled)))
        y_h, y_w = y[:, :, :h], y[:, :, h:].transpose(2, 3)
        return x * torch.sigmoid(self.attn_h(y_h)) * torch.sigmoid(self.attn_w(y_w))


class CoordAttGateModule(nn.Module):
    """CA with the sigmoid gate held as a module and the pooling done by ``F.adaptive_avg_pool2d``."""

    def __init__(self, inp, reduction=32):
        super().__init__()
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, inp, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, inp, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        n, c, h, w = x.shape
        x_h = F.adaptive_avg_pool2d(x, (h, 1))
        x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return x * self.gate(self.conv_h(x_h)) * self.gate(self.conv_w(x_w.permute(0, 1, 3, 2)))


class CoordAttSiLU(CoordAtt):
    """CA layout with SiLU: not the seed's block (the twin's hard-swish would be wrong)."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__(inp, oup, reduction)
        self.act = nn.SiLU()


class CoordAttMaxPool(CoordAtt):
    """A lookalike: the CA attributes exactly, but it pools with max instead of mean."""

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = x.amax(3, keepdim=True)
        x_w = x.amax(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return identity * self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid() * self.conv_h(x_h).sigmoid()


# --- GCNet context block (mmcv layout) ------------------------------------------------------------------------


class ContextBlock(nn.Module):
    """mmcv ``mmcv/cnn/bricks/context_block.py`` (initialisation helpers inlined)."""

    def __init__(self, in_channels, ratio, pooling_type="att", fusion_types=("channel_add",)):
        super().__init__()
        assert pooling_type in ["avg", "att"]
        assert isinstance(fusion_types, (list, tuple))
        valid_fusion_types = ["channel_add", "channel_mul"]
        assert all([f in valid_fusion_types for f in fusion_types])
        assert len(fusion_types) > 0, "at least one fusion should be used"
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        if "channel_add" in fusion_types:
            self.channel_add_conv = nn.Sequential(
                nn.Conv2d(self.in_channels, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),  # yapf: disable
                nn.Conv2d(self.planes, self.in_channels, kernel_size=1))
        else:
            self.channel_add_conv = None
        if "channel_mul" in fusion_types:
            self.channel_mul_conv = nn.Sequential(
                nn.Conv2d(self.in_channels, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),  # yapf: disable
                nn.Conv2d(self.planes, self.in_channels, kernel_size=1))
        else:
            self.channel_mul_conv = None

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        if self.pooling_type == "att":
            input_x = x
            input_x = input_x.view(batch, channel, height * width)
            input_x = input_x.unsqueeze(1)
            context_mask = self.conv_mask(x)
            context_mask = context_mask.view(batch, 1, height * width)
            context_mask = self.softmax(context_mask)
            context_mask = context_mask.unsqueeze(-1)
            context = torch.matmul(input_x, context_mask)
            context = context.view(batch, channel, 1, 1)
        else:
            context = self.avg_pool(x)
        return context

    def forward(self, x):
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            channel_mul_term = torch.sigmoid(self.channel_mul_conv(context))
            out = out * channel_mul_term
        if self.channel_add_conv is not None:
            channel_add_term = self.channel_add_conv(context)
            out = out + channel_add_term
        return out


class GlobalContext(nn.Module):
    """Renamed attention-pooled context block with one unhinted branch (it multiplies)."""

    def __init__(self, c, planes=4):
        super().__init__()
        self.attn = nn.Conv2d(c, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(c, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(),
                                       nn.Conv2d(planes, c, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        weights = self.attn(x).reshape(n, 1, h * w).softmax(-1)  # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)
        return x * torch.sigmoid(self.transform(context))


# --- ACmix (verbatim seed copy under the pasted class name) ---------------------------------------------------

ACmixSeed = seed_blocks.ACmix


# --- Deformable convolution -----------------------------------------------------------------------------------


class ModulatedDeformConv2dPack(nn.Module):
    """mmcv ``ModulatedDeformConv2dPack`` layout, running on ``torchvision.ops.deform_conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.dilation = nn.modules.utils._pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.Tensor(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.Tensor(out_channels)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 3 * self.kernel_size[0]
                                     * self.kernel_size[1], kernel_size=self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        out = self.conv_offset(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                                             padding=self.padding, dilation=self.dilation, mask=mask)


class DeformConvV1(nn.Module):
    """v1, functional, offset conv named ``p_conv``, no bias, stride 2, attributes only on the offset conv."""

    def __init__(self, c1, c2, k=3, s=2):
        super().__init__()
        self.p_conv = nn.Conv2d(c1, 2 * k * k, k, s, k // 2)
        self.weight = nn.Parameter(torch.randn(c2, c1, k, k) * 0.1)

    def forward(self, x):
        return torchvision.ops.deform_conv2d(x, self.p_conv(x), self.weight, None, stride=self.p_conv.stride,
                                             padding=self.p_conv.padding)


class DCNSplitOffsets(nn.Module):
    """v2 whose offset conv emits all dy, then all dx, then the mask; interleaved in forward."""

    def __init__(self, c1, c2, k=3, deformable_groups=2):
        super().__init__()
        n = deformable_groups * k * k
        self.deformable_groups = deformable_groups
        self.offset_mask = nn.Conv2d(c1, 3 * n, k, 1, k // 2)
        self.weight = nn.Parameter(torch.randn(c2, c1, k, k) * 0.1)
        self.bias = nn.Parameter(torch.zeros(c2))
        self.padding = k // 2

    def forward(self, x):
        dy, dx, mask = self.offset_mask(x).chunk(3, dim=1)
        offset = torch.stack((dy, dx), dim=2).flatten(1, 2)  # (N, 2 * dg * k * k, H, W), (dy, dx) per tap
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=self.padding,
                                             mask=mask.sigmoid())


class DCNv2Yolo(nn.Module):
    """The DCNv2 pasted into YOLOv8 forks: its own weight, ``conv_offset_mask``, the torchvision op called
    through ``torch.ops`` (argument order: input, weight, offset, mask, bias, ...), then BatchNorm and SiLU."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, groups=1, dilation=1,
                 deformable_groups=1):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        out_channels_offset_mask = self.deformable_groups * 3 * self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset_mask = nn.Conv2d(self.in_channels, out_channels_offset_mask, kernel_size=self.kernel_size,
                                          stride=self.stride, padding=self.padding, bias=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU()
        nn.init.kaiming_uniform_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x):
        offset_mask = self.conv_offset_mask(x)
        o1, o2, mask = torch.chunk(offset_mask, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        x = torch.ops.torchvision.deform_conv2d(x, self.weight, offset, mask, self.bias, self.stride[0],
                                                self.stride[1], self.padding[0], self.padding[1], self.dilation[0],
                                                self.dilation[1], self.groups, self.deformable_groups, True)
        x = self.bn(x)
        x = self.act(x)
        return x


class SeedDCN(nn.Module):
    """The seed's section 5 sketch: an offset conv feeding ``torchvision.ops.DeformConv2d``."""

    def __init__(self, c):
        super().__init__()
        self.torchvision_offset = nn.Conv2d(c, 18, 3, padding=1, bias=True)
        self.torchvision_dcn2d = DeformConv2d(c, c, 3, stride=1, padding=1)

    def forward(self, x):
        offset = self.torchvision_offset(x)
        return self.torchvision_dcn2d(x, offset)


# --- SPD ------------------------------------------------------------------------------------------------------


class SPD(nn.Module):
    """space_to_depth under another name, written with ``torch.cat`` on a list built in a loop."""

    def forward(self, x):
        return torch.cat([x[..., i::2, j::2] for j in (0, 1) for i in (0, 1)], dim=1)


class ConvBNAct(nn.Module):
    """Ultralytics-style Conv (conv, bn, act) as pasted."""

    def __init__(self, c1, c2, k=1, s=1, p=None, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SPDConvYolo(nn.Module):
    """YOLO-fork SPDConv: the slicing inline in forward, then a Conv+BN+SiLU."""

    def __init__(self, inc, ouc, dimension=1):
        super().__init__()
        self.d = dimension
        self.conv = ConvBNAct(inc * 4, ouc, k=3)

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        return self.conv(x)


class Focus(nn.Module):
    """YOLOv5 (before v6.0) Focus: the same slicing feeding a plain conv with bias."""

    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = nn.Conv2d(c1 * 4, c2, k, 1, k // 2)

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


class ConvAct(nn.Module):
    """A conv block as Ultralytics' ``fuse()`` leaves it: the BatchNorm folded into the convolution's weights and
    bias, ``bn`` deleted, ``forward`` replaced by act(conv(x))."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=True)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x))


class ConvBiasBNAct(ConvBNAct):
    """A fork's conv block that keeps the convolution's bias in front of the BatchNorm."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__(c1, c2, k, s)
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=True)


class SPDConvFused(SPDConvYolo):
    """The YOLO-fork SPDConv after the model was fused for export (inline slicing, then ``ConvAct``)."""

    def __init__(self, inc, ouc):
        super().__init__(inc, ouc)
        self.conv = ConvAct(inc * 4, ouc, k=3)


class SPDConvBiasBN(SPDConvFused):
    """The YOLO-fork SPDConv whose conv block keeps a convolution bias before its BatchNorm."""

    def __init__(self, inc, ouc):
        super().__init__(inc, ouc)
        self.conv = ConvBiasBNAct(inc * 4, ouc, k=3)


# --- hazards --------------------------------------------------------------------------------------------------


class GridBias(nn.Module):
    """Adds a coordinate grid built in Python from the input size (a constant once exported)."""

    def __init__(self, c):
        super().__init__()
        self.proj = nn.Conv2d(2, c, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(1, 1, h, w)
        xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(1, 1, h, w)
        return x + self.proj(torch.cat([xs, ys], 1).to(x))


class GridDetect(nn.Module):
    """A YOLOv5-style detection head as pasted into forks: a grid from ``torch.arange`` over the feature size,
    cached while the size matches (``if self.grid.shape[2:4] != y.shape[2:4]``) unless ``dynamic`` is set, which is
    how Ultralytics' Detect rebuilds its anchors in export mode."""

    def __init__(self, dynamic: bool = False, c: int = 8, no: int = 6, stride: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1))
        self.m = nn.Conv2d(c, no, 1)
        self.grid = torch.zeros(1)
        self.stride, self.dynamic = stride, dynamic

    def forward(self, x):
        y = self.m(self.stem(x))
        ny, nx = y.shape[2:4]
        if self.dynamic or self.grid.shape[2:4] != y.shape[2:4]:
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            self.grid = torch.stack((xv, yv), 0).view(1, 2, ny, nx).to(y.dtype)
        xy = (y[:, :2].sigmoid() * 2 - 0.5 + self.grid) * self.stride
        return torch.cat([xy, y[:, 2:].sigmoid()], 1)


class DeviceBranch(nn.Module):
    """Picks a path by device: only the CPU branch runs here, the ``.cuda()`` one is still a hazard."""

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        bias = torch.zeros(1)
        if x.is_cuda:
            bias = bias.cuda()
        return x * self.scale + bias


class Head(nn.Module):
    """Classifier head: global pooling (size 1, no hazard) and a constant tensor (no hazard)."""

    def __init__(self, c, n):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1)) + torch.zeros(1)


# --- models ---------------------------------------------------------------------------------------------------


def sequential_model() -> nn.Module:
    """Sequential stem + pasted blocks; input [N, 3, 32, 32]."""
    return nn.Sequential(
        ConvBNAct(3, 16, 3),
        CoordAtt(16, 16),
        SPD(),
        ConvBNAct(64, 32, 1),
        ContextBlock(32, 1 / 8, "att", ("channel_add", "channel_mul")),
        ContextBlock(32, 1 / 4, "avg", ("channel_mul",)),
        CoordAttMBv2(32, 32),
    )


class ListModel(nn.Module):
    """Blocks held in a ModuleList, one of them (``shared``) both called twice and registered twice."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3)
        self.shared = CoordinateAttention(16)
        self.stages = nn.ModuleList([GlobalContext(16), self.shared, seed_blocks.CA(16, 16),
                                     seed_blocks.CB2d(16, "att", ["channel_add"])])

    def forward(self, x):
        x = self.shared(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return x


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"att": seed_blocks.CA(16, 16), "mix": ACmixSeed(16, 16, kernel_att=3, head=4)})
        self.dcn = ModulatedDeformConv2dPack(16, 16, 3, padding=1, deform_groups=2)

    def forward(self, x):
        return self.dcn(self.block["mix"](self.block["att"](x)))


class NestedModel(nn.Module):
    """Blocks two levels down, next to modules with export hazards."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(Nested(), GridBias(16), DeviceBranch(16))
        self.lookalike = CoordAttMaxPool(16, 16)
        self.odd = CoordAttSiLU(16, 16)
        self.pool = nn.AdaptiveAvgPool2d((None, 1))
        self.unfold = nn.Unfold(3, padding=1)
        self.head = Head(16, 5)

    def forward(self, x):
        x = self.odd(self.lookalike(self.body(self.stem(x))))
        return self.head(x), self.pool(x), self.unfold(x)


class TinyYolo(nn.Module):
    """YOLO-like: Focus stem, SPD downsampling, DCN, attention blocks, a two-scale head returning a list."""

    def __init__(self, nc=3):
        super().__init__()
        self.focus = Focus(3, 16, 3)
        self.down1 = SPDConvYolo(16, 32)
        self.ca = CoordAtt(32, 32)
        self.dcn = DeformConvV1(32, 32)
        self.gc = ContextBlock(32, 1 / 4, "att", ("channel_mul", "channel_add"))
        self.split = DCNSplitOffsets(32, 32)
        self.seed_dcn = SeedDCN(32)
        self.detect = nn.ModuleList([nn.Conv2d(32, nc + 5, 1), nn.Conv2d(32, nc + 5, 1)])

    def forward(self, x):
        p3 = self.ca(self.down1(self.focus(x)))
        p4 = self.seed_dcn(self.split(self.gc(self.dcn(p3))))
        return [self.detect[0](p3), self.detect[1](p4)]


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class YoloStyle(nn.Module):
    """Ultralytics layout: one Sequential whose layers ``parse_model`` annotated with ``i``, ``f``, ``type`` and
    ``np``; ``forward`` routes tensors by ``m.f`` and keeps the outputs listed in ``save``."""

    def __init__(self):
        super().__init__()
        layers = [
            (-1, ConvBNAct(3, 16, 3, 2)),
            (-1, SPD()),
            (-1, ConvBNAct(64, 32, 3)),
            (-1, CoordAtt(32, 32)),
            (-1, ModulatedDeformConv2dPack(32, 32, 3, padding=1)),
            ([2, -1], Concat(1)),
            (-1, ContextBlock(64, 1 / 4, "att", ("channel_add",))),
        ]
        for i, (f, m) in enumerate(layers):
            m.i, m.f, m.type, m.np = i, f, type(m).__name__, sum(p.numel() for p in m.parameters())
        self.model = nn.Sequential(*(m for _, m in layers))
        self.save = [2]

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


class ReadsBlockInternals(nn.Module):
    """A forward that reads a layer inside a block (the folded twin has no ``bn1``)."""

    def __init__(self):
        super().__init__()
        self.ca = CoordAtt(16, 16)

    def forward(self, x):
        return self.ca(x) * (self.ca.bn1.num_features / 16)
