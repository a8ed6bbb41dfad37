"""Outside oracles for the three DeformConv lowerings (std, portable, plugin through the CPU reference op).

Expected values that none of our code computed:

1. ONNX's own backend node test cases for ``DeformConv`` (inputs, attributes and expected outputs, as data read
   from the installed ``onnx`` package);
2. a float64 implementation written from the op's definition (``fixtures/deform_conv_definition.py``), itself
   checked against torchvision's ``deform_conv2d`` on random cases in the style of torchvision's own tests
   (random strides, paddings, dilations, groups, offset groups; a batch of 33);
3. mmcv's published forward expectation for ``ModulatedDeformConv2dPack``, as literal numbers.

Each lowering is exported through our symbolic (TorchScript exporter: fast, and the exporter JetPack targets
use) and run on onnxruntime CPU; the portable graph also runs on OpenVINO when it is installed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fixtures import deform_conv_definition as definition
from torch import nn
from torchvision.ops import deform_conv2d

from blocks_export.blocks import DCN, to_export
from blocks_export.export import runners
from blocks_export.export.deform_conv import LOWERINGS, torchscript_symbolic

OPSET = {"std": 19, "portable": 17, "plugin": 17}
HAVE_OPENVINO = runners.version("openvino") is not None


class DeformConvs(nn.Module):
    """One ``deform_conv2d`` per case, side by side: inputs (x, offset[, mask]) per case, one output per case."""

    def __init__(self, cases: list[dict]) -> None:
        super().__init__()
        self.cases = cases
        self.weights = nn.ParameterList(nn.Parameter(torch.as_tensor(c["weight"])) for c in cases)
        self.biases = nn.ParameterList(nn.Parameter(torch.as_tensor(c["bias"] if c["bias"] is not None else
                                                                    np.zeros(len(c["weight"]), np.float32)))
                                       for c in cases)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, it = [], iter(args)
        for c, w, b in zip(self.cases, self.weights, self.biases, strict=True):
            x, offset = next(it), next(it)
            mask = next(it) if c["mask"] is not None else None
            outs.append(deform_conv2d(x, offset, w, b, c["stride"], c["padding"], c["dilation"], mask))
        return tuple(outs)


def _inputs(cases: list[dict]) -> list[np.ndarray]:
    return [a for c in cases for a in (c["x"], c["offset"], *([c["mask"]] if c["mask"] is not None else []))]


def export_lowering(module: nn.Module, inputs: list[np.ndarray], lowering: str) -> onnx.ModelProto:
    args = tuple(torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in inputs)
    names = [f"in{i}" for i in range(len(args))]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torchscript_symbolic(lowering, OPSET[lowering]):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=OPSET[lowering], input_names=names)
    return onnx.load_from_string(buf.getvalue())


def run_graph(model: onnx.ModelProto, inputs: list[np.ndarray], runtime: str = "onnxruntime") -> list[np.ndarray]:
    runner = runners.open_runner(runtime, model)
    feed = dict(zip([f"in{i}" for i in range(len(inputs))], (np.asarray(a, np.float32) for a in inputs),
                    strict=True))
    return runner.run({k: v for k, v in feed.items() if k in runner.input_names})


def _runs(cases: list[dict], lowering: str) -> list[tuple[str, list[np.ndarray]]]:
    """Outputs of ``cases`` exported with ``lowering``: on onnxruntime, and for portable also on OpenVINO."""
    module, inputs = DeformConvs(cases), _inputs(cases)
    model = export_lowering(module, inputs, lowering)
    runs = [("onnxruntime", run_graph(model, inputs))]
    if lowering == "portable" and HAVE_OPENVINO:
        runs.append(("openvino", run_graph(model, inputs, "openvino")))
    return runs


# --- 1. ONNX's backend node test cases ----------------------------------------------------------------------

def onnx_node_cases(op_type: str = "DeformConv") -> list[tuple[str, onnx.ModelProto, list[np.ndarray],
                                                               list[np.ndarray]]]:
    """(name, model, inputs, expected outputs) of ONNX's backend node tests for ``op_type``.

    Read from ``onnx/backend/test/data/node/test_*`` (model.onnx, test_data_set_0/{input,output}_*.pb) when
    the installed onnx carries that folder; onnx 1.23's wheels ship only the case definitions
    (``onnx/backend/test/case/node/deformconv.py``, the ``expect`` calls those files are generated from), so
    otherwise the same cases are collected from there.
    """
    from onnx import numpy_helper

    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    found = []
    for case in sorted(root.glob("test_*")) if root.is_dir() else []:
        model_path = case / "model.onnx"
        if not model_path.is_file():
            continue
        model = onnx.load(str(model_path))
        if not any(n.op_type == op_type for n in model.graph.node):
            continue
        data = case / "test_data_set_0"

        def read(kind: str, data: Path = data) -> list[np.ndarray]:
            out = []
            for f in sorted(data.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
                t = onnx.TensorProto()
                t.ParseFromString(f.read_bytes())
                out.append(numpy_helper.to_array(t))
            return out

        found.append((case.name, model, read("input"), read("output")))
    if found:
        return found
    import importlib

    import onnx.backend.test.case.node as node_cases

    # Importing the op's case module runs its ``expect`` calls, which append to the package's case list (the
    # public ``collect_testcases`` imports every op's module: ~15 s).
    importlib.import_module(f"onnx.backend.test.case.node.{op_type.lower()}")
    return [(c.name, c.model, list(c.data_sets[0][0]), list(c.data_sets[0][1]))
            for c in node_cases._NodeTestCases if any(n.op_type == op_type for n in c.model.graph.node)]


def _node_case(model: onnx.ModelProto, inputs: list[np.ndarray]) -> dict:
    """The ONNX node's inputs and attributes in torchvision's terms."""
    node = model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    given = dict(zip(node.input, inputs, strict=False))
    x, w, offset = given[node.input[0]], given[node.input[1]], given[node.input[2]]
    bias = given.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    mask = given.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    assert pads[:2] == pads[2:], "torchvision pads both sides alike"
    assert attrs.get("group", 1) == 1 or w.shape[1] * attrs["group"] == x.shape[1]
    return {"x": x, "offset": offset, "weight": w, "bias": bias, "mask": mask,
            "stride": tuple(attrs.get("strides", [1, 1])), "padding": tuple(pads[:2]),
            "dilation": tuple(attrs.get("dilations", [1, 1]))}


def test_onnx_node_cases_are_found() -> None:
    names = [c[0] for c in onnx_node_cases()]
    assert len(names) >= 4 and all("deform_conv" in n for n in names), names


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_lowering_reproduces_onnx_backend_node_cases(lowering: str) -> None:
    cases = onnx_node_cases()
    specs = [_node_case(model, inputs) for _, model, inputs, _ in cases]
    for runtime, got in _runs(specs, lowering):
        for (name, _, _, expected), out in zip(cases, got, strict=True):
            assert out.shape == expected[0].shape, (name, runtime)
            err = float(np.max(np.abs(out - expected[0])))
            assert err <= 1e-5, f"{lowering} on {runtime}, {name}: max abs {err:.2e}"


# --- 2. the op's definition, checked against torchvision on torchvision-style random cases --------------------

def random_cases(count: int, seed: int) -> list[dict]:
    """Random DeformConv configurations with batch 33: strides, paddings, dilations, groups, offset groups,
    kernel and input sizes, with and without mask and bias; offsets of a few pixels, so samples leave the image."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        groups, offset_groups = int(rng.choice([1, 2])), int(rng.choice([1, 3]))
        c_in, c_out = 6, 2 * groups
        kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
        stride, padding, dilation = (tuple(int(v) for v in rng.integers(lo, hi, size=2))
                                     for lo, hi in ((1, 3), (0, 3), (1, 3)))
        h, w = (int(v) for v in rng.integers(3, 8, size=2))
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if ho < 1 or wo < 1:
            continue
        taps = offset_groups * kh * kw
        cases.append({
            "x": rng.standard_normal((33, c_in, h, w)).astype(np.float32),
            "offset": (2.0 * rng.standard_normal((33, 2 * taps, ho, wo))).astype(np.float32),
            "weight": rng.standard_normal((c_out, c_in // groups, kh, kw)).astype(np.float32),
            "bias": rng.standard_normal(c_out).astype(np.float32) if rng.random() < 0.7 else None,
            "mask": rng.random((33, taps, ho, wo)).astype(np.float32) if rng.random() < 0.7 else None,
            "stride": stride, "padding": padding, "dilation": dilation})
    return cases


def _definition(c: dict) -> np.ndarray:
    return definition.deform_conv2d(c["x"], c["offset"], c["weight"], c["bias"], c["stride"], c["padding"],
                                    c["dilation"], c["mask"])


@pytest.fixture(scope="module")
def random_set() -> tuple[list[dict], list[np.ndarray]]:
    cases = random_cases(6, seed=33)
    return cases, [_definition(c) for c in cases]


def test_definition_matches_torchvision_on_random_cases(random_set: tuple[list[dict], list[np.ndarray]]) -> None:
    for c, expected in zip(*random_set, strict=True):
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in c.items()
             if isinstance(v, np.ndarray)}
        got = deform_conv2d(t["x"], t["offset"], t["weight"], t.get("bias"), c["stride"], c["padding"],
                            c["dilation"], t.get("mask")).numpy()
        assert got.shape == expected.shape
        scale = max(1.0, float(np.max(np.abs(expected))))
        assert float(np.max(np.abs(got - expected))) <= 1e-10 * scale, {k: c[k] for k in ("stride", "padding")}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_lowering_matches_the_definition_on_random_cases(lowering: str,
                                                         random_set: tuple[list[dict], list[np.ndarray]]) -> None:
    cases, expected = random_set
    for runtime, got in _runs(cases, lowering):
        for c, ref, out in zip(cases, expected, got, strict=True):
            assert out.shape == ref.shape
            err = float(np.max(np.abs(out - ref))) / max(1.0, float(np.max(np.abs(ref))))
            cfg = {k: c[k] for k in ("stride", "padding", "dilation")} | {"weight": c["weight"].shape,
                                                                          "mask": c["mask"] is not None}
            assert err <= 1e-5, f"{lowering} on {runtime}: scaled max abs {err:.2e} for {cfg}"


# --- 3. mmcv's published ModulatedDeformConv2d expectation ----------------------------------------------------

# open-mmlab/mmcv, tests/test_ops/test_modulated_deform_conv.py (commit 08653020139b452cee07fd78fd19554e8b648a99),
# ``input_t`` / ``output_t``: ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2), stride=1, padding=1,
# deform_groups=1, bias=False) with its weight filled with 1 and its offset/mask convolution zero-initialised
# (offsets 0, mask sigmoid(0) = 0.5). Only the forward values are used here.
MMCV_INPUT = [[[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]]
MMCV_OUTPUT = [[[[0.5, 1.5, 2.5, 1.5], [1.0, 3.0, 5.0, 3.0], [1.0, 3.0, 5.0, 3.0], [0.5, 1.5, 2.5, 1.5]]]]


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_lowering_reproduces_mmcv_modulated_deform_conv_expectation(lowering: str) -> None:
    # Our DCN has mmcv's Pack layout: one zero-initialised conv gives offsets and mask, sigmoid on the mask.
    block = DCN(1, 1, k=2, s=1, p=1, bias=False, modulated=True).eval()
    with torch.no_grad():
        block.dcn.weight.fill_(1.0)
    twin = to_export(block).eval()
    x = np.asarray(MMCV_INPUT, dtype=np.float32)
    model = export_lowering(twin, [x], lowering)
    runs = [("onnxruntime", run_graph(model, [x]))]
    if lowering == "portable" and HAVE_OPENVINO:
        runs.append(("openvino", run_graph(model, [x], "openvino")))
    for runtime, (out,) in runs:
        err = float(np.max(np.abs(out - np.asarray(MMCV_OUTPUT))))
        assert err <= 1e-6, f"{lowering} on {runtime}: max abs {err:.2e}"
