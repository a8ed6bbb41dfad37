"""Loading a model file without running code it was not allowed to run.

What a file holds is decided before anything is unpickled with code execution enabled:
- ONNX files (``.onnx``) are not loaded here at all (no torch needed);
- zip archives are told apart by their entries, whatever the file is called: TorchScript (``code/`` +
  ``constants.pkl``; ``torch.jit.load`` rebuilds TorchScript, it does not run Python from the file),
  ``torch.export`` programs (``archive_format``, ``models/*.json``), ``torch.save`` checkpoints (``data.pkl``);
- a ``torch.export`` program is opened only with ``trust_pickle=True``: ``torch.export.load`` turns bytes of the
  file into running code at several places, pickles or not (see ``pickle_scan.refuse_exported_program``);
- checkpoints go through ``torch.load(weights_only=True)`` first (PyTorch's restricted unpickler: tensors,
  containers and primitive types only). If that refuses the file, its pickle stream is read with
  ``pickletools.genops`` (a disassembler, it executes nothing) to name the globals it needs; a full
  ``torch.load`` runs only with ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pickle
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.infer import sha256_file
from .errors import InputError
from .pickle_scan import (
    ZIP_ERRORS,
    check_zip_envelope,
    gate_archive,
    globals_in,
    looks_like_zip,
    pickle_stream,
    refuse_code,
    refuse_exported_program,
    unsafe_globals,
    zip_kind,
)


@dataclass
class LoadedModel:
    """A loaded model and what is known about it.

    ``kind``: "module" (an ``nn.Module`` we can rewrite), "torchscript", "exported_program" or "onnx".
    ``model`` is ``None`` for "onnx". ``metadata`` is the model's optional ``export_metadata`` dict.
    """

    path: Path
    kind: str
    model: Any
    sha256: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_torch_export_log() -> Iterator[None]:
    """torch.export logs a failed archive read with its traceback before it raises; the refusal says it once."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _count_tensor_inputs(forward: Any) -> int:
    """Number of positional parameters of ``forward`` without a default value."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


def check_single_input(model: Any, path: Path) -> None:
    """Refuse a model whose ``forward`` needs more than one input: the exporter feeds exactly one image."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        schema = model.forward.schema  # type: ignore[attr-defined]  # ScriptMethod
        args = [a for a in schema.arguments[1:] if not a.has_default_value()]
        n = len(args)
    else:
        n = _count_tensor_inputs(model.forward)
    if n != 1:
        raise InputError(f"{path}: the model's forward takes {n} required inputs; blocks-export exports models "
                         "with exactly one image input (wrap the model in a module whose forward takes one tensor)")


def _model_from_object(obj: Any, path: Path) -> Any:
    """The ``nn.Module`` inside a fully unpickled object (a module, or a dict with ``ema``/``model``)."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping):
        # YOLOv5/Ultralytics checkpoints: {"model": ..., "ema": ..., "optimizer": ..., ...}; the EMA weights
        # are the ones evaluated and shipped (ultralytics/nn/tasks.py attempt_load_weights: ckpt.get("ema") or
        # ckpt["model"]).
        for key in ("ema", "model"):
            m = obj.get(key)
            if isinstance(m, torch.nn.Module):
                return m
    raise InputError(_no_model_message(obj, path))


def _no_model_message(obj: Any, path: Path) -> str:
    import torch

    if isinstance(obj, torch.Tensor):
        what = f"a single tensor of shape {tuple(obj.shape)}"
    elif isinstance(obj, Mapping):
        what = f"a dict with keys {sorted(map(str, obj))[:6]} and no 'model' or 'ema' module"
    else:
        what = f"a {type(obj).__name__}"
    return f"{path}: the file holds {what}, not a model; save the nn.Module, or a state_dict and pass `arch`"


def _state_dict_in(obj: Any) -> Mapping[str, Any] | None:
    """A state_dict (str -> tensor mapping), possibly under ``state_dict``/``model``/``ema`` keys."""
    import torch

    if not isinstance(obj, Mapping) or not obj:
        return None
    if all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model_state_dict", "ema", "model"):
        inner = obj.get(key)
        sd = _state_dict_in(inner) if isinstance(inner, Mapping) else None
        if sd is not None:
            return sd
    return None


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """``--arch mymodels:build`` names a module in the current folder, as ``python -c`` would see it."""
    added = "" not in sys.path
    if added:
        sys.path.insert(0, "")
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove("")


def parse_arch(arch: str) -> tuple[str, str]:
    """``MODULE:CALLABLE`` as (module, attribute path); refuses what no import could name (``../x:y``, ``a b:c``)."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"`arch={arch!r}`: expected MODULE:CALLABLE, e.g. mymodels.net:build_model")
    for what, dotted in (("module", module_name), ("callable", attr)):
        if not all(part.isidentifier() for part in dotted.split(".")):
            raise InputError(f"`arch={arch!r}`: {dotted!r} is not a dotted Python name ({what}); name a module "
                             "importable from the current folder or PYTHONPATH, e.g. mymodels.net:build_model")
    return module_name, attr


