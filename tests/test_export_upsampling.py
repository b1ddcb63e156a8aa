"""to_tflite(lower_upsampling=...): nearest UpSampling2D as ops XNNPACK delegates."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf.export import _upsampling, inspect_delegation, run_tflite, to_tflite  # noqa: E402
from tests._models import randomize_bn  # noqa: E402

# Random BatchNorm statistics do not match random inputs; to_tflite rightly warns.
pytestmark = pytest.mark.filterwarnings("ignore:The BatchNormalization moving statistics")

# What Keras' repeat converts to (TF 2.21); XNNPACK takes none of them.
REPEAT_OPS = {"EXPAND_DIMS", "TILE", "SHAPE", "STRIDED_SLICE"}
DEPTH = 3


def _small_unet():
    """32x32x3 U-Net, 3 levels (3 nearest ``UpSampling2D(2)``: ``dec{0,1,2}_up``)."""
    model = acsl_tf.models.unet((32, 32, 3), 5, width=0.125, depth=DEPTH)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            randomize_bn(layer, rng)
    return model


def _data(shape, n=16, seed=1):
    return np.random.default_rng(seed).random((n,) + tuple(shape), dtype=np.float32)


def _export(model, path, x, **kwargs):
    kwargs.setdefault("num_verify_samples", 8)
    return to_tflite(model, str(path), representative_data=x, **kwargs)


@pytest.fixture(scope="module")
def unet_exports(tmp_path_factory):
    """The small U-Net exported in float32 and int8, lowering off and on."""
    keras.utils.set_random_seed(7)
    model = _small_unet()
    x = _data((32, 32, 3), n=32)
    config = model.get_config()
    weights = [w.copy() for w in model.get_weights()]
    y_before = model.predict(x[:4], verbose=0)
    d = tmp_path_factory.mktemp("unet")
    out = {"model": model, "x": x, "config": config, "weights": weights, "y": y_before}
    for q in ("none", "int8"):
        for lower in (False, True):
            path = d / f"{q}_{lower}.tflite"
            report = _export(model, path, x, quantization=q, lower_upsampling=lower)
            out[(q, lower)] = (report, path.read_bytes())
    return out


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_unet_lowered_runs_in_one_xnnpack_partition(unet_exports, quantization):
    report, content = unet_exports[(quantization, True)]
    assert not REPEAT_OPS & set(report.ops)
    assert report.op_counts["RESHAPE"] == DEPTH  # one per UpSampling2D
    # 2 per UpSampling2D (rows, columns) + the decoder's skip concatenations
    assert report.op_counts["CONCATENATION"] == 2 * DEPTH + DEPTH
    delegation = inspect_delegation(content)
    assert delegation["partitions"] == 1
    assert delegation["not_delegated"] == {}
    assert delegation["delegated"]["CONCATENATION"] == 3 * DEPTH
    assert report.extra["upsampling_lowered"] == [f"dec{i}_up" for i in range(DEPTH - 1, -1, -1)]
    assert "upsampling_kept" not in report.extra


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_option_off_gives_keras_repeat_graph(unet_exports, quantization):
    report, content = unet_exports[(quantization, False)]
    for op in REPEAT_OPS:
        assert report.op_counts[op] == 2 * DEPTH  # one repeat per axis and layer
    delegation = inspect_delegation(content)
    assert delegation["partitions"] == DEPTH + 1  # split at every UpSampling2D
    assert delegation["not_delegated"] == {
        "CONCATENATION": 2 * DEPTH,
        "EXPAND_DIMS": 2 * DEPTH,
        "RESHAPE": 2 * DEPTH,
        "SHAPE": 2 * DEPTH,
        "STRIDED_SLICE": 2 * DEPTH,
        "TILE": 2 * DEPTH,
    }
    assert "upsampling_lowered" not in report.extra


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_unet_parity_and_bit_identical_to_option_off(unet_exports, quantization):
    on, on_bytes = unet_exports[(quantization, True)]
    off, off_bytes = unet_exports[(quantization, False)]
    assert on.passed and off.passed
    assert on.relative_error == off.relative_error
    if quantization == "none":
        assert on.relative_error < 1e-5
    else:
        assert on.relative_error < 0.05
    x = unet_exports["x"][:8]
    (y_on,) = run_tflite(on_bytes, x)
    (y_off,) = run_tflite(off_bytes, x)
    np.testing.assert_array_equal(y_on, y_off)


def test_users_model_unchanged(unet_exports):
    model = unet_exports["model"]
    assert model.get_config() == unet_exports["config"]
    for a, b in zip(model.get_weights(), unet_exports["weights"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        model.predict(unet_exports["x"][:4], verbose=0), unet_exports["y"]
    )
    assert not getattr(keras.layers.UpSampling2D.call, "_acsl_tf_lowered", False)
    for layer in model.layers:
        assert "call" not in vars(layer)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (2, 3), (3, 1), (1, 5), (6, 1), (1, 12), (7, 11)])
def test_nearest_repeat_equals_numpy_repeat(size):
    import tensorflow as tf

    kh, kw = size
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) - 50.0
    expected = np.repeat(np.repeat(x, kh, axis=1), kw, axis=2)
    y = _upsampling.nearest_repeat(tf.constant(x), kh, kw).numpy()
    np.testing.assert_array_equal(y, expected)
    xi = x.astype(np.int8)
    yi = _upsampling.nearest_repeat(tf.constant(xi), kh, kw).numpy()
    np.testing.assert_array_equal(yi, np.repeat(np.repeat(xi, kh, axis=1), kw, axis=2))


def test_nearest_repeat_refuses_bad_input():
    import tensorflow as tf

    with pytest.raises(ValueError, match="height_factor"):
        _upsampling.nearest_repeat(tf.zeros((1, 2, 2, 1)), 0, 2)
    with pytest.raises(ValueError, match="width_factor"):
        _upsampling.nearest_repeat(tf.zeros((1, 2, 2, 1)), 2, 2.0)
    with pytest.raises(ValueError, match="static H, W and C"):
        _upsampling.nearest_repeat(tf.zeros((2, 2, 1)), 2, 2)


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_tuple_sizes_and_channels_first(tmp_path, quantization):
    """(2, 3) channels_last and channels_first: one XNNPACK partition, the same
    outputs as the option off."""
    inputs = keras.Input((4, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c0")(inputs)
    a = keras.layers.UpSampling2D((2, 3), name="up_a")(x)  # 8x18x4
    b = keras.layers.Conv2D(4, 1, name="c1")(x)
    b = keras.layers.Permute((3, 1, 2))(b)  # (4, 4, 6) channels_first
    b = keras.layers.UpSampling2D((2, 3), data_format="channels_first", name="up_b")(b)
    b = keras.layers.Permute((2, 3, 1))(b)  # 8x18x4
    y = keras.layers.Concatenate()([a, b])
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(y))
    x_data = _data((4, 6, 3), n=16)
    on = _export(model, tmp_path / "on.tflite", x_data, quantization=quantization)
    off = _export(
        model, tmp_path / "off.tflite", x_data, quantization=quantization, lower_upsampling=False
    )
    assert sorted(on.extra["upsampling_lowered"]) == ["up_a", "up_b"]
    assert not REPEAT_OPS & set(on.ops)
    assert on.op_counts["RESHAPE"] == 2
    delegation = inspect_delegation(on.path)
    assert (delegation["partitions"], delegation["not_delegated"]) == (1, {})
    assert inspect_delegation(off.path)["partitions"] > 1
    assert on.passed and on.relative_error == off.relative_error
    if quantization == "none":
        assert on.relative_error < 1e-5
    np.testing.assert_array_equal(run_tflite(on.path, x_data)[0], run_tflite(off.path, x_data)[0])


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_factors_above_five_are_a_tree_of_concatenations(tmp_path, quantization):
    """XNNPACK takes CONCATENATION with at most 5 inputs: factors 12 and 6 are
    built from concatenations of at most 5 inputs, and stay in one partition."""
    inputs = keras.Input((4, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c0")(inputs)
    x = keras.layers.UpSampling2D((1, 12), name="up_w")(x)  # 4x72
    x = keras.layers.Conv2D(4, (1, 4), strides=(1, 4), name="c1")(x)  # 4x18
    x = keras.layers.UpSampling2D((6, 1), name="up_h")(x)  # 24x18
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(x))
    x_data = _data((4, 6, 3), n=16)
    report = _export(model, tmp_path / "m.tflite", x_data, quantization=quantization)
    assert sorted(report.extra["upsampling_lowered"]) == ["up_h", "up_w"]
    # 12 = 3+3+2+2+2 (5 inputs) of 3 and 2 copies; 6 = 2+1+1+1+1
    assert report.op_counts["CONCATENATION"] == 3 + 2
    delegation = inspect_delegation(report.path)
    assert (delegation["partitions"], delegation["not_delegated"]) == (1, {})
    assert report.passed
    if quantization == "none":
        assert report.relative_error < 1e-5
    else:
        assert report.relative_error < 0.05


def test_dynamic_spatial_size_is_kept(tmp_path):
    # (Keras' repeat loses the channel count when H and W are unknown, and the
    # converter then cannot convert a Conv2D after it: the upsampling is last.)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, keras.layers.UpSampling2D(2, name="up_dynamic")(x))
    report = _export(model, tmp_path / "m.tflite", _data((8, 8, 3), n=4))
    assert "upsampling_lowered" not in report.extra
    assert list(report.extra["upsampling_kept"]) == ["up_dynamic"]
    assert "unknown at trace time" in report.extra["upsampling_kept"]["up_dynamic"]
    assert REPEAT_OPS <= set(report.ops)
    assert report.passed and report.relative_error < 1e-5


def test_bilinear_is_kept_and_delegated_as_it_is(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
    report = _export(model, tmp_path / "m.tflite", _data((8, 8, 3), n=4))
    assert "upsampling_lowered" not in report.extra
    assert "RESIZE_BILINEAR" in report.extra["upsampling_kept"]["up"]
    assert report.ops == ["CONV_2D", "RESIZE_BILINEAR"]
    assert inspect_delegation(report.path) == {
        "partitions": 1,
        "delegated": {"CONV_2D": 2, "RESIZE_BILINEAR": 1},
        "not_delegated": {},
        "not_delegated_nodes": [],
    }
    assert report.passed and report.relative_error < 1e-5


def test_class_restored_after_a_failed_trace():
    original = keras.layers.UpSampling2D.call
    with pytest.raises(RuntimeError, match="boom"):
        with _upsampling.lowered_nearest_upsampling() as record:
            assert keras.layers.UpSampling2D.call is not original
            raise RuntimeError("boom")
    assert keras.layers.UpSampling2D.call is original
    assert record.lowered == [] and record.kept == {}
    with _upsampling.lowered_nearest_upsampling(enabled=False):
        assert keras.layers.UpSampling2D.call is original


def test_eager_call_inside_the_block_gives_keras_values():
    layer = keras.layers.UpSampling2D((3, 2))
    x = _data((3, 4, 2), n=2)
    expected = keras.ops.convert_to_numpy(layer(x))
    with _upsampling.lowered_nearest_upsampling() as record:
        got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(got, expected)
    assert record.lowered == [layer.name]


def test_inspect_delegation_refuses_non_tflite():
    with pytest.raises(ValueError, match="TFL3"):
        inspect_delegation(b"not a flatbuffer at all")
