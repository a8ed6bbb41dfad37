"""Only the command line (``export/cli.py`` and its ``cli_*.py`` modules) speaks in ``--flag`` words; the library
names options as ``errors.OPTION_REF`` facts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from blocks_export.export.cli_words import flag_words
from blocks_export.export.errors import UsageError
from blocks_export.export.options import ExportOptions, parse_imgsz

ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"--[a-z]")
# The command line turns the library's words into flags; runtime/infer.py is a CLI of its own (copied alone to
# devices).
EXEMPT = {ROOT / "export" / name for name in ("cli.py", "cli_args.py", "cli_profile.py", "cli_run.py",
                                              "cli_words.py")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _flag_literals(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and FLAG.search(node.value)]


def test_no_flag_words_in_library_string_literals() -> None:
    files = [p for d in ("blocks", "export", "plugins") for p in sorted((ROOT / d).rglob("*.py")) if p not in EXEMPT]
    assert len(files) > 20  # the walk found the package
    found = [hit for p in files for hit in _flag_literals(p)]
    assert not found, "\n".join(found)


def test_the_grep_sees_flags_in_fstrings_and_plain_strings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docs may say --help."""\nx = 1\nA = f"{x} pass --force"\nB = "-o/--output"\n')
    hits = [h.split(": ", 1)[1] for h in _flag_literals(bad, tmp_path)]
    assert sorted(hits) == ["' pass --force'", "'-o/--output'"]


def test_a_library_usage_error_carries_the_option_and_value_as_facts() -> None:
    with pytest.raises(UsageError) as e:
        parse_imgsz("0x9")
    assert e.value.option == "imgsz" and e.value.value == "'0x9'"
    assert "--" not in str(e.value)
    assert flag_words(str(e.value)).startswith("--imgsz '0x9': expected N or H,W")
    with pytest.raises(UsageError) as e2:
        ExportOptions(fp16_io=True)
    assert e2.value.options == [("fp16_io", "True"), ("fp16", "True")]
    assert flag_words(str(e2.value)).startswith("--fp16-io needs --fp16 (")


@pytest.mark.parametrize(("words", "flags"), [
    ("pass `force=True` to overwrite it", "pass --force to overwrite it"),
    ("drop `simplify=False`", "drop --no-simplify"),
    ("export with `deform_conv=portable`", "export with --deform-conv portable"),
    ("choose another `output`", "choose another -o/--output"),
    ("give `min_shape`/`opt_shape`/`max_shape`", "give --min-shape/--opt-shape/--max-shape"),
    ("`verify_with='tensorrt'`: expected", "--verify-with 'tensorrt': expected"),
    ("or `blocks-export check`", "or `blocks-export check`"),  # not an option: left as written
    ("`shape` is computed at run time", "`shape` is computed at run time"),
])
def test_cli_spells_the_library_words_as_its_flags(words: str, flags: str) -> None:
    assert flag_words(words) == flags


def test_check_command_prescribes_the_fix_in_flag_words(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper
    from typer.testing import CliRunner

    from blocks_export.export.cli import app

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
          for n, s in (("x", [1, 4, 8, 8]), ("w", [4, 4, 3, 3]), ("o", [1, 18, 8, 8]))]
    node = helper.make_node("DeformConv", ["x", "w", "o"], ["y"], name="the_deformconv", pads=[1, 1, 1, 1])
    model = helper.make_model(helper.make_graph([node], "g", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                                 None)]),
                              opset_imports=[helper.make_opsetid("", 19)])
    onnx.save(model, tmp_path / "dcn.onnx")
    result = CliRunner().invoke(app, ["check", str(tmp_path / "dcn.onnx"), "--target", "jetpack5"],
                                terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    assert "the_deformconv" in result.output and "fix: export with --deform-conv portable" in result.output
    assert "`" not in result.output


def test_json_on_stdout_is_the_report_file_and_both_name_options_in_the_library_words(tmp_path: Path) -> None:
    import json

    import torch
    from torch import nn
    from typer.testing import CliRunner

    from blocks_export.export.cli import app, with_default_command

    src = tmp_path / "tiny.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), src)
    result = CliRunner().invoke(app, with_default_command([str(src), "--trust-pickle", "--imgsz", "12",
                                                           "--no-simplify", "--no-verify", "--json"]))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "tiny.report.json").read_text())
    notes = {s["name"]: s["note"] for s in printed["steps"]}
    assert notes["simplify"] == "`simplify=False`" and notes["verify"] == "`verify=False`"
    assert flag_words(notes["simplify"]) == "--no-simplify"  # what the terminal shows for the same step
