"""``--arch``/``--arch-kwargs`` that cannot work: the user's module or callable misbehaving in every way a real
one can (syntax error, failing import, raising, recursing, ``sys.exit(0)``), names no import could resolve, and
JSON that Python cannot read (nesting past the stack, a 5,000-digit number). Each: exit 2, one line, nothing
written."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from bad_inputs import cli, listing, one_error_line

_MODULES = {
    "syntax_error": "def build(:\n",
    "import_error": "import blocks_export_no_such_dependency\n",
    "raises_on_import": "raise RuntimeError('configuration missing')\n",
    "exits_on_import": "import sys\nsys.exit(0)\n",
    "raises": "def build(**kw):\n    raise RuntimeError('boom\\nsecond line')\n",
    "exits": "def build(**kw):\n    import sys\n    sys.exit(0)\n",
    "recurses": "def build(**kw):\n    return build()\n",
    "not_a_module": "def build(**kw):\n    return 42\n",
}
_COUNTER = itertools.count()


def _state_dict(folder: Path) -> Path:
    import torch

    path = folder / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize("behaviour", list(_MODULES))
def test_misbehaving_arch_module_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    behaviour: str) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"arch_{behaviour}_{next(_COUNTER)}"  # a fresh module name: nothing cached in sys.modules
    (tmp_path / f"{name}.py").write_text(_MODULES[behaviour])
    src = _state_dict(tmp_path)
    code, _out, err = cli(src, "--arch", f"{name}:build", "-o", tmp_path / "out.onnx", "--quiet")
    line = one_error_line(err)
    assert code == 2, err
    assert "unexpected" not in line and "--arch" in line, line
    assert not [p for p in listing(tmp_path) if p.startswith("out")]


@pytest.mark.parametrize("arch", ["../../x:y", "a b:c", "mod:", ":build", "mod:a-b", "/etc/passwd:x"])
def test_arch_that_no_import_can_name_is_refused_before_loading(tmp_path: Path, arch: str) -> None:
    src = _state_dict(tmp_path)
    code, _out, err = cli(src, "--arch", arch, "-o", tmp_path / "out.onnx", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "unexpected" not in line, err
    assert listing(tmp_path) == [src.name]


@pytest.mark.parametrize("kwargs", ["[" * 50_000, '{"a": ' * 50_000 + "1" + "}" * 50_000,
                                    '{"n": ' + "9" * 5000 + "}", '{"a": 1', "[1, 2]"],
                         ids=["deep_list", "deep_object", "5000_digits", "not_json", "not_an_object"])
def test_unreadable_arch_kwargs_are_one_line_exit_2(tmp_path: Path, kwargs: str) -> None:
    src = _state_dict(tmp_path)
    code, _out, err = cli(src, "--arch", "torchvision.models:resnet18", "--arch-kwargs", kwargs,
                          "-o", tmp_path / "out.onnx", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "unexpected" not in line and "--arch-kwargs" in line, err
    assert len(line) < 400, line  # the value is shown cut, not 100 kB of brackets
    assert listing(tmp_path) == [src.name]
