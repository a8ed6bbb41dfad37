"""The steps' contracts: in every sequence the pipeline runs, a step reads only state that ``GIVEN`` holds or an
earlier step writes; at run time a step that touches a field its ``StepSpec`` does not declare stops with
``StepContractError``; model families reach the steps only through their adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from blocks_export.export import pipeline
from blocks_export.export.options import ExportOptions
from blocks_export.export.report import Report
from blocks_export.export.steps import prepare
from blocks_export.export.steps.base import GIVEN, State, StepContractError, StepLog, StepSpec, step
from blocks_export.export.targets import get_target

SEQUENCES = {
    "pytorch to onnx": (prepare.load, *pipeline.PYTORCH_STEPS),
    "pytorch to trt": (prepare.load, *pipeline.PYTORCH_STEPS, *pipeline.ENGINE_STEPS),
    "int8 to trt": (prepare.load, *pipeline.INT8_STEPS, *pipeline.ENGINE_STEPS),
    "onnx to trt": (prepare.load, *pipeline.ONNX_STEPS, *pipeline.ONNX_ENGINE_STEPS),
}
STEPS = Path(__file__).resolve().parents[2] / "export" / "steps"


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_every_step_reads_only_what_an_earlier_step_wrote(name: str) -> None:
    written = set(GIVEN)
    for s in SEQUENCES[name]:
        unread = s.spec.reads - written
        assert not unread, f"{name}: step {s.spec.name!r} reads {sorted(unread)} before any step writes it"
        written |= s.spec.writes


def test_every_step_module_contributes_to_a_sequence() -> None:
    used = {s.run.__module__ for seq in SEQUENCES.values() for s in seq}
    modules = {f"blocks_export.export.steps.{p.stem}" for p in STEPS.glob("*.py")}
    helpers = {"blocks_export.export.steps.__init__", "blocks_export.export.steps.base",
               "blocks_export.export.steps.plan", "blocks_export.export.steps.inspect"}
    assert modules - helpers - used == set()


def _state() -> State:
    options = ExportOptions()
    return State(Path("m.pt"), options, get_target(None), "std", Path("m.onnx"), Path("m.onnx"),
                 Report("m.pt", "m.onnx", "ort", "std", "fp32"), StepLog(None))


def test_a_step_that_reads_or_writes_undeclared_state_stops() -> None:
    @step("reads shape", reads=("shape",))
    def reads_proto(state: State) -> None:
        assert state.shape == (1, 3, 8, 8)
        state.proto  # noqa: B018 (the undeclared read under test)

    @step("writes", reads=("proto",), writes=("proto",))
    def writes_failed(state: State) -> None:
        state.proto = state.proto
        state.failed = True

    @step("writes then reads", writes=("failed",))
    def reads_own(state: State) -> None:
        state.failed = True
        assert state.failed and state.options.fp16 is False  # its own output and GIVEN fields: allowed

    state = _state()
    state.shape = (1, 3, 8, 8)
    with pytest.raises(StepContractError, match="step 'reads shape' reads `proto`"):
        reads_proto(state)
    with pytest.raises(StepContractError, match="step 'writes' writes `failed`"):
        writes_failed(state)
    reads_own(state)
    assert state.failed


def test_a_spec_names_only_state_fields_and_never_writes_a_given_one() -> None:
    with pytest.raises(ValueError, match="names no State field"):
        StepSpec("typo", reads=frozenset({"protoo"}))
    with pytest.raises(ValueError, match="writes given field"):
        StepSpec("given", writes=frozenset({"options"}))


def test_model_families_reach_the_steps_only_through_their_adapter() -> None:
    for path in STEPS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
                assert not any("ultralytics" in n for n in names), f"{path.name} imports {names}"
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
            assert "ultra" not in name.lower(), f"{path.name}: {name}"
