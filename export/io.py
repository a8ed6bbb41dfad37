"""Atomic file output: a temporary file in the destination folder, renamed over the target on success.

``os.replace`` within one folder (one filesystem) is atomic on POSIX and Windows, so a reader sees either
the previous file or the complete new one (https://docs.python.org/3/library/os.html#os.replace). On any
failure, interrupt included, the temporary file is removed and the previous file is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def check_output_path(path: Path, force: bool) -> None:
    """Refuse, before any work is done, an output that cannot or must not be written."""
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name with -o/--output")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another -o/--output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another -o/--output")
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``, otherwise it is removed."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder_files(folder: Path, names: list[str]) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; on normal exit its files ``names`` are moved into ``folder``.

    For outputs made of several files (an ONNX model and its external-data file): each move is atomic; the
    files are moved in the order given, so the model (last) never refers to a data file that is missing.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".blocks-export.", suffix=".tmp", dir=folder))
    try:
        yield tmp
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        for leftover in tmp.iterdir() if tmp.exists() else ():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()
