"""keras.applications coverage (slow): every model that builds with
weights=None prunes at ratio 0.3 (by gamma where BatchNormalization gammas
cover groups, by the l1 weight criterion otherwise: VGG, ConvNeXt,
InceptionV3), keeps its output shape, matches the plan's analytic counts,
and is exact on the zeroed channels or reports where it is approximate."""

import importlib.util
import pathlib

import keras
import pytest

_path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "applications_coverage.py"
_spec = importlib.util.spec_from_file_location("applications_coverage", _path)
cov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov)

WEIGHT_CRITERION = {"VGG16", "VGG19", "ConvNeXtTiny", "InceptionV3", "InceptionResNetV2"}
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
    assert row["equivalent"], row["rel_err"]
    assert row["criterion"] == ("l1" if name in WEIGHT_CRITERION else "gamma")
    assert row["params_after"] < row["params_before"]
    assert row["flops_after"] < row["flops_before"]
    if name.startswith(("ResNet", "MobileNet", "DenseNet", "VGG")) and "V3" not in name:
        assert row["exact"], row["approximations"]
