#!/usr/bin/env python3
"""Run an exported model with onnxruntime on a Jetson (TensorRT EP, CUDA EP or CPU) and benchmark it.

    python3 infer.py model.onnx images/ --topk 5
    python3 infer.py model_ctx.onnx --random --bench 200 --json
    python -m blocks_export.runtime.infer model.onnx image.jpg

One self-contained file on purpose: copy it to the Jetson next to the model and run it; it needs numpy and
onnxruntime / onnxruntime-gpu only (Pillow or OpenCV to read images) and no torch. Python 3.8 syntax
(JetPack 5 ships Python 3.8), so no ``match``, no ``X | Y`` outside annotations, no 3.9+ library calls.

Exit codes: 0 ok; 1 unexpected internal error (rerun with --debug); 2 bad usage or bad input (a file that
is missing, unreadable or malformed, an input that does not fit the model); 3 provider or engine
unavailable or refused (TensorRT EP missing for an engine, engine hash / TensorRT version / compute
capability mismatch, engine path escaping the model folder); 130 / 143 interrupted (SIGINT / SIGTERM).
Every refusal is one line on stderr saying what is wrong and what to do; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

try:
    import numpy as np
except ImportError:  # reported as one line by main()
    np = None  # type: ignore[assignment]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PROVIDER_NAMES = {"trt": TRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
PROVIDER_TITLES = {TRT_EP: "TensorRT EP", CUDA_EP: "CUDA EP", CPU_EP: "CPU EP"}

SIDECAR_FORMAT = "blocks-export-engine/1"
META = "blocks_export."
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Preprocessing used when the model's `blocks_export.preprocess` metadata lacks a field.
DEFAULT_RESIZE = "stretch"
RESIZE_MODES = ("stretch", "letterbox", "crop")
DEFAULT_SCALE = 1.0 / 255.0
DEFAULT_MEAN = 0.0
DEFAULT_STD = 1.0
# Letterbox border value in 0..255 pixel units, before scale/mean/std: the YOLO convention
# (Ultralytics `LetterBox`, ultralytics/data/augment.py, pads with 114).
LETTERBOX_PAD = 114.0
# Fractional bits of Pillow's 8-bit resampling coefficients (PRECISION_BITS in src/libImaging/Resample.c).
PILLOW_BITS = 22

DEFAULTS_HELP = (
    "Preprocessing comes from the model's blocks_export.preprocess metadata; missing fields default to: "
    "size = the model's static input H, W (which always wins; else blocks_export.export_shape), resize = stretch, "
    "color = RGB (GRAY for a 1-channel input; files of any mode, grayscale, RGBA, palette or 16-bit, converted to "
    "it as Pillow's convert does, 16-bit keeping the high byte), scale = 1/255, mean = 0, std = 1; "
    "x = (pixel * scale - mean) / std, NCHW. Resizing is bilinear with half-pixel centres (OpenCV "
    "INTER_LINEAR); letterbox keeps the aspect ratio and pads with 114 (a YOLO with dynamic H/W: only up to a "
    "multiple of its stride, as Ultralytics' predict does); crop scales the shorter side to the size "
    "and takes the centre (antialiased bilinear, as Pillow; Ultralytics classifiers). "
    "Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 3 provider or engine unavailable or refused, "
    "130/143 interrupted."
)


# --------------------------------------------------------------------------------------------- errors


class InferError(Exception):
    """A refusal reported as one line on stderr with a documented exit code."""

    exit_code = EXIT_BAD_INPUT


class BadInput(InferError):
    exit_code = EXIT_BAD_INPUT


class Unavailable(InferError):
    exit_code = EXIT_UNAVAILABLE


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(text).__name__


# Characters a terminal acts on instead of showing (C0/C1 controls: ESC sequences set the window title or clear
# the screen; format characters: bidi overrides reorder what is shown): model strings, labels and file names
# are printed with these escaped, so a line says what the file holds and stays one line.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: object) -> str:
    """``text`` with control and bidi characters escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


_FILE_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def read_regular(path: str, what: str) -> bytes:
    """The bytes of ``path`` when it is a regular file (a link to one counts). Opened without blocking and
    checked on the open descriptor, so a FIFO, a device or a file swapped for one is refused, never waited on."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise BadInput(f"cannot read {what} {printable(path)} ({e.strerror}); check the path and permissions"
                       ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadInput(f"{what} {printable(path)} is a {file_kind(mode)}, not a regular file; give a file")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 24)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError as e:
        raise BadInput(f"cannot read {what} {printable(path)} ({e.strerror}); check the file") from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ ONNX protobuf (no onnx package)
#
# The `onnx` package is not part of onnxruntime-gpu on a Jetson, yet metadata, EPContext attributes and
# plugin nodes must be known BEFORE a session exists (the session options depend on them, and an engine
# must be verified before onnxruntime touches it). A minimal reader of the protobuf wire format
# (https://protobuf.dev/programming-guides/encoding/) over the field numbers of onnx/onnx.proto is enough:
# ModelProto.graph = 7, .opset_import = 8, .metadata_props = 14; GraphProto.node = 1;
# NodeProto.input = 1, .output = 2, .name = 3, .op_type = 4, .attribute = 5, .domain = 7;
# AttributeProto.name = 1, .i = 3, .s = 4;
# StringStringEntryProto.key = 1, .value = 2; OperatorSetIdProto.domain = 1, .version = 2.
# Everything else (initializers, tensors) is skipped by length without being decoded.


class _ProtoError(ValueError):
    pass


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")


def _iter_fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value): an int for varints, a (start, end) span otherwise."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value: Any
        if number == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise _ProtoError(f"field {number} runs past the end of its message (truncated file?)")
        yield number, wire, value


def _span(wire: int, value: Any, what: str) -> tuple[int, int]:
    if wire != 2:
        raise _ProtoError(f"{what} has wire type {wire}, expected a length-delimited field")
    return value


def _text(buf: bytes, span: tuple[int, int], what: str) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _ProtoError(f"{what} is not UTF-8") from None


@dataclass
class NodeSummary:
    """One graph node (any depth): attributes maps each name to its int (``i``) or bytes (``s``) value.

    ``function``: the model-local function whose body holds the node ("" in the main graph and its subgraphs);
    ``ref_attributes``: attribute name -> ``ref_attr_name`` for attributes whose value the calling node gives.
    """

    name: str
    op_type: str
    domain: str
    attributes: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    function: str = ""
    ref_attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class OnnxSummary:
    metadata: dict[str, str]
    opsets: dict[str, int]
    nodes: list[NodeSummary]


# The reader must see exactly what protobuf (and so onnxruntime) sees, or a crafted file could show it one
# engine path and onnxruntime another. Where the two could differ, the reader refuses instead of guessing:
# protobuf merges a repeated singular message field (a second `graph`) and keeps the last of a repeated
# scalar, and it treats a known field sent with another wire type as an unknown field (so `embed_mode` sent
# length-delimited leaves `i` at 0). https://protobuf.dev/programming-guides/encoding/#last-one-wins
# Subgraphs (AttributeProto.g = 6, .graphs = 11) and model-local functions (ModelProto.functions = 25,
# FunctionProto.node = 7) are walked too: an EPContext node hidden in an If branch is still an EPContext node;
# one in a function body, or with AttributeProto.ref_attr_name = 21, is marked and refused by verify_ep_context.
_MAX_GRAPH_DEPTH = 64  # protobuf's own default recursion limit is 100; real models nest a few levels


def _once(seen: set[int], number: int, what: str) -> None:
    if number in seen:
        raise _ProtoError(f"{what} appears twice (protobuf would merge or override it); refusing an ambiguous file")
    seen.add(number)


def _expect_wire(wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise _ProtoError(f"{what} has wire type {wire}, expected {expected}")


def _parse_node(buf: bytes, start: int, end: int, depth: int, out: list[NodeSummary], function: str = "") -> None:
    node = NodeSummary(name="", op_type="", domain="", function=function)
    seen: set[int] = set()
    subgraphs: list[tuple[int, int]] = []
    for number, wire, value in _iter_fields(buf, start, end):
        if number in (1, 2):  # NodeProto.input, .output (repeated)
            (node.inputs if number == 1 else node.outputs).append(_text(buf, _span(wire, value, "node input/output"),
                                                                        "node input/output"))
        elif number == 3:
            _once(seen, number, "node name")
            node.name = _text(buf, _span(wire, value, "node name"), "node name")
        elif number == 4:
            _once(seen, number, "node op_type")
            node.op_type = _text(buf, _span(wire, value, "op_type"), "op_type")
        elif number == 7:
            _once(seen, number, "node domain")
            node.domain = _text(buf, _span(wire, value, "domain"), "domain")
        elif number == 5:
            name, attr_value, ref = None, None, None
            a_seen: set[int] = set()
            for a_number, a_wire, a_value in _iter_fields(buf, *_span(wire, value, "attribute")):
                if a_number == 1:
                    _once(a_seen, a_number, "attribute name")
                    name = _text(buf, _span(a_wire, a_value, "attribute name"), "attribute name")
                elif a_number == 3:
                    _once(a_seen, a_number, "attribute i")
                    _expect_wire(a_wire, 0, "attribute i")
                    attr_value = a_value - (1 << 64) if a_value >= (1 << 63) else a_value  # int64
                elif a_number == 4:
                    _once(a_seen, a_number, "attribute s")
                    s, e = _span(a_wire, a_value, "attribute s")
                    attr_value = bytes(buf[s:e])
                elif a_number == 6:
                    subgraphs.append(_span(a_wire, a_value, "attribute g"))
                elif a_number == 11:
                    subgraphs.append(_span(a_wire, a_value, "attribute graphs"))
                elif a_number == 21:
                    _once(a_seen, a_number, "attribute ref_attr_name")
                    ref = _text(buf, _span(a_wire, a_value, "ref_attr_name"), "ref_attr_name")
            if 3 in a_seen and 4 in a_seen:
                raise _ProtoError(f"attribute {name!r} has both an int and a string value")
            if name is not None:
                if name in node.attributes:
                    raise _ProtoError(f"attribute {name!r} appears twice in node {node.name!r}")
                # An attribute without a value reads as protobuf's default for the field onnxruntime asks
                # for: i = 0 (for embed_mode: an engine path, not an embedded engine).
                node.attributes[name] = 0 if attr_value is None else attr_value
                if ref is not None:
                    node.ref_attributes[name] = ref
    out.append(node)
    for span in subgraphs:
        _parse_graph(buf, span, depth + 1, out, function=function)


def _parse_graph(buf: bytes, span: tuple[int, int], depth: int, out: list[NodeSummary],
                 node_field: int = 1, function: str = "") -> None:
    if depth > _MAX_GRAPH_DEPTH:
        raise _ProtoError(f"graphs nested more than {_MAX_GRAPH_DEPTH} deep")
    for number, wire, value in _iter_fields(buf, *span):
        if number == node_field:
            _parse_node(buf, *_span(wire, value, "node"), depth, out, function)


def _function_name(buf: bytes, span: tuple[int, int]) -> str:
    """FunctionProto.domain (10) and .name (1) as ``domain:name`` (what a calling node's domain/op_type names)."""
    name, domain = "", ""
    f_seen: set[int] = set()
    for number, wire, value in _iter_fields(buf, *span):
        if number == 1:
            _once(f_seen, number, "function name")
            name = _text(buf, _span(wire, value, "function name"), "function name")
        elif number == 10:
            _once(f_seen, number, "function domain")
            domain = _text(buf, _span(wire, value, "function domain"), "function domain")
    return f"{domain}:{name}"


def parse_onnx_summary(buf: bytes) -> OnnxSummary:
    """Metadata, opsets and nodes (subgraphs and functions included) of a serialized ModelProto.

    Raises _ProtoError, also for a file protobuf would read differently from this reader.
    """
    if not buf:
        raise _ProtoError("the file is empty")
    metadata: dict[str, str] = {}
    opsets: dict[str, int] = {}
    graph = None
    functions: list[tuple[int, int]] = []
    for number, wire, value in _iter_fields(buf, 0, len(buf)):
        if number == 7:
            if graph is not None:
                raise _ProtoError("the model has two graph fields (protobuf would merge them); "
                                  "refusing an ambiguous file")
            graph = _span(wire, value, "graph")
        elif number == 25:
            functions.append(_span(wire, value, "function"))
        elif number == 14:
            key, text = "", ""
            e_seen: set[int] = set()
            for e_number, e_wire, e_value in _iter_fields(buf, *_span(wire, value, "metadata entry")):
                if e_number == 1:
                    _once(e_seen, e_number, "metadata key")
                    key = _text(buf, _span(e_wire, e_value, "metadata key"), "metadata key")
                elif e_number == 2:
                    _once(e_seen, e_number, "metadata value")
                    text = _text(buf, _span(e_wire, e_value, "metadata value"), "metadata value")
            metadata[key] = text
        elif number == 8:
            domain, version = "", 0
            o_seen: set[int] = set()
            for o_number, o_wire, o_value in _iter_fields(buf, *_span(wire, value, "opset_import")):
                if o_number == 1:
                    _once(o_seen, o_number, "opset domain")
                    domain = _text(buf, _span(o_wire, o_value, "opset domain"), "opset domain")
                elif o_number == 2:
                    _once(o_seen, o_number, "opset version")
                    _expect_wire(o_wire, 0, "opset version")
                    version = o_value
            opsets[domain] = version
    if graph is None:
        raise _ProtoError("no graph in the file")
    nodes: list[NodeSummary] = []
    _parse_graph(buf, graph, 0, nodes)
    for span in functions:
        _parse_graph(buf, span, 0, nodes, node_field=7, function=_function_name(buf, span) or "?")
    return OnnxSummary(metadata=metadata, opsets=opsets, nodes=nodes)


def read_onnx_summary(path: str) -> OnnxSummary:
    buf = read_regular(path, "model")
    try:
        return parse_onnx_summary(buf)
    except _ProtoError as e:
        raise BadInput(f"{printable(path)} is not a valid ONNX model ({printable(e)}); export it again or copy it "
                       "again") from None


# ----------------------------------------------------------------------------------------- metadata
#
# The ONNX metadata contract, one definition for the writer (the library's export/metadata.py, which imports it)
# and the reader (parse_meta): every `blocks_export.*` key and the JSON type of its value. A `str` value is
# written as it is, every other value (None included) as JSON.
META_KEYS = {
    "version": str,  # the toolkit's version
    "source_sha256": str,  # SHA-256 of the model file exported
    "inputs": list,  # [{"name", "shape" (ints or dim names), "dtype"}]
    "outputs": list,
    "dynamic": dict,  # {input: {axis: {"min", "max", "multiple_of"}}}, null for a static graph
    "export_shape": dict,  # {input: [N, C, H, W]}: the shape exported and verified at
    "blocks": list,  # the blocks replaced by export twins
    "precision": str,  # fp32 | fp16 | int8
    "target": str,
    "deform_conv": str,
    "parity": dict,  # the verification's summary, null when not verified
    "task": str,  # classify | detect | features
    "labels": list,  # class names
    "preprocess": dict,  # {"size", "resize", "color", "scale", "mean", "std"}
}


def encode_meta(values: dict[str, Any]) -> dict[str, str]:
    """The `metadata_props` entries (`blocks_export.<key>`: string) of ``values``; ValueError for a key or value
    type outside META_KEYS."""
    out = {}
    for key, value in values.items():
        kind = META_KEYS.get(key)
        if kind is None:
            raise ValueError(f"{META}{key} is not a metadata key (known: {', '.join(META_KEYS)})")
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{META}{key} takes a {kind.__name__}, not {type(value).__name__}")
        out[META + key] = value if isinstance(value, str) else json.dumps(value)
    return out


def decode_meta(metadata: dict[str, str]) -> dict[str, Any]:
    """`blocks_export.*` entries of ``metadata`` by key (without the prefix): contract strings as they are,
    everything else JSON-decoded where it parses (an entry this script does not know is kept as it is)."""
    out: dict[str, Any] = {}
    for name, raw in metadata.items():
        if not name.startswith(META):
            continue
        key = name[len(META):]
        if META_KEYS.get(key) is str:
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@dataclass
class ModelMeta:
    """The `blocks_export.*` metadata keys written by the export pipeline (all optional here)."""

    task: str | None = None
    labels: list[str] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    dynamic: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    export_shape: dict[str, list[int]] = field(default_factory=dict)
    stride: int | None = None  # an Ultralytics model's largest stride (its metadata's `stride`)
    present: bool = False


def _json_value(metadata: dict[str, str], key: str) -> Any:
    expected = META_KEYS[key]
    raw = metadata.get(META + key)
    if raw is None or raw == "null":
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # also a number past Python's digit limit, nesting past the stack
        raise BadInput(f"metadata {META}{key} is not valid JSON (or nested too deeply); export the model again"
                       ) from None
    if value is not None and not isinstance(value, expected):
        raise BadInput(f"metadata {META}{key} should be a JSON {expected.__name__}, got "
                       f"{type(value).__name__}; export the model again")
    return value


def parse_meta(metadata: dict[str, str]) -> ModelMeta:
    meta = ModelMeta(present=any(k.startswith(META) for k in metadata))
    meta.task = metadata.get(META + "task") or None
    labels = _json_value(metadata, "labels")
    if labels is not None:
        if not all(isinstance(label, (str, int, float)) for label in labels):
            raise BadInput(f"metadata {META}labels should be a list of names; export the model again")
        meta.labels = [str(label) for label in labels]
    meta.preprocess = _json_value(metadata, "preprocess") or {}
    meta.precision = metadata.get(META + "precision") or "fp32"
    dynamic = _json_value(metadata, "dynamic") or {}
    for name, axes in dynamic.items():
        if not isinstance(axes, dict):
            raise BadInput(f"metadata {META}dynamic[{name!r}] should map axes to bounds; export the model again")
        try:
            meta.dynamic[name] = {int(axis): (bounds or {}) for axis, bounds in axes.items()}
        except (TypeError, ValueError):
            raise BadInput(f"metadata {META}dynamic[{name!r}] has a non-integer axis; "
                           "export the model again") from None
    shapes = _json_value(metadata, "export_shape") or {}
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise BadInput(f"metadata {META}export_shape[{name!r}] should be a list of ints; "
                           "export the model again")
        meta.export_shape[name] = shape
    if metadata.get("author") == "Ultralytics":  # exported by `yolo export`: its own keys say the same things
        _ultralytics_meta(metadata, meta)
    return meta


def _ultralytics_meta(metadata: dict[str, str], meta: ModelMeta) -> None:
    """Task, class names and resize mode from Ultralytics' metadata (ultralytics/engine/exporter.py writes each value
    as ``str()`` of a Python literal), for whatever the ``blocks_export.*`` keys do not already say."""
    def literal(key: str) -> Any:
        try:
            return ast.literal_eval(metadata.get(key, "None"))
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):  # unreadable: as if absent
            return None

    names, imgsz, stride = literal("names"), literal("imgsz"), literal("stride")
    if type(stride) is int and stride > 0:
        meta.stride = stride
    # {index: name} as Ultralytics writes it; other shapes (mixed or non-integer keys) are ignored, not sorted
    if meta.labels is None and isinstance(names, dict) and names and all(
            type(k) is int for k in names) and all(isinstance(v, (str, int, float)) for v in names.values()):
        meta.labels = [str(names[k]) for k in sorted(names)]
    if meta.task is None and metadata.get("task") in ("detect", "classify"):
        meta.task = metadata["task"]
    if meta.task == "detect" and "resize" not in meta.preprocess:
        meta.preprocess = dict(meta.preprocess, resize="letterbox")  # Ultralytics' LetterBox, pad 114
    # Ultralytics' ClassificationPredictor preprocesses every classifier with classify_transforms (resize the shorter
    # side, centre crop; ultralytics/models/yolo/classify/predict.py, ultralytics/data/augment.py), never a
    # letterbox: exports written before "crop" existed said letterbox for every task.
    if meta.task == "classify" and metadata.get("task") == "classify" and meta.preprocess.get("resize") in (
            None, "letterbox"):
        meta.preprocess = dict(meta.preprocess, resize="crop")
    if "size" not in meta.preprocess and isinstance(imgsz, list) and len(imgsz) == 2:
        meta.preprocess = dict(meta.preprocess, size=[int(v) for v in imgsz])


