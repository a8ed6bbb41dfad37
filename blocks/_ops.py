"""The twins' own ops (``torch.ops.blocks_export.*``) and how an exporter that has no translation for them still
gets their graph.

Two twins hide size arithmetic from ``torch.export`` behind one opaque op (``torch.library.custom_op`` with a
fake implementation of the output size): ACmix's blocked window attention and SPD's space-to-depth. Their
ONNX graphs come from translations (``BlockSpec.onnx_translations``) that the export pipeline passes as
``custom_translation_table``. A user's plain ``torch.onnx.export(twin, x, dynamo=True, dynamic_shapes=...)``
passes none; ``decompose_when_untranslated`` makes that export work too.

What torch 2.14's dynamo exporter does with an op it has no ONNX function for: before translating, it
decomposes the program with ``create_onnx_friendly_decomposition_table`` (torch/onnx/_internal/exporter/
_decomp.py), which is ``torch.export.default_decompositions()`` plus ``torch._decomp.decomposition_table``, less
every op the registry (torchlib + the translation table) translates. An op with an entry in the Python
decomposition table is rewritten there into the aten ops of its Python implementation, which torchlib
translates; an op with a translation is skipped, so the pipeline keeps its translation. The other ways in
were tried and rejected: a ``CompositeImplicitAutograd`` kernel is decomposed by ``torch.export`` itself while
tracing (fake tensors run the composite, not the fake implementation), so the size arithmetic the op hides comes
back, with guards that named dynamic dims then violate; and an entry in the decomposition table alone has the
same effect, because ``FakeTensorMode`` prefers a Python decomposition to the op's fake implementation
(torch/_subclasses/fake_tensor.py, ``_dispatch_impl``) unless the op has an entry in ``torch._decomp.meta_table``.
So the op gets both: its Python implementation as decomposition, its fake implementation as meta function.

The decomposition runs inside ``ExportedProgram.run_decompositions``, whose re-trace adds no guards to the
program's dynamic dims: batch, H and W stay symbols (a batch-1 example included). Private torch tables: where
they are not as expected, nothing is registered and the plain export stops with "No ONNX function found";
``tests/blocks/test_contract.py`` exports every twin that way, so a torch release that changes this fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def decompose_when_untranslated(op: Any, implementation: Callable[..., Any], fake: Callable[..., Any]) -> bool:
    """Register ``implementation`` as ``op``'s decomposition for exporters without a translation of it, and
    ``fake`` (its ``register_fake`` function) as its meta function so that ``torch.export`` keeps tracing it as one
    op. ``op``: a ``torch._ops.OpOverload``. Returns whether both were registered."""
    try:
        from torch._decomp import decomposition_table, meta_table, register_decomposition
    except ImportError:
        return False
    if op in decomposition_table or op in meta_table:
        return op in decomposition_table and op in meta_table
    try:
        register_decomposition(op, type="meta")(fake)
        register_decomposition(op)(implementation)
    except (AssertionError, RuntimeError, TypeError):
        meta_table.pop(op, None)
        decomposition_table.pop(op, None)
        return False
    return True
