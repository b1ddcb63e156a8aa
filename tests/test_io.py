import os
import stat

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
