"""acsl_tf.export.to_tflite: every quantization mode, parity, I/O types, bad inputs."""

import os

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf.export import ParityError, inspect_tflite, run_tflite, to_tflite  # noqa: E402

# The synthetic models below have random BatchNorm statistics, which do not match
# the random inputs; to_tflite rightly warns about that (tests/test_export_safety.py).
pytestmark = pytest.mark.filterwarnings("ignore:The BatchNormalization moving statistics")

MODES = ["none", "float16", "dynamic", "int8"]
# Errors measured on these models are ~10x below these bounds (see docs/EXPORT.md).
MAX_ABS = {"none": 1e-5, "float16": 5e-3, "dynamic": 3e-2, "int8": 5e-2}


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )
    return model


def small_cnn(width=16, classes=4):
    """16x16x3 -> Conv-BN-ReLU, one residual block (Add), GAP, Dense softmax."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="b1_conv1")(x)
    y = keras.layers.BatchNormalization(name="b1_bn1")(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="b1_conv2")(y)
    y = keras.layers.BatchNormalization(name="b1_bn2")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head")(x)
    return _randomize_bn(keras.Model(inputs, outputs, name="small_cnn"))


def segmentation_net(classes=5):
    """32x32x3 -> per-pixel softmax over 5 classes at full resolution."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(2)(x)
    outputs = keras.layers.Conv2D(classes, 1, activation="softmax", name="mask")(x)
    return _randomize_bn(keras.Model(inputs, outputs, name="seg"))


def density_net():
    """32x32x3 -> 4x4x1 non-negative density map (1/8 resolution, ReLU)."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for filters in (8, 8, 8):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(1, 1, activation="relu", name="density")(x)
    return _randomize_bn(keras.Model(inputs, outputs, name="density"))


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(7)
    return small_cnn()


@pytest.fixture(scope="module")
def rep():
    return np.random.default_rng(3).random((16, 16, 16, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def labels(cnn, rep):
    """Keras' own predictions with the first 4 flipped: Keras accuracy is 12/16."""
    y = np.asarray(cnn(rep, training=False)).argmax(-1)
    y[:4] = (y[:4] + 1) % 4
    return y


@pytest.fixture(scope="module")
def exported(cnn, rep, labels, tmp_path_factory):
    """The small CNN exported once in every mode (int8 with labels)."""
    d = tmp_path_factory.mktemp("modes")
    reports = {}
    for q in MODES:
        kw = {"representative_data": rep, "labels": labels} if q == "int8" else {}
        reports[q] = to_tflite(cnn, d / f"m_{q}.tflite", quantization=q, **kw)
    return reports


def _export(model, path, q, rep, **kw):
    return to_tflite(
        model, path, quantization=q, representative_data=rep if q == "int8" else None, **kw
    )


def _float_free(op):
    return not any("float" in d for d in op["input_dtypes"] + op["output_dtypes"])


@pytest.mark.parametrize("quantization", MODES)
def test_each_mode_writes_a_verified_file(exported, quantization):
    report = exported[quantization]
    path = report.path

    assert os.path.basename(path) == f"m_{quantization}.tflite"
    assert os.path.getsize(path) == report.size_bytes > 0
    assert report.verified and report.passed
    assert report.relative_error <= report.tolerance
    assert report.max_abs_error < MAX_ABS[quantization]
    assert 0 <= report.mean_abs_error <= report.max_abs_error
    assert report.num_verify_samples == (16 if quantization == "int8" else 32)
    assert report.verify_data == ("representative_data" if quantization == "int8" else "random")
    assert report.argmax_agreement is not None and report.argmax_agreement >= 0.9
    assert {"CONV_2D", "ADD", "FULLY_CONNECTED"} <= set(report.ops)
    assert report.inputs[0].shape == [-1, 16, 16, 3]
    assert report.outputs[0].shape == [-1, 4]
    info = inspect_tflite(path)
    assert info["ops"] == report.ops  # the reported ops are the file's own
    assert sum(report.op_counts.values()) == len(info["op_details"])
    d = report.to_dict()
    assert d["quantization"] == quantization and d["size_bytes"] == report.size_bytes
    assert "parity PASSED" in str(report)

    tensor_dtypes = {t["dtype"] for t in info["tensors"].values()}
    if quantization == "int8":
        assert report.inputs[0].dtype == "int8" and report.outputs[0].dtype == "int8"
        assert report.inputs[0].scale > 0 and report.outputs[0].scale > 0
        assert all(_float_free(op) for op in info["op_details"])
        assert "QUANTIZE" not in report.ops and "DEQUANTIZE" not in report.ops
    else:
        assert report.inputs[0].dtype == "float32" and report.outputs[0].dtype == "float32"
    if quantization == "float16":
        assert "float16" in tensor_dtypes
    if quantization == "dynamic":
        assert "int8" in tensor_dtypes  # the 3x3x16x16 kernels are int8
    if quantization == "none":
        assert tensor_dtypes <= {"float32", "int32"}


