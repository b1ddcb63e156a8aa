"""The oneDNN workaround: strided 1x1 convolutions computed as slice + conv."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import acsl_tf  # noqa: F401  (importing it installs the workaround)
from acsl_tf import onednn


@pytest.fixture
def workaround():
    was = onednn.workaround_installed()
    onednn.install_workaround()
    yield
    if not was:
        onednn.uninstall_workaround()


def _conv_model(size, kernel, strides, padding, data_format="channels_last"):
    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    inp = keras.Input(shape)
    out = keras.layers.Conv2D(
        5, kernel, strides=strides, padding=padding, data_format=data_format, use_bias=True
    )(inp)
    return keras.Model(inp, out)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [2, 3, (2, 1)])
def test_workaround_is_exact_forward_and_gradients(size, padding, strides):
    import tensorflow as tf

    model = _conv_model(size, 1, strides, padding)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, size, size, 3)), "float32")

    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(y * y)
        gx, gk = tape.gradient(loss, [x, model.layers[1].kernel])
        return y.numpy(), gx.numpy(), gk.numpy()

    onednn.uninstall_workaround()
    try:
        ref = run()
        onednn.install_workaround()
        got = run()
    finally:
        onednn.uninstall_workaround()
        onednn._auto_install()
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_convolutions_are_untouched(workaround):
    import tensorflow as tf

    # A 3x3 strided convolution goes to Keras' own op unchanged.
    k3 = tf.constant(np.random.default_rng(3).normal(size=(3, 3, 4, 2)), "float32")
    y = tf.constant(np.random.default_rng(4).normal(size=(1, 9, 9, 4)), "float32")
    np.testing.assert_allclose(
        keras.ops.conv(y, k3, strides=2, padding="same").numpy(),
        tf.nn.conv2d(y, k3, 2, "SAME").numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_install_is_idempotent_and_reversible():
    from keras.src.backend.tensorflow import nn as tf_nn

    was = onednn.workaround_installed()
    onednn.uninstall_workaround()
    original = tf_nn.conv
    assert not onednn.workaround_installed()
    assert onednn.install_workaround() and onednn.install_workaround()
    patched = tf_nn.conv
    assert patched is not original and getattr(patched, "_acsl_tf_onednn", False)
    onednn.uninstall_workaround()
    assert tf_nn.conv is original
    if was:
        onednn.install_workaround()


def test_hazards_lists_strided_1x1_convs_that_leave_rows_unread():
    inp = keras.Input((96, 96, 3))
    a = keras.layers.Conv2D(4, 1, strides=2, name="even_1x1_s2")(inp)  # 96 -> crash case
    b = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="k3_s2")(a)
    c = keras.layers.Conv2D(4, 1, strides=1, name="k1_s1")(b)
    inp2 = keras.Input((97, 97, 3))
    d = keras.layers.Conv2D(4, 1, strides=2, name="odd_1x1_s2")(inp2)  # 97 covered
    e = keras.layers.Conv2D(4, 1, strides=(1, 3), name="w_1x1_s3")(inp2)  # 97: 96 % 3 == 0
    f = keras.layers.Conv2D(4, 1, strides=(2, 1), name="h_1x1_s2")(d)  # 49: 48 % 2 == 0
    g = keras.layers.Conv2D(4, 1, strides=2, name="g_1x1_s2")(f)  # (25, 49): 24%2, 48%2 == 0
    h = keras.layers.Conv2D(4, 1, strides=4, name="h_1x1_s4")(g)  # (13, 25): 12%4=0, 24%4=0
    i = keras.layers.Conv2D(4, 1, strides=2, name="i_1x1_s2")(c)  # 48 -> crash case
    model = keras.Model([inp, inp2], [i, e, h])
    assert sorted(onednn.hazards(model)) == ["even_1x1_s2", "i_1x1_s2"]


def test_applications_resnet_shortcuts_are_listed():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=3)
    # ResNet50 (v1) subsamples stages 3-5 with a 1x1 stride-2 shortcut (_0_conv) and
    # a 1x1 stride-2 first conv (_1_conv), on 16, 8 and 4 pixel inputs.
    assert sorted(onednn.hazards(model)) == sorted(
        f"conv{s}_block1_{i}_conv" for s in (3, 4, 5) for i in (0, 1)
    )


def test_enabled_reports_tensorflow_setting():
    # conftest does not force the setting; TF's own report is the truth.
    from tensorflow.python.util import _pywrap_util_port

    assert onednn.enabled() == bool(_pywrap_util_port.IsMklEnabled())
    assert onednn.workaround_installed() == (
        onednn.enabled() and os.environ.get("ACSL_TF_ONEDNN_WORKAROUND", "1") != "0"
    )


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np, keras
    if sys.argv[1] == "acsl":
        import acsl_tf
        assert acsl_tf.onednn.enabled() and acsl_tf.onednn.workaround_installed()
    inp = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(8, 1, strides=2)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(8, 1, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, keras.layers.Dense(1)(x))
    m.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    m.fit(rng.random((640, 96, 96, 3), "float32"), rng.random((640, 1), "float32"),
          batch_size=32, epochs=5, verbose=0)
    print("TRAINED")
    """
)


def _run_crash_case(mode, tmp_path):
    script = tmp_path / "crash_case.py"
    script.write_text(_CRASH_SCRIPT)
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("ACSL_TF_ONEDNN_WORKAROUND", None)
    return subprocess.run(
        [sys.executable, str(script), mode], env=env, capture_output=True, text=True, timeout=600
    )


def test_crash_case_trains_with_onednn_on(tmp_path):
    """The model that crashes TF 2.21 with oneDNN on trains once acsl_tf is imported."""
    result = _run_crash_case("acsl", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TRAINED" in result.stdout


@pytest.mark.slow
def test_crash_case_still_crashes_without_the_workaround(tmp_path):
    """Documents the TensorFlow bug: when this starts passing, the workaround can go."""
    result = _run_crash_case("plain", tmp_path)
    assert result.returncode != 0 and "TRAINED" not in result.stdout


def test_exported_tflite_has_no_slices_from_the_workaround(tmp_path, workaround):
    """Exports trace with Keras' own convolution: no STRIDED_SLICE in the graph."""
    from ai_edge_litert.interpreter import Interpreter

    from acsl_tf.export import to_tflite

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 1, strides=2, name="s2")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, strides=2, name="s2b")(x))
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path)
    ops = {d["op_name"] for d in Interpreter(model_path=path)._get_ops_details()}
    assert "CONV_2D" in ops and "STRIDED_SLICE" not in ops
    assert onednn.workaround_installed()  # restored after the export
    with onednn.suspended():
        assert not onednn.workaround_installed()
    assert onednn.workaround_installed()
