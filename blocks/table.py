"""The block list and the tables read from it.

``BLOCKS`` is explicit: adding a block means writing ``blocks/<block>.py`` (reference, twin, ``to_export``,
recogniser, ``SPEC``) and naming its spec here. Order matters for recognition: a foreign module is offered to
the recognisers in this order and the first that claims it wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from . import acmix, context_block, coord_attn, dcn, spd
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


def to_export(module: nn.Module, table: Mapping[type[nn.Module], Conversion] = CONVERSIONS) -> nn.Module:
    """Convert one reference block to its export twin; ``TypeError`` for a module the table does not know."""
    conversion = table.get(type(module))
    if conversion is None:
        known = ", ".join(sorted(t.__name__ for t in table))
        raise TypeError(f"to_export: no conversion for {type(module).__name__}; known blocks: {known}")
    return conversion(module)
