"""Atomic file and folder writes: a reader sees the old content or the new content, never half of one.

Files are written to a temporary file in the same folder and renamed over the target
(``os.replace`` is atomic within one filesystem). Folders are built under a temporary name beside
the target and renamed into place; an existing target folder is moved aside first and deleted only
after the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sciDiT.errors import SciDiTInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor (where creating it would start)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_creatable(path: str | Path) -> Path:
    """The target path, if its parent folders exist and are writable or could be created; creates nothing.

    Entry points call this before any work, so a bad output path fails fast and leaves no folders behind.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    existing = nearest_existing(parent)
    if not existing.is_dir():
        raise SciDiTInputError(f"cannot write here: cannot create folder {parent} ({existing} is a file)", path)
    if not is_writable_folder(existing):
        raise SciDiTInputError(f"cannot write here: folder {existing} is not writable", path)
    return path


def is_writable_folder(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried with an empty temporary folder, removed at once.

    ``os.access`` alone says yes for root on read-only filesystems and pseudo-filesystems like /proc.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".scidit_probe_", dir=folder))
    except OSError:
        return False
    return True


def check_writable_parent(path: str | Path) -> Path:
    """The target path, after creating its parent folders and checking they are writable (one-line error if not)."""
    path = check_creatable(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SciDiTInputError(f"cannot write here: cannot create folder {parent} ({err.strerror})", path) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = check_writable_parent(path)
    if path.is_dir():
        raise SciDiTInputError("is a folder, expected a file path", path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(path: str | Path, may_replace: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path``, on error it is removed.

    An existing ``path`` is replaced only if it is empty or ``may_replace(path)`` says it is a
    previous export of the same kind (so user folders are never deleted); otherwise a
    :class:`SciDiTInputError` is raised before anything is written.
    """
    path = check_writable_parent(Path(path).resolve())
    if path.exists():
        if not path.is_dir():
            raise SciDiTInputError("exists and is not a folder", path)
        if any(path.iterdir()) and not may_replace(path):
            raise SciDiTInputError("folder is not empty and is not a previous export: choose a new or empty folder", path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)  # put the previous export back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
