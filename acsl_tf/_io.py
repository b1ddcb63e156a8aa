"""Atomic file writing shared by every writer in acsl_tf.

Every temporary file or directory that acsl_tf creates next to an output starts
with :data:`TMP_PREFIX` (``.tmp-acsl_tf-``) and carries the id of the writing
process, so a leftover from a killed process (``SIGKILL`` cannot be caught) is
recognisable by name: ``.tmp-acsl_tf-<pid>-<random>``. Temporary SavedModel
directories in the system temp folder are named ``acsl_tf-export-<pid>-<random>``;
:func:`remove_stale_temp_dirs` deletes those whose process no longer runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import tempfile
import threading

from acsl_tf import _validation

TMP_PREFIX = ".tmp-acsl_tf-"
EXPORT_TMP_PREFIX = "acsl_tf-export-"


def _tmp_prefix() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-"


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def cleanup_on_sigterm():
    """Turn ``SIGTERM`` into ``SystemExit(143)`` while the block runs, so that
    the ``finally`` clauses that remove temporary files run before the process
    ends.

    Only done in the main thread and only while ``SIGTERM`` has its default
    action (which would end the process without any cleanup); a handler
    installed by the application is left alone. The default is restored on
    exit. ``SIGKILL`` cannot be caught: see :func:`remove_stale_temp_dirs`.
    """
    sigterm = getattr(signal, "SIGTERM", None)
    install = sigterm is not None and threading.current_thread() is threading.main_thread()
    if install:
        try:
            install = signal.getsignal(sigterm) is signal.SIG_DFL
        except (ValueError, OSError):  # pragma: no cover - exotic embeddings
            install = False
    if not install:
        yield
        return
    signal.signal(sigterm, _raise_system_exit)
    try:
        yield
    finally:
        signal.signal(sigterm, signal.SIG_DFL)


def check_writable(path, *, overwrite: bool = False, argname: str = "path") -> str:
    """Validate an output file path before expensive work starts.

    Args:
        path: The file to be written (str or ``os.PathLike``).
        overwrite: Whether an existing file may be replaced.
        argname: The argument name used in error messages.

    Returns:
        ``path`` as a str.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike``.
        ValueError: ``path`` is empty or ends with a path separator (it names a
            directory, not a file).
        IsADirectoryError: ``path`` is an existing directory.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError / PermissionError: the parent directory is missing or
            not writable.
    """
    path = _validation.path(path, argname)
    if not path.strip():
        raise ValueError(
            f"`{argname}` is empty. Pass the file to write, e.g. 'model.tflite'. "
            f"Received: {argname}={path!r}"
        )
    if path.endswith(("/", os.sep)) or (os.altsep and path.endswith(os.altsep)):
        raise ValueError(
            f"`{argname}` ends with a path separator, so it names a directory, not a file. "
            f"Add a file name, e.g. {os.path.join(path, 'model.tflite')!r}. "
            f"Received: {argname}={path!r}"
        )
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"`{argname}` is an existing directory; it cannot be replaced by a file, even with "
            f"overwrite=True. Pass a file path inside it or remove the directory. "
            f"Received: {argname}={path!r}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} already exists. Pass overwrite=True to replace it. "
            f"Received: {argname}={path!r}"
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"The directory {parent!r} does not exist; create it first. "
            f"Received: {argname}={path!r}"
        )
    if not os.access(parent, os.W_OK):
        raise PermissionError(
            f"The directory {parent!r} is not writable. Choose another location. "
            f"Received: {argname}={path!r}"
        )
    return path


def _umask_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask);
    ``mkstemp`` creates 0o600 files, which other users could not read."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path, data: bytes, *, overwrite: bool = False) -> str:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    The temporary file is created with :func:`tempfile.mkstemp` in the target
    directory (named ``.tmp-acsl_tf-<pid>-...``), written through the
    descriptor ``mkstemp`` returned, synced, and renamed onto ``path``. Readers
    never see a partial file, and any exception (``KeyboardInterrupt``
    included) removes the temporary file.

    Args:
        path: Destination file.
        data: The bytes to write.
        overwrite: Replace an existing file.

    Returns:
        ``path`` as a str.
    """
    path = check_writable(path, overwrite=overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    with cleanup_on_sigterm():
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=parent)
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
    """Like :func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_group(files, *, overwrite: bool = False) -> list[str]:
    """Write several files that belong together, each atomically.

    Every path is validated and every temporary file is written and synced
    before the first rename, so the window in which the group is half old and
    half new is only the time between the renames. The renames themselves are
    separate operations: files that must match each other should also carry a
    shared identifier that their consumer checks (``to_c_source`` does this
    with a ``static_assert``).

    Args:
        files: A sequence of ``(path, bytes)`` pairs.
        overwrite: Replace existing files.

    Returns:
        The paths, in the order given.
    """
    files = [(check_writable(p, overwrite=overwrite), bytes(data)) for p, data in files]
    temps = []
    with cleanup_on_sigterm(), _remove_on_exit(temps):
        for path, data in files:
            parent = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=parent)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _umask_mode())
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    return [p for p, _ in files]


@contextlib.contextmanager
def _remove_on_exit(paths):
    try:
        yield
    finally:
        for p in paths:
            with contextlib.suppress(OSError):
                os.unlink(p)


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False, suffix: str = ""):
    """Yield a temporary path to write ``path`` through, for writers that need a
    filename (e.g. ``model.save``, ``fig.savefig``) rather than bytes.

    The temporary path lies in a fresh private directory made with
    :func:`tempfile.mkdtemp` next to ``path`` (``.tmp-acsl_tf-<pid>-...``, mode
    0o700), so no other process can create or replace it; it has the same base
    name as ``path`` (plus ``suffix`` when the name does not end with it). On
    success it is renamed onto ``path``; on any exception the directory is
    removed.

    Args:
        path: Destination file.
        overwrite: Replace an existing file.
        suffix: Extension the writer needs (e.g. ``".keras"``).

    Yields:
        The temporary file path to write.
    """
    path = check_writable(path, overwrite=overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=_tmp_prefix(), dir=parent)
    name = os.path.basename(path)
    if suffix and not name.endswith(suffix):
        name += suffix
    tmp = os.path.join(tmp_dir, name)
    try:
        with cleanup_on_sigterm():
            yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(
                f"The writer did not create the temporary file; nothing was written to "
                f"{path!r}. Received: path={path!r}"
            )
        if os.path.isfile(tmp):
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp_dirs(directory: str | None = None) -> list[str]:
    """Delete ``acsl_tf-export-<pid>-*`` directories left by killed processes.

    Only directories whose process id no longer runs on this machine are
    removed; those of running processes are kept.

    Args:
        directory: Folder to clean (default: :func:`tempfile.gettempdir`).

    Returns:
        The removed paths.
    """
    directory = directory or tempfile.gettempdir()
    removed = []
    pattern = re.compile(re.escape(EXPORT_TMP_PREFIX) + r"(\d+)-")
    for d in glob.glob(os.path.join(glob.escape(directory), EXPORT_TMP_PREFIX + "*")):
        m = pattern.match(os.path.basename(d))
        if not m or not os.path.isdir(d) or os.path.islink(d):
            continue
        if int(m.group(1)) == os.getpid() or _pid_running(int(m.group(1))):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not os.path.exists(d):
            removed.append(d)
    return removed


@contextlib.contextmanager
def export_temp_dir():
    """A temporary directory in the system temp folder for intermediate
    artifacts (``acsl_tf-export-<pid>-...``), removed on every exit path
    (exceptions and ``KeyboardInterrupt`` included). Leftovers of killed
    processes are removed first (see :func:`remove_stale_temp_dirs`)."""
    with contextlib.suppress(OSError):
        remove_stale_temp_dirs()
    with cleanup_on_sigterm():
        d = tempfile.mkdtemp(prefix=f"{EXPORT_TMP_PREFIX}{os.getpid()}-")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
