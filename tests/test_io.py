import os
import signal
import stat
import subprocess
import sys

import pytest

from acsl_tf import _io


def test_atomic_write_creates_readable_file(tmp_path):
    p = tmp_path / "a.bin"
    _io.atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert os.listdir(tmp_path) == ["a.bin"]


def test_existing_file_needs_overwrite(tmp_path):
    p = tmp_path / "a.txt"
    _io.atomic_write_text(p, "one")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _io.atomic_write_text(p, "two")
    assert p.read_text() == "one"
    _io.atomic_write_text(p, "two", overwrite=True)
    assert p.read_text() == "two"


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _io.atomic_write_bytes(tmp_path / "nope" / "a.bin", b"x")


def test_atomic_path_uses_a_private_directory(tmp_path):
    """The temporary path lies in a fresh 0o700 directory made by mkdtemp, so no
    other process can create or swap the file between its naming and its use."""
    p = tmp_path / "model.keras"
    with _io.atomic_path(p) as tmp:
        tmp_dir = os.path.dirname(tmp)
        assert os.path.dirname(tmp_dir) == str(tmp_path)
        assert os.path.basename(tmp_dir).startswith(f"{_io.TMP_PREFIX}{os.getpid()}-")
        assert stat.S_IMODE(os.stat(tmp_dir).st_mode) == 0o700
        assert os.listdir(tmp_dir) == []
        assert os.path.basename(tmp) == "model.keras"
        with open(tmp, "wb") as f:
            f.write(b"data")
    assert os.listdir(tmp_path) == ["model.keras"]
    with _io.atomic_path(tmp_path / "fig", overwrite=True, suffix=".png") as tmp:
        assert tmp.endswith("fig.png")
        with open(tmp, "wb") as f:
            f.write(b"png")
    assert (tmp_path / "fig").read_bytes() == b"png"


def test_atomic_path_without_output_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        with _io.atomic_path(tmp_path / "a.bin"):
            pass
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_bytes(tmp_path / "a.bin", b"x")
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_group([(tmp_path / "a.h", b"1"), (tmp_path / "a.cc", b"2")])
    with pytest.raises(KeyboardInterrupt):
        with _io.atomic_path(tmp_path / "m.keras") as tmp:
            open(tmp, "wb").close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "path, error, match",
    [
        ("", ValueError, "is empty"),
        ("newdir/", ValueError, "ends with a path separator"),
        (".", IsADirectoryError, "existing directory"),
    ],
)
def test_bad_output_paths(tmp_path, monkeypatch, path, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        _io.check_writable(path, overwrite=True)
    with pytest.raises(error, match="Received: path="):
        _io.atomic_write_bytes(path, b"x", overwrite=True)
    assert os.listdir(tmp_path) == []


def test_stale_export_directories_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{_io.EXPORT_TMP_PREFIX}{dead_pid}-abc"
    (stale / "saved_model").mkdir(parents=True)
    mine = tmp_path / f"{_io.EXPORT_TMP_PREFIX}{os.getpid()}-def"
    mine.mkdir()
    other = tmp_path / "unrelated-123-x"
    other.mkdir()
    assert _io.remove_stale_temp_dirs(str(tmp_path)) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name])


def test_export_temp_dir_is_removed_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_io.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with _io.export_temp_dir() as d:
            assert os.path.basename(d).startswith(f"{_io.EXPORT_TMP_PREFIX}{os.getpid()}-")
            open(os.path.join(d, "x"), "w").close()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_failed_writer_leaves_nothing(tmp_path):
    p = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with _io.atomic_path(p) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("conversion failed")
    assert os.listdir(tmp_path) == []
    with _io.atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"whole")
    assert p.read_bytes() == b"whole"
    assert os.listdir(tmp_path) == ["model.keras"]


SIGTERM_SCRIPT = """
import sys, time
from acsl_tf import _io
with _io.export_temp_dir() as d:
    with _io.atomic_path(sys.argv[1]) as tmp:
        open(tmp, "w").write("partial")
        print(d, flush=True)
        print(tmp, flush=True)
        time.sleep(120)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_during_a_write_cleans_up(tmp_path):
    """SIGTERM (e.g. `kill`, a job scheduler's timeout) removes the temporary
    SavedModel directory and the half-written file before the process ends."""
    systmp = tmp_path / "systmp"
    out = tmp_path / "out"
    systmp.mkdir()
    out.mkdir()
    env = dict(os.environ, TMPDIR=str(systmp))
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(out / "model.keras")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        export_dir = proc.stdout.readline().strip()
        tmp = proc.stdout.readline().strip()
        assert os.path.isdir(export_dir) and os.path.isfile(tmp)
        assert os.path.basename(export_dir).startswith(_io.EXPORT_TMP_PREFIX)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert os.listdir(systmp) == []
    assert os.listdir(out) == []


def test_sigterm_handler_of_the_application_is_kept():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with _io.cleanup_on_sigterm():
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    with _io.cleanup_on_sigterm():
        assert signal.getsignal(signal.SIGTERM) is _io._raise_system_exit
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
