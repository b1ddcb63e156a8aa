"""acsl_tf.workflow.export_and_measure checks its file name prefix first."""

import os

import pytest

from acsl_tf import workflow as wf


@pytest.mark.parametrize(
    "name",
    ["../escape", "a/b", "/abs", "", ".hidden", "-flag", "a\\b", "x" * 101, None, 3, "ok\n"],
)
def test_export_and_measure_rejects_unsafe_names(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"file name prefix.*Received: name="):
        wf.export_and_measure(None, None, out, name=name, progress=False)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_export_and_measure_rejects_empty_out_dir():
    with pytest.raises(ValueError, match="Received: out_dir=''"):
        wf.export_and_measure(None, None, "", name="model", progress=False)
