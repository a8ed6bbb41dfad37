"""rewrite_model: pasted blocks found and swapped, checked on their real inputs, the input model untouched,
failures left alone with a reason, export hazards reported."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures import seed_blocks
from torch import nn

from blocks_export.blocks import (
    BLOCKS,
    CA,
    DCN,
    ACmix,
    ACmixExport,
    CB2d,
    CB2dExport,
    CoordAttExport,
    DCNExport,
    SpaceToDepthExport,
    SPDConv,
    SPDConvExport,
    acmix_onnx,
    inspect_model,
    randomize_,
    rewrite_model,
    space_to_depth,
)
from blocks_export.runtime.parity import rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pasted_variants.py sits beside this file
import pasted_variants as pv  # noqa: E402

REFERENCES = tuple(s.reference for s in BLOCKS)


class Wrapped(nn.Module):
    """Fake twin: a copy of the reference block, so these tests do not depend on the real twins."""

    def __init__(self, reference: nn.Module):
        super().__init__()
        self.ref = copy.deepcopy(reference)

    def forward(self, *args, **kwargs):
        return self.ref(*args, **kwargs)


FAKE_TABLE = {cls: Wrapped for cls in REFERENCES}

# (variant factory, input shape, recognised as, reference class, real twin class)
VARIANTS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, type, type]] = {
    "CoordAtt-Hardswish": (lambda: pv.CoordAtt(16, 16), (2, 16, 12, 10), "CA", CA, CoordAttExport),
    "CoordAtt-MobileNetV2-None-pools": (lambda: pv.CoordAttMBv2(16, 16), (2, 16, 9, 14), "CA", CA, CoordAttExport),
    "CoordinateAttention-renamed": (lambda: pv.CoordinateAttention(16), (1, 16, 11, 7), "CA", CA, CoordAttExport),
    "seed-CA": (lambda: seed_blocks.CA(16, 16), (2, 16, 8, 12), "CA", CA, CoordAttExport),
    "CoordAtt-gate-module": (lambda: pv.CoordAttGateModule(16), (2, 16, 7, 9), "CA", CA, CoordAttExport),
    "ours-CA": (lambda: CA(16, 16), (2, 16, 8, 12), "CA", CA, CoordAttExport),
    "mmcv-ContextBlock-att-add": (lambda: pv.ContextBlock(16, 1 / 4, "att", ("channel_add",)), (2, 16, 7, 9),
                                  "CB2d", CB2d, CB2dExport),
    "mmcv-ContextBlock-avg-both": (lambda: pv.ContextBlock(16, 1 / 8, "avg", ("channel_add", "channel_mul")),
                                   (2, 16, 6, 6), "CB2d", CB2d, CB2dExport),
    "GlobalContext-renamed-mul": (lambda: pv.GlobalContext(16), (2, 16, 5, 8), "CB2d", CB2d, CB2dExport),
    "seed-CB2d": (lambda: seed_blocks.CB2d(16), (1, 16, 6, 10), "CB2d", CB2d, CB2dExport),
    "seed-ACmix": (lambda: seed_blocks.ACmix(16, 16, kernel_att=3, head=4), (1, 16, 10, 8), "ACmix", ACmix,
                   ACmixExport),
    "seed-ACmix-stride2": (lambda: seed_blocks.ACmix(8, 16, kernel_att=5, head=2, stride=2), (2, 8, 8, 12),
                           "ACmix", ACmix, ACmixExport),
    "mmcv-ModulatedDeformConv2dPack": (lambda: pv.ModulatedDeformConv2dPack(8, 8, 3, padding=1, deform_groups=2),
                                       (1, 8, 9, 7), "DCN", DCN, DCNExport),
    "functional-DCN-v1-stride2": (lambda: pv.DeformConvV1(8, 12), (1, 8, 10, 9), "DCN", DCN, DCNExport),
    "DCN-split-offsets": (lambda: pv.DCNSplitOffsets(8, 8), (1, 8, 7, 7), "DCN", DCN, DCNExport),
    "seed-section5-DCN": (lambda: pv.SeedDCN(8), (1, 8, 8, 6), "DCN", DCN, DCNExport),
    "SPD-renamed": (lambda: pv.SPD(), (2, 5, 8, 6), "space_to_depth", space_to_depth, SpaceToDepthExport),
    "seed-space_to_depth": (lambda: seed_blocks.space_to_depth(), (1, 3, 6, 10), "space_to_depth", space_to_depth,
                            SpaceToDepthExport),
    "SPDConv-inline-yolo": (lambda: pv.SPDConvYolo(8, 16), (2, 8, 12, 8), "SPDConv", SPDConv, SPDConvExport),
    "Focus-plain-conv": (lambda: pv.Focus(3, 16, 3), (2, 3, 10, 12), "SPDConv", SPDConv, SPDConvExport),
}


def _randomized(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    return randomize_(factory(), seed).eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _assert_same_outputs(original: nn.Module, rewritten: nn.Module, x: torch.Tensor) -> None:
    want, got = _outputs(original, x), _outputs(rewritten, x)
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert rel_l2(w, g) <= 1e-5


def _snapshot(model: nn.Module) -> tuple[list[tuple[str, int, str]], dict[str, torch.Tensor], list[bool]]:
    tree = [(n, id(m), type(m).__name__) for n, m in model.named_modules(remove_duplicate=False)]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tree, state, [m.training for m in model.modules()]


def _assert_unchanged(model: nn.Module, snapshot) -> None:
    tree, state, training = _snapshot(model)
    assert tree == snapshot[0]
    assert training == snapshot[2]
    assert state.keys() == snapshot[1].keys()
    for k, v in state.items():
        assert torch.equal(v, snapshot[1][k]), k


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pasted_variant_is_recognised_and_swapped_with_fake_table(variant: str):
    factory, shape, label, ref_cls, _ = VARIANTS[variant]
    model = nn.Sequential(_randomized(factory))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    new, report = rewrite_model(model, x, FAKE_TABLE)
    assert [r.name for r in report.replaced] == ["0"], report.lines()
    assert report.replaced[0].recognized_as == label
    assert type(new[0]) is Wrapped and type(new[0].ref) is ref_cls
    assert report.replaced[0].rel_l2 <= 1e-5
    _assert_same_outputs(model, new, x)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pasted_variant_is_swapped_for_its_real_twin(variant: str):
    factory, shape, label, _, twin_cls = VARIANTS[variant]
    model = nn.Sequential(_randomized(factory))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    new, report = rewrite_model(model, x)
    assert [r.name for r in report.replaced] == ["0"], report.lines()
    assert type(new[0]) is twin_cls
    assert report.replaced[0].twin_class == twin_cls.__name__
    # At another size too: the twin is the same function, not a fit to the example input.
    x2 = torch.randn(shape[0], shape[1], shape[2] + 4, shape[3] + 2, generator=torch.Generator().manual_seed(3))
    _assert_same_outputs(model, new, x2)
    assert not [h for h in report.hazards if h.name.startswith("0")], report.lines()


MODELS = {
    "sequential": (pv.sequential_model, (2, 3, 32, 32), {"1", "2", "4", "5", "6"}),
    "module-list-shared": (pv.ListModel, (2, 3, 16, 16), {"shared", "stages.0", "stages.2", "stages.3"}),
    "nested": (pv.NestedModel, (1, 3, 16, 16), {"body.0.block.att", "body.0.block.mix", "body.0.dcn"}),
    "tiny-yolo": (pv.TinyYolo, (2, 3, 32, 32), {"focus", "down1", "ca", "dcn", "gc", "split", "seed_dcn"}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_output_unchanged_and_input_model_untouched(name: str):
    factory, shape, expected = MODELS[name]
    model = _randomized(factory, seed=5)
    model.train()  # the rewrite must not even flip the input's mode or touch its BatchNorm statistics
    before = _snapshot(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    new, report = rewrite_model(model, x, FAKE_TABLE)
    _assert_unchanged(model, before)
    assert new is not model
    assert {r.name for r in report.replaced} == expected, report.lines()
    assert not any(m is n for m in model.modules() for n in new.modules())
    _assert_same_outputs(model.eval(), new, x)
    assert report.model_rel_l2 is not None and report.model_rel_l2 <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_with_real_twins(name: str):
    factory, shape, expected = MODELS[name]
    model = _randomized(factory, seed=6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    new, report = rewrite_model(model, x)
    assert {r.name for r in report.replaced} == expected, report.lines()
    _assert_same_outputs(model, new, x)


def test_block_used_twice_is_checked_on_both_calls_and_swapped_at_both_names():
    model = _randomized(pv.ListModel)
    new, report = rewrite_model(model, torch.randn(1, 3, 16, 16), FAKE_TABLE)
    (shared,) = [r for r in report.replaced if r.name == "shared"]
    assert shared.calls == 2
    assert new.shared is new.stages[1] and type(new.shared) is Wrapped


def test_lookalike_with_a_different_forward_is_left_alone_with_a_reason():
    model = nn.Sequential(_randomized(lambda: pv.CoordAttMaxPool(16, 16)))
    x = torch.randn(1, 16, 8, 8)
    new, report = rewrite_model(model, x, FAKE_TABLE)
    assert report.replaced == ()
    (left,) = report.left_alone
    assert (left.name, left.original_class, left.recognized_as) == ("0", "CoordAttMaxPool", "CA")
    assert "computes something else" in left.reason
    assert type(new[0]) is pv.CoordAttMaxPool
    _assert_same_outputs(model, new, x)


def test_block_with_an_activation_the_twin_cannot_compute_is_left_alone():
    model = nn.Sequential(_randomized(lambda: pv.CoordAttSiLU(16, 16)))
    _, report = rewrite_model(model, torch.randn(1, 16, 8, 8), FAKE_TABLE)
    (left,) = report.left_alone
    assert left.recognized_as == "CA" and "SiLU" in left.reason


def test_conversion_that_raises_leaves_the_block_alone():
    def unavailable(module: nn.Module) -> nn.Module:
        raise NotImplementedError("no twin yet")

    model = nn.Sequential(_randomized(lambda: pv.CoordAtt(16, 16)), _randomized(pv.SPD))
    x = torch.randn(1, 16, 8, 8)
    new, report = rewrite_model(model, x, {**FAKE_TABLE, CA: unavailable})
    (left,) = report.left_alone
    assert left.name == "0" and "NotImplementedError: no twin yet" in left.reason
    assert [r.name for r in report.replaced] == ["1"]
    assert type(new[0]) is pv.CoordAtt
    _assert_same_outputs(model, new, x)


def test_twin_that_differs_is_not_swapped_in():
    def off_by_a_little(module: nn.Module) -> nn.Module:
        twin = Wrapped(module)
        with torch.no_grad():
            twin.ref.conv_h.bias.add_(1e-2)
        return twin

    model = nn.Sequential(_randomized(lambda: pv.CoordAtt(16, 16)))
    x = torch.randn(1, 16, 8, 8)
    new, report = rewrite_model(model, x, {**FAKE_TABLE, CA: off_by_a_little})
    (left,) = report.left_alone
    assert "differs" in left.reason and "rel_l2" in left.reason
    assert type(new[0]) is pv.CoordAtt


def test_block_never_called_is_left_alone():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.ca = pv.CoordAtt(16, 16)
            self.conv = nn.Conv2d(16, 16, 1)

        def forward(self, x):
            return self.conv(x)

    _, report = rewrite_model(_randomized(Unused), torch.randn(1, 16, 8, 8), FAKE_TABLE)
    (left,) = report.left_alone
    assert left.name == "ca" and "not called" in left.reason


def test_model_that_is_itself_a_block_is_replaced_whole():
    model = _randomized(lambda: pv.CoordAttMBv2(16, 16))
    x = torch.randn(2, 16, 6, 9)
    new, report = rewrite_model(model, x, FAKE_TABLE)
    assert type(new) is Wrapped and [r.name for r in report.replaced] == [""]
    assert "<model>" in report.lines()[0]
    _assert_same_outputs(model, new, x)


def test_recognizers_are_a_parameter():
    model = pv.sequential_model()
    _, report = rewrite_model(randomize_(model), torch.randn(1, 3, 16, 16), FAKE_TABLE, recognizers={})
    assert report.replaced == () and report.left_alone == ()


def test_our_own_spdconv_is_a_direct_table_hit():
    model = nn.Sequential(_randomized(lambda: SPDConv(4, 8)))
    new, report = rewrite_model(model, torch.randn(1, 4, 8, 8), FAKE_TABLE)
    assert [(r.name, r.recognized_as) for r in report.replaced] == [("0", "SPDConv")]
    assert type(new[0].ref) is SPDConv


def test_hazards_are_reported_for_what_remains():
    model = _randomized(pv.NestedModel)
    _, report = rewrite_model(model, torch.randn(1, 3, 16, 16), FAKE_TABLE)
    kinds = {(h.name, h.kind) for h in report.hazards}
    assert ("pool", "adaptive_pool") in kinds  # AdaptiveAvgPool2d((None, 1)) module
    assert ("unfold", "unfold") in kinds  # nn.Unfold module
    assert ("body.1", "shape_built_tensor") in kinds  # torch.linspace(-1, 1, h) in forward
    assert ("body.2", "device_branch") in kinds  # x.is_cuda / .cuda()
    assert ("odd", "adaptive_pool") in kinds  # nn.AdaptiveAvgPool2d((h, 1)) built in forward, left alone
    # Global pooling and constant tensors (torch.zeros(1)) are not hazards.
    assert not [h for h in report.hazards if h.name.startswith("head")]
    assert ("body.2", "shape_built_tensor") not in kinds


def test_hazard_scan_falls_back_when_the_model_runs_at_one_size_only():
    class FixedSize(nn.Module):
        def __init__(self):
            super().__init__()
            self.grid = pv.GridBias(4)
            self.fc = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(self.grid(x).flatten(1))

    _, report = rewrite_model(_randomized(FixedSize), torch.randn(1, 4, 8, 8), FAKE_TABLE)
    assert ("grid", "shape_built_tensor") in {(h.name, h.kind) for h in report.hazards}
    assert any("twice the example" in n for n in report.notes)


def test_seed_acmix_left_alone_keeps_its_hazards_in_the_report():
    def unavailable(module: nn.Module) -> nn.Module:
        raise NotImplementedError("no twin")

    model = nn.Sequential(_randomized(lambda: seed_blocks.ACmix(8, 8, kernel_att=3, head=2)))
    _, report = rewrite_model(model, torch.randn(1, 8, 8, 8), {**FAKE_TABLE, ACmix: unavailable})
    kinds = {(h.name, h.kind) for h in report.hazards}
    assert {("0.unfold", "unfold"), ("0", "shape_built_tensor"), ("0", "device_branch")} <= kinds


def test_report_serialises_and_inspect_is_a_dry_run():
    model = _randomized(pv.TinyYolo)
    before = _snapshot(model)
    x = torch.randn(1, 3, 32, 32)
    report = inspect_model(model, x, FAKE_TABLE)
    _assert_unchanged(model, before)
    data = json.loads(json.dumps(report.as_dict()))
    assert {r["name"] for r in data["replaced"]} == MODELS["tiny-yolo"][2]
    keys = {"name", "original_class", "recognized_as", "twin_class", "rel_l2", "max_rel", "max_abs", "calls"}
    assert keys <= set(data["replaced"][0])
    assert len([line for line in report.lines() if line.startswith("REPLACED")]) == 7


def test_bad_example_input_is_a_value_error():
    with pytest.raises(ValueError, match="example_input"):
        rewrite_model(nn.Identity(), "not a tensor", FAKE_TABLE)
    with pytest.raises(ValueError, match=r"does not run on example_input \[\(1, 5, 8, 8\)\]"):
        rewrite_model(pv.sequential_model(), torch.randn(1, 5, 8, 8), FAKE_TABLE)



def test_rewritten_model_exports_with_dynamic_shapes_and_matches_the_original_elsewhere():
    """The point of the rewrite: the stock export of CoordAtt/GCNet/SPD pasted blocks is wrong or fixed-size
    at other H and W; the rewritten model exported once is right at another (non-square) size."""
    import onnx

    from blocks_export.plugins.ort_cpu import cpu_session

    model = _randomized(pv.sequential_model, seed=8)
    new, report = rewrite_model(model, torch.randn(1, 3, 32, 32))
    assert {r.name for r in report.replaced} == MODELS["sequential"][2]
    # SPD needs even H and W: declare them as 2 * k.
    dims = {0: torch.export.Dim("batch", max=64), 2: 2 * torch.export.Dim("h2", min=2, max=512),
            3: 2 * torch.export.Dim("w2", min=2, max=512)}
    program = torch.onnx.export(new, (torch.randn(1, 3, 32, 32),), dynamo=True, opset_version=18,
                                dynamic_shapes=({**dims},), verbose=False,
                                custom_translation_table=acmix_onnx.translation_table())
    session = cpu_session(onnx.load_from_string(program.model_proto.SerializeToString()))
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(9))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert rel_l2(_outputs(model, x)[0], got) <= 1e-5


def test_ultralytics_style_layer_annotations_survive_the_swap():
    model = _randomized(pv.YoloStyle)
    x = torch.randn(2, 3, 32, 48)
    new, report = rewrite_model(model, x)
    assert {r.name for r in report.replaced} == {"model.1", "model.3", "model.4", "model.6"}, report.lines()
    assert [(m.i, m.f) for m in new.model] == [(m.i, m.f) for m in model.model]
    _assert_same_outputs(model, new, x)


def test_swap_that_breaks_the_model_is_undone_and_reported():
    model = _randomized(pv.ReadsBlockInternals)
    x = torch.randn(1, 16, 8, 8)
    new, report = rewrite_model(model, x)
    assert report.replaced == ()
    (left,) = report.left_alone
    assert left.name == "ca" and "does not run with the twin in place" in left.reason and "bn1" in left.reason
    assert type(new.ca) is pv.CoordAtt
    _assert_same_outputs(model, new, x)


def test_yolo_dcnv2_with_batchnorm_and_activation_is_swapped_part_by_part():
    model = nn.Sequential(_randomized(lambda: pv.DCNv2Yolo(8, 16, deformable_groups=2)))
    x = torch.randn(2, 8, 9, 7)
    fake, fake_report = rewrite_model(model, x, FAKE_TABLE)
    assert [(r.name, r.recognized_as) for r in fake_report.replaced] == [("0", "DCN")], fake_report.lines()
    assert type(fake[0][0]) is Wrapped and type(fake[0][0].ref) is DCN
    new, report = rewrite_model(model, x)
    assert [r.name for r in report.replaced] == ["0"], report.lines()
    assert type(new[0][0]) is DCNExport and type(new[0][1]) is nn.BatchNorm2d
    _assert_same_outputs(model, new, torch.randn(1, 8, 12, 10))


def test_rewriting_a_rewritten_model_changes_nothing():
    model = _randomized(pv.TinyYolo)
    x = torch.randn(1, 3, 32, 32)
    once, _ = rewrite_model(model, x)
    twice, report = rewrite_model(once, x)
    assert report.replaced == () and report.left_alone == (), report.lines()
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]


def test_spdconv_with_a_grouped_conv_is_converted_whole():
    pasted = pv.SPDConvYolo(8, 16)
    pasted.conv.conv = nn.Conv2d(32, 16, 3, 1, 1, groups=2, bias=False)
    model = nn.Sequential(randomize_(pasted).eval())
    x = torch.randn(2, 8, 8, 12)
    new, report = rewrite_model(model, x)
    assert [(r.name, r.twin_class) for r in report.replaced] == [("0", "SPDConvExport")], report.lines()
    _assert_same_outputs(model, new, torch.randn(1, 8, 14, 6))
    _, again = rewrite_model(new, x)
    assert again.replaced == () and again.left_alone == ()
