"""numpy reference of the TensorRT ``ModulatedDeformConv2d`` plugin op (CPU, for parity checks).

Bilinear sampling exactly as torchvision's CPU kernel (``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``,
``bilinear_interpolate``): a sample at (h, w) is 0 when ``h <= -1 or h >= H or w <= -1 or w >= W``; otherwise
each of its four corner taps that falls outside the image contributes 0. The sampled column is multiplied by
the mask, and the columns are contracted with the weight per convolution group.
"""

from __future__ import annotations

import numpy as np

from .deform_conv_contract import DeformConvParams


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``img`` [N, Cg, H, W] at ``y``, ``x`` [N, Ho, Wo] -> [N, Cg, Ho, Wo] (torchvision's rule)."""
    n, _, height, width = img.shape
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    y0 = np.floor(y)
    x0 = np.floor(x)
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    y0i, x0i = y0.astype(np.int64), x0.astype(np.int64)
    batch = np.arange(n)[:, None, None]
    out = np.zeros((n, img.shape[1], *y.shape[1:]), dtype=img.dtype)
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yi, xi = y0i + dy, x0i + dx
        ok = inside & (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        vals = img[batch, :, np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]  # (N, Ho, Wo, Cg)
        out += np.moveaxis(vals * np.where(ok, wgt, 0.0)[..., None], -1, 1)
    return out


def modulated_deform_conv2d(x: np.ndarray, offset: np.ndarray, mask: np.ndarray, weight: np.ndarray,
                            bias: np.ndarray | None, params: DeformConvParams) -> np.ndarray:
    """Deformable convolution in the plugin's argument order.

    x [N, C, H, W], offset [N, 2 * G * kh * kw, Ho, Wo], mask [N, G * kh * kw, Ho, Wo],
    weight [Co, C / groups, kh, kw], bias [Co] or None -> [N, Co, Ho, Wo] in x's dtype.
    float16 inputs are computed in float32 and the result rounded back to float16.
    """
    out_dtype = x.dtype
    x, offset, mask, weight = (np.asarray(a, dtype=np.float32) for a in (x, offset, mask, weight))
    n, c, _, _ = x.shape
    co, cg_w, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    g_off, g_w = params.offset_groups, params.groups
    if c % g_off or c != cg_w * g_w or offset.shape[1] != 2 * g_off * kh * kw or mask.shape[1] != g_off * kh * kw:
        raise ValueError(f"modulated_deform_conv2d: inconsistent shapes x={x.shape} offset={offset.shape} "
                         f"mask={mask.shape} weight={weight.shape} for {params}")
    (sh, sw), (ph, pw), (dh, dw) = params.stride, params.padding, params.dilation
    cg = c // g_off
    base_y = (np.arange(ho) * sh - ph)[:, None].astype(np.float32)  # (Ho, 1)
    base_x = (np.arange(wo) * sw - pw)[None, :].astype(np.float32)  # (1, Wo)
    cols = np.zeros((n, c, kh * kw, ho, wo), dtype=np.float32)
    off = offset.reshape(n, g_off, kh * kw, 2, ho, wo)  # (N, G, K, 2, Ho, Wo)
    msk = mask.reshape(n, g_off, kh * kw, ho, wo)  # (N, G, K, Ho, Wo)
    for g in range(g_off):
        img = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                # Integer base first, then one rounding when the offset is added (as torchvision does).
                y = (base_y + np.float32(i * dh)) + off[:, g, k, 0]
                xx = (base_x + np.float32(j * dw)) + off[:, g, k, 1]
                cols[:, g * cg:(g + 1) * cg, k] = _bilinear(img, y, xx) * msk[:, g, k][:, None]
    cols = cols.reshape(n, g_w, cg_w * kh * kw, ho * wo)  # (N, groups, C/groups * K, Ho*Wo)
    wmat = weight.reshape(g_w, co // g_w, cg_w * kh * kw)  # (groups, Co/groups, C/groups * K)
    out = np.einsum("gok,ngkp->ngop", wmat, cols).reshape(n, co, ho, wo)  # (N, Co, Ho, Wo)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float32)[None, :, None, None]
    return out.astype(out_dtype)
