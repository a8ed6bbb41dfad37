import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import export_models  # noqa: E402

from blocks_export.export.errors import UsageError  # noqa: E402
from blocks_export.export.onnx_export import resolve_opset, to_onnx  # noqa: E402
from blocks_export.plugins.ort_cpu import cpu_session  # noqa: E402
from blocks_export.runtime.parity import rel_l2  # noqa: E402


def _run(proto, x: torch.Tensor) -> list[np.ndarray]:
    sess = cpu_session(proto)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def test_dynamic_export_derives_the_stride_constraint_and_runs_at_other_valid_shapes() -> None:
    model = export_models.build(export_models.Stride16)
    result = to_onnx(model, torch.rand(1, 3, 64, 64), opset=18, dynamic=True)
    dyn = result.dynamic["images"]
    # Four stride-2 convolutions then a 2x upsample added to the stride-8 map: H/8 must be even, and a
    # size of 16 gives a 1x1 map that torch specialises away, so the smallest valid size is 32.
    for axis in ("2", "3"):
        assert dyn[axis]["multiple_of"] == 16 and dyn[axis]["min"] == 32
    assert dyn["0"]["min"] == 1
    for shape in [(1, 3, 48, 80), (3, 3, 32, 64)]:
        x = torch.rand(shape)
        assert rel_l2(model(x), _run(result.model, x)[0]) <= 1e-5


def test_dimension_fixed_by_the_model_is_refused_naming_it() -> None:
    model = export_models.build(export_models.FixedReshape)
    with pytest.raises(UsageError, match="(height|width) of input images cannot be dynamic") as e:
        to_onnx(model, torch.rand(1, 3, 16, 16), opset=18, dynamic=True)
    assert "\n" not in str(e.value)


def test_torchscript_exporter_gives_the_same_function_with_dynamic_axes() -> None:
    model = export_models.build(export_models.Stride16)
    result = to_onnx(model, torch.rand(1, 3, 64, 64), opset=17, exporter="torchscript", dynamic=True)
    assert result.exporter == "torchscript" and result.opset == 17
    x = torch.rand(2, 3, 32, 96)
    assert rel_l2(model(x), _run(result.model, x)[0]) <= 1e-5


def test_std_deform_conv_needs_opset_19() -> None:
    assert resolve_opset(18, False, "std", True)[0] == 19
    assert resolve_opset(18, False, "portable", True)[0] == 18
    assert resolve_opset(18, False, "std", False)[0] == 18
    with pytest.raises(UsageError, match="opset >= 19"):
        resolve_opset(17, True, "std", True)


def test_deformable_convolution_exports_as_onnx_deform_conv_and_matches() -> None:
    from blocks_export.blocks import DCN, randomize_

    model = randomize_(DCN(4, 6, 3).eval(), 1)
    result = to_onnx(model, torch.rand(1, 4, 12, 10), opset=18, lowering="std")
    assert result.opset == 19 and result.uses_deform_conv
    assert "DeformConv" in {n.op_type for n in result.model.graph.node}
    x = torch.rand(1, 4, 12, 10)
    assert rel_l2(model(x), _run(result.model, x)[0]) <= 1e-5


def test_graph_names_follow_the_pipeline_convention() -> None:
    class TwoOut(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.mean((2, 3))

    result = to_onnx(TwoOut().eval(), torch.rand(1, 3, 8, 8), opset=18)
    assert [i.name for i in result.model.graph.input] == ["images"]
    assert [o.name for o in result.model.graph.output] == ["output0", "output1"]
    assert result.dynamic is None


def test_opset_below_the_dynamo_minimum_is_reached_by_conversion_and_still_matches() -> None:
    class MeanScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * y.mean((2, 3), keepdim=True).sigmoid()

    model = MeanScale().eval()
    result = to_onnx(model, torch.rand(1, 3, 16, 16), opset=16, dynamic=True)
    assert [o.version for o in result.model.opset_import if o.domain == ""] == [16]
    x = torch.rand(2, 3, 24, 8)
    assert rel_l2(model(x), _run(result.model, x)[0]) <= 1e-5
