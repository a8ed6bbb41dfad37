"""ACmix: the reference is the seed's block; the export twin computes the same function and exports dynamically."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fixtures import seed_blocks
from helpers import export_dynamic, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blocks_export.blocks import ACmix, ACmixExport, acmix_onnx, randomize_
from blocks_export.blocks import to_export as to_export_any
from blocks_export.blocks.acmix import position, to_export
from blocks_export.blocks.acmix_attention import _coordinates, window_mask
from blocks_export.runtime.parity import rel_l2


def make_pair(in_planes: int, out_planes: int, kernel_att: int, head: int, stride: int, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> tuple[ACmix, ACmixExport]:
    ref = randomize_(ACmix(in_planes, out_planes, kernel_att, head, stride=stride), seed=seed).to(dtype).eval()
    return ref, to_export(ref).eval()


def assert_fp64_equal(ref: nn.Module, twin: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = ref(x), twin(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    assert (got - expected).abs().max().item() <= 1e-9 * scale


# --- reference == seed ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "shape"), [
    ((8, 8, 7, 4, 1), (2, 8, 9, 11)),
    ((6, 12, 3, 2, 2), (1, 6, 6, 10)),
    ((4, 8, 5, 4, 1), (3, 4, 5, 7)),
])
def test_reference_loads_seed_state_dict_strict_and_gives_same_output(cfg, shape):
    in_planes, out_planes, kernel_att, head, stride = cfg
    seed = randomize_(seed_blocks.ACmix(in_planes, out_planes, kernel_att, head, stride=stride), seed=5).eval()
    ref = ACmix(in_planes, out_planes, kernel_att, head, stride=stride).eval()
    ref.load_state_dict(seed.state_dict(), strict=True)
    assert "dep_conv.bias" not in ref.state_dict()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref(x), seed(x), rtol=0, atol=0)


# --- twin == reference ---------------------------------------------------------------------------------

# (in, out, kernel_att, head, stride), (N, C, H, W): smallest valid sizes, odd, non-square, batch 1-4, >= 97.
GRID = [
    ((8, 8, 7, 4, 1), (1, 8, 4, 4)),  # smallest for kernel_att 7: reflection pad 3 needs H, W > 3
    ((8, 8, 7, 4, 1), (2, 8, 4, 13)),
    ((8, 12, 7, 2, 1), (3, 8, 17, 9)),  # in != out, odd, non-square, several blocks
    ((6, 8, 3, 4, 1), (4, 6, 2, 3)),  # smallest for kernel_att 3
    ((6, 8, 5, 1, 1), (2, 6, 3, 3)),
    ((8, 8, 9, 2, 1), (1, 8, 5, 21)),
    ((8, 8, 7, 4, 2), (1, 8, 4, 4)),  # stride 2: smallest even size
    ((8, 16, 7, 4, 2), (2, 8, 10, 18)),
    ((6, 6, 3, 3, 2), (3, 6, 2, 8)),
    ((4, 8, 1, 2, 1), (2, 4, 1, 3)),  # one-tap window
    ((4, 8, 1, 2, 2), (1, 4, 2, 6)),
    ((4, 8, 7, 2, 1), (1, 4, 97, 101)),  # large, odd
    ((4, 4, 5, 2, 2), (1, 4, 98, 100)),
]


@pytest.mark.parametrize(("cfg", "shape"), GRID)
def test_acmix_twin_matches_reference_fp64(cfg, shape):
    ref, twin = make_pair(*cfg, seed=sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_fp64_equal(ref, twin, x)


@pytest.mark.parametrize(("cfg", "shape"), [((64, 64, 7, 4, 1), (1, 64, 24, 19)), ((16, 32, 5, 4, 2), (2, 16, 14, 22))])
def test_acmix_twin_matches_reference_fp32(cfg, shape):
    ref, twin = make_pair(*cfg, dtype=torch.float32)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_l2(ref(x), twin(x)) <= 1e-5


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_acmix_twin_matches_reference_for_random_configs_and_shapes(data):
    head = data.draw(st.integers(1, 4), label="head")
    head_dim = data.draw(st.integers(1, 4), label="head_dim")
    in_planes = data.draw(st.integers(1, 8), label="in_planes")
    kernel_att = data.draw(st.sampled_from([1, 3, 5, 7, 9]), label="kernel_att")
    stride = data.draw(st.sampled_from([1, 2]), label="stride")
    pad = (kernel_att - 1) // 2
    smallest = pad + 1
    if stride == 2:
        h = 2 * data.draw(st.integers((smallest + 1) // 2, 14), label="h/2")
        w = 2 * data.draw(st.integers((smallest + 1) // 2, 14), label="w/2")
    else:
        h = data.draw(st.integers(smallest, 28), label="h")
        w = data.draw(st.integers(smallest, 28), label="w")
    batch = data.draw(st.integers(1, 4), label="batch")
    ref, twin = make_pair(in_planes, head * head_dim, kernel_att, head, stride, seed=h * w + batch)
    x = torch.randn(batch, in_planes, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h + w))
    assert_fp64_equal(ref, twin, x)


def test_acmix_twin_follows_rates_and_is_reached_through_the_conversion_table():
    ref, _ = make_pair(8, 8, 7, 2, 1)
    with torch.no_grad():
        ref.rate1.fill_(-1.7)
        ref.rate2.fill_(0.3)
    twin = to_export_any(ref)
    assert isinstance(twin, ACmixExport)
    assert_fp64_equal(ref, twin.eval(), torch.randn(2, 8, 11, 9, dtype=torch.float64))


# --- the rewrites, one by one --------------------------------------------------------------------------

@pytest.mark.parametrize(("h", "w"), [(2, 2), (3, 8), (80, 97)])
def test_in_graph_coordinates_equal_the_reference_position_grid(h, w):
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    got = _coordinates(x)  # (1, 2, H, W)
    torch.testing.assert_close(got, position(h, w, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (7, 1), (5, 2), (7, 2)])
def test_window_mask_opens_exactly_the_unfold_windows(kernel, stride):
    # Oracle: nn.Unfold over an image of pixel indices lists the pixels each output position sees.
    twin = ACmixExport(4, 4, kernel, 1, stride)
    block, span = twin.block, stride * twin.block + kernel - 1
    index = torch.arange(span * span, dtype=torch.float64).view(1, 1, span, span)
    seen = nn.Unfold(kernel, stride=stride)(index)[0].long()  # (kernel^2, n_out^2)
    n_out = (span - kernel) // stride + 1
    mask = window_mask(block, stride, kernel)
    for qi in range(block):
        for qj in range(block):
            expected = set(seen[:, qi * n_out + qj].tolist())
            opened = set(torch.nonzero(mask[qi * block + qj] == 0).flatten().tolist())
            assert opened == expected
    assert torch.isinf(mask[mask != 0]).all()


def test_folded_conv_path_input_equals_the_reference_fc_permute_reshape():
    ref, twin = make_pair(6, 12, 7, 3, 1)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    b, h, w = 2, 5, 7
    with torch.no_grad():
        q, k, v = ref.conv1(x), ref.conv2(x), ref.conv3(x)
        f_all = ref.fc(torch.cat([t.view(b, ref.head, ref.head_dim, h * w) for t in (q, k, v)], 1))
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
        f_twin = twin.f(x)
    torch.testing.assert_close(f_twin, f_conv, rtol=0, atol=1e-13)


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "shape", "match"), [
    ((4, 4, 7, 2, 1), (1, 4, 3, 8), "too small"),
    ((4, 4, 3, 2, 1), (1, 4, 9, 1), "too small"),
    ((4, 4, 7, 2, 2), (1, 4, 9, 10), "not divisible by stride"),
    ((4, 4, 3, 2, 2), (1, 4, 8, 7), "not divisible by stride"),
])
def test_reference_and_twin_raise_value_error_where_the_seed_crashes(cfg, shape, match):
    in_planes, out_planes, kernel_att, head, stride = cfg
    seed = seed_blocks.ACmix(in_planes, out_planes, kernel_att, head, stride=stride).eval()
    ref, twin = make_pair(*cfg, dtype=torch.float32)
    x = torch.randn(*shape)
    with pytest.raises(RuntimeError), torch.no_grad():  # the seed itself fails here, less clearly
        seed(x)
    for module in (ref, twin):
        with pytest.raises(ValueError, match=match), torch.no_grad():
            module(x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kernel_att": 4}, "kernel_att=4"),
    ({"head": 3}, "head=3"),
    ({"kernel_conv": 5}, "kernel_conv=5"),
    ({"dilation": 2}, "dilation=2"),
])
def test_unsupported_configurations_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACmix(4, 8, **kwargs)
    twin_kwargs = {k: v for k, v in kwargs.items() if k in ("kernel_att", "head")}
    if twin_kwargs:
        with pytest.raises(ValueError, match=match):
            ACmixExport(4, 8, **twin_kwargs)


# --- export ----------------------------------------------------------------------------------------------

def test_twin_has_no_unfold_or_adaptive_pooling():
    _, twin = make_pair(8, 8, 7, 4, 2)
    banned = (nn.Unfold, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)
    assert not [m for m in twin.modules() if isinstance(m, banned)]


def assert_onnx_matches(module: nn.Module, model_bytes: bytes, shapes: list[tuple[int, int, int, int]]) -> None:
    """The exported graph, run in onnxruntime at each of ``shapes`` (seeded inputs), against ``module``:
    the same output shape and relative L2 <= 1e-5."""
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            expected = module(x).numpy()
        got = run_ort(model_bytes, x)
        assert got.shape == expected.shape, shape
        assert rel_l2(expected, got) <= 1e-5, shape


def export_twin(twin: nn.Module, dynamo: bool, example: torch.Tensor | None = None) -> bytes:
    example = torch.randn(2, twin.in_planes, 20, 22) if example is None else example
    if not dynamo:
        return export_dynamic(twin, example, dynamo=False)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    prog = torch.onnx.export(twin, (example,), dynamo=True, opset_version=18, input_names=["x"],
                             output_names=["y"], dynamic_shapes={"x": dims}, verbose=False,
                             custom_translation_table=acmix_onnx.translation_table())
    return prog.model_proto.SerializeToString()


@pytest.mark.parametrize("stride", [1, 2])
def test_acmix_twin_exported_from_a_batch1_16x16_example_keeps_batch_and_size_dynamic(stride):
    import onnx

    ref, twin = make_pair(8, 12, 7, 4, stride, dtype=torch.float32)
    model = export_twin(twin, True, torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1)))
    graph = onnx.load_from_string(model).graph
    names = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert names == ["batch", 8, "height", "width"]
    out = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert out[0] == "batch" and all(isinstance(d, int) or len(d) < 40 for d in out)  # no sympy blow-up
    for shape in [(3, 8, 6, 10), (2, 8, 38, 22)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.no_grad():
            expected = ref(x).numpy()
        assert rel_l2(expected, run_ort(model, x)) <= 1e-5


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("stride", [1, 2])
def test_acmix_twin_onnx_with_dynamic_shapes_matches_reference_at_other_shapes(dynamo, stride):
    import onnx

    ref, twin = make_pair(8, 12, 7, 4, stride, dtype=torch.float32)
    model = export_twin(twin, dynamo)
    dims = onnx.load_from_string(model).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert_onnx_matches(ref, model, [(1, 8, 4, 6), (3, 8, 34, 18), (4, 8, 10, 46)])


@pytest.mark.parametrize("kernel, stride", [(7, 1), (3, 2)])
def test_acmix_twin_behind_a_convolution_exports_plainly_from_a_batch1_example_and_stays_batch_dynamic(kernel, stride):
    # No translation table: the op decomposes. Its inputs are then channel slices of a convolution's output,
    # which the decomposition copies first (without the copy, batch 2 and 3 failed in onnxruntime here).
    ref, twin = make_pair(8, 8, kernel, 2, stride, seed=2, dtype=torch.float32)
    stem = randomize_(nn.Conv2d(3, 8, 3, 2, 1), seed=3).eval()
    model, exported = nn.Sequential(stem, ref).eval(), nn.Sequential(stem, twin).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(exported, (x,), dynamo=True, dynamic_shapes=(dims,), verbose=False)
    assert program is not None
    assert_onnx_matches(model, program.model_proto.SerializeToString(), [(3, 3, 32, 32), (2, 3, 24, 40)])


def test_acmix_twin_onnx_graph_has_no_unfold_style_ops():
    import onnx

    _, twin = make_pair(8, 8, 7, 4, 1, dtype=torch.float32)
    buf = io.BytesIO()
    torch.onnx.export(twin, (torch.randn(1, 8, 9, 9),), buf, dynamo=False, opset_version=18)
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert not ops & {"Col2Im", "GlobalAveragePool", "AveragePool", "Range", "Loop"}
    assert np.isin(["MatMul", "Softmax", "Conv"], sorted(ops)).all()


def test_acmix_translation_gives_scalar_cumsum_axes_and_range_bounds_and_a_checked_graph():
    # ONNX wants CumSum's axis and Range's bounds 0-D; a 1-D one makes the exporter's constant folder fail
    # ("Axis must be a rank-0 tensor") and leaves that work to run time.
    import onnx
    from onnx import numpy_helper

    _, twin = make_pair(8, 12, 7, 4, 1, dtype=torch.float32)
    model = onnx.load_from_string(export_twin(twin, True, torch.randn(1, 8, 16, 16)))
    onnx.checker.check_model(model, full_check=True)
    consts = {o: numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
              for o in n.output for a in n.attribute if a.name == "value"}
    consts.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    scalar_inputs = [(n.op_type, i) for n in model.graph.node if n.op_type in ("CumSum", "Range")
                     for i in (n.input[1:] if n.op_type == "CumSum" else n.input) if i in consts]
    assert all(consts[i].ndim == 0 for _, i in scalar_inputs), [(op, consts[i].shape) for op, i in scalar_inputs]
    assert {op for op, _ in scalar_inputs} == {"CumSum", "Range"}  # the dynamic graph keeps both


@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 2), (7, 1), (7, 2), (7, 3)])
def test_acmix_twin_at_sizes_that_are_not_whole_blocks_matches_reference_fp64(kernel, stride):
    # Blocks past the edge read clamped rows/columns (masked or dropped): H, W of one pixel more than a block
    # multiple, of exactly the reflection pad + 1, and mixed.
    ref, twin = make_pair(6, 8, kernel, 2, stride, seed=3)
    block, pad = twin.block, (kernel - 1) // 2
    for h, w in [(stride * (block + 1), stride * (2 * block + 1)), (stride * (pad + 1), stride * 3 * block)]:
        x = torch.randn(2, 6, h, w, generator=torch.Generator().manual_seed(h * w), dtype=torch.float64)
        assert_fp64_equal(ref, twin, x)


def test_a_pasted_model_rewritten_and_exported_with_or_without_the_table_stays_dynamic():
    """README's library recipe: rewrite_model, then torch.onnx.export(dynamo=True) from a batch-1 example, plain
    (the ACmix op decomposes) or with ``translation_table()`` (its translation: a smaller graph)."""
    from blocks_export.blocks import DCN, ACmix, randomize_, rewrite_model
    from blocks_export.export.onnx_export import translation_table

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, 2, 1)
            self.mix = ACmix(6, 6, kernel_att=5, head=2)
            self.deform = DCN(6, 6, 3, 1)

        def forward(self, x):
            return self.deform(self.mix(self.stem(x)))

    model = randomize_(Net().eval(), seed=4)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    twin, _ = rewrite_model(model, x)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    plain = torch.onnx.export(twin, (x,), dynamo=True, opset_version=19, dynamic_shapes=(dims,), verbose=False)
    std = torch.onnx.export(twin, (x,), dynamo=True, opset_version=19, dynamic_shapes=(dims,), verbose=False,
                            custom_translation_table=translation_table(19, deform_conv="std"))
    portable = torch.onnx.export(twin, (x,), dynamo=True, opset_version=18, dynamic_shapes=(dims,), verbose=False,
                                 custom_translation_table=translation_table(18, deform_conv="portable"))
    assert plain is not None and std is not None and portable is not None
    # The same DeformConv node in both: the difference is the ACmix op, decomposed or translated.
    assert len(std.model_proto.graph.node) < len(plain.model_proto.graph.node)
    for onnx_program in (plain, portable):
        assert_onnx_matches(model, onnx_program.model_proto.SerializeToString(), [(3, 3, 16, 16), (2, 3, 22, 38)])


# --- the blocks-free form (for traces with symbolic sizes that must not meet the blocking arithmetic) -------------

@pytest.mark.parametrize(("cfg", "shape"), [((8, 8, 7, 4, 1), (2, 8, 9, 11)), ((8, 16, 7, 4, 2), (2, 8, 10, 18)),
                                            ((6, 8, 3, 4, 1), (4, 6, 2, 3)), ((6, 6, 5, 3, 2), (3, 6, 4, 8))])
def test_window_attention_taps_equals_the_reference_fp64(cfg, shape):
    from blocks_export.blocks.acmix_attention import window_attention_taps

    ref, twin = make_pair(*cfg, seed=sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ref(x)
        got = window_attention_taps(x, twin.wq, twin.wk, twin.wv, twin.head, twin.kernel_att, twin.stride) \
            + twin.dep_conv(twin.f(x))
    assert (got - expected).abs().max().item() <= 1e-9 * expected.abs().max().item()


@pytest.mark.parametrize("stride", [1, 2])
def test_window_attention_taps_traced_from_a_batch1_example_stays_dynamic(stride):
    from blocks_export.blocks.acmix_attention import window_attention_taps

    ref, twin = make_pair(8, 8, 7, 2, stride, seed=2, dtype=torch.float32)

    class Taps(nn.Module):
        def forward(self, x):
            x = torch.relu(x)  # not the graph input itself
            return window_attention_taps(x, twin.wq, twin.wk, twin.wv, twin.head, twin.kernel_att, twin.stride) \
                + twin.dep_conv(twin.f(x))

    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.onnx.export(Taps().eval(), (torch.randn(1, 8, 16, 16),), dynamo=True, dynamic_shapes=(dims,),
                                verbose=False)
    model = program.model_proto.SerializeToString()
    for shape in [(3, 8, 12, 20), (2, 8, 22, 6)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[3]))
        with torch.no_grad():
            expected = ref(torch.relu(x)).numpy()
        got = run_ort(model, x)
        assert got.shape == expected.shape and rel_l2(expected, got) <= 1e-5
