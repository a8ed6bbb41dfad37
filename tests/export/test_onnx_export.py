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


class _PastedTrunk(torch.nn.Module):
    """A user's trunk as blocks get pasted: own Conv-BN-act class with an in-place SiLU, a bare BatchNorm, two
    SPD-Convs, a context block, global pooling, flatten and a Linear head (each of the nodes the exporter would
    decompose)."""

    def __init__(self) -> None:
        super().__init__()
        from blocks_export.blocks import CB2d, SPDConv

        class ConvBnAct(torch.nn.Module):
            def __init__(self, c1: int, c2: int, s: int) -> None:
                super().__init__()
                self.c = torch.nn.Conv2d(c1, c2, 3, s, 1, bias=False)
                self.n = torch.nn.BatchNorm2d(c2)
                self.a = torch.nn.SiLU(inplace=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.a(self.n(self.c(x)))

        self.stem = ConvBnAct(3, 8, 2)
        self.spd1 = SPDConv(8, 16, 3)
        self.norm = torch.nn.BatchNorm2d(16)
        self.spd2 = SPDConv(16, 24, 1)
        self.ctx = CB2d(24)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), torch.nn.Linear(24, 5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.ctx(self.spd2(self.norm(self.spd1(self.stem(x)))))
        return f, self.head(f)


def _rewritten_trunk(example: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
    from blocks_export.blocks import randomize_, rewrite_model

    model = randomize_(_PastedTrunk(), seed=3).eval()
    twin, _ = rewrite_model(model, example)
    return model, twin


def test_dynamic_export_without_the_second_trace_matches_the_model_and_the_exporters_own_decomposition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from blocks_export.export import torch_patches

    example = torch.rand(1, 3, 64, 64)
    model, twin = _rewritten_trunk(example)
    taken: list[bool] = []
    in_place = torch_patches._decompose_in_place
    monkeypatch.setattr(torch_patches, "_decompose_in_place", lambda *a: taken.append(in_place(*a)) or taken[-1])
    fast = to_onnx(twin, example, opset=18, dynamic=True)
    assert taken == [True]  # BatchNorm, flatten and the global pooling rewritten in place, no re-trace
    monkeypatch.setattr(torch_patches, "_decompose_in_place", lambda *a: False)
    full = to_onnx(twin, example, opset=18, dynamic=True)
    assert fast.dynamic == full.dynamic
    ops, full_ops = ([n.op_type for n in g.model.graph.node] for g in (fast, full))
    for op in ("Conv", "BatchNormalization", "Slice", "Concat", "ReduceMean", "Gemm", "MatMul"):
        assert ops.count(op) == full_ops.count(op), op  # the same computation; only the size arithmetic differs
    assert {n.domain for n in fast.model.graph.node} <= {"", "ai.onnx"}  # the SPD op became plain ONNX
    for shape in [(1, 3, 64, 64), (3, 3, 40, 72), (2, 3, 16, 24)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = [t.numpy() for t in model(x)]
        for got in (_run(fast.model, x), _run(full.model, x)):
            assert [g.shape for g in got] == [w.shape for w in want], shape
            assert max(rel_l2(w, g) for w, g in zip(want, got, strict=True)) <= 1e-5, shape


def test_a_program_with_other_ops_to_decompose_keeps_the_exporters_own_decomposition() -> None:
    from torch.onnx._internal.exporter import _decomp, _registration

    from blocks_export.export.torch_patches import _decompose_in_place

    class Mutating(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.batch_norm(x, torch.zeros(3), torch.ones(3))
            return y.add_(1.0)  # an in-place op: functionalised by the decomposition

    program = torch.export.export(Mutating().eval(), (torch.rand(2, 3, 8, 8),))
    before = [str(n.target) for n in program.graph.nodes]
    registry = _registration.ONNXRegistry.from_torchlib(18)
    table = _decomp.create_onnx_friendly_decomposition_table(set(_decomp.get_onnx_implemented_overloads(registry)))
    assert _decompose_in_place(program, table) is False
    assert [str(n.target) for n in program.graph.nodes] == before
    x = torch.rand(1, 3, 5, 7)
    result = to_onnx(Mutating().eval(), torch.rand(2, 3, 8, 8), opset=18, dynamic=True)
    assert rel_l2(Mutating()(x), _run(result.model, x)[0]) <= 1e-5


class _MixedDtypes(torch.nn.Module):
    """Ops on tensors of different dtypes, as models write them: a float map times an integer ramp built from
    the input's width, plus a boolean mask, plus an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)
        self.register_buffer("offset", torch.tensor([[[[1]], [[2]], [[3]], [[4]]]]))  # int64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        ramp = torch.arange(y.shape[-1], device=y.device)  # int64, as long as the width
        return y * ramp + (y > 0) + self.offset


def test_type_promotion_read_from_the_traced_values_writes_the_exporters_own_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from blocks_export.export import torch_patches

    model = _MixedDtypes().eval()
    example = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    fast = to_onnx(model, example, opset=18, dynamic=True)
    monkeypatch.setattr(torch_patches, "type_promotion_from_meta", contextlib.nullcontext)
    full = to_onnx(model, example, opset=18, dynamic=True)
    assert fast.model.graph.SerializeToString() == full.model.graph.SerializeToString()
    assert fast.dynamic == full.dynamic
    assert any(n.op_type == "Cast" for n in fast.model.graph.node)  # the pass did promote (int, bool -> float)
    for shape in [(1, 3, 32, 48), (2, 3, 20, 70)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = model(x)
        assert rel_l2(want, _run(fast.model, x)[0]) <= 1e-5, shape
