"""The block fallback on its own: each group measured alone, over-budget groups kept, then the most sensitive left
kept until the whole graph holds; errors that add up are what the greedy loop is for."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from blocks_export.export.fallback import OUTSIDE, Measure, block_fallback, node_groups

# Lower-precision error each group adds to the graph's output when it is not kept.
COST = {"a": 0.30, "b": 0.02, "c": 0.04, "d": 0.01}


def _run(budget: float):
    built: list[frozenset[str]] = []

    def build(kept: frozenset[str]) -> frozenset[str]:
        built.append(kept)
        return frozenset(COST) - kept  # the groups in the lower precision

    def measure(lower: frozenset[str]) -> Measure:
        err = sum(COST[g] for g in lower)
        return Measure(err, err <= budget, {"groups": len(lower)})

    groups = {g: [f"{g}{i}" for i in range(k + 1)] for k, g in enumerate(COST)}
    result = block_fallback(groups, build, measure, describe=lambda e: f"moves it by {e:.2f}", budget=f"budget {budget}")
    return result, built


def test_a_group_over_the_budget_alone_is_kept_and_the_rest_until_the_sum_holds() -> None:
    result, built = _run(0.05)
    rows = {r.block: r for r in result.rows}
    assert [r.block for r in result.rows] == list(COST)
    assert rows["a"].kept and "alone" in rows["a"].why and rows["a"].error == COST["a"]
    # Alone b, c and d are within 0.05, together 0.07: c (the largest left) goes back, then b + d = 0.03 holds.
    assert rows["c"].kept and "most of those left" in rows["c"].why
    assert not rows["b"].kept and not rows["d"].kept
    assert result.kept == ["a", "c"] and result.ok
    assert abs(result.measure.error - (COST["b"] + COST["d"])) < 1e-12
    assert [s.kept for s in result.steps] == [("a",), ("a", "c")]
    assert built[0] == frozenset({"b", "c", "d"})  # sensitivity of a: every other group kept
    assert rows["b"].nodes == 2 and rows["b"].as_dict()["groups"] == 1


def test_a_budget_no_group_meets_alone_keeps_every_group() -> None:
    result, _ = _run(0.0)
    assert set(result.kept) == set(COST) and result.ok  # every group kept: the higher-precision graph
    assert all("alone" in r.why for r in result.rows) and len(result.steps) == 1


def test_nodes_are_grouped_by_block_then_module_then_outside() -> None:
    def node(name: str, scope: str) -> onnx.NodeProto:
        n = helper.make_node("Relu", [f"{name}_in"], [f"{name}_out"], name=name)
        if scope:
            n.name = f"/{scope.replace('.', '/')}/{name}"
        return n

    nodes = [node("r0", "features.0.conv"), node("r1", "features.1.ca.conv"), node("r2", "features.1.bn"),
             node("r3", ""), node("r4", "head.fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    model = helper.make_model(graph)
    names = [n.name for n in model.graph.node]
    groups = node_groups(model, ["features.1.ca"], names, layers=True)
    assert groups == {"features.1.ca": [names[1]], "features.0": [names[0]], "features.1": [names[2]],
                      "head": [names[4]], OUTSIDE: [names[3]]}
    assert node_groups(model, ["features.1.ca"], names) == {"features.1.ca": [names[1]],
                                                            OUTSIDE: [names[0], names[2], names[3], names[4]]}
