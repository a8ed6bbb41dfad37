"""The block list and the tables read from it.

``BLOCKS`` is explicit: adding a block means writing ``blocks/<block>.py`` (reference, twin, ``to_export``,
recogniser, ``SPEC``) and naming its spec here. Order matters for recognition: a foreign module is offered to
the recognisers in this order and the first that claims it wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from . import acmix, context_block, coord_attn, dcn, spd
from ._match import NotConvertible
from ._spec import BlockSpec, Conversion, Recognizer

BLOCKS: tuple[BlockSpec, ...] = (
    acmix.SPEC,
    dcn.SPEC,
    coord_attn.SPEC,
    context_block.SPEC,
    spd.SPEC,
    spd.SPACE_TO_DEPTH,
)

# Reference class -> conversion; what ``to_export`` and the rewriter use by default.
CONVERSIONS: Mapping[type[nn.Module], Conversion] = MappingProxyType({s.reference: s.to_export for s in BLOCKS})
# Label -> recogniser, in ``BLOCKS`` order.
RECOGNIZERS: Mapping[str, Recognizer] = MappingProxyType({s.name: s.recognize for s in BLOCKS})
# The fp32 op policy, read by the fp16 pass, the INT8 pass and the engine build: ONNX op types the blocks' twins
# need in fp32 (``BlockSpec.fp32_ops``), op types and inputs an INT8 graph keeps floating point on top of those.
FP32_OPS: frozenset[str] = frozenset().union(*(s.fp32_ops for s in BLOCKS))
INT8_FLOAT_OPS: frozenset[str] = frozenset().union(*(s.int8_float_ops for s in BLOCKS))
INT8_FLOAT_INPUTS: frozenset[tuple[str, int]] = frozenset().union(*(s.int8_float_inputs for s in BLOCKS))


def onnx_translations(opset: int = 18, blocks: Sequence[BlockSpec] = BLOCKS) -> dict[Any, Callable[..., Any]]:
    """The twins' own ops -> their ONNX translations at ``opset`` (>= 18): every ``BlockSpec.onnx_translations``,
    as ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` takes them."""
    table: dict[Any, Callable[..., Any]] = {}
    for spec in blocks:
        if spec.onnx_translations is not None:
            table.update(spec.onnx_translations(opset))
    return table


@contextlib.contextmanager
def traced_as_ops(blocks: Sequence[BlockSpec] = BLOCKS) -> Iterator[None]:
    """Inside: ``torch.export`` traces every twin with its own op (each ``BlockSpec.op_trace``), which
    ``onnx_translations`` translates."""
    with contextlib.ExitStack() as stack:
        for trace in dict.fromkeys(s.op_trace for s in blocks if s.op_trace is not None):
            stack.enter_context(trace())
        yield


def channel_factor(module: nn.Module, blocks: Sequence[BlockSpec] = BLOCKS) -> int:
    """How many channels ``module`` makes of each input channel before anything else: the ``channel_factor`` of the
    block it is (its reference or twin class, or what its recogniser finds in it: a pasted space-to-depth under any
    name), else 1."""
    factored = [s for s in blocks if s.channel_factor != 1]
    for spec in factored:
        if isinstance(module, (spec.reference, spec.twin)):
            return spec.channel_factor
    for spec in factored:
        try:
            found = bool(spec.recognize(module))
        except NotConvertible:  # the block's structure, with weights it cannot map: still the block
            found = True
        if found:
            return spec.channel_factor
    return 1


def to_export(module: nn.Module, table: Mapping[type[nn.Module], Conversion] = CONVERSIONS) -> nn.Module:
    """Convert one reference block to its export twin; ``TypeError`` for a module the table does not know."""
    conversion = table.get(type(module))
    if conversion is None:
        known = ", ".join(sorted(t.__name__ for t in table))
        raise TypeError(f"to_export: no conversion for {type(module).__name__}; known blocks: {known}")
    return conversion(module)