# --------------------------------------------------------------------------------- engine integrity


@dataclass
class MachineFacts:
    """What this machine runs, or None with the reason it could not be determined."""

    tensorrt_version: str | None
    tensorrt_source: str
    compute_capability: str | None
    compute_capability_source: str


def _tensorrt_version() -> tuple[str | None, str]:
    try:
        import tensorrt  # type: ignore[import-not-found]

        version = getattr(tensorrt, "__version__", None)
        if version:
            return str(version), "tensorrt module"
    except Exception:  # a broken install must not stop inference; it only makes the check impossible
        pass
    # Without the Python module the library itself says its version: getInferLibVersion() returns
    # NV_TENSORRT_VERSION, major*10000 + minor*100 + patch from TensorRT 10 (NvInferRuntimeBase.h,
    # NV_TENSORRT_VERSION_INT) and major*1000 + minor*100 + patch in TensorRT 8 (NvInferVersion.h).
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(name)
            number = int(lib.getInferLibVersion())
        except (OSError, AttributeError):
            continue
        if number >= 100000:
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}", name
        return f"{number // 1000}.{number // 100 % 10}.{number % 100}", name
    return None, "no tensorrt module with a version and no libnvinfer library found"


def _compute_capability(device_id: int) -> tuple[str | None, str]:
    # CUDA driver API (cuda.h): CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76.
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if (lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(device), device_id) != 0
                or lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0
                or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) != 0):
            return None, f"{name} found but CUDA device {device_id} could not be queried"
        return f"{major.value}.{minor.value}", "CUDA driver"
    return None, "no CUDA driver library (libcuda) found"


def detect_machine(device_id: int) -> MachineFacts:
    version, version_source = _tensorrt_version()
    capability, capability_source = _compute_capability(device_id)
    return MachineFacts(version, version_source, capability, capability_source)


def _version_key(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0): engines are tied to major.minor.patch."""
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def _capability_key(text: str) -> tuple[int, int]:
    """'8.7' or '87' (the EPContext ``hardware_architecture`` form) -> (8, 7)."""
    text = str(text).strip()
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    return int(text[:-1]), int(text[-1:])


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SidecarInvalid(ValueError):
    """A file that is not a usable engine sidecar: ``reason`` (what is wrong) and ``remedy`` (what to copy)."""

    def __init__(self, reason: str, remedy: str) -> None:
        super().__init__(reason)
        self.reason, self.remedy = reason, remedy


# The engine-sidecar contract, one definition for every engine writer and loader: ``Sidecar`` (the file's fields,
# in the order they are written), ``read_sidecar`` and ``engine_mismatches`` here, used by this script and by the
# library (``export/trt/sidecar.py`` writes a ``Sidecar`` and imports the checks), so the two can never disagree
# on what a sidecar holds or give different verdicts on the same engine and sidecar.
@dataclass(frozen=True)
class Sidecar:
    """``model.engine.json``: what an engine was built from and for. A field a reader does not find is None (or
    empty); the builder writes them all."""

    engine_sha256: str
    tensorrt_version: str | None = None
    device_name: str | None = None
    compute_capability: str | None = None
    precision: str | None = None
    strongly_typed: bool | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "shape" (-1: dynamic), "dtype"}]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, dict[str, list[int]]]] = field(default_factory=list)  # [{input: {"min", "opt", "max"}}]
    toolkit_version: str | None = None
    target: str | None = None
    source_onnx: str | None = None
    source_onnx_sha256: str | None = None
    plugins: list[str] = field(default_factory=list)
    build_seconds: float | None = None
    fp32_layers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The file's JSON object: ``format`` first, then every field in order."""
        out: dict[str, Any] = {"format": SIDECAR_FORMAT}
        out.update((name, getattr(self, name)) for name in self.__dataclass_fields__)
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any], name: str = "the sidecar") -> Sidecar:
        """``SidecarInvalid`` unless ``record`` is a blocks-export engine sidecar with a valid engine_sha256; keys
        this version does not know are ignored."""
        if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
            raise SidecarInvalid(f"{name} is not a {SIDECAR_FORMAT} engine sidecar", "copy the right one")
        digest = record.get("engine_sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise SidecarInvalid(f"{name} has no valid engine_sha256", "copy it again")
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)


