"""Op contracts of the deformable convolution across runtimes: argument orders, attributes, domains.

Four input orders exist for the same operation (``DESIGN.md``, "DeformConv"):

=====================================  =========================================
torchvision ``deform_conv2d`` function  (input, offset, weight, bias, mask)
aten op ``torchvision::deform_conv2d``  (input, weight, offset, mask, bias, ...)
ONNX ``DeformConv`` (opset >= 19)       (X, W, offset, B, mask)
TensorRT ``ModulatedDeformConv2d``      (x, offset, mask, weight, bias)
=====================================  =========================================

The aten schema (``torch.ops.torchvision.deform_conv2d.default._schema``) is::

    deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias,
                  SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w,
                  SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups,
                  bool use_mask) -> Tensor

Offsets use one layout everywhere: for offset group ``g`` and kernel tap ``k = i * kw + j``, channel
``2 * (g * kh * kw + k)`` is dy and the next one dx; mask channel ``g * kh * kw + k``. The TensorRT plugin's
kernel reads the same layout (TensorRT OSS ``plugin/modulatedDeformConvPlugin/modulatedDeformConvPluginKernel.cu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ONNX DeformConv-19: https://onnx.ai/onnx/operators/onnx__DeformConv.html
ONNX_DEFORM_CONV = "DeformConv"
ONNX_DEFORM_CONV_MIN_OPSET = 19
ONNX_INPUT_ORDER = ("X", "W", "offset", "B", "mask")

# TensorRT's built-in plugin, IO and fields as in its plugin config
# (../shared/reference/tensorrt-plugin/ModulatedDeformConv2d_PluginConfig.yaml, TensorRT OSS
# plugin/modulatedDeformConvPlugin/): inputs x, offset, mask, weight, bias; int32 fields stride[2], padding[2],
# dilation[2], group, deformable_group. Version "1" is the IPluginV2DynamicExt one that TensorRT 8.6 (JetPack 6.0)
# ships; version "2" (IPluginV3) exists only in later releases.
PLUGIN_OP_TYPE = "ModulatedDeformConv2d"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
PLUGIN_INPUT_ORDER = ("x", "offset", "mask", "weight", "bias")

# TensorRT's ONNX parser imports a node it has no importer for through its ``fallbackPluginImporter``: the
# plugin creator is looked up by the node's op_type (version from the ``plugin_version`` attribute, namespace
# from ``plugin_namespace``), and the remaining attributes become plugin fields
# (github.com/onnx/onnx-tensorrt docs/faq.md, "Custom Layer Support"). The default domain is what it reads.
PLUGIN_DOMAIN_TRT_PARSER = ""
# onnxruntime's TensorRT execution provider hands a node to a TensorRT plugin only when the node is in domain
# ``trt.plugins`` (https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html,
# "TensorRT Plugins Support").
PLUGIN_DOMAIN_ORT_TRT_EP = "trt.plugins"
# onnxruntime-extensions registers Python custom ops in this domain only (another ``domain=`` did not
# register on onnxruntime-extensions 0.15 / onnxruntime 1.32), so the CPU reference runs a copy of the graph
# whose plugin nodes are moved here.
PLUGIN_DOMAIN_ORT_CPU = "ai.onnx.contrib"
PLUGIN_DOMAINS = (PLUGIN_DOMAIN_TRT_PARSER, PLUGIN_DOMAIN_ORT_TRT_EP, PLUGIN_DOMAIN_ORT_CPU)


@dataclass(frozen=True)
class DeformConvParams:
    """Hyper-parameters of one deformable convolution (everything that is not a tensor)."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    use_mask: bool = True

    def __post_init__(self) -> None:
        for name, pair, low in (("stride", self.stride, 1), ("padding", self.padding, 0),
                                ("dilation", self.dilation, 1)):
            if len(pair) != 2 or min(pair) < low:
                raise ValueError(f"DeformConvParams: {name}={pair} must be two integers >= {low}")
        if self.groups < 1 or self.offset_groups < 1:
            raise ValueError(f"DeformConvParams: groups={self.groups} and offset_groups={self.offset_groups} "
                             "must be >= 1")

    @classmethod
    def from_aten(cls, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
                  groups: int, offset_groups: int, use_mask: bool) -> DeformConvParams:
        """From the scalar tail of the ``torchvision::deform_conv2d`` aten op."""
        return cls((int(stride_h), int(stride_w)), (int(pad_h), int(pad_w)), (int(dilation_h), int(dilation_w)),
                   int(groups), int(offset_groups), bool(use_mask))

    def onnx_attributes(self) -> dict[str, Any]:
        """Attributes of ONNX ``DeformConv`` (pads begin/end equal: TensorRT 10.1's parser requires it,
        ../shared/reference/onnx-tensorrt/operators-10.1-GA.md)."""
        ph, pw = self.padding
        return {"strides": list(self.stride), "pads": [ph, pw, ph, pw], "dilations": list(self.dilation),
                "group": self.groups, "offset_group": self.offset_groups}

    def plugin_attributes(self) -> dict[str, Any]:
        """Attributes of a ``ModulatedDeformConv2d`` node: the plugin fields plus the parser's version keys."""
        return {"stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation),
                "group": self.groups, "deformable_group": self.offset_groups,
                "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

    @classmethod
    def from_plugin_attributes(cls, attrs: dict[str, Any]) -> DeformConvParams:
        """Inverse of ``plugin_attributes`` (a plugin node always carries a mask input)."""
        return cls(tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]),  # type: ignore[arg-type]
                   int(attrs["group"]), int(attrs["deformable_group"]), True)

    def output_size(self, height: int, width: int, kernel: tuple[int, int]) -> tuple[int, int]:
        """Output spatial size of a convolution with these parameters, as torchvision computes it."""
        (sh, sw), (ph, pw), (dh, dw), (kh, kw) = self.stride, self.padding, self.dilation, kernel
        return ((height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1, (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1)
