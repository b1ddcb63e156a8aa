"""Atomic file writing shared by every writer in acsl_tf."""

from __future__ import annotations

import contextlib
import os
import tempfile


def check_writable(path, *, overwrite: bool = False) -> str:
    """Validate an output path before expensive work starts.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        PermissionError / FileNotFoundError: the parent directory is missing or
            not writable.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} already exists. Pass overwrite=True to replace it. Received: path={path!r}"
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"The directory {parent!r} does not exist; create it first. Received: path={path!r}"
        )
    if not os.access(parent, os.W_OK):
        raise PermissionError(
            f"The directory {parent!r} is not writable. Choose another location. "
            f"Received: path={path!r}"
        )
    return path


def _umask_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask);
    ``mkstemp`` creates 0o600 files, which other users could not read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path, data: bytes, *, overwrite: bool = False) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same directory
    and an atomic rename, so readers never see a partial file and a failure
    leaves nothing behind."""
    path = check_writable(path, overwrite=overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str, *, overwrite: bool = False) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it is renamed onto
    ``path``, on failure removed. For writers that need a filename (e.g.
    ``model.save``), not bytes."""
    path = check_writable(path, overwrite=overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield tmp
        if os.path.isfile(tmp):
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