def read_sidecar(path: str) -> Sidecar:
    """Read a ``model.engine.json``; ``SidecarInvalid`` when it is not a blocks-export engine sidecar."""
    name = printable(os.path.basename(path))
    try:
        record = json.loads(read_regular(path, "engine sidecar").decode("utf-8"))
    except (BadInput, ValueError, RecursionError) as e:  # also not UTF-8, nested past the stack, huge numbers
        raise SidecarInvalid(f"cannot read engine sidecar {name} ({printable(_first_line(e))})",
                             "copy it again from the machine that built the engine") from None
    sidecar = Sidecar.from_dict(record, name)
    problem = _sidecar_shape_problem(record)
    if problem:
        raise SidecarInvalid(f"{name} {problem}", "copy it again from the machine that built the engine")
    return sidecar


def _sidecar_shape_problem(sidecar: dict[str, Any]) -> str | None:
    """Why the fields the loaders read are not of the types written (None: they are)."""
    for key in ("tensorrt_version", "device_name", "compute_capability"):
        value = sidecar.get(key)
        if value is not None and not isinstance(value, (str, int, float)):
            return f"has a {type(value).__name__} for {key}"
    profiles = sidecar.get("profiles")
    if profiles is None:
        return None
    if not isinstance(profiles, list) or not all(isinstance(p, dict) for p in profiles):
        return "has profiles that are not a list of {input: {min, opt, max}}"
    for profile in profiles:
        for bounds in profile.values():
            if not isinstance(bounds, dict) or not all(
                    isinstance(bounds.get(k), list) and all(type(d) is int and 0 <= d < 1 << 31 for d in bounds[k])
                    for k in ("min", "opt", "max")):
                return "has a profile whose min/opt/max are not lists of dimensions"
    return None


def load_sidecar(path: str) -> Sidecar:
    """Read a ``model.engine.json``; raises Unavailable when it is not a blocks-export engine sidecar."""
    try:
        return read_sidecar(path)
    except SidecarInvalid as e:
        raise Unavailable(f"{e.reason}; {e.remedy}, or pass --no-verify-engine") from None


def engine_mismatches(sidecar: Sidecar, engine_sha256: str,
                      machine: MachineFacts) -> tuple[list[str], list[str]]:
    """Compare an engine and this machine with its sidecar: (mismatches, checks that could not be made)."""
    mismatches: list[str] = []
    unchecked: list[str] = []
    expected = str(sidecar.engine_sha256).lower()
    if engine_sha256.lower() != expected:
        mismatches.append(f"engine SHA-256 {engine_sha256[:12]}... does not match the sidecar's "
                          f"{expected[:12]}... (modified, or not the engine this sidecar describes)")
    built_version = sidecar.tensorrt_version
    if not built_version:
        unchecked.append("the sidecar records no TensorRT version")
    elif machine.tensorrt_version is None:
        unchecked.append(f"TensorRT version of this machine not determined ({machine.tensorrt_source})")
    elif _version_key(built_version) != _version_key(machine.tensorrt_version):
        # A plan file only deserializes with the TensorRT version that built it (TensorRT developer
        # guide, "Version Compatibility"), unless built version-compatible, which the toolkit does not do.
        mismatches.append(f"engine built with TensorRT {built_version}, this machine has TensorRT "
                          f"{machine.tensorrt_version} ({machine.tensorrt_source})")
    built_capability = sidecar.compute_capability
    if not built_capability:
        unchecked.append("the sidecar records no compute capability")
    elif machine.compute_capability is None:
        unchecked.append(f"compute capability of this GPU not determined ({machine.compute_capability_source})")
    elif not re.fullmatch(r"\d+(\.\d+)?", str(built_capability).strip()):
        unchecked.append(f"the sidecar's compute capability {built_capability!r} is unreadable")
    elif _capability_key(built_capability) != _capability_key(machine.compute_capability):
        device = sidecar.device_name or "unknown device"
        mismatches.append(f"engine built for compute capability {built_capability} ({device}), "
                          f"this GPU is {machine.compute_capability}")
    return mismatches, unchecked


def check_engine_path(model_dir: str, reference: str) -> str:
    """Resolve an EPContext ``ep_cache_context`` path, refusing one that leaves the model's folder.

    onnxruntime's TensorRT EP resolves it against the model's folder and itself rejects absolute paths and
    any '..' (onnxruntime/core/providers/tensorrt/onnx_ctx_model_helper.cc, IsAbsolutePath /
    IsRelativePathToParentPath); older builds did not, and a symlink can still point elsewhere, so the
    check is made here, before onnxruntime reads anything.
    """
    if not reference:
        raise BadInput("the EPContext node has an empty ep_cache_context path; write the EPContext model again")
    if "\x00" in reference:
        raise Unavailable(f"refused: EPContext engine path {reference!r} contains a NUL byte; "
                          "write the EPContext model again")
    if (os.path.isabs(reference) or reference.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", reference)):
        raise Unavailable(f"refused: EPContext engine path {reference!r} is absolute and escapes the model's "
                          "folder; put the engine beside the model and reference it by file name")
    if ".." in re.split(r"[\\/]+", reference):
        raise Unavailable(f"refused: EPContext engine path {reference!r} escapes the model's folder; "
                          "put the engine beside the model and reference it by file name")
    folder = os.path.realpath(model_dir)
    resolved = os.path.realpath(os.path.join(folder, reference))
    if os.path.commonpath([folder, resolved]) != folder:
        raise Unavailable(f"refused: EPContext engine path {reference!r} resolves (through a link) to "
                          f"{resolved}, outside the model's folder; copy the engine itself beside the model")
    return resolved


@dataclass
class EngineCheck:
    engine: str
    notes: list[str]
    warnings: list[str]


def verify_ep_context(model_path: str, nodes: Sequence[NodeSummary], verify: bool,
                      machine: MachineFacts | None = None, device_id: int = 0) -> list[EngineCheck]:
    """Validate every EPContext node of ``model_path`` and the engine it points to.

    Raises BadInput for a malformed node or a missing engine file, Unavailable for an engine that is
    refused (path escape always; hash, TensorRT version or compute capability mismatch unless
    ``verify`` is False, in which case the mismatches become warnings).
    """
    model_dir = os.path.dirname(os.path.abspath(model_path))
    model_name = os.path.basename(model_path)
    checks = []
    for node in nodes:
        # Inside a model-local function, onnxruntime inlines the body into each caller and an attribute with
        # ref_attr_name takes the CALLER's value (or the function's default), not the literal written beside it
        # (onnxruntime/core/graph/function_utils.cc, Inliner). The engine this reader would check is then not
        # the one onnxruntime loads: such nodes are refused, not resolved.
        if node.function:
            raise Unavailable(f"refused: EPContext node {node.name!r} is inside the model-local function "
                              f"{node.function.lstrip(':')!r}, where onnxruntime takes its attributes from the "
                              "calling node; put EPContext nodes in the main graph (write the EPContext model "
                              "again)")
        if node.ref_attributes:
            attr, ref = next(iter(node.ref_attributes.items()))
            raise Unavailable(f"refused: EPContext node {node.name!r} takes attribute {attr!r} by reference "
                              f"(ref_attr_name {ref!r}) instead of its own value; write the EPContext model again")
        if node.domain != "com.microsoft":
            raise BadInput(f"EPContext node {node.name!r} is in domain {node.domain!r}; onnxruntime only knows "
                           "EPContext in com.microsoft; write the EPContext model again")
        embed_mode = node.attributes.get("embed_mode", 1)  # the contrib op's default (contrib_defs.cc)
        context = node.attributes.get("ep_cache_context")
        if not isinstance(context, bytes):
            raise BadInput(f"EPContext node {node.name!r} has no ep_cache_context; "
                           "write the EPContext model again")
        if embed_mode == 0:
            try:
                reference = context.decode("utf-8")
            except UnicodeDecodeError:
                raise Unavailable(f"refused: EPContext node {node.name!r} has an engine path that is not UTF-8; "
                                  "write the EPContext model again") from None
            engine = check_engine_path(model_dir, reference)
            if not os.path.isfile(engine):
                raise BadInput(f"{model_name} references engine {reference}, which is not there; "
                               f"copy it beside {model_name}")
            sidecar_path = engine + ".json"
            label = os.path.basename(engine)
        else:
            engine = f"(embedded in {model_name})"
            stem = re.sub(r"_ctx$", "", os.path.splitext(model_name)[0])
            sidecar_path = os.path.join(model_dir, stem + ".engine.json")
            label = "the engine embedded in " + model_name
        notes: list[str] = []
        warnings: list[str] = []
        if not verify:
            warnings.append(f"--no-verify-engine: loading {label} WITHOUT checking its SHA-256, TensorRT version "
                            "or compute capability")
        if not os.path.isfile(sidecar_path):
            # Without its sidecar nothing says which engine this is: deleting the sidecar must not be a way
            # around the hash check.
            if verify:
                raise Unavailable(f"refused {label}: no {os.path.basename(sidecar_path)} beside it to verify its "
                                  "SHA-256; copy the sidecar written with the engine, or pass --no-verify-engine "
                                  "to load it anyway")
            warnings.append(f"--no-verify-engine: no {os.path.basename(sidecar_path)} beside {label}")
            checks.append(EngineCheck(engine, notes, warnings))
            continue
        try:
            sidecar = load_sidecar(sidecar_path)
        except Unavailable as e:
            if verify:
                raise
            warnings.append(f"ignored: {e}")
            checks.append(EngineCheck(engine, notes, warnings))
            continue
        digest = sha256_file(engine) if embed_mode == 0 else hashlib.sha256(context).hexdigest()
        facts = machine if machine is not None else detect_machine(device_id)
        mismatches, unchecked = engine_mismatches(sidecar, digest, facts)
        for item in unchecked:
            notes.append(f"{item}: not checked")
        if mismatches and verify:
            raise Unavailable(f"refused {label}: {'; '.join(mismatches)}; rebuild the engine on this device "
                              "(blocks-export MODEL.onnx --to trt) or pass --no-verify-engine to load it anyway")
        if mismatches:
            warnings.append(f"--no-verify-engine: would have refused {label}: {'; '.join(mismatches)}")
        elif verify:
            notes.append("{} verified against {} (SHA-256{})".format(
                label, os.path.basename(sidecar_path),
                "".join(", " + what for what, ok in (("TensorRT version", facts.tensorrt_version),
                                                      ("compute capability", facts.compute_capability)) if ok)))
        checks.append(EngineCheck(engine, notes, warnings))
    return checks


# ---------------------------------------------------------------------------------------- providers


@dataclass
class ProviderPlan:
    chain: list[str]
    notes: list[str]


def plan_providers(available: Sequence[str], forced: str | None = None,
                   needs_tensorrt: str | None = None) -> ProviderPlan:
    """Pick the provider chain TensorRT EP -> CUDA EP -> CPU from what this onnxruntime build offers.

    ``forced`` is 'trt', 'cuda' or 'cpu'; ``needs_tensorrt`` is the reason when the model can only run on
    the TensorRT EP (EPContext engine, TensorRT plugin nodes). Raises Unavailable when the choice is
    impossible; every fallback is announced in one note.
    """
    listed = ", ".join(available) or "none"
    if forced is not None:
        if forced not in PROVIDER_NAMES:
            raise BadInput("--provider {!r}: choose one of {}".format(forced, ", ".join(PROVIDER_NAMES)))
        name = PROVIDER_NAMES[forced]
        if name not in available:
            raise Unavailable(f"--provider {forced}: {name} is not available in this onnxruntime build "
                              f"(providers: {listed}); install onnxruntime-gpu built with it (Jetson: the wheel "
                              "for your JetPack) or choose another --provider")
        if needs_tensorrt and name != TRT_EP:
            raise Unavailable(f"--provider {forced}: {needs_tensorrt}; use --provider trt")
        return ProviderPlan([name], [])
    if needs_tensorrt:
        if TRT_EP not in available:
            raise Unavailable(f"{needs_tensorrt}, and the TensorRT EP is not available in this onnxruntime "
                              f"build (providers: {listed}); run it where onnxruntime-gpu has TensorRT (Jetson), "
                              "or run the plain .onnx")
        return ProviderPlan([TRT_EP] + [p for p in (CUDA_EP,) if p in available], [])
    chain = [p for p in (TRT_EP, CUDA_EP, CPU_EP) if p in available]
    if not chain:
        raise Unavailable(f"this onnxruntime build offers no TensorRT, CUDA or CPU provider "
                          f"(providers: {listed}); reinstall onnxruntime")
    missing = [PROVIDER_TITLES[p] for p in (TRT_EP, CUDA_EP) if p not in available]
    notes = []
    if missing:
        notes.append(f"{' and '.join(missing)} not available in this onnxruntime build (providers: {listed}); "
                     f"using {chain[0]}")
    return ProviderPlan(chain, notes)


def confirm_providers(plan: ProviderPlan, used: Sequence[str], strict: bool) -> list[str]:
    """Compare the session's providers with the plan: a provider can be built in yet fail to start."""
    wanted = plan.chain[0]
    if used and used[0] == wanted:
        return []
    got = used[0] if used else "none"
    title = PROVIDER_TITLES.get(wanted, wanted)
    why = "missing CUDA/TensorRT libraries? see onnxruntime's message above"
    if strict:
        raise Unavailable(f"{title} is in this onnxruntime build but could not be started ({why}) and "
                          f"onnxruntime fell back to {got}; fix the install")
    return [f"{title} is in this onnxruntime build but could not be started ({why}); the session uses {got}"]


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def profile_from_sidecar(sidecar: Sidecar) -> dict[str, str] | None:
    """trt_profile_{min,opt,max}_shapes strings from a sidecar's first optimization profile."""
    profiles = sidecar.profiles
    if not profiles or not isinstance(profiles[0], dict):
        return None
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for name, bounds in profiles[0].items():
        for key in shapes:
            shapes[key].append(f"{name}:{_shape_text(bounds[key])}")
    return {f"trt_profile_{key}_shapes": ",".join(parts) for key, parts in shapes.items()}


def profile_from_meta(meta: ModelMeta) -> dict[str, str] | None:
    """Profile strings from `blocks_export.dynamic` bounds around `blocks_export.export_shape` (opt).

    None when the model is static or a bound is unknown: the TensorRT EP then builds for the shapes it
    is given at run time.
    """
    if not meta.dynamic:
        return None
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for name, axes in meta.dynamic.items():
        opt = meta.export_shape.get(name)
        if opt is None:
            return None
        low, high = list(opt), list(opt)
        for axis, bounds in axes.items():
            if not 0 <= axis < len(opt) or bounds.get("min") is None or bounds.get("max") is None:
                return None
            low[axis], high[axis] = int(bounds["min"]), int(bounds["max"])
        shapes["min"].append(f"{name}:{_shape_text(low)}")
        shapes["opt"].append(f"{name}:{_shape_text(opt)}")
        shapes["max"].append(f"{name}:{_shape_text(high)}")
    return {f"trt_profile_{key}_shapes": ",".join(parts) for key, parts in shapes.items()}


def tensorrt_options(model_path: str, meta: ModelMeta, *, fp16: bool, is_ep_context: bool,
                     plugin_libs: Sequence[str] = (), profile: dict[str, str] | None = None,
                     device_id: int = 0) -> dict[str, str]:
    """Options for onnxruntime's TensorRT EP.

    Names from https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html
    ("Configurations"): trt_engine_cache_enable / trt_engine_cache_path, trt_timing_cache_enable /
    trt_timing_cache_path, trt_fp16_enable, trt_profile_{min,opt,max}_shapes ("name:1x3x224x224,..."; all
    three together), trt_extra_plugin_lib_paths (';'-separated). Nodes in domain `trt.plugins` need nothing
    more: onnxruntime's Python binding registers TensorRT's plugins as custom ops of that domain whenever the
    TensorRT EP is requested (onnxruntime/python/onnxruntime_pybind_state.cc,
    RegisterTensorRTPluginsAsCustomOps).
    """
    options = {"device_id": str(device_id)}
    if fp16 or meta.precision == "fp16":
        options["trt_fp16_enable"] = "True"
    if plugin_libs:
        options["trt_extra_plugin_lib_paths"] = ";".join(plugin_libs)
    if is_ep_context:
        # The engine is already built: cache, timing cache and profiles only matter when building.
        return options
    stem = os.path.splitext(os.path.basename(model_path))[0]
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(model_path)), stem + "_trt_cache")
    options.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache_dir,
                    "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache_dir})
    if profile:
        options.update(profile)
    return options


