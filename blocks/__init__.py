"""The seed's plug-in blocks: faithful reference modules, their export twins, and the conversions between them.

``to_export(module)`` converts one reference block into its twin (same function, export-friendly graph).
``CONVERSIONS`` is the plain table behind it: reference class -> conversion. Model-level rewriting takes a
table as a parameter, so callers (and tests) can pass their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from . import acmix, context_block, coord_attn, dcn, spd
from ._init import randomize_
from .acmix import ACmix, ACmixExport
from .context_block import CB2d, CB2dExport, ContextBlock
from .coord_attn import CA, CoordAtt, CoordAttExport, h_sigmoid, h_swish
from .dcn import DCN, DCNExport
from .spd import Conv, SpaceToDepth, SpaceToDepthExport, SPDConv, SPDConvExport, space_to_depth

# A conversion takes the reference block it is registered for (hence Any) and returns its twin.
Conversion = Callable[[Any], nn.Module]

CONVERSIONS: Mapping[type[nn.Module], Conversion] = MappingProxyType({
    ACmix: acmix.to_export,
    CB2d: context_block.to_export,
    CA: coord_attn.to_export,
    space_to_depth: spd.to_export,
    SPDConv: spd.to_export,
    DCN: dcn.to_export,
})


def to_export(module: nn.Module, table: Mapping[type[nn.Module], Conversion] = CONVERSIONS) -> nn.Module:
    """Convert one reference block to its export twin; ``TypeError`` for a module the table does not know."""
    conversion = table.get(type(module))
    if conversion is None:
        known = ", ".join(sorted(t.__name__ for t in table))
        raise TypeError(f"to_export: no conversion for {type(module).__name__}; known blocks: {known}")
    return conversion(module)


# Imported after the table: the rewriter's defaults are ``CONVERSIONS`` and ``to_export`` above.
from .rewrite import RewriteReport, rewrite_model  # noqa: E402

__all__ = [
    "ACmix", "ACmixExport", "CA", "CB2d", "CB2dExport", "CONVERSIONS", "Conv", "ContextBlock", "CoordAtt",
    "CoordAttExport", "Conversion", "DCN", "DCNExport", "RewriteReport", "SPDConv", "SPDConvExport", "SpaceToDepth", "SpaceToDepthExport",
    "h_sigmoid", "h_swish", "randomize_", "rewrite_model", "space_to_depth", "to_export",
]
