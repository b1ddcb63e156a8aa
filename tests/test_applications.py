"""keras.applications coverage (slow): every model that builds with
weights=None shrinks at ratio 0.3, keeps its output shape, matches the plan's
analytic counts and passes the zero-channel equivalence check. Models
without BatchNormalization (VGG, ConvNeXt) have nothing prunable by the
gamma criterion and must come back unchanged."""

import importlib.util
import pathlib

import keras
import pytest

_path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "applications_coverage.py"
_spec = importlib.util.spec_from_file_location("applications_coverage", _path)
cov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov)

NO_BN = {"VGG16", "VGG19", "ConvNeXtTiny"}
# Deep random networks that amplify float32 round-off by ~1e7: checked in float64.
ROUNDOFF = {"EfficientNetV2M", "EfficientNetV2L"}


@pytest.mark.slow
@pytest.mark.parametrize("name,fn,size", cov.MODELS, ids=[m[0] for m in cov.MODELS])
def test_application_shrinks(name, fn, size):
    floatx = keras.config.floatx()
    if name in ROUNDOFF:
        keras.config.set_floatx("float64")
    try:
        row = cov.run_one(name, fn, size)
    finally:
        keras.config.set_floatx(floatx)
    assert row["shape_ok"]
    assert row["analytic_ok"]
    assert row["equivalent"], row["max_err"]
    if name in NO_BN:
        assert row["params_after"] == row["params_before"]
    else:
        assert row["params_after"] < row["params_before"]
        assert row["flops_after"] < row["flops_before"]
