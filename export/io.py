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
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from .errors import OutputError, OutputWriteError

# Files written beside an output, named from it (the report, the engine sidecar, an EPContext model, external
# weights, figures): their names must fit the folder's name limit as the output's own does.
_DERIVED = (lambda p: p.stem + ".report.json", lambda p: p.name + ".json", lambda p: p.stem + ".engine.json",
            lambda p: p.stem + "_ctx.onnx", lambda p: p.name + ".data", lambda p: p.stem + ".profile.png",
            lambda p: p.stem + ".val.png")


_TMP_EXTRA = len("..XXXXXXXX.tmp")  # what the temporary name of a file adds to its name (``atomic_path``)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer: the common limit
        return 255


def check_output_path(path: Path, force: bool, *, derived: bool = False) -> None:
    """Refuse, before any work is done, an output that cannot or must not be written. ``derived``: files are
    also written beside it under names made from its own (``_DERIVED``): those must fit the name limit too."""
    if path.is_symlink() and not path.exists():
        raise OutputError(f"output {path} is a symbolic link to {os.readlink(path)!s}, which does not exist; remove "
                          "the link or choose another `output`")
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name with `output`")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another `output`")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another `output`")
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists; pass `force=True` to overwrite it")
    limit = _name_max(folder)
    longest = max((name(path) for name in _DERIVED), key=len) if derived else path.name
    if len(longest.encode()) + _TMP_EXTRA > limit:  # each is written as ".NAME.XXXXXXXX.tmp" first
        raise OutputError(f"output name {path.name[:40]}... is too long: {longest[-24:]!r} and its temporary "
                          f"name pass the folder's {limit}-byte name limit; choose a shorter `output`")


# Write failures that are the output location's fault, not a bug: reported as OutputError (exit 2).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def output_error(path: Path, error: OSError, several: bool = False) -> OSError:
    """``error`` as a one-line ``OutputError`` when the disk or the folder is at fault, else ``error`` itself.
    ``several``: ``path`` is one file of an ``OutputUnit`` (the message speaks of all its previous files)."""
    if error.errno not in _OUTPUT_ERRNOS:
        return error
    what = os.strerror(error.errno) if error.errno is not None else str(error)
    hint = ("free some space or choose another `output`" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "choose a writable `output`")
    untouched = ("no output was replaced (previous files, if any, are untouched)" if several
                 else "the previous file, if any, is untouched")
    refused = OutputWriteError(f"cannot write {path} ({what}); {untouched}; {hint}")
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


_NOTICES: dict[Path, str] = {}


def _note_leftover(path: Path, age: float) -> None:
    from blocks_export.runtime.infer import printable

    _NOTICES.setdefault(path, f"left {printable(path)} alone: a temporary file of a run that was killed or is "
                              f"still writing ({age / 60:.0f} min old); it is removed by the first run after it is "
                              "a day old, or delete it yourself once no export is running")


def take_notices() -> list[str]:
    """The notes gathered since the last call (temporaries of other runs found and left), oldest first."""
    notes = list(_NOTICES.values())
    _NOTICES.clear()
    return notes