def _raised(e: BaseException) -> str:
    """``Type: first line`` of ``e``; ``sys.exit(n)`` is named as such (it is not an error to the callee)."""
    if isinstance(e, SystemExit):
        return f"SystemExit (sys.exit({e.code!r}))"
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({Path(e.filename or '?').name}, line {e.lineno})"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def build_arch(arch: str, kwargs: Mapping[str, object] | None = None) -> Any:
    """Build the model named by ``--arch MODULE:CALLABLE``, called with ``kwargs`` (``--arch-kwargs``).

    The user's code runs here (import, then the call): whatever it raises or exits with is a refusal of the
    option in one line, not a crash and not the program's own exit (``sys.exit(0)`` in a builder must not end
    the export with code 0 and nothing written).
    """
    import torch

    module_name, attr = parse_arch(arch)
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise InputError(f"`arch={arch!r}`: cannot import module {module_name!r} ({_raised(e)}); "
                             "check the name and that it is on PYTHONPATH") from e
        except (Exception, SystemExit) as e:
            raise InputError(f"`arch={arch!r}`: importing module {module_name!r} raised {_raised(e)}; fix the "
                             "module") from e
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InputError(f"`arch={arch!r}`: module {module_name!r} has no attribute {attr!r}") from None
        except (Exception, SystemExit) as e:
            raise InputError(f"`arch={arch!r}`: looking up {attr!r} raised {_raised(e)}") from e
    if not callable(target):
        raise InputError(f"`arch={arch!r}`: {attr!r} is a {type(target).__name__}, not a callable that builds "
                         "the model")
    try:
        model = target(**dict(kwargs or {}))
    except (Exception, SystemExit) as e:
        raise InputError(f"`arch={arch!r}`: calling {attr}() raised {_raised(e)}; fix the callable or "
                         "`arch_kwargs`") from e
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"`arch={arch!r}`: {attr}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _load_state_dict(model: Any, sd: Mapping[str, Any], arch: str, path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise InputError(f"{path}: the state_dict does not match `arch={arch}`: {'; '.join(parts)}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise InputError(f"{path}: the state_dict does not match `arch={arch}`: {k} has shape "
                         f"{tuple(sd[k].shape)}, the architecture expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=True)


def _finish(model: Any) -> Any:
    """fp32, eval mode, no gradients: checkpoints often hold fp16 (``.half()``) training weights."""
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_model(path: Path, *, trust_pickle: bool = False, arch: str | None = None,
               arch_kwargs: Mapping[str, object] | None = None) -> LoadedModel:
    """Load ``path`` (see the module docstring for what runs when); ``InputError`` with one line otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; re-save or re-download the model")
    digest = sha256_file(path)
    if path.suffix.lower() == ".onnx":
        return LoadedModel(path, "onnx", None, digest, "onnx")

    import torch

    if looks_like_zip(path):
        check_zip_envelope(path)
    kind = zip_kind(path)
    if kind == "exported_program" and not trust_pickle:
        raise refuse_exported_program(path)
    if kind == "torchscript":
        gate_archive(path, kind, trust_pickle)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise InputError(f"{path}: cannot load this TorchScript archive ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the file may be corrupted") from e
        model = model.float().eval()
        check_single_input(model, path)
        return LoadedModel(path, "torchscript", model, digest, "torchscript",
                           warnings=["TorchScript archive: exported as it is; block rewrites cannot apply to it"])
    if kind == "exported_program":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with _quiet_torch_export_log():  # a failed read is logged with its traceback first
                    program = torch.export.load(str(path))
        except Exception as e:
            raise InputError(f"{path}: cannot load this torch.export program ({type(e).__name__}); the file may "
                             "be corrupted") from e
        n = len(program.graph_signature.user_inputs)
        if n != 1:
            raise InputError(f"{path}: the exported program takes {n} inputs; blocks-export exports models with "
                             "exactly one image input")
        return LoadedModel(path, "exported_program", program, digest, "torch.export",
                           warnings=["torch.export program: exported as it is; block rewrites cannot apply to it"])

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        obj = _load_untrusted(path, trust_pickle, e)
    except Exception as e:  # garbage makes the weights-only unpickler raise almost anything (IndexError, ...)
        raise InputError(f"{path}: not a readable PyTorch file ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]}); it may be truncated or corrupted") from e
    return _from_object(obj, path, digest, arch, arch_kwargs)


def _load_untrusted(path: Path, trust_pickle: bool, error: Exception) -> Any:
    """PyTorch's weights-only unpickler refused ``path``: name what it needs, load it only with trust."""
    import torch

    try:
        stream = pickle_stream(path)
    except ZIP_ERRORS as e:
        raise InputError(f"{path}: not a PyTorch checkpoint (the pickle stream is unreadable); it may be "
                         "corrupted or not a model file") from e
    needed = unsafe_globals(stream)
    if not needed:
        try:
            globals_in(stream)
        except ValueError as e:
            raise InputError(f"{path}: not a PyTorch checkpoint (the pickle stream is unreadable); it may be "
                             "corrupted or not a model file") from e
    if not trust_pickle:
        if needed:
            raise refuse_code(path, needed)
        # The weights-only loader is the gate; when neither reader names a global, its own reason is shown.
        reason = " ".join((str(error).strip().splitlines() or [""])[:1])[:160]
        raise InputError(f"{path}: PyTorch's weights-only loader refuses this file ({reason}); pass "
                         "`trust_pickle=True` only if you trust its source, or export a state_dict and use `arch`")
    try:
        with _cwd_on_path(), warnings.catch_warnings():  # the pickled classes live in the user's project
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"{path}: unpickling failed ({type(e).__name__}: {str(e)[:160]}); the classes it "
                         "needs must be importable (run from the project that defines them)") from e


