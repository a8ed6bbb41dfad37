"""Code that reads private torch / onnxscript internals: the exporter patches (``export/torch_patches.py``) and the
twins' op decompositions (``blocks/_ops.py``). Pinned to the releases they were written for: on another release
these tests fail and say what to check again (then move ``WRITTEN_FOR``)."""

from __future__ import annotations

import onnxscript
import torch

from blocks_export.export.torch_patches import WRITTEN_FOR, exporter_patches

RECHECK = """
torch / onnxscript changed: check again, then move WRITTEN_FOR in export/torch_patches.py.
- torchlib_registry_once: ONNXRegistry.from_torchlib (torch/onnx/_internal/exporter/_registration.py) still lists
  torchlib with onnxscript's TracedOnnxFunction.function_ir (onnxscript/_internal/values.py) read for its domain
  only, and a registry is still its `functions` dict plus `_opset_version`;
- decompose_without_retrace: _fx_passes.decompose_with_registry still runs run_decompositions with
  _decomp.create_onnx_friendly_decomposition_table, and its CIA / Python split is still
  exported_program._split_decomp_table_to_cia_and_python_decomp (test_onnx_export compares the graphs);
- type_promotion_from_meta: _fx_passes.insert_type_promotion_nodes still runs InsertTypePromotion with a
  _TypePromotionInterpreter whose _maybe_promote_node rewrites a node in place (test_onnx_export compares);
- blocks/_ops.py: FakeTensorMode still skips a Python decomposition for ops in torch._decomp.meta_table, and the
  exporter's decomposition table still includes torch._decomp.decomposition_table (test_contract's plain exports).
"""


def _release(version: str, prefix: str) -> bool:
    return version == prefix or version.startswith(prefix + ".")


def test_torch_and_onnxscript_are_the_releases_the_private_patches_were_written_for() -> None:
    installed = {"torch": torch.__version__, "onnxscript": onnxscript.__version__}
    other = {name: v for name, v in installed.items() if not _release(v, WRITTEN_FOR[name])}
    assert not other, f"installed {other}, written for {WRITTEN_FOR}{RECHECK}"


def test_every_patch_finds_what_it_replaces_and_puts_it_back() -> None:
    # A patch whose internals moved does nothing, silently (the export is then only slower): caught here.
    from torch.onnx._internal.exporter import _fx_passes, _registration

    def current() -> tuple[object, ...]:
        return (_registration.ONNXRegistry.__dict__["from_torchlib"], _fx_passes.decompose_with_registry,
                _fx_passes.insert_type_promotion_nodes)

    before = current()
    with exporter_patches(program_traced_here=True):
        inside = current()
    assert all(a is not b for a, b in zip(before, inside, strict=True)), RECHECK
    assert current() == before
    with exporter_patches(program_traced_here=False):  # a user's program: the registry only
        assert [a is b for a, b in zip(before, current(), strict=True)] == [False, True, True]


def test_the_twins_ops_are_registered_for_decomposition_and_keep_their_fake() -> None:
    from torch._decomp import decomposition_table, meta_table

    import blocks_export.blocks  # noqa: F401  (defines the ops)

    for op in (torch.ops.blocks_export.acmix_window_attention.default, torch.ops.blocks_export.space_to_depth.default):
        assert op in decomposition_table and op in meta_table, (op, RECHECK)