# ------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Preprocess:
    """Image to tensor: resize to ``size`` (H, W), convert color, x = (pixel * scale - mean) / std.

    ``stride`` > 0 (letterbox only): the image is letterboxed into the smallest rectangle, padded to a multiple of
    ``stride``, that holds it at the scale ``size`` gives (Ultralytics' ``LetterBox(auto=True)``), not into all of
    ``size``; what ``YOLO('model.onnx').predict`` feeds a graph with dynamic H/W.
    """

    size: tuple[int, int]
    resize: str = DEFAULT_RESIZE
    color: str = "RGB"
    scale: float = DEFAULT_SCALE
    mean: tuple[float, ...] = (DEFAULT_MEAN,)
    std: tuple[float, ...] = (DEFAULT_STD,)
    stride: int = 0


def read_image(path: str) -> np.ndarray:
    """Decode an image to 8-bit pixels: [H, W] uint8 for grayscale files, [H, W, 3] uint8 RGB for every other
    (``_pil_pixels``: what Pillow's ``convert("RGB")`` and Ultralytics' reader make of each mode)."""
    try:
        from PIL import Image
    except ImportError:
        Image = None  # type: ignore[assignment]
    data = read_regular(path, "image")  # a FIFO or device named .png is refused, never waited on
    shown = printable(path)
    if Image is not None:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return _pil_pixels(opened, path)
        except BadInput:
            raise
        except Exception as e:  # PIL raises many types for broken files (UnidentifiedImageError, OSError, ...)
            raise BadInput(f"cannot read image {shown} ({printable(_first_line(e))}); check the file") from None
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise BadInput("reading images needs Pillow or OpenCV: pip install pillow (or pass .npy arrays)") from None
    data = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise BadInput(f"cannot read image {shown}; check the file")
    return _cv2_pixels(data, path, cv2)


_GRAY_MODES = ("L", "LA", "La", "1")


def _high_byte(data: np.ndarray, path: str, mode: str) -> np.ndarray:
    """16-bit pixels -> their high byte (value >> 8), as OpenCV's ``IMREAD_COLOR`` and Pillow's 16-bit RGB PNG
    decoder reduce them."""
    if data.dtype.kind not in "iu" or (data.size and (int(data.min()) < 0 or int(data.max()) > 65535)):
        raise BadInput(f"{path} is a {mode} image with values outside 0..65535 (not 8- or 16-bit); convert it "
                       "to 8-bit")
    return (data.astype(np.uint32) >> 8).astype(np.uint8)


def _pil_pixels(opened: Any, path: str) -> np.ndarray:
    """A loaded Pillow image as ``read_image`` returns it.

    Every 8-bit mode as Pillow's ``convert("RGB")`` gives it (``convert("L")`` for the grayscale ones: L, LA, 1, so
    that a grayscale model sees Pillow's own gray): alpha dropped without compositing (RGBA, LA, PA), the palette
    looked up (P), CMYK and YCbCr converted, 1-bit as 0/255. This is what Ultralytics feeds its models too: its file
    reader (OpenCV ``IMREAD_COLOR``) drops alpha and expands palettes and gray the same way, and it converts other
    images with ``convert("RGB")``. 16-bit grayscale keeps the high byte of each value, as OpenCV (hence
    Ultralytics) and Pillow's own decoder of 16-bit RGB PNGs do; Pillow's ``convert`` would clip every value above
    255 to white. Older Pillow opens a 16-bit PNG as mode ``I``, read the same way. A float image is refused.
    """
    mode = opened.mode
    if mode.startswith("I;16") or mode == "I":
        return _high_byte(np.asarray(opened), path, mode)
    if mode == "F":
        raise BadInput(f"{path} is a floating-point (mode F) image; convert it to 8-bit")
    decoded = opened.convert("L") if mode in _GRAY_MODES else opened.convert("RGB")
    return np.asarray(decoded, dtype=np.uint8)


def _cv2_pixels(data: np.ndarray, path: str, cv2: Any) -> np.ndarray:
    """OpenCV's ``IMREAD_UNCHANGED`` pixels as ``read_image`` returns them (the same choices as ``_pil_pixels``)."""
    if data.dtype == np.uint16:
        data = _high_byte(data, path, "16-bit")
    elif data.dtype != np.uint8:
        raise BadInput(f"{path} is a {data.dtype} image; convert it to 8-bit")
    if data.ndim == 2:
        return data
    if data.shape[2] == 2:  # gray + alpha
        return np.ascontiguousarray(data[:, :, 0])
    code = cv2.COLOR_BGRA2RGB if data.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(data, code)


def convert_color(img: np.ndarray, color: str) -> np.ndarray:
    """[H, W] or [H, W, 3] uint8 -> [H, W, C] uint8 with C = 1 (GRAY) or 3 (RGB).

    As Pillow converts: GRAY -> RGB repeats the value (``convert("RGB")`` of an L image); RGB -> GRAY takes the
    ITU-R BT.601 luma in Pillow's fixed point, (19595 R + 38470 G + 7471 B + 2^15) >> 16 (``L24`` in Pillow's
    src/libImaging/Convert.c: ``convert("L")``).
    """
    if color == "GRAY":
        if img.ndim == 3:
            rgb = img.astype(np.uint32)
            luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
            img = luma.astype(np.uint8)
        return img[:, :, None]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return img


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [H, W, C] to [size[0], size[1], C] float32, half-pixel centres, no antialias.

    Same sampling as OpenCV INTER_LINEAR and torch interpolate(align_corners=False); done in numpy so the
    result does not depend on which image library is installed.
    """
    h, w = img.shape[:2]
    out_h, out_w = size
    data = img.astype(np.float32)
    if (h, w) == (out_h, out_w):
        return data

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(0, n_in - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (pos - low).astype(np.float32)

    y0, y1, wy = taps(h, out_h)
    x0, x1, wx = taps(w, out_w)
    wx = wx[None, :, None]
    top = data[y0][:, x0] * (1 - wx) + data[y0][:, x1] * wx  # (out_h, out_w, C)
    bottom = data[y1][:, x0] * (1 - wx) + data[y1][:, x1] * wx  # (out_h, out_w, C)
    wy = wy[:, None, None]
    return top * (1 - wy) + bottom * wy


def letterbox_geometry(image_hw: Sequence[int], size: tuple[int, int],
                       stride: int = 0) -> tuple[int, int, int, int]:
    """Where letterbox puts an image of ``image_hw`` (H, W) in ``size``: (top, left, new_h, new_w).

    As Ultralytics' ``LetterBox`` (ultralytics/data/augment.py): one ratio for both sides, each side rounded, the
    image centred with the odd pixel of padding at the bottom / right; with ``stride``, in the canvas of
    ``letterbox_canvas`` (its ``auto=True``).
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    out_h, out_w = size
    ratio = min(out_h / h, out_w / w)
    new_h = min(out_h, max(1, int(round(h * ratio))))
    new_w = min(out_w, max(1, int(round(w * ratio))))
    if stride > 0:
        out_h, out_w = new_h + (out_h - new_h) % stride, new_w + (out_w - new_w) % stride
    return (out_h - new_h) // 2, (out_w - new_w) // 2, new_h, new_w


def letterbox_canvas(image_hw: Sequence[int], size: tuple[int, int], stride: int = 0) -> tuple[int, int]:
    """(H, W) of an image's letterboxed tensor: ``size``, or with ``stride`` the smallest rectangle that holds the
    image at the scale ``size`` gives, each side padded only to a multiple of ``stride`` (Ultralytics'
    ``LetterBox(auto=True)``: the padding ``size - new`` modulo the stride)."""
    if stride <= 0:
        return size
    _, _, new_h, new_w = letterbox_geometry(image_hw, size)
    return new_h + (size[0] - new_h) % stride, new_w + (size[1] - new_w) % stride