def _from_object(obj: Any, path: Path, digest: str, arch: str | None,
                 arch_kwargs: Mapping[str, object] | None = None) -> LoadedModel:
    import torch

    if isinstance(obj, torch.nn.Module) or (isinstance(obj, Mapping) and any(
            isinstance(obj.get(k), torch.nn.Module) for k in ("ema", "model"))):
        if arch is not None:
            raise InputError(f"{path}: the file holds a whole model; `arch` is only for state_dict files")
        model = _finish(_model_from_object(obj, path))
        source = "pickled module" if isinstance(obj, torch.nn.Module) else "checkpoint dict"
    else:
        sd = _state_dict_in(obj)
        if sd is None:
            raise InputError(_no_model_message(obj, path))
        if arch is None:
            raise InputError(f"{path}: the file holds a state_dict (weights only); pass `arch=MODULE:CALLABLE` "
                             "naming a function that builds the architecture")
        model = build_arch(arch, arch_kwargs)
        _load_state_dict(model, sd, arch, path)
        model = _finish(model)
        source = f"state_dict + `arch={arch}`"
    check_single_input(model, path)
    meta = getattr(model, "export_metadata", None)
    return LoadedModel(path, "module", model, digest, source, metadata=dict(meta) if isinstance(meta, Mapping) else {})