def test_mode_sizes_are_ordered(exported):
    sizes = {q: r.size_bytes for q, r in exported.items()}
    assert sizes["float16"] < sizes["none"]
    assert sizes["dynamic"] < sizes["none"]
    assert sizes["int8"] < sizes["none"]


def test_labels_give_accuracy_of_keras_and_tflite(exported):
    report = exported["int8"]
    assert report.keras_accuracy == pytest.approx(12 / 16)
    # The artifact's accuracy can differ from Keras' only where their argmax differs.
    assert abs(report.artifact_accuracy - report.keras_accuracy) <= (
        1 - report.argmax_agreement + 1e-9
    )
    assert exported["none"].keras_accuracy is None  # no labels given


def test_int8_float_io_has_only_edge_quantize_ops(cnn, rep, exported, tmp_path):
    report = to_tflite(
        cnn, tmp_path / "f_io.tflite", quantization="int8", representative_data=rep, int8_io=False
    )
    assert report.passed
    assert report.inputs[0].dtype == "float32" and report.outputs[0].dtype == "float32"
    info = inspect_tflite(report.path)
    ops = info["op_details"]
    assert ops[0]["op"] == "QUANTIZE" and ops[0]["inputs"] == info["input_indices"]
    assert ops[-1]["op"] == "DEQUANTIZE" and ops[-1]["outputs"] == info["output_indices"]
    assert info["op_counts"]["QUANTIZE"] == 1 and info["op_counts"]["DEQUANTIZE"] == 1
    assert all(_float_free(op) for op in ops[1:-1])
    # Same calibration -> same outputs as the int8-I/O model up to the I/O rounding.
    a = run_tflite(report.path, rep)[0]
    b = run_tflite(exported["int8"].path, rep)[0]
    assert np.abs(a - b).max() <= 2 * exported["int8"].outputs[0].scale + 1e-6


@pytest.mark.slow
def test_dataset_representative_data_gives_the_same_model(cnn, rep, exported, tmp_path):
    import tensorflow as tf

    labels = np.zeros(len(rep), np.int64)
    data = tf.data.Dataset.from_tensor_slices((rep, labels)).batch(5)  # (x, y), uneven batches
    report = to_tflite(cnn, tmp_path / "ds.tflite", quantization="int8", representative_data=data)
    assert report.extra["num_calibration_samples"] == 16
    with open(report.path, "rb") as f, open(exported["int8"].path, "rb") as g:
        assert f.read() == g.read()


def test_representative_data_forms_are_collected_alike(rep):
    import tensorflow as tf

    from acsl_tf.export._common import collect_samples

    forms = {
        "array": rep,
        "callable": lambda: (rep[k] for k in range(len(rep))),
        "generator": ({"image": rep[k : k + 2]} for k in range(0, len(rep), 2)),
        "dataset": tf.data.Dataset.from_tensor_slices(rep),
        "tuples": [(rep[k : k + 4], np.zeros(4)) for k in range(0, len(rep), 4)],
    }
    for name, data in forms.items():
        got = collect_samples(data, (16, 16, 3), argname="representative_data")
        np.testing.assert_array_equal(got, rep, err_msg=name)
    got = collect_samples(rep, (16, 16, 3), argname="representative_data", limit=5)
    assert got.shape == (5, 16, 16, 3)


@pytest.mark.parametrize("quantization", MODES)
def test_shrunk_model_exports_in_every_mode(cnn, rep, exported, tmp_path, quantization):
    small = acsl_tf.shrink(cnn, ratio=0.5)
    assert small.count_params() < cnn.count_params()
    report = _export(small, tmp_path / f"s_{quantization}.tflite", quantization, rep)
    assert report.passed and report.max_abs_error < MAX_ABS[quantization]
    assert report.size_bytes < exported[quantization].size_bytes
    assert report.inputs[0].shape == [-1, 16, 16, 3] and report.outputs[0].shape == [-1, 4]
    if quantization == "int8":
        assert report.inputs[0].dtype == "int8" and report.outputs[0].dtype == "int8"


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_segmentation_output(tmp_path, quantization):
    model = segmentation_net()
    x = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    report = to_tflite(
        model, tmp_path / "seg.tflite", quantization=quantization, representative_data=x
    )
    assert report.passed
    assert report.outputs[0].shape == [-1, 32, 32, 5]
    y = run_tflite(report.path, x[:2])[0]
    assert y.shape == (2, 32, 32, 5)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=0.05 if quantization == "int8" else 1e-5)
    if quantization == "none":
        assert report.argmax_agreement == 1.0
    else:
        assert report.max_abs_error < 0.05
        assert report.argmax_agreement > 0.5  # per-pixel, near-uniform random softmax


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_density_map_output(tmp_path, quantization):
    model = density_net()
    x = np.random.default_rng(1).random((16, 32, 32, 3), dtype=np.float32)
    report = to_tflite(
        model, tmp_path / "den.tflite", quantization=quantization, representative_data=x
    )
    assert report.passed
    assert report.outputs[0].shape == [-1, 4, 4, 1]
    assert report.argmax_agreement is None  # one channel: no argmax
    y = run_tflite(report.path, x[:3])[0]
    assert y.shape == (3, 4, 4, 1) and y.min() >= 0.0
    ref = np.asarray(model(x[:3], training=False))
    tol = 1e-5 if quantization == "none" else 0.05 * max(np.abs(ref).max(), 1e-3)
    np.testing.assert_allclose(y, ref, atol=tol)


