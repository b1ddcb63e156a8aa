import keras
import numpy as np
from keras import layers as L

import acsl_tf
from acsl_tf.pruning.profile import Profile, call_cost, profile


def rows(p):
    return {r.name: r for r in p.layers}


def test_conv_dense_bn_counts_by_hand():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(i)  # out 8x8x4
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(name="pool")(x)  # 4x4x4
    x = L.Flatten(name="flat")(x)  # 64
    y = L.Dense(5, name="fc")(x)
    m = keras.Model(i, y)
    p = profile(m)
    r = rows(p)
    assert r["conv"].macs == 8 * 8 * 4 * 3 * 3 * 3
    assert r["conv"].flops == 2 * r["conv"].macs
    assert r["conv"].params == 3 * 3 * 3 * 4 + 4
    assert r["bn"].flops == 8 * 8 * 4 and r["bn"].params == 16
    assert r["relu"].flops == 256
    assert r["pool"].flops == 256
    assert r["flat"].flops == 0
    assert r["fc"].macs == 64 * 5 and r["fc"].params == 64 * 5 + 5
    assert p.total_params == m.count_params()
    assert p.total_macs == r["conv"].macs + r["fc"].macs
    assert p.total_flops == 2 * p.total_macs + 256 * 3
    assert r["conv"].output_shape == (None, 8, 8, 4)


def test_depthwise_separable_transpose_conv1d():
    i = keras.Input((6, 6, 4))
    a = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(i)  # 6x6x8
    b = L.SeparableConv2D(5, 3, padding="valid", name="sep")(a)  # 4x4x5
    c = L.Conv2DTranspose(3, 2, strides=2, name="tr")(b)  # 8x8x3
    m = keras.Model(i, c)
    r = rows(profile(m))
    assert r["dw"].macs == 6 * 6 * 8 * 9
    assert r["sep"].macs == 4 * 4 * 8 * 9 + 4 * 4 * 8 * 5
    assert r["tr"].macs == 4 * 4 * 5 * 4 * 3
    j = keras.Input((10, 2))
    d = L.Conv1D(3, 3, name="c1d")(j)  # 8x3
    r = rows(profile(keras.Model(j, d)))
    assert r["c1d"].macs == 8 * 3 * 3 * 2


def test_merges_raw_ops_grouped_conv():
    i = keras.Input((4, 4, 8))
    a = L.Conv2D(8, 1, groups=4, name="g")(i)
    b = L.Add(name="add")([i, a, a])
    c = b * keras.ops.sigmoid(b)
    m = keras.Model(i, c)
    p = profile(m)
    r = rows(p)
    assert r["g"].macs == 16 * 8 * 2
    assert r["add"].flops == 2 * 128
    classes = [x.cls for x in p.layers]
    assert "Sigmoid" in classes and "Multiply" in classes
    assert sum(x.flops for x in p.layers if x.cls in ("Sigmoid", "Multiply")) == 2 * 128


def test_nested_model_is_recursed_and_shared_counted_once():
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, L.Conv2D(4, 1, name="ic")(inner_in), name="inner")
    i = keras.Input((8, 8, 3))
    shared = L.Conv2D(4, 1, name="sh")
    x = inner(i)
    y = shared(shared(x))
    m = keras.Model(i, y)
    p = profile(m)
    r = rows(p)
    assert r["ic"].macs == 64 * 4 * 3
    assert r["sh"].macs == 2 * 64 * 4 * 4  # two calls
    assert r["sh"].params == 20  # once
    assert p.total_params == m.count_params()


def test_summary_and_public_api():
    m = keras.Sequential([keras.Input((5,)), L.Dense(3, name="d")])
    p = acsl_tf.profile(m)
    assert isinstance(p, Profile)
    s = p.summary()
    assert "d" in s and "total" in s and "18" in s
    assert str(p) == s
    assert call_cost(m.layers[0], [(None, 5)], [(None, 3)]) == (15, 30)


def test_applications_param_count_matches():
    m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=3)
    p = profile(m)
    assert p.total_params == m.count_params()
    # the first conv: 16x16 output, 3x3x3 kernel, 16 filters (alpha 0.35 -> 16)
    r = rows(p)
    assert r["Conv1"].macs == 16 * 16 * 16 * 27
    assert p.total_flops > 2 * p.total_macs
    assert np.isfinite(p.total_flops)
