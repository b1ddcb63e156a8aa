"""acsl_tf.export.to_onnx: tf2onnx conversion verified with onnxruntime."""

import os

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import keras  # noqa: E402

from acsl_tf.export import ParityError, to_onnx  # noqa: E402


def small_cnn(width=8):
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
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


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(11)
    return small_cnn()


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    return to_onnx(cnn, path)


def test_onnx_export_is_verified(cnn, exported):
    report = exported
    assert report.format == "onnx" and report.passed and report.verified
    assert os.path.getsize(report.path) == report.size_bytes
    assert report.max_abs_error < 1e-5 and report.relative_error <= report.tolerance == 1e-4
    assert report.argmax_agreement == 1.0
    assert report.inputs[0].name == "image" and report.inputs[0].shape == [-1, 16, 16, 3]
    assert report.outputs[0].shape == [-1, 4]
    assert "Conv" in report.ops and "BatchNormalization" not in report.ops  # BN folded
    assert report.extra["opset"] == 17
    proto = onnx.load(report.path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    # Independent check with onnxruntime, batch of 3.
    x = np.random.default_rng(5).random((3, 16, 16, 3), dtype=np.float32)
    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": x})
    np.testing.assert_allclose(y, np.asarray(cnn(x, training=False)), atol=1e-5)


def test_onnx_sample_data_labels_and_opset(cnn, tmp_path):
    x = np.random.default_rng(6).random((8, 16, 16, 3), dtype=np.float32)
    pred = np.asarray(cnn(x, training=False)).argmax(-1)
    labels = pred.copy()
    labels[:2] = (labels[:2] + 1) % 4
    report = to_onnx(
        cnn, tmp_path / "m13.onnx", opset=13, sample_data=x, labels=labels, input_name="pixels"
    )
    assert report.verify_data == "sample_data" and report.num_verify_samples == 8
    assert report.keras_accuracy == pytest.approx(6 / 8) == report.artifact_accuracy
    assert report.inputs[0].name == "pixels" and report.extra["opset"] == 13


def test_onnx_bad_inputs(cnn, tmp_path):
    with pytest.raises(TypeError, match="Keras 3"):
        to_onnx("model.keras", tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="tolerance"):
        to_onnx(cnn, tmp_path / "a.onnx", tolerance=-1.0)
    with pytest.raises(ValueError, match="opset"):
        to_onnx(cnn, tmp_path / "a.onnx", opset=3)
    with pytest.raises(ValueError, match="wrong shape"):
        to_onnx(cnn, tmp_path / "a.onnx", sample_data=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(FileNotFoundError):
        to_onnx(cnn, tmp_path / "missing" / "a.onnx")
    existing = tmp_path / "b.onnx"
    existing.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        to_onnx(cnn, existing, overwrite=False)
    assert existing.read_bytes() == b"old"
    for path, error in (("", ValueError), (f"{tmp_path}/newdir/", ValueError)):
        with pytest.raises(error, match="Received: path="):
            to_onnx(cnn, path, overwrite=True)
    with pytest.raises(IsADirectoryError, match="existing directory"):
        to_onnx(cnn, tmp_path, overwrite=True)
    bad = small_cnn(width=2)
    w = bad.layers[1].get_weights()
    w[0][0, 0, 0, 0] = np.inf
    bad.layers[1].set_weights(w)
    with pytest.raises(ValueError, match="non-finite"):
        to_onnx(bad, tmp_path / "c.onnx")
    assert sorted(os.listdir(tmp_path)) == ["b.onnx"]


def test_onnx_parity_failure_writes_nothing(cnn, tmp_path):
    with pytest.raises(ParityError) as info:
        to_onnx(cnn, tmp_path / "a.onnx", tolerance=1e-12)
    assert info.value.report.passed is False
    assert not os.listdir(tmp_path)


def test_onnx_batchnorm_folding_by_layer_type(tmp_path):
    """tf2onnx folds BatchNorm into a preceding Conv2D; after Conv2DTranspose and
    DepthwiseConv2D it stays as a Mul and an Add each (docs/EXPORT.md)."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # a non-zero shift
            layer.set_weights(
                [rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4), rng.normal(0, 0.1, 4)]
                + [rng.uniform(0.5, 1.5, 4)]
            )
    report = to_onnx(model, tmp_path / "bn.onnx")
    counts = report.op_counts
    assert "BatchNormalization" not in counts
    assert counts["Conv"] == 3 and counts["ConvTranspose"] == 1
    assert counts["Mul"] == 2 and counts["Add"] == 2
    assert report.passed and report.max_abs_error < 1e-5
