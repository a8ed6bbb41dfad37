"""What a block is, in one value: ``BlockSpec``. Each block file ends with its ``SPEC``; ``blocks.BLOCKS`` lists
them, and the conversion table, the recogniser table and the contract test (tests/blocks/test_contract.py) are
read from that list."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from torch import nn

# A conversion takes the reference block it is registered for (hence Any) and returns its twin.
Conversion = Callable[[Any], nn.Module]
# A recogniser reads a foreign module and returns candidate reference blocks (``()``: not this block).
Recognizer = Callable[[nn.Module], tuple[nn.Module, ...]]
# opset (>= 18) -> {twin's op (``torch.ops.blocks_export.*`` overload): its ONNX translation}, the form of
# ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``.
Translations = Callable[[int], Mapping[Any, Callable[..., Any]]]


@dataclass(frozen=True)
class Example:
    """A small, default-initialised reference block and the inputs it is valid for: ``shapes[0]`` [N, C, H, W]
    is the export shape, the others are the shapes an export is validated at."""

    module: nn.Module
    shapes: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class BlockSpec:
    """One block.

    ``name``: the label in reports ("recognised as"); ``reference``: the seed-faithful class (its import path is
    what pickled checkpoints name, so it never moves); ``twin``: the export-friendly class ``to_export``
    returns; ``recognize``: finds the block inside foreign modules (``blocks/_match.py`` has the shared
    helpers); ``example``: builds an ``Example``; ``fp32_ops``: ONNX op types of the twin's graph that must stay
    fp32 in a mixed-precision graph (``export/fp16.py`` keeps them so; ``export/int8.py`` keeps them floating point in
    an INT8 graph); ``int8_float_ops``: op types that an INT8 graph keeps floating point on top of those (sigmoid
    gates, with what computes their logits and what applies them: fine in fp16, not in 8 bits);
    ``int8_float_inputs``: (op type, input position) pairs whose values an INT8 graph computes in floating
    point, back to the convolution that computes them (DeformConv's sampling offsets and mask).

    Export: ``onnx_translations``: the ONNX translations of the twin's own ops, for twins that ``torch.export``
    traces with an op of this package (``blocks/_ops.py``: without a translation the exporter decomposes the op,
    into a bigger graph); ``op_trace``: a context inside which ``torch.export`` traces the twin with its op where
    it does not by default (SPD's ``export_as_one_op``). ``channel_factor``: how many channels the block makes
    of each input channel before anything else (space-to-depth: 4), for guessing a model's input channels from its
    first convolution.
    """

    name: str
    reference: type[nn.Module]
    twin: type[nn.Module]
    to_export: Conversion
    recognize: Recognizer
    example: Callable[[], Example]
    fp32_ops: frozenset[str] = frozenset()
    int8_float_ops: frozenset[str] = frozenset()
    int8_float_inputs: frozenset[tuple[str, int]] = frozenset()
    onnx_translations: Translations | None = None
    op_trace: Callable[[], AbstractContextManager[None]] | None = None
    channel_factor: int = 1
