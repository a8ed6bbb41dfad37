"""A model file read as bytes, before any torch loader opens it: nothing here unpickles with code enabled.

The zip envelope (``check_zip_envelope``: readable, not a decompression bomb), what PyTorch archive it is
(``zip_kind``), the globals its pickles would import (``unsafe_globals``: a replay with every global stubbed, and
``pickletools``), and the one-line refusals ``load.py`` raises (``gate_archive`` for a whole archive). Reads the
file; writes nothing.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from .errors import InputError

# What PyTorch's weights-only unpickler accepts besides its own allowlist: tensor rebuild functions and
# storage types (torch/_weights_only_unpickler.py handles these by name).
_SAFE_GLOBAL_PREFIXES = ("torch._utils._rebuild_", "torch._tensor._rebuild_")
_SAFE_GLOBAL_SUFFIX = "Storage"


#: Largest total a zip archive may inflate to, as a multiple of its own size (plus a floor for tiny files).
#: torch.save and torch.jit.save store their members uncompressed, so a real model archive inflates to about its
#: own size; torch's reader allocates each member's declared size in full, so a few MB that inflate to GBs are
#: a decompression bomb, refused before any reader allocates them.
ZIP_INFLATE_FACTOR = 4
ZIP_INFLATE_FLOOR = 64 << 20


def looks_like_zip(path: Path) -> bool:
    """``zipfile.is_zipfile``, which itself raises on some crafted end records (a multi-disk zip64 locator)."""
    try:
        return zipfile.is_zipfile(path)
    except Exception:  # it found an end record it cannot follow: a zip, and a broken one
        return True


ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, OSError, EOFError, ValueError,
               NotImplementedError, OverflowError, IndexError, KeyError, struct.error, zlib.error)


def check_zip_envelope(path: Path) -> None:
    """Refuse, in one line, a zip archive that Python's zip reader cannot list or that inflates too far.

    Everything the reader can raise on crafted bytes (member names that are not the UTF-8 they claim to be,
    archives spanning several disks, offsets past the end, ...) is a refusal of the input, never a crash.
    """
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except ZIP_ERRORS as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InputError(f"{path}: not a readable zip archive ({reason}); it may be truncated or corrupted") from e
    size = path.stat().st_size
    inflated = sum(max(info.file_size, 0) for info in infos)
    limit = ZIP_INFLATE_FACTOR * size + ZIP_INFLATE_FLOOR
    if inflated > limit:
        raise InputError(f"{path}: the zip archive would inflate to {inflated / 2**20:.0f} MiB from "
                         f"{size / 2**20:.1f} MiB (more than {ZIP_INFLATE_FACTOR}x its size: model archives are "
                         "stored uncompressed, this looks like a decompression bomb); re-save the model with "
                         "torch.save")


def zip_kind(path: Path) -> str | None:
    """"torchscript", "exported_program", "checkpoint" or None (not a zip archive PyTorch wrote)."""
    if not looks_like_zip(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except ZIP_ERRORS:
        return None
    # torch archives put every entry under one top folder: "<name>/data.pkl", "<name>/code/...".
    rel = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
        return "exported_program"
    if "data.pkl" in rel:
        return "checkpoint"
    return None


def pickle_stream(path: Path) -> bytes:
    """The pickle that holds the checkpoint's object (zip: ``*/data.pkl``; legacy: the whole file)."""
    if looks_like_zip(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise InputError(f"{path}: zip archive without data.pkl: not a PyTorch checkpoint")
            return z.read(name)
    return path.read_bytes()


def globals_in(stream: bytes) -> list[str]:
    """Globals (``module.name``) that unpickling ``stream`` would import, found without unpickling it.

    Legacy files hold several pickles back to back (magic number, protocol, system info, the object, storage
    keys) followed by raw storage bytes; pickles are scanned until the raw bytes start. ``ValueError`` when
    not even the first pickle can be read.
    """
    found: list[str] = []
    buf = io.BytesIO(stream)
    parsed = 0
    while buf.tell() < len(stream):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(buf):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                               "BINSTRING", "STRING"):
                    strings.append(str(arg))
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings and isinstance(arg, int):
                    memo[arg] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int) and isinstance(
                        memo.get(arg), str):
                    strings.append(memo[arg])
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except (ValueError, EOFError, IndexError, KeyError) as e:
            if parsed == 0 and not found:
                raise ValueError(f"not a pickle stream: {e}") from e
            break  # raw storage bytes after the legacy header pickles (or garbage after a payload)
        parsed += 1
    return found


