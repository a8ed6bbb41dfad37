"""Each sample model's three checkpoint forms: size, what they reference, that they load and agree."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from blocks_export.runtime.parity import RULES, rel_l2
from sample_models import models

NAMES = ("classifier", "detector")
FORMS = ("", "_ckpt", "_state_dict")
MAX_BYTES = 5 * 1024 * 1024
# Inputs small enough for a quick test; the forms' agreement does not depend on the size.
EXAMPLES = {"classifier": (2, 1, 32, 32), "detector": (1, 3, 256, 256)}
# What a full pickle may name: classes a `pip install blocks-export` provides, nothing from sample_models/.
INSTALLED_MODULES = ("torch", "torchvision", "blocks_export", "collections", "__builtin__", "builtins")


def _pickle_globals(path: Path) -> set[str]:
    """Every ``module.name`` the pickle inside a torch.save zip archive refers to."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    ops = list(pickletools.genops(data))
    names = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            names.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{ops[i - 2][1]}.{ops[i - 1][1]}")
    return names


def _load_three(samples: Path, name: str) -> tuple[nn.Module, dict, nn.Module]:
    pickled = torch.load(samples / f"{name}.pt", weights_only=False).eval()
    ckpt = torch.load(samples / f"{name}_ckpt.pt", weights_only=False)
    from_state = getattr(models, name)().eval()
    from_state.load_state_dict(torch.load(samples / f"{name}_state_dict.pt", weights_only=True), strict=True)
    return pickled, ckpt, from_state


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        y = model(x)
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_each_checkpoint_file_is_at_most_5_mb(samples: Path, name: str, form: str) -> None:
    size = (samples / f"{name}{form}.pt").stat().st_size
    assert size <= MAX_BYTES, f"{name}{form}.pt is {size} bytes"


@pytest.mark.parametrize("form", ("", "_ckpt"))
@pytest.mark.parametrize("name", NAMES)
def test_pickles_reference_only_installed_classes(samples: Path, name: str, form: str) -> None:
    names = _pickle_globals(samples / f"{name}{form}.pt")
    assert names, "no globals found: the archive layout changed"
    foreign = sorted(n for n in names if not n.startswith(INSTALLED_MODULES))
    assert not foreign, f"{name}{form}.pt needs classes outside blocks_export/torch to unpickle: {foreign}"


@pytest.mark.parametrize("name", NAMES)
def test_full_pickle_and_state_dict_give_identical_outputs(samples: Path, name: str) -> None:
    pickled, _, from_state = _load_three(samples, name)
    x = torch.randn(*EXAMPLES[name], generator=torch.Generator().manual_seed(1))
    for a, b in zip(_outputs(pickled, x), _outputs(from_state, x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_ultralytics_checkpoint_holds_the_same_model_in_fp16(samples: Path, name: str) -> None:
    pickled, ckpt, _ = _load_three(samples, name)
    assert {"model", "epoch", "date"} <= ckpt.keys()
    half = ckpt["model"]
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert half.export_metadata == pickled.export_metadata
    # The fp16 weights are the full pickle's weights rounded to half precision.
    ref = pickled.state_dict()
    for key, value in half.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, ref[key].half()), key
    # Image-like input in [0, 1]: the fp16-rounded weights stay within the fp16 parity rule on it.
    x = torch.rand(*EXAMPLES[name], generator=torch.Generator().manual_seed(2))
    for a, b in zip(_outputs(pickled, x), _outputs(half.float().eval(), x), strict=True):
        assert rel_l2(a, b) < RULES["fp16"].rel_l2


@pytest.mark.parametrize("name", NAMES)
def test_arch_callable_carries_the_export_metadata(samples: Path, name: str) -> None:
    pickled = torch.load(samples / f"{name}.pt", weights_only=False)
    built = getattr(models, name)()
    for key in ("task", "preprocess"):
        assert built.export_metadata[key] == pickled.export_metadata[key]
    assert pickled.export_metadata["task"] in ("classify", "detect", "features")