def remove_stale_temporaries(path: Path, now: float | None = None) -> list[Path]:
    """Remove our leftovers beside ``path`` older than a day: ``.NAME.XXXXXXXX.tmp`` files (our naming, for
    this very NAME) and ``.blocks-export.XXXXXXXX.tmp`` folders (multi-file outputs).

    Only regular files, and folders of regular files, owned by this user match (never a link, never a folder
    holding anything else, never a name off our pattern); everything else is left. A younger file of ours for
    NAME is left and noted (``take_notices``): the next run says which file it is.
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
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            if now - st.st_mtime < STALE_TMP_SECONDS:  # a killed run's, or one still writing: say so, keep it
                _note_leftover(Path(entry.path), now - st.st_mtime)
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


def _backup_name(path: Path) -> Path:
    """A free name beside ``path`` in our temporary naming (so a SIGKILL's leftover is cleaned up later)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _keep_previous(path: Path) -> Path | None:
    """A second name for the file now at ``path`` (a hard link: ``path`` stays in place), or None if none."""
    if not os.path.lexists(path):
        return None
    for _ in range(3):
        backup = _backup_name(path)
        try:
            os.link(path, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in _NO_LINK_ERRNOS:
                raise
            break
    import shutil  # no hard links here (FAT, some network mounts): a copy keeps the previous bytes

    backup = _backup_name(path)
    shutil.copy2(path, backup, follow_symlinks=False)
    return backup


def commit_files(staged: list[tuple[Path, Path]], force: bool, replace: frozenset[Path] = frozenset()) -> None:
    """Move each finished temporary file onto its output, all or nothing: ``[(tmp, path), ...]`` in order.

    Each move is ``publish`` (atomic, no-clobber without ``force``, modes as ``publish`` says). Before a file
    with ``force`` replaces another, the previous one gets a second name; if any later move fails, the moves
    done so far are undone (previous files put back, new ones removed) before the error is raised, so the
    outputs are all new or all as they were. Not atomic as a set: a reader looking between two moves can
    see one new file beside one old one, and a SIGKILL between two moves leaves it so. ``replace``: outputs
    that are replaced even without ``force`` (a cache this very run read).
    """
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, path in staged:
            replacing = force or path in replace
            backup = _keep_previous(path) if replacing else None
            try:
                publish(tmp, path, replacing)
            except BaseException:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        backup.unlink()
                raise
            done.append((path, backup))
    except BaseException:
        for path, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                else:
                    path.unlink()
        raise
    finally:
        for tmp, _path in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
    for _path, backup in done:
        if backup is not None:
            with contextlib.suppress(OSError):
                backup.unlink()


class OutputUnit:
    """Outputs written as one unit (an ONNX model, its report, an engine and its sidecars): every file is
    first written in full to a temporary beside its output (``stage``), then all are moved into place
    (``commit_files``); a failure before or during the moves leaves every previous output as it was.

    Use through ``output_unit``; ``commit`` once everything is staged.
    """

    def __init__(self, force: bool) -> None:
        self.force = force
        self.replace: set[Path] = set()  # outputs replaced even without force (see commit_files)
        self._staged: list[tuple[Path, Path]] = []
        self._folders: list[Path] = []
        self.writing: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [path for _tmp, path in self._staged]

    def stage(self, path: Path) -> Path:
        """A new temporary file beside ``path`` to write ``path``'s content into."""
        path = Path(path)
        self.writing = path
        remove_stale_temporaries(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._staged.append((Path(name), path))
        return Path(name)

    def stage_folder(self, folder: Path, names: list[str]) -> Path:
        """A temporary folder in ``folder`` whose files ``names`` (written by the caller) become
        ``folder/name``, in that order (an ONNX model and its external data: the data first)."""
        folder = Path(folder)
        self.writing = folder / names[-1]
        remove_stale_temporaries(folder / names[-1])
        tmp = Path(tempfile.mkdtemp(prefix=TMP_FOLDER_PREFIX, suffix=".tmp", dir=folder))
        self._folders.append(tmp)
        self._staged += [(tmp / name, folder / name) for name in names]
        return tmp

    def write_bytes(self, path: Path, data: bytes) -> None:
        with open(self.stage(path), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> None:
        staged, self._staged = self._staged, []
        self.writing = staged[-1][1] if staged else None
        commit_files(staged, self.force, frozenset(self.replace))
        self.writing = None

    def discard(self) -> None:
        for tmp, _path in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._staged = []
        for folder in self._folders:
            for leftover in folder.iterdir() if folder.exists() else ():
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._folders = []


@contextlib.contextmanager
def output_unit(force: bool = True) -> Iterator[OutputUnit]:
    """An ``OutputUnit``; whatever was staged and not committed is removed on exit, interrupt included. A
    write failure of the disk's or the folder's making becomes one ``OutputWriteError`` line saying that
    the previous files are untouched (true: nothing was moved, or the moves were undone)."""
    unit = OutputUnit(force)
    try:
        yield unit
    except OSError as e:
        failed = unit.writing
        unit.discard()
        mapped = output_error(failed if failed is not None else Path("output"), e, several=True)
        if mapped is e:  # not the disk's or the folder's fault: the error as it is
            raise
        raise mapped from e
    finally:
        unit.discard()


def write_files(files: Mapping[Path, bytes], force: bool = True, replace: Collection[Path] = ()) -> None:
    """Write ``files`` (path -> bytes) as one unit (``OutputUnit``), in the order given. Without ``force`` no
    existing file is replaced (exit 2, the usual line), except those in ``replace``."""
    with output_unit(force) as unit:
        unit.replace.update(Path(p) for p in replace)
        for path, data in files.items():
            unit.write_bytes(path, data)
        unit.commit()
