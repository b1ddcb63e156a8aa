"""acsl_tf.interop: Keras 3 <-> tf_keras conversion, shrink for tf_keras models, bad inputs."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import acsl_tf
from acsl_tf import interop

pytest.importorskip("tf_keras")
import tf_keras  # noqa: E402
from _models import small_cnn  # noqa: E402

TOL = 1e-5  # the converters' exactness promise (outputs, max abs)
# shrink's own note that removing channels with random BN betas is approximate; the
# comparisons here are converted vs unconverted, not shrunk vs original.
pytestmark = pytest.mark.filterwarnings("ignore:shrink of .* is approximate")


def _randomize(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so BN matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    return model


def depthwise_separable():
    inp = keras.Input((12, 12, 3), name="img")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(name="dw_relu")(x)
    x = keras.layers.SeparableConv2D(12, 3, padding="same", name="sep")(x)
    x = keras.layers.BatchNormalization(name="sep_bn")(x)
    x = keras.layers.Activation("swish", name="sep_act")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(4, name="fc")(x), name="dw_sep")


def unet_like():
    inp = keras.Input((16, 16, 3), name="img")
    e1 = keras.layers.Conv2D(6, 3, padding="same", name="e1")(inp)
    e1 = keras.layers.BatchNormalization(name="e1_bn")(e1)
    e1 = keras.layers.ReLU(name="e1_relu")(e1)
    d = keras.layers.MaxPooling2D(name="pool")(e1)
    d = keras.layers.ZeroPadding2D(1, name="pad")(d)
    d = keras.layers.Conv2D(10, 3, padding="valid", name="mid")(d)
    d = keras.layers.BatchNormalization(name="mid_bn")(d)
    d = keras.layers.ReLU(name="mid_relu")(d)
    u = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(d)
    x = keras.layers.Concatenate(name="cat")([u, e1])
    x = keras.layers.Conv2D(5, 1, name="head")(x)
    return keras.Model(inp, keras.layers.Softmax(name="prob")(x), name="unet_like")


def dense_head():
    inp = keras.Input((6, 6, 2), name="feat")
    x = keras.layers.Flatten(name="flat")(inp)
    x = keras.layers.Dense(16, activation="relu", name="d1")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    x = keras.layers.BatchNormalization(name="d1_bn")(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x))


def raw_ops():
    inp = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    y = keras.ops.relu(x)
    z = keras.ops.add(x, y) * 0.5
    s = keras.ops.sigmoid(keras.ops.mean(z, axis=[1, 2]))
    m = keras.ops.max(z, axis=(1, 2))
    c = keras.ops.concatenate([s, m], axis=-1)
    c = keras.ops.reshape(c, (-1, 2, 4))
    return keras.Model(inp, keras.ops.softmax(c, axis=-1)[:, 1], name="raw_ops")


def nested_sequential():
    block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            keras.layers.Conv2D(4, 3, padding="same", name="inner_conv"),
            keras.layers.BatchNormalization(name="inner_bn"),
            keras.layers.ReLU(name="inner_relu"),
        ],
        name="block",
    )
    inp = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(4, 1, name="proj")(inp)
    x = keras.layers.Add(name="res")([x, block(x)])  # a nested model
    x = block(x)  # ... called twice: shared weights
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="fc")(x), name="nested")


def activations_and_more():
    inp = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up_conv")(inp)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.LeakyReLU(0.1, name="leaky")(x)  # negative_slope <-> alpha
    x = keras.layers.Activation("hard_silu", name="hswish")(x)  # no tf_keras name
    x = keras.layers.SpatialDropout2D(0.2, name="sdrop")(x)
    x = keras.layers.Resizing(10, 10, name="resize")(x)
    x = keras.ops.hard_sigmoid(x) * x  # Keras 3's hard_sigmoid differs from tf_keras'
    x = keras.layers.PReLU(name="prelu")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="gap")(x), name="acts")


def _zoo():
    return {
        "residual_cnn_bn": (lambda: small_cnn(), (8, 8, 3)),
        "depthwise_separable": (depthwise_separable, (12, 12, 3)),
        "unet_like": (unet_like, (16, 16, 3)),
        "dense_head": (dense_head, (6, 6, 2)),
        "vgg_small": (lambda: acsl_tf.models.vgg_small((28, 28, 1), num_classes=10), (28, 28, 1)),
        "shrunk_ratio_0.3": (
            lambda: acsl_tf.shrink(_randomize(small_cnn((8, 8, 3), filters=(8, 12))), ratio=0.3),
            (8, 8, 3),
        ),
        "raw_keras_ops": (raw_ops, (8, 8, 3)),
        "activations_and_more": (activations_and_more, (8, 8, 3)),
        "nested_and_shared": (nested_sequential, (8, 8, 3)),
        "sequential": (
            lambda: keras.Sequential(
                [
                    keras.Input((5,)),
                    keras.layers.Dense(7, activation="tanh", name="d1"),
                    keras.layers.Dense(2, name="d2"),
                ],
                name="seq",
            ),
            (5,),
        ),
    }


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", list(_zoo()))
def test_round_trip_equal_outputs_and_params(name):
    build, shape = _zoo()[name]
    model = _randomize(build())
    x = np.random.default_rng(1).random((4,) + shape, dtype=np.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False))

    legacy = interop.to_tf_keras(model)
    assert isinstance(legacy, tf_keras.Model)
    assert interop.is_tf_keras_model(legacy) and not interop.is_tf_keras_model(model)
    assert legacy.count_params() == model.count_params()
    assert _max_err(legacy(x, training=False).numpy(), y) <= TOL

    back = interop.from_tf_keras(legacy)
    assert isinstance(back, keras.Model) and not interop.is_tf_keras_model(back)
    assert back.count_params() == model.count_params()
    assert _max_err(keras.ops.convert_to_numpy(back(x, training=False)), y) <= TOL
    assert isinstance(back, keras.Sequential) == isinstance(model, keras.Sequential)
    # Layers keep their names (raw keras.ops and hard_silu become layers or TF ops).
    names = {layer.name for layer in model.layers} - {"hswish"}
    assert names <= {layer.name for layer in legacy.layers} | {"img", "feat"}


def test_round_trip_keeps_the_processes_keras():
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    interop.from_tf_keras(interop.to_tf_keras(small_cnn()))
    assert os.environ.get("TF_USE_LEGACY_KERAS") == before
    assert keras.__version__.startswith("3.")
    assert tf.keras.layers.Dense is keras.layers.Dense


def test_shared_layers_stay_shared_and_weights_are_copies():
    model = _randomize(nested_sequential())
    legacy = interop.to_tf_keras(model)
    inner = [layer for layer in legacy.layers if isinstance(layer, tf_keras.Model)]
    assert len(inner) == 1  # the nested block, called twice, is one tf_keras model
    src = model.get_layer("block").get_layer("inner_conv").kernel.numpy()
    dst = inner[0].get_layer("inner_conv").kernel
    assert np.array_equal(dst.numpy(), src)
    dst.assign(dst.numpy() + 1.0)  # independent copies
    assert np.array_equal(model.get_layer("block").get_layer("inner_conv").kernel.numpy(), src)


def test_raw_ops_become_layers_tfmot_can_quantize():
    legacy = interop.to_tf_keras(raw_ops())
    kinds = {type(layer).__name__ for layer in legacy.layers}
    # add/relu/concatenate/spatial mean and max: exact tf_keras layers
    assert {"Add", "ReLU", "Concatenate", "GlobalAveragePooling2D", "GlobalMaxPooling2D"} <= kinds
    # x * 0.5 (a constant operand) and the slice stay TensorFlow ops
    assert "TFOpLambda" in kinds and "SlicingOpLambda" in kinds


def test_from_tf_keras_maps_tensorflow_ops():
    inp = tf_keras.Input((6, 6, 3), name="img")
    x = tf_keras.layers.Conv2D(5, 3, padding="same", name="c")(inp)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    y = tf.nn.relu(x) + x
    y = tf.math.multiply(y, 0.25)
    m = tf.reduce_mean(y, axis=[1, 2])
    n = tf.reduce_max(y, axis=[1, 2], keepdims=False)
    c = tf.concat([m, tf.nn.sigmoid(n)], axis=-1)
    c = tf.reshape(c, [-1, 2, 5])[:, 0]
    out = tf.nn.softmax(tf_keras.layers.Dense(3, name="fc")(c))
    legacy = tf_keras.Model(inp, out, name="legacy_ops")
    legacy.get_layer("bn").set_weights(
        [np.full(5, 1.3), np.full(5, 0.1), np.linspace(-0.5, 0.5, 5), np.full(5, 0.7)]
    )
    x = np.random.default_rng(2).random((3, 6, 6, 3), dtype=np.float32)
    k3 = interop.from_tf_keras(legacy)
    assert k3.count_params() == legacy.count_params() == 3 * 3 * 3 * 5 + 5 + 4 * 5 + 5 * 3 + 3
    err = _max_err(keras.ops.convert_to_numpy(k3(x, training=False)), legacy(x).numpy())
    assert err <= TOL


def test_shrink_tf_keras_matches_shrink_on_keras3():
    k3 = _randomize(small_cnn((8, 8, 3), filters=(8, 12)))
    legacy = interop.to_tf_keras(k3)
    small = interop.shrink_tf_keras(legacy, ratio=0.3)
    expected = acsl_tf.shrink(k3, ratio=0.3)
    assert interop.is_tf_keras_model(small)
    assert small.count_params() == expected.count_params() < k3.count_params()
    x = np.random.default_rng(3).random((4, 8, 8, 3), dtype=np.float32)
    err = _max_err(small(x, training=False).numpy(), keras.ops.convert_to_numpy(expected(x)))
    assert err <= TOL


def test_maybe_from_and_to_tf_keras():
    k3 = small_cnn()
    same, was = interop.maybe_from_tf_keras(k3)
    assert same is k3 and was is False
    legacy = interop.to_tf_keras(k3)
    converted, was = interop.maybe_from_tf_keras(legacy)
    assert was is True and isinstance(converted, keras.Model)
    assert converted.count_params() == k3.count_params() == 1045
    back = interop.maybe_to_tf_keras(converted, was)
    assert interop.is_tf_keras_model(back) and back.count_params() == 1045
    assert interop.maybe_to_tf_keras(k3, False) is k3


def _tfmot():
    """tfmot, imported through the guard (a bare import would flip `tf.keras`)."""
    try:
        return interop.import_tfmot()
    except ImportError:  # pragma: no cover - installed by scripts/bootstrap.sh
        pytest.skip("tensorflow-model-optimization is not installed")


@pytest.mark.slow
def test_tfmot_accepts_converted_shrunk_model():
    tfmot = _tfmot()
    small = acsl_tf.shrink(_randomize(small_cnn((8, 8, 3), filters=(8, 12))), ratio=0.3)
    legacy = interop.to_tf_keras(small)
    q = tfmot.quantization.keras.quantize_model(legacy)
    wrapped = [type(layer).__name__ for layer in q.layers]
    assert wrapped.count("QuantizeWrapperV2") == len(legacy.layers) - 1
    pruned = tfmot.sparsity.keras.prune_low_magnitude(legacy)
    assert (
        sum(type(layer).__name__ == "PruneLowMagnitude" for layer in pruned.layers)
        == len(legacy.layers) - 1
    )
    assert tf.keras.layers.Dense is keras.layers.Dense
    # A QAT (wrapped) tf_keras model has no Keras 3 form: a clear error.
    with pytest.raises(ValueError, match=r"tfmot QuantizeLayer|tfmot QuantizeWrapperV2"):
        interop.from_tf_keras(q)


# ---------------------------------------------------------------- bad inputs


class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def _custom_model():
    inp = keras.Input((4,), name="x")
    return keras.Model(inp, keras.layers.Dense(2, name="d")(Doubler(name="doubler")(inp)))


def test_unsupported_layer_is_named():
    with pytest.raises(ValueError, match=r"Layer 'doubler' of class Doubler .*converters="):
        interop.to_tf_keras(_custom_model())


def test_unsupported_layer_with_a_converter():
    model = _custom_model()
    legacy = interop.to_tf_keras(
        model, converters={Doubler: lambda layer: tf_keras.layers.Rescaling(2.0, name=layer.name)}
    )
    x = np.random.default_rng(4).random((3, 4), dtype=np.float32)
    assert _max_err(legacy(x).numpy(), keras.ops.convert_to_numpy(model(x))) <= TOL
    assert legacy.count_params() == model.count_params() == 10


def test_unsupported_raw_op_is_named():
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.ops.erf(inp))
    with pytest.raises(ValueError, match=r"keras.ops Erf.*Received: operation=Erf"):
        interop.to_tf_keras(model)


def test_activations_that_differ_between_the_versions():
    # Keras 3 hard_sigmoid is relu6(x + 3) / 6, tf_keras' is clip(0.2 x + 0.5, 0, 1):
    # inside another layer it cannot be kept, so it is refused by name.
    inp = keras.Input((4,), name="x")
    dense = keras.Model(inp, keras.layers.Dense(3, activation="hard_sigmoid", name="d")(inp))
    with pytest.raises(ValueError, match=r"'d' \(Dense\) uses activation='hard_sigmoid'"):
        interop.to_tf_keras(dense)
    # A tf_keras Activation("hard_sigmoid") keeps tf_keras' meaning in Keras 3.
    t_inp = tf_keras.Input((5,), name="x")
    legacy = tf_keras.Model(t_inp, tf_keras.layers.Activation("hard_sigmoid", name="hs")(t_inp))
    x = np.linspace(-4, 4, 15, dtype=np.float32).reshape(3, 5)
    k3 = interop.from_tf_keras(legacy)
    assert _max_err(keras.ops.convert_to_numpy(k3(x)), legacy(x).numpy()) <= TOL
    assert _max_err(legacy(x).numpy(), np.clip(0.2 * x + 0.5, 0, 1)) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0"])
def test_keras_applications_round_trip(name):
    kwargs = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(keras.applications, name)(
        input_shape=(32, 32, 3), weights=None, classes=10, **kwargs
    )
    x = np.random.default_rng(6).random((2, 32, 32, 3), dtype=np.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    legacy = interop.to_tf_keras(model)
    back = interop.from_tf_keras(legacy)
    assert legacy.count_params() == back.count_params() == model.count_params()
    assert _max_err(legacy(x, training=False).numpy(), y) <= TOL
    assert _max_err(keras.ops.convert_to_numpy(back(x, training=False)), y) <= TOL


def test_wrapped_model_is_refused_until_stripped():
    wrapped = acsl_tf.prune_low_correlation(small_cnn())
    with pytest.raises(ValueError, match=r"PruneLowCorrelation.*strip_pruning"):
        interop.to_tf_keras(wrapped)
    plain = interop.to_tf_keras(acsl_tf.strip_pruning(wrapped))
    assert plain.count_params() == 1045


def test_wrong_model_types():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional and Sequential models only"):
        interop.to_tf_keras(Sub())
    with pytest.raises(TypeError, match="already a tf_keras model"):
        interop.to_tf_keras(interop.to_tf_keras(small_cnn()))
    with pytest.raises(TypeError, match="already a Keras 3 model"):
        interop.from_tf_keras(small_cnn())
    with pytest.raises(TypeError, match="Received: model=str"):
        interop.to_tf_keras("model.keras")
    with pytest.raises(TypeError, match="shrink_tf_keras expects a tf_keras model"):
        interop.shrink_tf_keras(small_cnn(), ratio=0.3)


def test_missing_tf_keras_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf_keras", None)
    with pytest.raises(ImportError, match=r"pip install .*tf_keras.*Received: ImportError"):
        interop.to_tf_keras(small_cnn())


def test_importing_acsl_tf_and_tfmot_leaves_keras_alone():
    """In a fresh process: importing acsl_tf (and acsl_tf.interop) imports neither tf_keras
    nor tfmot; the guarded tfmot import leaves `tf.keras` bound to Keras 3 and
    TF_USE_LEGACY_KERAS unset, although tfmot sets it on import."""
    code = textwrap.dedent(
        """
        import os, sys
        import acsl_tf
        from acsl_tf import interop
        assert "tf_keras" not in sys.modules, "tf_keras imported"
        assert "tensorflow_model_optimization" not in sys.modules, "tfmot imported"
        tfmot = interop.import_tfmot()
        assert tfmot.quantization.keras.quantize_model
        import keras, tensorflow as tf
        assert os.environ.get("TF_USE_LEGACY_KERAS") is None, os.environ["TF_USE_LEGACY_KERAS"]
        assert keras.__version__.startswith("3."), keras.__version__
        assert tf.keras.layers.Dense is keras.layers.Dense, tf.keras
        print("OK")
        """
    )
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")


def test_environment_value_is_restored(monkeypatch):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    _tfmot()
    assert os.environ["TF_USE_LEGACY_KERAS"] == "0"