def _allowed_globals() -> set[str]:
    """Names of the globals ``torch.load(weights_only=True)`` accepts (``module.name``)."""
    import torch

    allowed = {"collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device", "torch.dtype",
               "torch.nn.parameter.Parameter", "_codecs.encode"}
    try:  # the unpickler's own table; private, so only an addition to the explicit names above
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed.update(_get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    for g in torch.serialization.get_safe_globals():
        obj = g[0] if isinstance(g, tuple) else g
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return allowed


def _needs_code(globals_: list[str]) -> list[str]:
    """The globals among ``globals_`` that only a full (code-running) unpickler would import."""
    allowed = _allowed_globals()
    needed = []
    for g in globals_:
        name = g.replace("__builtin__.", "builtins.", 1)
        if name in allowed or name.startswith(_SAFE_GLOBAL_PREFIXES) or (
                name.startswith("torch.") and name.endswith(_SAFE_GLOBAL_SUFFIX)):
            continue
        if name not in needed:
            needed.append(name)
    return needed


class _Stub:
    """Stands in for every object a scanned pickle builds: accepts any call, state, item or append."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _RecordingUnpickler(pickle.Unpickler):
    """Replays a pickle with every global replaced by ``_Stub``, recording the names it asks for.

    The stdlib unpickler resolves every import through ``find_class`` (GLOBAL, STACK_GLOBAL, INST, OBJ and the
    copyreg extension codes, https://docs.python.org/3/library/pickle.html#restricting-globals); here it never
    imports or calls anything real, so replaying runs no code from the file, and names pushed through the memo
    or computed on the stack are seen as the real unpickler would see them.
    """

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return _Stub()


def _replayed_globals(stream: Any) -> list[str]:
    """Globals the pickles at the start of ``stream`` (binary file) ask for, up to the first error."""
    found: list[str] = []
    for _ in range(8):  # legacy torch files hold several pickles back to back
        unpickler = _RecordingUnpickler(stream)
        try:
            unpickler.load()
        except Exception:  # garbage, raw storage bytes or a stub that cannot play along: the scan ends here
            found += unpickler.names
            break
        found += unpickler.names
    return found


def _is_name(dotted: str) -> bool:
    return all(part.isidentifier() for part in dotted.split("."))


def unsafe_globals(data: bytes, *, torchscript: bool = False) -> list[str]:
    """Globals in the pickle ``data`` that only a code-running unpickler imports (empty: none found).

    Two readers, and their union: the replay above and ``pickletools`` (a disassembler that lists globals
    past the point where the replay stops). Names that are not dotted identifiers cannot be imported and
    come from bytes that are not a pickle (raw tensor storage). In a TorchScript archive the C++ unpickler
    resolves ``__torch__`` classes from the archive's TorchScript code and ``torch.*`` helpers, not Python.
    """
    names = _replayed_globals(io.BytesIO(data))
    with contextlib.suppress(ValueError):
        names += globals_in(data)
    names = [n for n in names if _is_name(n)]
    if torchscript:
        names = [n for n in names if not n.startswith(("__torch__.", "torch."))]
    return _needs_code(names)


_MAX_ZIP_DEPTH = 3


def _zip_unsafe_globals(source: Any, label: str, *, torchscript: bool, depth: int = 0) -> tuple[str, list[str]]:
    """(member, globals) of the first member of the zip ``source`` that pickles code; ("", []) when none does.

    Every member is scanned, whatever its name: a ``torch.export`` archive says in its own JSON which
    members are pickles (``use_pickle``), so the name proves nothing. Members that are zips themselves
    (``torch.save`` files inside the archive, e.g. ``data/sample_inputs/*.pt``) are scanned member by member.
    """
    with zipfile.ZipFile(source) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            data = z.read(info)
            where = f"{label}/{info.filename}" if label else info.filename
            if data[:4] == b"PK\x03\x04" and depth < _MAX_ZIP_DEPTH:
                try:
                    member, found = _zip_unsafe_globals(io.BytesIO(data), where, torchscript=torchscript,
                                                        depth=depth + 1)
                except (*ZIP_ERRORS, RuntimeError):
                    member, found = where, unsafe_globals(data, torchscript=torchscript)
            else:
                member, found = where, unsafe_globals(data, torchscript=torchscript)
            if found:
                return member, found
    return "", []


def refuse_code(path: Path, needed: list[str], where: str = "") -> InputError:
    shown = ", ".join(needed[:3]) + (f" and {len(needed) - 3} more" if len(needed) > 3 else "")
    inside = f" ({where})" if where else ""
    return InputError(f"{path}: loading this file would run code from it (it pickles {shown}{inside}); "
                      "pass `trust_pickle=True` only if you trust its source, or export a state_dict and use `arch`")


def gate_archive(path: Path, kind: str, trust_pickle: bool) -> None:
    """Refuse a zip archive any of whose members pickles code, before a torch loader opens it."""
    if trust_pickle:
        return
    try:
        where, needed = _zip_unsafe_globals(path, "", torchscript=kind == "torchscript")
    except (*ZIP_ERRORS, RuntimeError) as e:
        raise InputError(f"{path}: not a readable zip archive ({type(e).__name__}); it may be truncated or "
                         "corrupted") from e
    if needed:
        raise refuse_code(path, needed, where)


def refuse_exported_program(path: Path) -> InputError:
    """Why a ``torch.export`` program needs trust, whatever its members hold.

    ``torch.export.load`` (torch 2.14, torch/export/pt2_archive/_package.py and torch/_export/serde/serialize.py)
    runs code from the file at more places than a member scan can see: pickled weights and constants go through
    ``torch.load(weights_only=False)``, opaque constants through ``pickle.loads``, sample inputs through a
    weights-only load that falls back to a full one; and with no pickle at all, each symbolic-shape
    ``expr_str`` is parsed by ``sympy.sympify`` (which ``eval``s it) and the graph's input names are pasted into
    the Python source FX generates and executes. Loading one only with trust keeps every such byte away from an
    evaluator.
    """
    return InputError(f"{path}: loading a torch.export program runs code from the file (torch.export.load "
                      "unpickles its members and evaluates expressions and names from its graph); pass "
                      "`trust_pickle=True` only if you trust its source, or save a state_dict and use `arch`")
