"""ACmix: convolution and self-attention sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556

``ACmix`` is the reference module, faithful to the widely pasted implementation: same constructor
arguments, attribute names, ``state_dict`` keys and numerics. Two quirks of that code are kept on purpose:

* ``reset_parameters`` assigns ``init_rate_0(self.dep_conv.bias)`` back to ``dep_conv.bias``; the helper
  returns ``None``, so ``dep_conv`` ends up with **no bias** and its ``state_dict`` has no ``dep_conv.bias``.
* ``dep_conv`` always uses ``padding=1``, whatever ``kernel_conv`` is.

Where the original code crashes (its shapes stop lining up), this module raises ``ValueError`` instead.
"""

from __future__ import annotations

import torch
from torch import nn


def init_rate_half(tensor: torch.Tensor | None) -> None:
    if tensor is not None:
        tensor.data.fill_(0.5)


def init_rate_0(tensor: torch.Tensor | None) -> None:
    # Returns None, like the original helper; see the module docstring.
    if tensor is not None:
        tensor.data.fill_(0.0)


def position(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normalised (x, y) coordinates of an h x w grid [1, 2, h, w], as the original ``position``.

    The original takes ``is_cuda`` and calls ``.cuda()``; here the device and dtype follow the input.
    """
    loc_w = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype).unsqueeze(0).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype).unsqueeze(1).repeat(1, w)
    return torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)


def stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    return x[:, :, ::stride, ::stride]


def check_acmix_config(out_planes: int, kernel_att: int, head: int, kernel_conv: int, stride: int,
                       dilation: int) -> None:
    """Raise ``ValueError`` for configurations the original implementation cannot run."""
    if head < 1 or out_planes % head != 0:
        raise ValueError(f"ACmix: out_planes={out_planes} must be a positive multiple of head={head}")
    if kernel_att < 1 or kernel_att % 2 == 0:
        raise ValueError(f"ACmix: kernel_att={kernel_att} must be odd (the window unfold pads symmetrically)")
    if kernel_conv != 3:
        raise ValueError(
            f"ACmix: kernel_conv={kernel_conv} is not supported: the original dep_conv uses padding=1, "
            "which only keeps the feature size for kernel_conv=3")
    if dilation != 1:
        raise ValueError(
            f"ACmix: dilation={dilation} is not supported: the original pads for a dilated window but "
            "unfolds without dilation, so its shapes do not line up")
    if stride < 1:
        raise ValueError(f"ACmix: stride={stride} must be >= 1")


def check_acmix_input(h: int, w: int, kernel_att: int, dilation: int, stride: int) -> None:
    pad = (dilation * (kernel_att - 1) + 1) // 2
    if h <= pad or w <= pad:
        raise ValueError(
            f"ACmix: input {h}x{w} is too small for kernel_att={kernel_att}: reflection padding of {pad} "
            f"needs H and W > {pad}")
    if stride > 1 and (h % stride or w % stride):
        raise ValueError(
            f"ACmix: input {h}x{w} is not divisible by stride={stride}; the original implementation "
            "cannot run it (its attention and convolution paths produce different sizes)")


class ACmix(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        check_acmix_config(out_planes, kernel_att, head, kernel_conv, stride, dilation)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.rate1 = torch.nn.Parameter(torch.Tensor(1))
        self.rate2 = torch.nn.Parameter(torch.Tensor(1))
        self.head_dim = self.out_planes // self.head

        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv_p = nn.Conv2d(2, self.head_dim, kernel_size=1)

        self.padding_att = (self.dilation * (self.kernel_att - 1) + 1) // 2
        self.pad_att = torch.nn.ReflectionPad2d(self.padding_att)
        self.unfold = nn.Unfold(kernel_size=self.kernel_att, padding=0, stride=self.stride)
        self.softmax = torch.nn.Softmax(dim=1)

        self.fc = nn.Conv2d(3 * self.head, self.kernel_conv * self.kernel_conv, kernel_size=1, bias=False)
        self.dep_conv = nn.Conv2d(self.kernel_conv * self.kernel_conv * self.head_dim, out_planes,
                                  kernel_size=self.kernel_conv, bias=True, groups=self.head_dim, padding=1,
                                  stride=stride)

        self.reset_parameters()

    def reset_parameters(self):
        init_rate_half(self.rate1)
        init_rate_half(self.rate2)
        kernel = torch.zeros(self.kernel_conv * self.kernel_conv, self.kernel_conv, self.kernel_conv)
        for i in range(self.kernel_conv * self.kernel_conv):
            kernel[i, i // self.kernel_conv, i % self.kernel_conv] = 1.
        kernel = kernel.squeeze(0).repeat(self.out_planes, 1, 1, 1)
        self.dep_conv.weight = nn.Parameter(data=kernel, requires_grad=True)
        self.dep_conv.bias = init_rate_0(self.dep_conv.bias)

    def forward(self, x):
        check_acmix_input(x.shape[-2], x.shape[-1], self.kernel_att, self.dilation, self.stride)
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        scaling = float(self.head_dim) ** -0.5
        b, c, h, w = q.shape
        h_out, w_out = h // self.stride, w // self.stride

        # positional encoding
        pe = self.conv_p(position(h, w, x.device, x.dtype))

        q_att = q.view(b * self.head, self.head_dim, h, w) * scaling
        k_att = k.view(b * self.head, self.head_dim, h, w)
        v_att = v.view(b * self.head, self.head_dim, h, w)

        if self.stride > 1:
            q_att = stride(q_att, self.stride)
            q_pe = stride(pe, self.stride)
        else:
            q_pe = pe

        unfold_k = self.unfold(self.pad_att(k_att)).view(b * self.head, self.head_dim,
                                                         self.kernel_att * self.kernel_att, h_out,
                                                         w_out)  # (b*head, head_dim, k_att^2, h_out, w_out)
        unfold_rpe = self.unfold(self.pad_att(pe)).view(1, self.head_dim, self.kernel_att * self.kernel_att, h_out,
                                                        w_out)  # (1, head_dim, k_att^2, h_out, w_out)

        att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(
            1)  # (b*head, k_att^2, h_out, w_out)
        att = self.softmax(att)

        out_att = self.unfold(self.pad_att(v_att)).view(b * self.head, self.head_dim, self.kernel_att * self.kernel_att,
                                                        h_out, w_out)
        out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, self.out_planes, h_out, w_out)

        # convolution path, sharing q, k, v
        f_all = self.fc(torch.cat(
            [q.view(b, self.head, self.head_dim, h * w), k.view(b, self.head, self.head_dim, h * w),
             v.view(b, self.head, self.head_dim, h * w)], 1))
        f_conv = f_all.permute(0, 2, 1, 3).reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])

        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv


class ACmixExport(nn.Module):
    """Export twin of ``ACmix`` (placeholder until the twin lands)."""


def to_export(module: ACmix) -> nn.Module:
    raise NotImplementedError("ACmix twin")