def letterbox(img: np.ndarray, size: tuple[int, int], pad: float = LETTERBOX_PAD, stride: int = 0) -> np.ndarray:
    """Resize [H, W, C] keeping the aspect ratio, centre it in [size[0], size[1], C] padded with ``pad`` (with
    ``stride``: in the smaller canvas of ``letterbox_canvas``)."""
    top, left, new_h, new_w = letterbox_geometry(img.shape[:2], size, stride)
    canvas = letterbox_canvas(img.shape[:2], size, stride)
    out = np.full((canvas[0], canvas[1], img.shape[2]), pad, dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = resize_bilinear(img, (new_h, new_w))
    return out


def _pillow_taps(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] fixed-point weights of Pillow's bilinear resampling of one axis for 8-bit images.

    Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` (src/libImaging/Resample.c): a triangle filter
    widened by the downscale factor (so downscaling averages: antialiased), centred on (i + 0.5) * scale, its taps
    normalised to sum 1 and then rounded to 22 fractional bits.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's support (1) times the filter scale
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)  # C's (int) of a value >= 0 here
    end = np.minimum((centres + support + 0.5).astype(np.int64), n_in)
    taps = np.arange(n_in, dtype=np.float64)[None, :]
    weights = np.clip(1.0 - np.abs((taps - centres[:, None] + 0.5) * (1.0 / filterscale)), 0.0, None)
    weights[(taps < first[:, None]) | (taps >= end[:, None])] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(total == 0.0, 1.0, total)
    return np.floor(0.5 + weights * float(1 << PILLOW_BITS))


def resize_antialiased(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [H, W, C] uint8 to [size[0], size[1], C] as Pillow's ``Image.resize(..., BILINEAR)`` does, in numpy.

    Pillow resamples 8-bit images in two passes, each rounded to uint8 (fixed-point sums with a half added before
    the shift, clipped to 0..255); an axis whose size does not change is not resampled. This is what torchvision's
    ``Resize`` does to a PIL image, hence what Ultralytics classifies (float32 result, values 0..255). The sums are
    integers below 2^31, exact in float64 in any summation order. Horizontal pass first, as ``ImagingResampleInner`` has it up to Pillow
    12; Pillow 13 picks the order by its own cost estimate, and where it goes vertical first single pixels differ
    by one level (measured: at most 1, on Pillow 13.0).
    """
    data = np.asarray(img, dtype=np.float64)
    half, unit = float(1 << (PILLOW_BITS - 1)), float(1 << PILLOW_BITS)
    if data.shape[1] != size[1]:
        taps = _pillow_taps(data.shape[1], size[1])  # (out_w, in_w)
        data = np.clip(np.floor((np.tensordot(data, taps, axes=([1], [1])).transpose(0, 2, 1) + half) / unit), 0, 255)
    if data.shape[0] != size[0]:
        taps = _pillow_taps(data.shape[0], size[0])  # (out_h, in_h)
        data = np.clip(np.floor((np.tensordot(taps, data, axes=([1], [0])) + half) / unit), 0, 255)
    return data.astype(np.float32)


def crop_geometry(image_hw: Sequence[int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where ``crop`` takes ``size`` from an image of ``image_hw`` (H, W): (top, left, resized_h, resized_w).

    As Ultralytics' ``classify_transforms`` (ultralytics/data/augment.py) builds it from torchvision: a square size
    resizes the shorter side to it (the longer one to ``int(size * long / short)``, torchvision's
    ``_compute_resized_output_size``) and crops the centre, offsets ``int(round(excess / 2))`` (``center_crop``);
    a non-square size resizes to exactly that size.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    out_h, out_w = size
    if out_h != out_w:
        return 0, 0, out_h, out_w
    if w <= h:
        new_h, new_w = int(out_h * h / w), out_w
    else:
        new_h, new_w = out_h, int(out_w * w / h)
    return int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0)), new_h, new_w


def centre_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [H, W, C] uint8 so that ``size`` fits (shorter side, Pillow bilinear), then take its centre."""
    top, left, new_h, new_w = crop_geometry(img.shape[:2], size)
    resized = resize_antialiased(img, (new_h, new_w))
    return resized[top:top + size[0], left:left + size[1]]


def to_image_pixels(boxes: np.ndarray, image_hw: Sequence[int], prep: Preprocess) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 boxes in model-input pixels -> the same boxes in the original image's pixels.

    Undoes ``preprocess_image``'s resize: the letterbox offset and ratio (each side's own ratio, since each side
    was rounded: what Ultralytics' ``scale_boxes`` does, ultralytics/utils/ops.py), or the stretch; then clipped
    to the image.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if prep.resize == "letterbox":
        # Ultralytics' scale_boxes works from the tensor's own size (the stride-padded canvas in predict's rect mode)
        top, left, new_h, new_w = letterbox_geometry((h, w), letterbox_canvas((h, w), prep.size, prep.stride))
    elif prep.resize == "crop":
        top, left, new_h, new_w = crop_geometry((h, w), prep.size)
        top, left = -top, -left  # the crop's origin lies at (top, left) of the resized image
    else:
        top, left, new_h, new_w = 0, 0, prep.size[0], prep.size[1]
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - left) * (w / new_w)).clip(0, w)
    out[:, [1, 3]] = ((out[:, [1, 3]] - top) * (h / new_h)).clip(0, h)
    return out


def preprocess_image(img: np.ndarray, prep: Preprocess) -> np.ndarray:
    """Decoded image [H, W] or [H, W, 3] uint8 -> [C, H, W] float32."""
    pixels = convert_color(img, prep.color)
    if prep.resize == "letterbox":
        resized = letterbox(pixels, prep.size, stride=prep.stride)
    elif prep.resize == "crop":
        resized = centre_crop(pixels, prep.size)
    else:
        resized = resize_bilinear(pixels, prep.size)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    x = (resized * np.float32(prep.scale) - mean) / std  # (H, W, C)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (C, H, W)


def _channels_last(shape: Sequence[Any]) -> bool:
    return len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3)


def _other_size(size: Any, height: int, width: int) -> bool:
    """``size`` is a well-formed [H, W] other than ``height``, ``width`` (a malformed one is reported later)."""
    return (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)
            and (size[0], size[1]) != (height, width))


def make_preprocess(meta: ModelMeta, input_shape: Sequence[Any], resize_override: str | None) -> Preprocess:
    """Preprocess settings from the metadata, defaults for the missing fields (see DEFAULTS_HELP)."""
    if len(input_shape) != 4:
        raise BadInput(f"the model input has rank {len(input_shape)}, not an image batch [N, C, H, W]; pass .npy "
                       "arrays or --random")
    spec = meta.preprocess
    last = _channels_last(input_shape)
    channels = input_shape[3] if last else input_shape[1]
    height, width = (input_shape[1], input_shape[2]) if last else (input_shape[2], input_shape[3])
    size = spec.get("size")
    if isinstance(height, int) and isinstance(width, int) and (size is None or _other_size(size, height, width)):
        size = [height, width]  # a static input takes only its own H/W (older exports kept the checkpoint's size)
    if size is None:
        for shape in meta.export_shape.values():
            if len(shape) == 4:
                size = [shape[1], shape[2]] if last else [shape[2], shape[3]]
                break
    if size is None:
        raise BadInput("the model has dynamic H/W and no image size in its metadata; pass .npy arrays of the "
                       "right size, or export with blocks_export.preprocess metadata")
    color = spec.get("color") or ("GRAY" if channels == 1 else "RGB")
    resize = resize_override or spec.get("resize") or DEFAULT_RESIZE
    if resize not in RESIZE_MODES:
        raise BadInput(f"preprocess resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    if color not in ("RGB", "GRAY"):
        raise BadInput(f"preprocess color {color!r}: expected 'RGB' or 'GRAY'")
    n_channels = 1 if color == "GRAY" else 3
    if isinstance(channels, int) and channels != n_channels:
        raise BadInput(f"preprocess color {color} gives {n_channels} channels but the model input has "
                       f"{channels}; fix the metadata")

    def per_channel(key: str, default: float) -> tuple[float, ...]:
        value = spec.get(key, default)
        values = [float(v) for v in (value if isinstance(value, list) else [value])]
        if len(values) not in (1, n_channels):
            raise BadInput(f"preprocess {key} has {len(values)} values for {n_channels} channels")
        return tuple(values)

    try:
        std = per_channel("std", DEFAULT_STD)
        prep = Preprocess(size=(int(size[0]), int(size[1])), resize=resize, color=color,
                          scale=float(spec.get("scale", DEFAULT_SCALE)), mean=per_channel("mean", DEFAULT_MEAN),
                          std=std)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise BadInput(f"metadata {META}preprocess has a malformed value ({_first_line(e)}); fix the metadata "
                       "or export again") from None
    if any(s == 0 for s in std) or min(prep.size) < 1:
        raise BadInput(f"metadata {META}preprocess has std 0 or an empty size; fix the metadata")
    return prep


# ------------------------------------------------------------------------------------------- inputs


@dataclass
class InputSpec:
    name: str
    shape: list[Any]  # ints, or str / None for dynamic axes
    dtype: str  # onnxruntime type string, e.g. 'tensor(float)'


_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
                "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def numpy_dtype(spec: InputSpec) -> np.dtype:
    if spec.dtype not in _NUMPY_TYPES:
        raise BadInput(f"input {spec.name!r} has type {spec.dtype}, which this script cannot feed")
    return np.dtype(_NUMPY_TYPES[spec.dtype])


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    sources: list[str]
    valid: int  # items that are real (the rest pads a static batch)
    image_hw: list[tuple[int, int]] = field(default_factory=list)  # decoded images' (H, W), one per source


def _check_regular(path: str) -> None:
    """Refuse an input that is not a regular file (a FIFO named .png, a device, a link loop) before any work."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise BadInput(f"cannot read input {printable(path)} ({e.strerror}); check the path") from None
    if not stat.S_ISREG(mode):
        raise BadInput(f"input {printable(path)} is a {file_kind(mode)}, not a regular file; give image files, "
                       ".npy arrays or a folder of them")


def collect_sources(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split positional inputs into (image files, .npy files); folders give their images, sorted."""
    images: list[str] = []
    arrays: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError as e:
                raise BadInput(f"cannot list folder {printable(path)} ({e.strerror}); check the path") from None
            found = sorted(os.path.join(path, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise BadInput("folder {} holds no images ({})".format(printable(path), " ".join(IMAGE_EXTENSIONS)))
            for item in found:
                _check_regular(item)
            images.extend(found)
        elif not os.path.lexists(path):
            raise BadInput(f"input not found: {printable(path)}")
        elif path.lower().endswith(".npy"):
            _check_regular(path)
            arrays.append(path)
        elif path.lower().endswith(IMAGE_EXTENSIONS):
            _check_regular(path)
            images.append(path)
        else:
            raise BadInput(f"unsupported input {printable(path)}: give images ({' '.join(IMAGE_EXTENSIONS)}), "
                           ".npy arrays or a folder")
    if images and arrays:
        raise BadInput("mix of images and .npy arrays; give one kind per run")
    return images, arrays


def batch_limit(spec: InputSpec, meta: ModelMeta, requested: int | None) -> tuple[int, bool]:
    """(items per run, static) for the model's batch axis."""
    first = spec.shape[0] if spec.shape else 1
    if isinstance(first, int) and first > 0:
        return first, True
    bound = meta.dynamic.get(spec.name, {}).get(0, {}).get("max")
    if requested:
        if bound is not None and requested > int(bound):
            raise BadInput(f"--batch {requested} exceeds the model's maximum batch {bound}")
        return requested, False
    return (int(bound) if bound else 0), False  # 0: everything in one run


def _chunks(items: np.ndarray, sources: list[str], name: str, limit: int, static: bool) -> list[Batch]:
    if limit <= 0:
        return [Batch({name: items}, sources, len(sources))]
    batches = []
    for start in range(0, len(sources), limit):
        part = items[start:start + limit]
        valid = part.shape[0]
        if static and valid < limit:  # a static batch must be full: pad with zeros, drop their outputs
            pad = np.zeros((limit - valid,) + part.shape[1:], dtype=part.dtype)
            part = np.concatenate([part, pad])
        batches.append(Batch({name: part}, sources[start:start + limit], valid))
    return batches


def _dynamic_hw(shape: Sequence[Any]) -> bool:
    hw = shape[1:3] if _channels_last(shape) else shape[2:4]
    return len(shape) == 4 and not all(isinstance(d, int) and d > 0 for d in hw)


def image_batches(paths: list[str], spec: InputSpec, meta: ModelMeta, resize: str | None,
                  requested_batch: int | None) -> tuple[list[Batch], Preprocess]:
    """Runs of preprocessed images. A letterboxed Ultralytics model with dynamic H/W gets each image in its own
    stride-aligned rectangle, as ``YOLO('model.onnx').predict`` feeds it (its ``LetterBox(auto=True)`` with the
    model's stride, for a graph whose metadata says dynamic); a run then holds consecutive images of one shape."""
    prep = make_preprocess(meta, spec.shape, resize)
    if prep.resize == "letterbox" and meta.stride and _dynamic_hw(spec.shape):
        prep = Preprocess(prep.size, prep.resize, prep.color, prep.scale, prep.mean, prep.std, stride=meta.stride)
    decoded = [read_image(p) for p in paths]
    tensors = [preprocess_image(img, prep).astype(numpy_dtype(spec)) for img in decoded]  # (C, H, W) each
    limit, static = batch_limit(spec, meta, requested_batch)
    batches: list[Batch] = []
    start = 0
    while start < len(tensors):
        end = start + 1
        while end < len(tensors) and tensors[end].shape == tensors[start].shape:
            end += 1
        stacked = np.stack(tensors[start:end])  # (N, C, H, W)
        if _channels_last(spec.shape):
            stacked = np.ascontiguousarray(stacked.transpose(0, 2, 3, 1))  # (N, H, W, C)
        batches += _chunks(stacked, list(paths[start:end]), spec.name, limit, static)
        start = end
    sizes = {p: (int(img.shape[0]), int(img.shape[1])) for p, img in zip(paths, decoded)}
    for batch in batches:
        batch.image_hw = [sizes[p] for p in batch.sources]
    return batches, prep


def _load_npy(path: str) -> np.ndarray:
    data = read_regular(path, "array")
    try:
        # allow_pickle=False: an .npy holding Python objects would run code when unpickled.
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise BadInput(f"{printable(path)} cannot be loaded without unpickling Python objects "
                       f"({printable(_first_line(e))}); save a plain numeric array") from None
    except (OSError, EOFError) as e:
        raise BadInput(f"cannot read {printable(path)} ({printable(_first_line(e))}); check the file") from None


def _fit_array(array: np.ndarray, spec: InputSpec, path: str) -> np.ndarray:
    rank = len(spec.shape)
    if array.ndim == rank - 1:
        array = array[None]
    if array.ndim != rank:
        raise BadInput(f"{path} has shape {tuple(array.shape)} but input {spec.name!r} expects rank {rank} "
                       f"{tuple(spec.shape)}")
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and got != want and not (axis == 0 and rank > 1):
            raise BadInput(f"{path} has shape {tuple(array.shape)} but input {spec.name!r} expects "
                           f"{tuple(spec.shape)} (axis {axis})")
    dtype = numpy_dtype(spec)
    if array.dtype.kind != dtype.kind and not (array.dtype.kind in "fiu" and dtype.kind in "fiu"):
        raise BadInput(f"{path} has dtype {array.dtype} but input {spec.name!r} expects {dtype}")
    return array.astype(dtype, copy=False)


def array_batches(paths: list[str], specs: list[InputSpec], meta: ModelMeta,
                  requested_batch: int | None) -> list[Batch]:
    if len(specs) == 1:
        spec = specs[0]
        arrays = [_fit_array(_load_npy(p), spec, p) for p in paths]
        sources = []
        for path, array in zip(paths, arrays):
            sources.extend([path] if array.shape[0] == 1 else [f"{path}[{i}]" for i in range(array.shape[0])])
        limit, static = batch_limit(spec, meta, requested_batch)
        return _chunks(np.concatenate(arrays), sources, spec.name, limit, static)
    if len(paths) != len(specs):
        raise BadInput("the model has {} inputs ({}): give one .npy per input, in that order".format(
            len(specs), ", ".join(s.name for s in specs)))
    feeds = {spec.name: _fit_array(_load_npy(p), spec, p) for spec, p in zip(specs, paths)}
    batch = next(iter(feeds.values())).shape[0]
    return [Batch(feeds, ["+".join(paths)], batch)]


def parse_shape_overrides(items: Sequence[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        match = re.fullmatch(r"([^=]+)=(\d+(?:x\d+)*)", item.strip())
        if not match:
            raise BadInput(f"--shape {item!r}: expected NAME=1x3x224x224")
        shapes[match.group(1)] = [int(d) for d in match.group(2).split("x")]
    return shapes


#: Largest random input --random makes (the largest real image inputs are a few hundred MB).
MAX_RANDOM_BYTES = 1 << 30


def _check_random_size(spec: InputSpec, shape: Sequence[int], dtype: np.dtype) -> None:
    """Refuse a random input of negative or absurd size (a model declaring [1, 3, 10^6, 10^6]) before allocating."""
    example = "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in spec.shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise BadInput(f"input {printable(spec.name)!r} would get shape {list(shape)}, which has a negative "
                       f"dimension; pass --shape {printable(spec.name)}={example}")
    size = dtype.itemsize
    for d in shape:
        size *= d
    if size > MAX_RANDOM_BYTES:
        raise BadInput(f"input {printable(spec.name)!r} of shape {'x'.join(map(str, shape))} would need "
                       f"{size / 2**30:.3g} GiB of random data (more than {MAX_RANDOM_BYTES >> 30} GiB); pass a "
                       f"smaller --shape {printable(spec.name)}={example} or real inputs")


def random_batch(specs: list[InputSpec], meta: ModelMeta, overrides: dict[str, list[int]], seed: int) -> Batch:
    """One batch of random inputs; dynamic axes from --shape, else the export shape, else 1 for batch."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.name in overrides:
            shape = overrides[spec.name]
            if len(shape) != len(spec.shape):
                raise BadInput(f"--shape {spec.name} has rank {len(shape)}, input expects {spec.shape}")
        else:
            exported = meta.export_shape.get(spec.name)
            shape = []
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                elif exported is not None and len(exported) == len(spec.shape):
                    shape.append(int(exported[axis]))
                elif axis == 0:
                    shape.append(1)
                else:
                    example = "x".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
                    raise BadInput(f"input {spec.name!r} has dynamic axis {axis} ({dim}) and no export shape in "
                                   f"its metadata; pass --shape {spec.name}={example}")
        dtype = numpy_dtype(spec)
        _check_random_size(spec, shape, dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    first = next(iter(feeds.values()))
    return Batch(feeds, [f"random[{i}]" for i in range(first.shape[0] if first.ndim else 1)],
                 first.shape[0] if first.ndim else 1)


# ------------------------------------------------------------------------------------------ outputs


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """[N, C] logits or probabilities -> probabilities (softmax unless rows already sum to 1 in [0, 1])."""
    scores = scores.astype(np.float64)
    if scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(scores: np.ndarray, k: int, labels: list[str] | None) -> list[list[dict[str, Any]]]:
    """Per row of [N, C] scores: the k best classes, {index, label, score, raw}, best first."""
    probs = to_probabilities(scores)
    rows = []
    for raw_row, prob_row in zip(scores, probs):
        order = np.argsort(-prob_row, kind="stable")[:k]
        rows.append([{"index": int(i),
                      "label": labels[i] if labels and i < len(labels) else f"class_{i}",
                      "score": float(prob_row[i]), "raw": float(raw_row[i])} for i in order])
    return rows


# ------------------------------------------------------------------------ detections (YOLO detect layout)
# Ultralytics' detect output (ultralytics/nn/modules/head.py, Detect.forward in export mode): [B, 4 + nc, anchors],
# rows 0-3 the box as centre x, centre y, width, height in input pixels, then one sigmoid score per class.
# Post-processing as Ultralytics' predict does it (ultralytics/utils/nms.py, non_max_suppression with its
# defaults: best class per anchor, score > conf, per-class NMS at IoU 0.7, at most 300 boxes), in numpy.

CONF_THRESHOLD = 0.25
IOU_THRESHOLD = 0.7
MAX_DETECTIONS = 300
MAX_NMS = 30000  # candidates kept for NMS, best scores first (non_max_suppression's max_nms)


def is_detect_layout(output: np.ndarray, n_labels: int | None) -> bool:
    """[B, 4 + nc, anchors] with more anchors than rows (and nc = the number of labels when known)."""
    if output.ndim != 3 or output.shape[1] < 5 or output.shape[2] <= output.shape[1]:
        return False
    return n_labels is None or output.shape[1] == 4 + n_labels


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] centre/size boxes -> [N, 4] corner boxes."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [N, 4] and [M, 4] corner boxes -> [N, M]."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int | None = None) -> list[int]:
    """Indices kept by greedy NMS over [N, 4] corner boxes, best score first; at most ``limit`` of them (the
    first ``limit`` of the full result: greedy NMS keeps boxes in score order)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] <= iou]
    return keep


def detections(output: np.ndarray, conf: float = CONF_THRESHOLD, iou: float = IOU_THRESHOLD,
               max_det: int = MAX_DETECTIONS, multi_label: bool = False) -> list[list[tuple[np.ndarray, float, int]]]:
    """Per image of a [B, 4 + nc, anchors] output: [(xyxy [4], score, class)], best score first.

    ``multi_label``: every class scoring over ``conf`` is a candidate of its own (Ultralytics' validators call
    non_max_suppression with multi_label=True), else the best class per anchor (its predictors)."""
    result = []
    for pred in np.asarray(output, dtype=np.float32):
        scores_all = pred[4:]  # (nc, anchors)
        if multi_label:
            cls, anchor = np.nonzero(scores_all > conf)
            score = scores_all[cls, anchor]
        else:
            cls = scores_all.argmax(axis=0)
            score = scores_all[cls, np.arange(pred.shape[1])]
            anchor = np.flatnonzero(score > conf)
            score, cls = score[anchor], cls[anchor]
        if score.size > MAX_NMS:
            best = np.argsort(-score, kind="stable")[:MAX_NMS]
            anchor, score, cls = anchor[best], score[best], cls[best]
        boxes = xywh_to_xyxy(pred[:4, anchor].T)
        # Per-class NMS in one pass: boxes of different classes shifted apart so they never overlap.
        offset = cls[:, None].astype(np.float64) * (float(np.abs(boxes).max()) * 2 + 1 if boxes.size else 0.0)
        kept = nms(boxes + offset, score, iou, max_det)
        result.append([(boxes[i], float(score[i]), int(cls[i])) for i in kept])
    return result


def detection_predictions(output: np.ndarray, sources: list[str], labels: list[str] | None,
                          image_hw: dict[str, tuple[int, int]] | None = None,
                          prep: Preprocess | None = None) -> list[dict[str, Any]]:
    """JSON-ready detections per source: label, class, score, box x1, y1, x2, y2.

    Boxes are in the original image's pixels for a source in ``image_hw`` (decoded images, with the ``prep``
    that resized them), in model-input pixels otherwise (.npy arrays, random inputs); ``box_space`` says which.
    """
    items = []
    for source, dets in zip(sources, detections(output)):
        hw = (image_hw or {}).get(source)
        boxes = np.array([box for box, _, _ in dets], dtype=np.float64).reshape(-1, 4)
        if hw is not None and prep is not None and len(boxes):
            boxes = to_image_pixels(boxes, hw, prep)
        items.append({"source": source, "box_space": "image" if hw is not None and prep is not None else "input",
                      "detections": [
                          {"label": labels[c] if labels and c < len(labels) else f"class_{c}", "class": c,
                           "score": round(s, 5), "box_xyxy": [round(float(v), 2) for v in box]}
                          for box, (_, s, c) in zip(boxes, dets)]})
    return items


def _print(text: str, file: Any) -> None:
    """One line of the human report: labels, output names and paths come from files, so they are escaped."""
    print(printable(text), file=file)


def print_detections(item: dict[str, Any], out: Any) -> None:
    space = "image" if item.get("box_space") == "image" else "model-input"
    _print(f"{item['source']}: {len(item['detections'])} detection(s) (boxes x1,y1,x2,y2 in {space} pixels)",
           file=out)
    for det in item["detections"]:
        _print("  {:<20} {:.3f}  [{}]".format(det["label"], det["score"],
                                                ", ".join(f"{v:.1f}" for v in det["box_xyxy"])), file=out)


def output_stats(name: str, value: Output) -> dict[str, Any]:
    """Shape, dtype and value statistics of one output; for per-run arrays of different shapes, the shape has
    ``None`` where the runs differ and the statistics cover every run."""
    if isinstance(value, list):
        shapes = [np.shape(p) for p in value]
        shape: list[Any] = [sum(s[0] for s in shapes)] + [d if all(s[i] == d for s in shapes) else None
                                                         for i, d in enumerate(shapes[0]) if i > 0]
        data = np.concatenate([np.ravel(p) for p in value])
    else:
        data = np.asarray(value)
        shape = list(data.shape)
    stats: dict[str, Any] = {"name": name, "shape": shape, "dtype": str(data.dtype)}
    if data.size and data.dtype.kind in "fiub":
        as_float = data.astype(np.float64)
        finite = np.isfinite(as_float)
        stats["nonfinite"] = int(data.size - finite.sum())
        if finite.any():
            good = as_float[finite]
            stats.update(min=float(good.min()), max=float(good.max()), mean=float(good.mean()),
                         std=float(good.std()))
    return stats


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "output"


def _write_in_folder(folder: str, filename: str, write: Any) -> str:
    """Write ``filename`` in ``folder`` without ever following a link already there: the data goes to a new
    temporary file (O_CREAT|O_EXCL|O_NOFOLLOW) that is then renamed over the name, which replaces a link or
    file of that name itself, never what a link points to."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    attempt = 0
    while True:
        tmp = os.path.join(folder, f".{filename}.{os.getpid()}-{attempt}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:
            attempt += 1
            if attempt > 100:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        path = os.path.join(folder, filename)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_outputs(folder: str, names: Sequence[str], values: Sequence[Output],
                 sources: Sequence[str]) -> list[str]:
    created = _folders_to_create(folder)
    written: list[str] = []
    try:
        os.makedirs(folder, exist_ok=True)
        used = set()
        for name, value in zip(names, values):
            base = _safe_name(name)
            candidate, n = base, 1
            while candidate in used:
                n += 1
                candidate = f"{base}_{n}"
            used.add(candidate)
            # an output whose runs differ in shape is saved one file per run, in order: name_run0.npy, ...
            runs = [(candidate + ".npy", value)] if not isinstance(value, list) else [
                (f"{candidate}_run{k}.npy", part) for k, part in enumerate(value)]
            for filename, part in runs:
                array = np.asarray(part)
                written.append(_write_in_folder(folder, filename, lambda f, array=array: np.save(f, array)))
        text = "".join(s + "\n" for s in sources).encode("utf-8")
        _write_in_folder(folder, "sources.txt", lambda f: f.write(text))
    except BaseException as e:
        # Nothing half-done is left: the files this run wrote, then the folders it created (deepest first).
        for path in written if created else ():
            with contextlib.suppress(OSError):
                os.unlink(path)
        for made in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(made)
        if isinstance(e, OSError):
            raise BadInput(f"cannot write outputs to {printable(folder)} ({e.strerror}); choose a writable folder "
                           "with free space") from None
        raise
    return written


def _folders_to_create(folder: str) -> list[str]:
    """The folders ``os.makedirs(folder)`` would create, outermost first."""
    missing = []
    current = os.path.abspath(folder)
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing[::-1]


# -------------------------------------------------------------------------------------------- bench


def benchmark(session: Any, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> dict[str, Any]:
    """Latency percentiles (ms) over ``runs`` timed runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        _run(session, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _run(session, feeds)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000.0
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    return {"runs": runs, "warmup": warmup, "batch": batch,
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                           "min": float(ms.min()), "max": float(ms.max())},
            "throughput_items_per_s": float(batch * runs / max(sum(times), 1e-12))}


# ------------------------------------------------------------------------------------------- session


# onnxruntime 1.14.0 and 1.14.1 end in a segmentation fault while creating a CPU-provider session for a graph with a
# float16 Relu, Elu, Selu, ThresholdedRelu, HardSigmoid or HardSwish node (checked on the x86_64 PyPI wheels with
# one-node graphs; 1.13.1 and 1.15.1 run them). Exports for --target jetpack5 keep these ops float32 (behind a Cast
# to float); any other float16 graph is refused on those releases before onnxruntime sees it. The same set as
# blocks_export.export.targets.ORT_FP16_CRASH (a test keeps them equal).
FP16_CRASH_OPS = frozenset({"Elu", "HardSigmoid", "HardSwish", "Relu", "Selu", "ThresholdedRelu"})
FP16_CRASH_RELEASES = ((1, 14), (1, 15))  # [first, fixed)
TENSOR_FLOAT, TENSOR_FLOAT16 = 1, 10  # onnx.TensorProto.DataType


def fp16_crash_nodes(nodes: Sequence[NodeSummary], precision: str) -> list[NodeSummary]:
    """Nodes of ``FP16_CRASH_OPS`` that may run in float16: the graph is float16 (its precision metadata or a
    Cast to float16) and the node's input is not the output of a Cast to float32."""
    cast_to = {n.outputs[0]: n.attributes.get("to") for n in nodes if n.op_type == "Cast" and n.outputs}
    fp16 = precision.startswith("fp16") or "fp16" in precision or TENSOR_FLOAT16 in cast_to.values()
    if not fp16:
        return []
    return [n for n in nodes if n.op_type in FP16_CRASH_OPS and n.domain in ("", "ai.onnx")
            and not (n.inputs and cast_to.get(n.inputs[0]) == TENSOR_FLOAT)]


def refuse_crashing_graph(ort_version: str, model_path: str, chain: Sequence[str], precision: str) -> None:
    """``Unavailable`` (one line) for a graph this onnxruntime is known to crash on, before any session exists."""
    version = _version_key(ort_version)[:2]
    first, fixed = FP16_CRASH_RELEASES
    if not (first <= version < fixed) or not chain or chain[0] != CPU_EP:
        return
    bad = fp16_crash_nodes(read_onnx_summary(model_path).nodes, precision)
    if bad:
        ops = ", ".join(sorted({n.op_type for n in bad}))
        raise Unavailable(f"onnxruntime {ort_version} crashes (segmentation fault) creating a CPU session for float16 "
                          f"{ops} nodes ({len(bad)} in {os.path.basename(model_path)}); install onnxruntime 1.15 or "
                          "newer, or export with --target jetpack5 (keeps these ops float32)")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise Unavailable("onnxruntime is not installed: pip install onnxruntime (Jetson: the onnxruntime-gpu "
                          "wheel built for your JetPack)") from None
    return onnxruntime


def create_session(ort: Any, model_path: str, chain: list[str], trt_options: dict[str, str], *,
                   device_id: int, threads: int | None, is_ep_context: bool, verbose: bool) -> tuple[Any, float]:
    options = ort.SessionOptions()
    options.log_severity_level = 0 if verbose else 3  # our own lines say which provider is used and why
    if threads:
        options.intra_op_num_threads = threads
    if is_ep_context:
        # onnxruntime's EPCONTEXT_WARNING (onnx_ctx_model_helper.h) suggests optimization level 0 for the
        # fastest load of an EPContext model: there is nothing left to optimise.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers: list[Any] = []
    for name in chain:
        if name == TRT_EP:
            providers.append((name, trt_options))
        elif name == CUDA_EP:
            providers.append((name, {"device_id": str(device_id)}))
        else:
            providers.append(name)
    start = time.perf_counter()
    try:
        # onnxruntime's Python wrapper prints its own "EP Error ... Falling back" notice on stdout when a
        # provider fails to start (onnxruntime_inference_collection.py): keep stdout for the report.
        with contextlib.redirect_stdout(sys.stderr):
            session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's pybind errors (Fail, InvalidGraph, ...) share no useful base class
        error = Unavailable if chain[0] != CPU_EP else BadInput
        hint = _load_hint(e)
        raise error(f"onnxruntime could not load {os.path.basename(model_path)} with {chain[0]}: "
                    f"{_first_line(e)}" + (f" -- {hint}" if hint else "")) from None
    elapsed = time.perf_counter() - start
    # Without this, a provider failing during run() makes onnxruntime switch providers silently and
    # retry, so a benchmark would time another provider than the one reported.
    disable_fallback = getattr(session, "disable_fallback", None)
    if disable_fallback is not None:
        disable_fallback()
    return session, elapsed


def _load_hint(error: Exception) -> str | None:
    """What to do about onnxruntime's refusal to load a model, where its message says only what is wrong.

    A missing external-data file: check the copy; an operator or opset onnxruntime does not know: re-export for
    it. Anything else (an invalid graph, a type error, a bad protobuf) is said by onnxruntime's message alone:
    a hint about copies would send the user the wrong way.
    """
    text = str(error)
    lower = text.lower()
    if type(error).__name__ == "NoSuchFile" or "external data" in lower or "no such file" in lower:
        return "check that every file of the model was copied (external data included)"
    if (type(error).__name__ == "NotImplemented" or "not a registered function/op" in lower
            or "opset" in lower or "ValidateOpsetForDomain" in text):
        return "export it for this onnxruntime (opset, operators) or run it with a newer onnxruntime"
    return None


def _input_specs(session: Any) -> list[InputSpec]:
    return [InputSpec(i.name, list(i.shape), i.type) for i in session.get_inputs()]


def _run(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as e:  # onnxruntime's pybind errors
        if type(e).__name__ == "EPFail":  # the provider itself failed, not the input
            raise Unavailable(f"{session.get_providers()[0]} failed while running: {_first_line(e)}; rerun "
                              "with another --provider") from None
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
        raise BadInput(f"onnxruntime rejected the input ({shapes}): {_first_line(e)}") from None


# ----------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infer.py", description="Run and benchmark an exported model with onnxruntime "
                     "(TensorRT EP -> CUDA EP -> CPU).", epilog=DEFAULTS_HELP)
    parser.add_argument("model", help="model.onnx or model_ctx.onnx (EPContext with a TensorRT engine)")
    parser.add_argument("inputs", nargs="*", help="image files, folders of images, or .npy arrays")
    parser.add_argument("--random", action="store_true", help="feed random inputs (shape from the model)")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=1x3xHxW",
                        help="shape for a dynamic input with --random (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    parser.add_argument("--provider", choices=sorted(PROVIDER_NAMES),
                        help="use only this provider (error if missing)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT EP: allow fp16 kernels (trt_fp16_enable); "
                        "on by default when the model's precision metadata says fp16")
    parser.add_argument("--plugin-lib", action="append", default=[], metavar="PATH",
                        help="extra TensorRT plugin library (trt_extra_plugin_lib_paths; repeatable)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device id (default 0)")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: onnxruntime's choice)")
    parser.add_argument("--batch", type=int, help="items per run for a dynamic-batch model (default: all, "
                        "up to the exported maximum)")
    parser.add_argument("--resize", choices=RESIZE_MODES, help="override the metadata's resize mode")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image for classifiers (default 5)")
    parser.add_argument("--save-outputs", metavar="DIR", help="write each raw output as DIR/<name>.npy (one "
                        "DIR/<name>_run<k>.npy per run where runs of images differ in shape), sources in "
                        "DIR/sources.txt")
    parser.add_argument("--bench", type=int, default=0, metavar="N", help="time N runs on the first batch")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before --bench (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-verify-engine", action="store_true",
                        help="load an engine even if its SHA-256, TensorRT version or GPU do not match "
                        "its sidecar")
    parser.add_argument("--verbose", action="store_true", help="show onnxruntime's own log")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _validate_args(args: argparse.Namespace) -> None:
    for name in ("threads", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name} {value}: must be at least 1")
    for name in ("topk", "bench", "warmup"):
        if getattr(args, name) < 0:
            raise BadInput(f"--{name} {getattr(args, name)}: must not be negative")
    if args.topk == 0:
        raise BadInput("--topk 0: must be at least 1")
    if args.random and args.inputs:
        raise BadInput("--random and input files given together; choose one")


def _source_meta(model_path: str, meta: ModelMeta, checks: list[EngineCheck]) -> ModelMeta:
    """An EPContext model without metadata takes it from the source .onnx named in the engine's sidecar."""
    if meta.present:
        return meta
    for check in checks:
        sidecar_path = check.engine + ".json"
        if not os.path.isfile(sidecar_path):
            continue
        try:
            with open(sidecar_path, encoding="utf-8") as f:
                source = json.load(f).get("source_onnx")
        except (OSError, ValueError, AttributeError):
            continue
        if source:
            candidate = os.path.join(os.path.dirname(os.path.abspath(model_path)), os.path.basename(str(source)))
            if os.path.isfile(candidate):
                return parse_meta(read_onnx_summary(candidate).metadata)
    return meta


class Reporter:
    """Announcements go to stderr as they happen (one line each) and into the JSON report."""

    def __init__(self, err: Any) -> None:
        self.err = err
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def note(self, line: str) -> None:
        self.notes.append(line)
        print("note: " + printable(line), file=self.err)

    def warn(self, line: str) -> None:
        self.warnings.append(line)
        print("WARNING: " + printable(line), file=self.err)


def _inspect_model(model_path: str, verify_engine: bool, device_id: int,
                   report: Reporter) -> tuple[ModelMeta, bool, str | None]:
    """Read the model's metadata and check its engine: (metadata, is EPContext, why it needs TensorRT)."""
    summary = read_onnx_summary(model_path)
    meta = parse_meta(summary.metadata)
    ctx_nodes = [n for n in summary.nodes if n.op_type == "EPContext"]
    plugin_ops = sorted({n.op_type for n in summary.nodes if n.domain == "trt.plugins"})
    if ctx_nodes:
        checks = verify_ep_context(model_path, ctx_nodes, verify=verify_engine, device_id=device_id)
        for check in checks:
            for line in check.warnings:
                report.warn(line)
            for line in check.notes:
                report.note(line)
        return (_source_meta(model_path, meta, checks), True,
                f"{os.path.basename(model_path)} is an EPContext model (a prebuilt TensorRT engine): it needs the "
                "TensorRT EP (TensorrtExecutionProvider)")
    if plugin_ops:
        return (meta, False, f"the model has TensorRT plugin nodes ({', '.join(plugin_ops)} in domain trt.plugins) "
                "that only the TensorRT EP runs; export with --deform-conv portable for other providers")
    return meta, False, None


def _trt_options_for(args: argparse.Namespace, meta: ModelMeta, is_ep_context: bool,
                     report: Reporter) -> dict[str, str]:
    """TensorRT EP options; the profile comes from a `<stem>.engine.json` beside the model, else the metadata."""
    profile = None
    if not is_ep_context:
        sidecar_path = os.path.splitext(os.path.abspath(args.model))[0] + ".engine.json"
        if os.path.isfile(sidecar_path):
            try:
                profile = profile_from_sidecar(load_sidecar(sidecar_path))
            except Unavailable as e:  # only its shapes are used here: a bad sidecar is not a reason to stop
                report.note(f"ignoring {os.path.basename(sidecar_path)} for the TensorRT profile: {e}")
        profile = profile or profile_from_meta(meta)
    options = tensorrt_options(args.model, meta, fp16=args.fp16, is_ep_context=is_ep_context,
                               plugin_libs=args.plugin_lib, profile=profile, device_id=args.device)
    cache_dir = options.get("trt_engine_cache_path")
    if cache_dir:
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as e:
            report.note(f"cannot create the TensorRT engine cache {cache_dir} ({e.strerror}): engines are rebuilt "
                        "every run")
            options["trt_engine_cache_enable"] = options["trt_timing_cache_enable"] = "False"
    return options


def _make_batches(args: argparse.Namespace, images: list[str], arrays: list[str], specs: list[InputSpec],
                  meta: ModelMeta, report: Reporter) -> tuple[list[Batch], Preprocess | None]:
    if images:
        if len(specs) != 1:
            raise BadInput(f"the model has {len(specs)} inputs; images can only feed a single-input model, "
                           "give .npy files")
        return image_batches(images, specs[0], meta, args.resize, args.batch)
    if arrays:
        return array_batches(arrays, specs, meta, args.batch), None
    if not args.random:
        report.note("no inputs given: benchmarking on random inputs")
    return [random_batch(specs, meta, parse_shape_overrides(args.shape), args.seed)], None


Output = Any  # np.ndarray, or a list of per-run arrays where runs of images of different shapes give different shapes


def _infer(session: Any, batches: list[Batch],
           n_outputs: int) -> tuple[list[Output], list[str], float, list[list[np.ndarray]]]:
    """Run every batch: each output joined along the batch axis with static-batch padding dropped (a list of the
    runs' arrays where their other dims differ), the sources, the first run's time, and each output per run."""
    first_run_s = 0.0
    collected: list[list[np.ndarray]] = [[] for _ in range(n_outputs)]
    sources: list[str] = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        values = _run(session, batch.feeds)
        if index == 0:
            first_run_s = time.perf_counter() - start  # includes a TensorRT build for shapes first seen here
        fed = next(iter(batch.feeds.values())).shape[0]
        for parts, value in zip(collected, values):
            value = np.asarray(value)
            parts.append(value[:batch.valid] if value.ndim and value.shape[0] == fed else value)
        sources.extend(batch.sources[:batch.valid])
    merged: list[Output] = []
    for parts in collected:
        joinable = all(p.ndim and p.shape[1:] == parts[0].shape[1:] for p in parts)
        merged.append(parts[0] if len(parts) == 1 else np.concatenate(parts) if joinable else list(parts))
    return merged, sources, first_run_s, collected


def run(args: argparse.Namespace, out: Any, err: Any) -> int:
    """The whole script: check inputs, pick providers, open the session, infer, report."""
    if np is None:
        raise Unavailable("numpy is not installed: pip install numpy")
    _validate_args(args)
    ort = _import_onnxruntime()
    report = Reporter(err)
    if not os.path.isfile(args.model):
        raise BadInput(f"model not found: {args.model}")
    # Inputs are checked before any session exists: a TensorRT engine build can take minutes.
    images, arrays = collect_sources(args.inputs)
    parse_shape_overrides(args.shape)
    if not (images or arrays or args.random or args.bench):
        raise BadInput("no inputs: give image files or folders, .npy arrays, or --random")

    meta, is_ep_context, needs_tensorrt = _inspect_model(args.model, not args.no_verify_engine, args.device, report)
    plan = plan_providers(ort.get_available_providers(), args.provider, needs_tensorrt)
    for line in plan.notes:
        report.note(line)
    refuse_crashing_graph(str(getattr(ort, "__version__", "")), args.model, plan.chain, meta.precision)
    trt_options = _trt_options_for(args, meta, is_ep_context, report) if TRT_EP in plan.chain else {}
    if args.fp16 and TRT_EP not in plan.chain:
        report.note("--fp16 only affects the TensorRT EP, which is not used: running the model as stored")
    session, create_s = create_session(ort, args.model, plan.chain, trt_options, device_id=args.device,
                                       threads=args.threads, is_ep_context=is_ep_context, verbose=args.verbose)
    used = list(session.get_providers())
    for line in confirm_providers(plan, used, strict=bool(args.provider or needs_tensorrt)):
        report.note(line)
    specs = _input_specs(session)
    output_names = [o.name for o in session.get_outputs()]
    batches, prep = _make_batches(args, images, arrays, specs, meta, report)
    merged, sources, first_run_s, per_run = _infer(session, batches, len(output_names))

    result: dict[str, Any] = {
        "model": args.model, "task": meta.task, "precision": meta.precision, "ep_context": is_ep_context,
        "providers_requested": plan.chain, "providers": used,
        "session_create_s": create_s, "first_run_s": first_run_s,
        "inputs": [{"name": s.name, "shape": s.shape, "dtype": s.dtype} for s in specs],
        "preprocess": None if prep is None else {
            "size": list(prep.size), "resize": prep.resize, "color": prep.color, "scale": prep.scale,
            "mean": list(prep.mean), "std": list(prep.std), "stride": prep.stride},
        "items": sources, "runs": len(batches),
        "outputs": [output_stats(n, v) for n, v in zip(output_names, merged)],
        "predictions": None, "saved": None, "bench": None,
    }
    if meta.task == "classify" and merged:
        scores = np.concatenate([p.reshape(p.shape[0], -1) for p in per_run[0]])  # (N, C)
        result["predictions"] = [{"source": s, "topk": row}
                                 for s, row in zip(sources, top_k(scores, args.topk, meta.labels))]
    elif meta.task == "detect" and merged and is_detect_layout(per_run[0][0], len(meta.labels) if meta.labels else None):
        image_hw = {s: hw for b in batches for s, hw in zip(b.sources, b.image_hw)}
        result["predictions"] = [item for b, part in zip(batches, per_run[0])
                                 for item in detection_predictions(part, b.sources[:b.valid], meta.labels, image_hw,
                                                                   prep)]
    if args.save_outputs:
        result["saved"] = save_outputs(args.save_outputs, output_names, merged, sources)
    if args.bench:
        result["bench"] = benchmark(session, batches[0].feeds, args.bench, args.warmup)
    result["notes"], result["warnings"] = report.notes, report.warnings
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print_human(result, out)
    return EXIT_OK


def print_human(result: dict[str, Any], out: Any) -> None:
    provider = result["providers"][0] if result["providers"] else "?"
    _print(f"model: {result['model']} ({result['task'] or 'no task metadata'}, {result['precision']}) on "
           f"{provider}; session created in {result['session_create_s'] * 1000:.1f} ms", file=out)
    if result["predictions"] is not None:
        for item in result["predictions"]:
            if "detections" in item:
                print_detections(item, out)
                continue
            _print(item["source"], file=out)
            for rank, entry in enumerate(item["topk"], 1):
                _print(f"  {rank}. {entry['label']:<24} {entry['score']:.4f}  (class {entry['index']})", file=out)
    else:
        _print(f"{len(result['items'])} item(s) in {result['runs']} run(s)", file=out)
        for stats in result["outputs"]:
            line = "  {} {} {}".format(stats["name"], "x".join("?" if d is None else str(d) for d in stats["shape"]),
                                       stats["dtype"])
            if "mean" in stats:
                line += "  min {:.4g} max {:.4g} mean {:.4g} std {:.4g}".format(
                    stats["min"], stats["max"], stats["mean"], stats["std"])
            if stats.get("nonfinite"):
                line += f"  {stats['nonfinite']} non-finite!"
            _print(line, file=out)
    if result["saved"]:
        _print(f"saved {len(result['saved'])} output(s) to {os.path.dirname(result['saved'][0])}", file=out)
    bench = result["bench"]
    if bench:
        lat = bench["latency_ms"]
        _print(f"bench: {bench['runs']} runs after {bench['warmup']} warm-up, batch {bench['batch']}", file=out)
        _print("  latency ms  p50 {:.3f}  p90 {:.3f}  p99 {:.3f}  (mean {:.3f}, min {:.3f}, max {:.3f})".format(
            lat["p50"], lat["p90"], lat["p99"], lat["mean"], lat["min"], lat["max"]), file=out)
        _print("  throughput  {:.1f} items/s".format(bench["throughput_items_per_s"]), file=out)
        _print("  session creation (engine load or build) {:.1f} ms; first run {:.1f} ms".format(
            result["session_create_s"] * 1000, (result["first_run_s"] or 0) * 1000), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, and turn every refusal into one stderr line and an exit code."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return run(args, sys.stdout, sys.stderr)
    except InferError as e:
        if debug:
            raise
        print("error: " + printable(str(e).strip() or type(e).__name__), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as e:
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {printable(_first_line(e))} (rerun with --debug and report "
              "it)", file=sys.stderr)
        return EXIT_INTERNAL


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    print("terminated", file=sys.stderr)
    sys.exit(EXIT_SIGTERM)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
