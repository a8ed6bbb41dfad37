"""Atomic file output: a temporary file in the destination folder, renamed over the target on success.

``os.replace`` within one folder (one filesystem) is atomic on POSIX and Windows, so a reader sees either
the previous file or the complete new one (https://docs.python.org/3/library/os.html#os.replace). On any
failure, interrupt included, the temporary file is removed and the previous file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError, OutputWriteError


def check_output_path(path: Path, force: bool) -> None:
    """Refuse, before any work is done, an output that cannot or must not be written."""
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name with `output`")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another `output`")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another `output`")
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists; pass `force=True` to overwrite it")


# Write failures that are the output location's fault, not a bug: reported as OutputError (exit 2).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def output_error(path: Path, error: OSError) -> OSError:
    """``error`` as a one-line ``OutputError`` when the disk or the folder is at fault, else ``error`` itself."""
    if error.errno not in _OUTPUT_ERRNOS:
        return error
    what = os.strerror(error.errno) if error.errno is not None else str(error)
    hint = ("free some space or choose another `output`" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "choose a writable `output`")
    refused = OutputWriteError(f"cannot write {path} ({what}); the previous file, if any, is untouched; {hint}")
    refused.errno = error.errno  # one-argument OSError: str() is the message alone, errno kept for callers
    return refused


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Filesystems without hard links (FAT, some network mounts): the exclusive publish falls back to a check.
_NO_LINK_ERRNOS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                   getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EOPNOTSUPP}


def publish(tmp: Path, path: Path, force: bool) -> None:
    """Move the finished ``tmp`` to ``path``.

    The file gets the mode a plain ``open()`` would give it (0666 less the umask; ``mkstemp`` makes 0600),
    or, replacing a file with ``force``, that file's mode. Without ``force`` a file that appeared at ``path``
    since the run started is never replaced: ``os.link`` fails with EEXIST where ``os.replace`` would
    silently overwrite (a second export into the same new output).
    """
    mode = 0o666 & ~_umask()
    if force:
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(path).st_mode & 0o7777
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return
    os.chmod(tmp, mode)
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise OutputError(f"output {path} already exists (it appeared while this run was working); "
                          "pass `force=True` to overwrite it") from None
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        if os.path.lexists(path):
            raise OutputError(f"output {path} already exists (it appeared while this run was working); "
                              "pass `force=True` to overwrite it") from None
        os.replace(tmp, path)
        return
    with contextlib.suppress(OSError):
        tmp.unlink()


STALE_TMP_SECONDS = 24 * 3600  # a temporary file of ours this old outlived its run (SIGKILL, power loss)
_OUR_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")
TMP_FOLDER_PREFIX = ".blocks-export."  # tempfile.mkdtemp(prefix=TMP_FOLDER_PREFIX, suffix=".tmp")
_OUR_TMP_FOLDER = re.compile(r"^\.blocks-export\.[A-Za-z0-9_]{8}\.tmp$")


def _remove_stale_folder(entry: os.DirEntry[str], now: float) -> bool:
    """Remove our stale temporary folder ``entry``: a real folder (not a link) of this user, older than a day,
    holding only regular files (what ``atomic_folder_files`` and ``OutputUnit`` put there); else leave it."""
    st = entry.stat(follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or now - st.st_mtime < STALE_TMP_SECONDS:
        return False
    inside = list(os.scandir(entry.path))
    if any(not stat.S_ISREG(e.stat(follow_symlinks=False).st_mode) for e in inside):
        return False
    for e in inside:
        os.unlink(e.path)
    os.rmdir(entry.path)
    return True


def remove_stale_temporaries(path: Path, now: float | None = None) -> list[Path]:
    """Remove our leftovers beside ``path`` older than a day: ``.NAME.XXXXXXXX.tmp`` files (our naming, for
    this very NAME) and ``.blocks-export.XXXXXXXX.tmp`` folders (multi-file outputs).

    Only regular files, and folders of regular files, owned by this user match (never a link, never a folder
    holding anything else, never a name off our pattern); everything else is left.
    """
    path = Path(path)
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if _OUR_TMP_FOLDER.match(entry.name):
            try:
                if _remove_stale_folder(entry, now):
                    removed.append(Path(entry.path))
            except OSError:
                pass
            continue
        m = _OUR_TMP.match(entry.name)
        if m is None or m.group("name") != path.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid()
                    or now - st.st_mtime < STALE_TMP_SECONDS):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it becomes ``path`` (see ``publish``: without
    ``force`` an existing ``path`` is refused, not replaced), otherwise it is removed."""
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish(tmp, path, force)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise output_error(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, force: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str, force: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), force)


@contextlib.contextmanager
def atomic_folder_files(folder: Path, names: list[str], force: bool = True) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; on normal exit its files ``names`` are moved into ``folder``.

    For outputs made of several files (an ONNX model and its external-data file): each move is atomic; the
    files are moved in the order given, so the model (last) never refers to a data file that is missing.
    """
    remove_stale_temporaries(folder / names[-1])
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_FOLDER_PREFIX, suffix=".tmp", dir=folder))
    except OSError as e:
        raise output_error(folder / names[-1], e) from e
    try:
        yield tmp
        for name in names:
            publish(tmp / name, folder / name, force)
    except OSError as e:
        raise output_error(folder / names[-1], e) from e
    finally:
        for leftover in tmp.iterdir() if tmp.exists() else ():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()
