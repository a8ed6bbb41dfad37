"""The block contract, checked for every block in ``blocks.BLOCKS``: a new block is covered by naming its spec
there. Each check compares against the reference block itself (BatchNorm statistics and zero-initialised layers
randomised first), with this test's own onnxruntime session."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch
from torch import nn

from blocks_export.blocks import (
    BLOCKS,
    CONVERSIONS,
    FP32_OPS,
    RECOGNIZERS,
    BlockSpec,
    Example,
    onnx_translations,
    randomize_,
    to_export,
    traced_as_ops,
)
from blocks_export.export.check import check_model
from blocks_export.export.fp16 import BLOCK_FP32_OPS, fp32_nodes, name_nodes, to_fp16
from blocks_export.export.onnx_export import to_onnx
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import RULES, compare, rel_l2

IDS = [s.name for s in BLOCKS]


def _example(spec: BlockSpec, seed: int = 0) -> Example:
    ex = spec.example()
    randomize_(ex.module, seed)
    return dataclasses.replace(ex, module=ex.module.eval())


def _x(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_every_block_has_every_part_of_its_spec():
    assert len({s.name for s in BLOCKS}) == len(BLOCKS) and len({s.reference for s in BLOCKS}) == len(BLOCKS)
    for spec in BLOCKS:
        assert spec.name and isinstance(spec.name, str), spec
        for cls in (spec.reference, spec.twin):
            assert isinstance(cls, type) and issubclass(cls, nn.Module), (spec.name, cls)
        assert spec.reference is not spec.twin, spec.name
        assert callable(spec.to_export) and callable(spec.recognize) and callable(spec.example), spec.name
        assert isinstance(spec.fp32_ops, frozenset), spec.name
        ex = spec.example()
        assert isinstance(ex, Example) and type(ex.module) is spec.reference, spec.name
        assert len(ex.shapes) >= 3 and all(len(s) == 4 for s in ex.shapes), spec.name
        # The reference class path is what pickled checkpoints name: it must stay importable where it is.
        module = __import__(spec.reference.__module__, fromlist=[spec.reference.__qualname__])
        assert getattr(module, spec.reference.__qualname__) is spec.reference


def test_the_torch_free_copy_of_the_fp32_op_policy_is_the_blocks_declarations():
    # fp16.py (and the engine build) run on a Jetson without PyTorch, so they hold the union of every
    # ``BlockSpec.fp32_ops`` written out; a block declaring a new op type adds it there.
    assert BLOCK_FP32_OPS == FP32_OPS, sorted(FP32_OPS ^ BLOCK_FP32_OPS)


def test_tables_are_read_from_the_block_list():
    assert dict(CONVERSIONS) == {s.reference: s.to_export for s in BLOCKS}
    assert list(RECOGNIZERS.items()) == [(s.name, s.recognize) for s in BLOCKS]


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_every_op_of_the_package_a_twin_traces_to_is_translated_by_its_own_spec(spec: BlockSpec):
    # The export pipeline traces inside ``traced_as_ops`` and translates with ``onnx_translations``: both read the
    # spec, so a twin whose spec lacks its op's translation (or its trace context) fails here.
    ex = _example(spec)
    with traced_as_ops([spec]):
        program = torch.export.export(to_export(ex.module), (_x(ex.shapes[0], 0),), strict=False)
    own = {n.target for n in program.graph.nodes
           if n.op == "call_function" and getattr(n.target, "namespace", None) == "blocks_export"}
    assert own <= set(onnx_translations(18, [spec])), (spec.name, own)
    assert (spec.onnx_translations is not None) == bool(own), spec.name  # a translation only where an op is traced


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_twin_matches_reference_fp64_and_fp32_at_every_example_shape(spec: BlockSpec):
    ex = _example(spec)
    twin_type = None
    for i, shape in enumerate(ex.shapes):
        x = _x(shape, i, torch.float64)
        ref64, ref32 = copy.deepcopy(ex.module).double().eval(), copy.deepcopy(ex.module).float().eval()
        with torch.no_grad():
            twin64 = to_export(ref64)
            fp64 = compare([ref64(x)], [twin64(x)], "fp64")
            fp32 = compare([ref32(x.float())], [to_export(ref32)(x.float())], "fp32")
        twin_type = type(twin64)
        assert fp64.outputs[0].max_rel <= 1e-9, (shape, fp64.lines())
        assert fp32, (shape, fp32.lines())
    assert twin_type is spec.twin


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_dynamic_onnx_of_the_twin_matches_reference_at_other_shapes_fp32_fp16_and_passes_the_target(spec):
    ex = _example(spec, seed=3)
    export_shape, *others = ex.shapes
    exported = to_onnx(to_export(ex.module), _x(export_shape, 0), opset=18, dynamic=True)
    assert check_model(exported.model, "ort"), check_model(exported.model, "ort").lines()
    session = cpu_session(exported.model)
    for i, shape in enumerate(others):
        x = _x(shape, 10 + i)
        with torch.no_grad():
            want = ex.module(x)
        (got,) = session.run(None, {exported.input_name: x.numpy()})
        assert rel_l2(want, got) <= RULES["fp32"].rel_l2, shape
    named = copy.deepcopy(exported.model)
    name_nodes(named)
    declared = {n.name for n in named.graph.node if n.op_type in spec.fp32_ops}
    assert declared <= fp32_nodes(named)  # what a block needs in fp32, the mixed-precision pass keeps fp32
    session16 = cpu_session(to_fp16(exported.model))
    x = _x(export_shape, 20)
    with torch.no_grad():
        want = ex.module(x)
    (got,) = session16.run(None, {exported.input_name: x.numpy()})
    assert rel_l2(want, got) <= RULES["fp16"].rel_l2


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_twin_exported_by_a_plain_dynamo_export_matches_reference_at_other_shapes(spec: BlockSpec):
    # What a user writes, with no translation table: the twins' own ops decompose (blocks/_ops.py). Inside the
    # spec's ``op_trace`` (SPD traced as its op, as the pipeline traces) as well as outside it.
    ex = _example(spec, seed=7)
    export_shape, *others = ex.shapes
    twin = to_export(ex.module)
    dims = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")},)
    traces = [contextlib.nullcontext()] + ([traced_as_ops([spec])] if spec.op_trace is not None else [])
    for trace in traces:
        with trace:
            program = torch.onnx.export(twin, (_x(export_shape, 0),), dynamo=True, dynamic_shapes=dims,
                                        verbose=False)
        assert program is not None
        session = cpu_session(program.model_proto)
        for i, shape in enumerate(others):
            x = _x(shape, 30 + i)
            with torch.no_grad():
                want = ex.module(x)
            (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            assert rel_l2(want, got) <= RULES["fp32"].rel_l2, (shape, trace)


@pytest.mark.parametrize("spec", BLOCKS, ids=IDS)
def test_recogniser_finds_a_pasted_copy_and_only_its_own_recogniser_claims_it(spec: BlockSpec):
    ex = _example(spec, seed=5)
    # A paste: the same structure and weights under another class name, defined outside the package.
    pasted_cls = type(f"Pasted{spec.reference.__name__}", (spec.reference,), {"__module__": __name__})
    pasted = copy.deepcopy(ex.module)
    pasted.__class__ = pasted_cls
    claims = {name: rec(pasted) for name, rec in RECOGNIZERS.items()}
    assert [n for n, c in claims.items() if c] == [spec.name]
    x = _x(ex.shapes[1], 6)
    with torch.no_grad():
        want = pasted(x)
        assert any(rel_l2(want, c(x)) <= RULES["fp32"].rel_l2 for c in claims[spec.name])
