"""Zero-channel equivalence per supported layer type.

For every model below: randomise BN statistics, pick channels to remove in
each prunable group (respecting groups), set gamma = beta = 0 on them in
every BN of the group, shrink with ``keep=`` the rest, and check that the
outputs match the original within 1e-5 and the parameter count equals
``plan.params_after``.
"""

import keras
import numpy as np
import pytest
from keras import layers as L

from acsl_tf.pruning import plan_shrink, shrink
from acsl_tf.pruning.profile import profile


def randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, L.BatchNormalization):
            ws = layer.get_weights()
            n = ws[0].shape[0]
            new = []
            for v in layer.weights:
                nm = v.path.split("/")[-1]
                if "variance" in nm:
                    new.append(rng.uniform(0.5, 2.0, n).astype("float32"))
                elif "gamma" in nm:
                    new.append(rng.uniform(0.5, 1.5, n).astype("float32"))
                else:
                    new.append(rng.normal(0, 0.5, n).astype("float32"))
            layer.set_weights(new)


def _all_layers(model):
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
        else:
            out.append(layer)
    return out


def zero_and_keep(model, frac=0.4, seed=0):
    """Choose channels to remove per prunable group, zero gamma/beta on them
    in every BN of the group, and return the keep dict for shrink."""
    graph = plan_shrink(model, ratio=0.0)._graph
    rng = np.random.default_rng(seed)
    keep_roots = {}
    for r, grp in graph.groups.items():
        if grp.prunable and grp.covered and grp.size > 1:
            k = max(1, int(round(grp.size * (1 - frac))))
            keep_roots[r] = np.sort(rng.choice(grp.size, k, replace=False))
    bn_keep = {}
    for unit_name, unit in graph.units.items():
        f = graph.keep_features(unit.map, keep_roots)
        if f is None:
            continue
        bn_keep[unit_name] = f.tolist()
        layer = unit.layer
        ws = layer.get_weights()
        mask = np.ones(ws[0].shape[0], bool)
        mask[f] = False
        ws[0][mask] = 0.0
        if layer.center:
            ws[1][mask] = 0.0
        layer.set_weights(ws)
    return bn_keep


def rand_inputs(model, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    xs = [
        rng.standard_normal((batch,) + tuple(x.shape[1:])).astype("float32") for x in model.inputs
    ]
    return xs if len(xs) > 1 else xs[0]


def check_equivalent(model, frac=0.4, expect_removed=True):
    randomize_bn(model)
    keep = zero_and_keep(model, frac)
    if expect_removed:
        assert keep, "model has no prunable group"
    x = rand_inputs(model)
    y0 = keras.tree.flatten(model(x, training=False))
    w0 = [np.array(w) for w in model.get_weights()]
    plan = plan_shrink(model, keep=keep)
    small = shrink(model, keep=keep)
    y1 = keras.tree.flatten(small(x, training=False))
    assert len(y0) == len(y1)
    for a, b in zip(y0, y1):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    assert small.count_params() == plan.params_after
    assert profile(small).total_flops == plan.flops_after
    assert profile(model).total_params == plan.params_before == model.count_params()
    if expect_removed:
        assert small.count_params() < model.count_params()
    # input untouched
    for a, b in zip(w0, model.get_weights()):
        np.testing.assert_array_equal(a, np.asarray(b))
    return plan, small


def cbr(x, f, k=3, conv=L.Conv2D, **kw):
    x = conv(f, k, padding="same", **kw)(x)
    x = L.BatchNormalization()(x)
    return L.ReLU()(x)


def m_conv_bn_relu_dense():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    x = cbr(x, 6, use_bias=False)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(4)(x))


def m_residual_add():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    y = cbr(x, 5)
    y = L.Conv2D(8, 3, padding="same")(y)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))
    z = L.Conv2D(10, 1, strides=2)(x)
    z = L.BatchNormalization()(z)
    w = L.BatchNormalization()(L.Conv2D(10, 3, strides=2, padding="same")(x))
    x = L.Activation("relu")(L.Add()([z, w]))
    return keras.Model(i, L.Dense(3)(L.GlobalMaxPooling2D()(x)))


def m_concat():
    i = keras.Input((8, 8, 3))
    a = cbr(i, 4)
    b = cbr(i, 6)
    c = L.Concatenate()([a, b])
    c = L.BatchNormalization()(c)
    d = cbr(c, 5)
    e = L.Concatenate()([d, c])
    return keras.Model(i, L.Conv2D(3, 1)(e))


