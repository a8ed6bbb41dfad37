"""The Jetson script runs without torch or the package, from a lone copy, on Python 3.8 syntax."""

from __future__ import annotations

import ast
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from infer_fixtures import REPO, classifier_model

RUNTIME_FILES = sorted((REPO / "runtime").glob("*.py"))
ALLOWED_IMPORTS = {"__future__", "argparse", "ast", "collections", "contextlib", "dataclasses", "typing", "ctypes", "hashlib", "io", "json", "math", "os", "re", "signal", "stat", "sys", "time",
                   "numpy", "onnxruntime", "PIL", "cv2", "tensorrt"}
# Library calls that parse on 3.8 but fail there at run time (added in 3.9 / 3.10).
NEWER_THAN_38 = {"removeprefix", "removesuffix", "is_relative_to", "BooleanOptionalAction", "cache",
                 "with_stem", "pairwise", "bit_count", "zoneinfo", "topological_sort"}


def test_every_runtime_file_parses_as_python_38():
    assert RUNTIME_FILES
    for path in RUNTIME_FILES:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_runtime_imports_only_numpy_onnxruntime_and_optional_image_libraries():
    for path in RUNTIME_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= ALLOWED_IMPORTS, f"{path.name} imports {roots - ALLOWED_IMPORTS}"


def test_runtime_uses_no_library_call_newer_than_python_38():
    for path in RUNTIME_FILES:
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & NEWER_THAN_38, f"{path.name} uses {names & NEWER_THAN_38}"
        zip_keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call)
                        and isinstance(n.func, ast.Name) and n.func.id == "zip" for k in n.keywords}
        assert "strict" not in zip_keywords, f"{path.name}: zip(strict=...) is Python 3.10+"


def test_runtime_package_init_imports_nothing():
    tree = ast.parse((REPO / "runtime" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


BLOCK_TORCH = "sys.modules['torch'] = None; sys.modules['torchvision'] = None"


def test_script_runs_with_torch_blocked(save, script):
    model = save(classifier_model())
    done = script([model, "--random", "--json"], prelude=BLOCK_TORCH)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["providers"][0] == "CPUExecutionProvider"
    assert [p["label"] for p in report["predictions"][0]["topk"]]


def test_script_copied_alone_runs_without_the_package(tmp_path, save, script):
    model = save(classifier_model())
    alone = tmp_path / "jetson"
    alone.mkdir()
    copy = Path(shutil.copy(REPO / "runtime" / "infer.py", alone / "infer.py"))
    done = subprocess.run([sys.executable, str(copy), str(model), "--random", "--json"], cwd=alone,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"][0]["shape"] == [1, 5]


def test_module_entry_point_runs(save):
    model = save(classifier_model())
    done = subprocess.run([sys.executable, "-m", "blocks_export.runtime.infer", str(model), "--random", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"] == "classify"


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupted_benchmark_exits_130_or_143_without_traceback(save, sig, code, word):
    model = save(classifier_model())
    # --fp16 with --provider cpu prints a note once the script is running: the signal comes after it.
    proc = subprocess.Popen([sys.executable, str(REPO / "runtime" / "infer.py"), str(model), "--random", "--fp16",
                             "--provider", "cpu", "--bench", "100000000", "--warmup", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        assert first.startswith("note: --fp16"), first
        time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert err.strip().splitlines()[-1] == word and "Traceback" not in err
    assert out == ""
