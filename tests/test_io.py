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
