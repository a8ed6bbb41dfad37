"""Virtual environments with the Python and onnxruntime each JetPack ships, for the runtime matrix tests.

Each runtime is made from the pyenv interpreter of its Python (``$(pyenv root)/versions/3.8.*`` etc.) with
README's Jetson install line (``<!-- jetson-install -->`` block: the runtime script's needs besides
onnxruntime) plus ``onnxruntime==<version>`` from the package index (the CPU build of the release the Jetson's
onnxruntime-gpu is built from). Venvs live in ``.venv-jetson/<key>/`` (git ignores it) and are reused while
their stamp (the requirement lines) is unchanged; a lock file keeps two pytest workers from building one venv
twice. Missing interpreter or package index: ``pytest.skip`` with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_ROOT = REPO / ".venv-jetson"
README = REPO / "README.md"
INSTALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Runtime:
    key: str
    jetpack: str
    target: str  # the export target for that JetPack
    python: str  # "3.8"
    onnxruntime: str  # "1.14.1"

    @property
    def ort_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.onnxruntime.split(".")[:2])


# JetPack 5: Python 3.8 with the onnxruntime built against TensorRT 8.5 (1.14) and a later one (1.16);
# JetPack 6.0: Python 3.10, 1.17 (TensorRT 8.6); 6.1/6.2: Python 3.10, 1.20 (TensorRT 10.x); JetPack 7:
# Python 3.12 and the newest release for it. README's "What was verified where" lists what ran on each.
RUNTIMES: dict[str, Runtime] = {r.key: r for r in (
    Runtime("jp5-ort1.14", "5.1", "jetpack5", "3.8", "1.14.1"),
    Runtime("jp5-ort1.16", "5.1", "jetpack5", "3.8", "1.16.3"),
    Runtime("jp6.0-ort1.17", "6.0", "jetpack6.0", "3.10", "1.17.3"),
    Runtime("jp6.2-ort1.20", "6.1/6.2", "jetpack6", "3.10", "1.20.1"),
    Runtime("jp7-ort1.32", "7", "jetpack7", "3.12", "1.32.0"),
)}


def readme_install_line() -> str:
    """The one ``pip install`` command of README's ``<!-- jetson-install -->`` block."""
    text = README.read_text()
    match = re.search(r"<!-- jetson-install -->\s*```bash\n(.*?)```", text, re.S)
    assert match, "README.md has no <!-- jetson-install --> block"
    lines = [ln.split("#")[0].strip() for ln in match.group(1).splitlines()]
    commands = [ln for ln in lines if ln]
    assert len(commands) == 1 and commands[0].startswith("python3 -m pip install "), commands
    return commands[0]


def interpreter(python: str) -> Path | None:
    """The pyenv interpreter of ``python`` ("3.8"), else ``python3.8`` on PATH, else None."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{root}/versions/{python}.*/bin/python"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parents[1].name)])
    if found:
        return Path(found[-1])
    which = shutil.which(f"python{python}")
    return Path(which) if which else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip(python: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q", *args],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)


def venv_python(runtime: Runtime) -> Path:
    """The venv's interpreter, built on first use (``pytest.skip`` with the reason where it cannot be)."""
    base = interpreter(runtime.python)
    if base is None:
        pytest.skip(f"no Python {runtime.python} interpreter (pyenv install {runtime.python}) for {runtime.key}")
    install = readme_install_line()
    stamp_text = f"{base}\n{install}\nonnxruntime=={runtime.onnxruntime}\n"
    folder = VENV_ROOT / runtime.key
    python = folder / "bin" / "python"
    stamp = folder / ".installed"
    with _lock(VENV_ROOT / f"{runtime.key}.lock"):
        if stamp.is_file() and stamp.read_text() == stamp_text and python.is_file():
            return python
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        made = subprocess.run([str(base), "-m", "venv", str(folder)], capture_output=True, text=True, timeout=300)
        if made.returncode:
            pytest.skip(f"cannot create a Python {runtime.python} venv: {made.stderr.strip()[-300:]}")
        # onnxruntime first: if the index does not serve it for this Python, that is a skip, not a failure.
        probe = _pip(python, [f"onnxruntime=={runtime.onnxruntime}"])
        if probe.returncode:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"package index unreachable or without onnxruntime {runtime.onnxruntime} for Python "
                        f"{runtime.python}: {probe.stderr.strip()[-300:]}")
        # README's line, as written, with this venv's interpreter: a failure here is README's fault.
        done = _pip(python, shlex.split(install)[4:])
        assert done.returncode == 0, f"README's Jetson install line failed on Python {runtime.python}: " \
                                     f"{done.stderr.strip()[-600:]}"
        check = _pip(python, [f"onnxruntime=={runtime.onnxruntime}", "--no-deps"])
        assert check.returncode == 0, check.stderr
        stamp.write_text(stamp_text)
        (folder / ".seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
    return python


def versions(python: Path) -> dict[str, str]:
    """Python, onnxruntime, numpy and Pillow versions inside a venv."""
    code = ("import sys, onnxruntime, numpy, PIL; print(sys.version.split()[0], onnxruntime.__version__, "
            "numpy.__version__, PIL.__version__)")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    py, ort, np_, pil = out.stdout.split()
    return {"python": py, "onnxruntime": ort, "numpy": np_, "pillow": pil}