def m_se_block():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(3, 1, activation="relu")(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    x = L.Multiply()([x, s])
    g = L.GlobalAveragePooling2D()(x)
    g = L.Dense(4, activation="relu")(g)
    g = L.Dense(8, activation="sigmoid")(g)
    g = L.Reshape((1, 1, 8))(g)
    x = L.Multiply()([x, g])
    return keras.Model(i, L.Conv2D(2, 1)(x))


def m_depthwise():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = cbr(x, 6, k=1)
    return keras.Model(i, L.Conv2D(2, 1)(x))


def m_separable():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    x = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.SeparableConv2D(4, 3, padding="same")(x)
    return keras.Model(i, x)


def m_transpose():
    i = keras.Input((6, 6, 3))
    x = cbr(i, 8, k=3, conv=L.Conv2DTranspose, strides=2)
    x = cbr(x, 5)
    x = L.Conv2DTranspose(2, 3, strides=2, padding="same")(x)
    return keras.Model(i, x)


def m_conv1d():
    i = keras.Input((12, 3))
    x = cbr(i, 8, conv=L.Conv1D)
    x = L.MaxPooling1D()(x)
    x = L.UpSampling1D()(x)
    x = cbr(x, 6, conv=L.Conv1D)
    x = L.SeparableConv1D(5, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv1D(3, padding="same")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(2)(x))


def m_flatten_dense():
    i = keras.Input((6, 6, 3))
    x = cbr(i, 5)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(7)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Dropout(0.3)(x)
    return keras.Model(i, L.Dense(3)(x))


def m_passthrough_zoo():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    x = L.PReLU()(x)
    x = L.LeakyReLU()(x)
    x = L.ELU()(x)
    x = L.SpatialDropout2D(0.2)(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Cropping2D(1)(x)
    x = L.AveragePooling2D(2, padding="same")(x)
    x = L.UpSampling2D()(x)
    x = L.Activation("swish")(x)
    x = cbr(x, 6)
    x = L.PReLU(shared_axes=[1, 2])(x)
    x = L.Reshape((64, 6))(x)
    x = L.Conv1D(3, 1)(x)
    return keras.Model(i, x)


def m_merges():
    i = keras.Input((8, 8, 3))
    a = cbr(i, 6)
    b = cbr(i, 6)
    c = cbr(i, 6)
    x = L.Subtract()([a, b])
    x = L.Maximum()([x, c])
    x = L.Minimum()([x, a])
    x = L.Average()([x, b])
    x = L.ReLU()(x)
    return keras.Model(i, L.Conv2D(2, 1)(x))


def m_raw_ops():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 8)
    y = cbr(x, 8)
    x = x + y
    x = x * keras.ops.relu6(x + 3.0) * (1.0 / 6.0)
    x = keras.ops.maximum(x, 0.0)
    z = cbr(x, 4)
    x = keras.ops.concatenate([x, z], axis=-1)
    s = keras.ops.mean(x, axis=[1, 2], keepdims=True)
    x = x * keras.ops.sigmoid(s)
    return keras.Model(i, L.Conv2D(2, 1)(x))


def m_nested():
    inner_in = keras.Input((8, 8, 3))
    t = cbr(inner_in, 8)
    t = cbr(t, 6)
    inner = keras.Model(inner_in, t, name="backbone")
    seq = keras.Sequential(
        [keras.Input((8, 8, 6)), L.Conv2D(7, 1), L.BatchNormalization(), L.ReLU()], name="head"
    )
    i = keras.Input((8, 8, 3))
    x = seq(inner(i))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(2)(x))


def m_multi_io():
    a_in = keras.Input((8, 8, 3), name="img")
    b_in = keras.Input((5,), name="vec")
    a = cbr(a_in, 6)
    a = L.GlobalAveragePooling2D()(a)
    b = L.Dense(4)(b_in)
    b = L.BatchNormalization()(b)
    b = L.ReLU()(b)
    c = L.Concatenate()([a, b])
    out1 = L.Dense(3, name="out1")(c)
    out2 = L.Dense(2, name="out2")(b)
    return keras.Model([a_in, b_in], [out1, out2])


def m_sequential():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(6, 3),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(5, 3),
            L.BatchNormalization(),
            L.ReLU(),
            L.Flatten(),
            L.Dense(2),
        ]
    )


def m_shared_layer():
    i = keras.Input((8, 8, 3))
    x = cbr(i, 6)
    conv = L.Conv2D(6, 3, padding="same")
    bn = L.BatchNormalization()
    act = L.PReLU(shared_axes=[1, 2])
    y = act(bn(conv(x)))
    y = act(bn(conv(y)))
    return keras.Model(i, L.Conv2D(2, 1)(y))


def m_grouped_depthwise():
    # ConvNeXt writes its depthwise convs as Conv2D(groups=C)
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.Conv2D(6, 1)(i))
    x = L.Conv2D(6, 3, padding="same", groups=6)(x)
    x = L.BatchNormalization()(x)
    return keras.Model(i, L.Conv2D(2, 1)(L.ReLU()(x)))


def m_spatial_zoo():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.Conv2D(6, 1)(i))
    x = L.PReLU(shared_axes=[1, 2])(x)
    x = L.Permute((2, 1, 3))(x)
    x = L.Resizing(6, 6)(x)
    x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    a, b = keras.ops.split(x, 2, axis=1)
    x = L.Concatenate(axis=1)([b, a])
    x = L.Dense(5)(x)  # Dense on a rank-4 tensor: a 1x1 conv
    x = L.BatchNormalization()(x)
    return keras.Model(i, L.Conv2D(2, 1)(x))


BUILDERS = {
    "grouped_depthwise": m_grouped_depthwise,
    "spatial_zoo": m_spatial_zoo,
    "conv_bn_relu_dense": m_conv_bn_relu_dense,
    "residual_add": m_residual_add,
    "concat": m_concat,
    "se_block": m_se_block,
    "depthwise": m_depthwise,
    "separable": m_separable,
    "transpose": m_transpose,
    "conv1d": m_conv1d,
    "flatten_dense": m_flatten_dense,
    "passthrough_zoo": m_passthrough_zoo,
    "merges": m_merges,
    "raw_ops": m_raw_ops,
    "nested": m_nested,
    "multi_io": m_multi_io,
    "sequential": m_sequential,
    "shared_layer": m_shared_layer,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_zero_channel_equivalence(name):
    check_equivalent(BUILDERS[name]())
