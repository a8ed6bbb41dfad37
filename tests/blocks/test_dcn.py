"""``DCNExport`` computes what ``DCN`` computes, in eager PyTorch and exported with dynamic shapes."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch

from blocks_export.blocks import DCN, DCNExport, randomize_, to_export
from blocks_export.blocks import dcn as dcn_module
from blocks_export.export.deform_conv import dynamo_translation_table, torchscript_symbolic
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2

# (c1, c2, k, s, p, d, g, deformable_groups, bias, modulated)
CONFIGS = [
    (4, 6, 3, 1, None, 1, 1, 1, True, True),
    (8, 8, 3, 2, 1, 1, 2, 4, False, True),
    (8, 6, 3, 1, None, 2, 2, 2, True, False),
    (6, 4, (3, 5), (2, 1), (0, 2), (1, 2), 1, 3, True, True),
    (4, 4, 1, 2, 0, 1, 4, 1, False, False),
    (8, 4, 5, 1, 2, 1, 4, 8, True, True),
]


def _pair(module: DCN, seed: int) -> tuple[DCN, torch.nn.Module]:
    randomize_(module, seed=seed)
    with torch.no_grad():  # offsets of a few pixels, so sampling really is deformable
        module.offset.weight.mul_(6.0)
    return module.eval(), to_export(module).eval()


@pytest.mark.parametrize("seed, cfg", list(enumerate(CONFIGS)), ids=[str(c) for c in CONFIGS])
def test_dcn_twin_matches_reference_fp64_and_fp32(seed: int, cfg: tuple) -> None:
    c1, c2, k, s, p, d, g, dg, bias, modulated = cfg
    ref, twin = _pair(DCN(c1, c2, k, s, p, d, g, dg, bias, modulated), seed=seed)
    gen = torch.Generator().manual_seed(4)
    for shape in [(1, c1, 9, 13), (3, c1, 16, 7), (2, c1, 12, 12)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            r64, t64 = ref.double()(x), twin.double()(x)
            assert (r64 - t64).abs().max() <= 1e-9 * r64.abs().max()
            r32, t32 = ref.float()(x.float()), twin.float()(x.float())
            assert rel_l2(r32, t32) <= 1e-5


def test_to_export_copies_parameters_and_rejects_other_modules() -> None:
    ref = DCN(4, 4, 3, modulated=True)
    twin = to_export(ref)
    assert isinstance(twin, DCNExport)
    assert twin.weight.data_ptr() != ref.dcn.weight.data_ptr()
    assert torch.equal(twin.weight, ref.dcn.weight)
    with pytest.raises(TypeError, match="DCN"):
        dcn_module.to_export(torch.nn.Conv2d(4, 4, 3))  # type: ignore[arg-type]


def _export(module: torch.nn.Module, x: torch.Tensor, lowering: str, dynamo: bool, opset: int) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b, h, w = (torch.export.Dim(n, min=1, max=2048) for n in ("b", "h", "w"))
            return torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=["x"],
                                     dynamic_shapes={"x": {0: b, 2: h, 3: w}}, verbose=False,
                                     custom_translation_table=dynamo_translation_table(lowering, opset)).model_proto
        buf = io.BytesIO()
        with torchscript_symbolic(lowering, opset):
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                              dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
        return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("lowering, dynamo, opset", [("std", True, 19), ("portable", False, 17),
                                                     ("plugin", False, 17)])
@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
def test_exported_dcn_twin_matches_reference_at_other_shapes(lowering: str, dynamo: bool, opset: int,
                                                             modulated: bool) -> None:
    ref, twin = _pair(DCN(8, 6, 3, 1, None, 1, 2, 2, True, modulated), seed=9)
    gen = torch.Generator().manual_seed(8)
    model = _export(twin, torch.randn(2, 8, 12, 14, generator=gen), lowering, dynamo, opset)
    sess = cpu_session(model)
    for shape in [(1, 8, 9, 17), (3, 8, 15, 10), (2, 8, 20, 20)]:
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            expected = ref(x)
        (got,) = sess.run(None, {"x": x.numpy()})
        assert rel_l2(expected, got) <= 1e-5, shape