# --- bad inputs ---------------------------------------------------------------


def test_rejects_non_keras_object(tmp_path):
    with pytest.raises(TypeError, match="Keras 3"):
        to_tflite(object(), tmp_path / "x.tflite")
    assert not os.listdir(tmp_path)


def test_rejects_nan_weights(tmp_path):
    model = small_cnn(width=4)
    w = model.get_layer("head").get_weights()
    w[0][0, 0] = np.nan
    model.get_layer("head").set_weights(w)
    with pytest.raises(ValueError, match="non-finite"):
        to_tflite(model, tmp_path / "x.tflite")
    assert not os.listdir(tmp_path)


def test_rejects_unknown_quantization(cnn, tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        to_tflite(cnn, tmp_path / "x.tflite", quantization="int4")


def test_int8_needs_representative_data(cnn, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(cnn, tmp_path / "x.tflite", quantization="int8")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 8, 8, 3), np.float32), "wrong shape"),
        (np.zeros((4, 16, 16), np.float32), "wrong shape"),
        (np.zeros((4, 16, 16, 3), np.uint8), "floating-point"),
        (np.full((4, 16, 16, 3), np.nan, np.float32), "NaN"),
        (np.zeros((0, 16, 16, 3), np.float32), "empty|wrong shape"),
        (iter([]), "empty"),
        (42, "must be a NumPy array"),
    ],
)
def test_rejects_bad_representative_data(cnn, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        to_tflite(cnn, tmp_path / "x.tflite", quantization="int8", representative_data=bad)
    assert not os.listdir(tmp_path)


def test_rejects_missing_directory(cnn, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        to_tflite(cnn, tmp_path / "nope" / "x.tflite")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_rejects_unwritable_directory(cnn, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            to_tflite(cnn, ro / "x.tflite")
    finally:
        ro.chmod(0o700)


def test_existing_file_is_kept_unless_overwrite(cnn, rep, tmp_path):
    path = tmp_path / "x.tflite"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        to_tflite(cnn, path, overwrite=False)
    assert path.read_bytes() == b"keep me"
    # A failed parity check does not touch the existing file, even with overwrite=True.
    with pytest.raises(ParityError, match="does not reproduce") as info:
        to_tflite(
            cnn,
            path,
            quantization="int8",
            representative_data=rep,
            tolerance=1e-9,
            overwrite=True,
        )
    assert info.value.report.passed is False
    assert info.value.report.relative_error > 1e-9
    assert path.read_bytes() == b"keep me"
    report = to_tflite(cnn, path, overwrite=True, verify=False)
    assert path.read_bytes()[4:8] == b"TFL3" and os.path.getsize(path) == report.size_bytes
    assert report.verified is False and report.passed is None
    assert sorted(os.listdir(tmp_path)) == ["x.tflite"]  # no temporary files left


def test_labels_without_data_rejected(cnn, tmp_path):
    with pytest.raises(ValueError, match="labels"):
        to_tflite(cnn, tmp_path / "x.tflite", labels=np.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        to_tflite(
            cnn,
            tmp_path / "x.tflite",
            representative_data=np.zeros((8, 16, 16, 3), "f4"),
            labels=np.zeros(2),
        )


def test_multi_output_model_keeps_keras_output_order(tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    density = keras.layers.Conv2D(1, 1, activation="relu", name="density")(x)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(
        keras.layers.GlobalAveragePooling2D()(x)
    )
    model = keras.Model(inputs, [density, cls])
    report = to_tflite(model, tmp_path / "two.tflite")
    assert report.passed and report.max_abs_error < 1e-5
    assert [o.shape for o in report.outputs] == [[-1, 8, 8, 1], [-1, 3]]
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    got = run_tflite(report.path, x)
    for y, ref in zip(got, model(x, training=False)):
        np.testing.assert_allclose(y, np.asarray(ref), atol=1e-5)


def test_dead_output_gives_a_clear_int8_error(tmp_path):
    """A ReLU output that is zero on all calibration data gets a ~1e-8 int8
    scale, which XNNPACK refuses; the error says so instead of only
    'failed to create XNNPACK runtime'."""
    import keras
    import numpy as np

    from acsl_tf.export import to_tflite

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Conv2D(
        4, 3, padding="same", activation="relu",
        bias_initializer=keras.initializers.Constant(-100.0),
    )(inp)
    model = keras.Model(inp, out)
    data = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    with pytest.raises(RuntimeError, match="quantization scale below 1e-6.*constant"):
        to_tflite(model, str(tmp_path / "dead.tflite"), quantization="int8", representative_data=data)
    assert not (tmp_path / "dead.tflite").exists()
