import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import export_models  # noqa: E402

from blocks_export.export.diagnose import locate_divergence  # noqa: E402
from blocks_export.export.inputs import ModelReference, verification_shapes  # noqa: E402
from blocks_export.export.onnx_export import to_onnx  # noqa: E402
from blocks_export.export.verify import VerifyResult, verify_graph  # noqa: E402


def verify(model: nn.Module, graph: object, shapes: list[tuple[int, ...]]) -> VerifyResult:
    return verify_graph(ModelReference(model), "onnxruntime", graph, shapes)


@pytest.mark.parametrize("export_shape", [(1, 3, 64, 64), (1, 3, 64, 96), (4, 3, 32, 32)])
def test_dynamic_verification_shapes_are_valid_and_cover_non_square_and_batch(export_shape) -> None:
    dyn = {"0": {"min": 1, "max": None, "multiple_of": 1}, "2": {"min": 32, "max": 128, "multiple_of": 16},
           "3": {"min": 32, "max": None, "multiple_of": 16}}
    shapes = verification_shapes(export_shape, dyn)
    assert shapes[0] == export_shape and len(shapes) == len(set(shapes))
    assert (1, 3, 32, 32) in shapes  # the recorded minimum
    assert any(h % 32 for _, _, h, _ in shapes)  # a size that is not a multiple of 32
    assert any(n == 3 for n, _, _, _ in shapes) or export_shape[0] == 3
    for n, c, h, w in shapes:
        assert c == 3 and h % 16 == 0 and w % 16 == 0 and 32 <= h <= 128 and w >= 32 and n >= 1
    assert any(h != w for _, _, h, w in shapes[1:])
    assert any(n > 1 for n, _, _, _ in shapes[1:])
    assert verification_shapes(export_shape, None) == [export_shape]


class _OffTwin(nn.Module):
    """A deliberately wrong conversion: the block's output scaled by 1.001."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * 1.001


@pytest.fixture(scope="module")
def refnet() -> nn.Module:
    return export_models.build(export_models.RefNet, seed=5)


def test_exact_export_passes_and_broken_conversion_names_its_block(refnet: nn.Module) -> None:
    shape = (1, 3, 32, 32)
    x = torch.rand(shape)
    good = to_onnx(refnet, x, opset=18).model
    assert verify(refnet, good, [shape])
    broken = copy.deepcopy(refnet)
    broken.ca = _OffTwin(broken.ca)
    bad = to_onnx(broken, x, opset=18).model
    result = verify(refnet, bad, [shape])
    assert not result
    div = locate_divergence(refnet, bad, ["ca"], shape)
    assert div.block == "ca" and div.block_class == "CA" and div.replaced
    assert div.rel_l2 is not None and div.rel_l2 > 1e-5


def test_stock_coordinate_attention_is_caught_at_another_size_and_named() -> None:
    model = export_models.build(export_models.CANet)
    stock = to_onnx(model, torch.rand(1, 3, 20, 24), opset=18, dynamic=True).model
    result = verify(model, stock, [(1, 3, 20, 24), (1, 3, 32, 16)])
    assert bool(result.runs[0].comparison) and not bool(result.runs[1].comparison)
    div = locate_divergence(model, stock, [], (1, 3, 32, 16))
    assert div.block == "ca" and div.block_class == "CA"
