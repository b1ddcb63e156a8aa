import keras
import numpy as np
import pytest
from keras import layers as L

from acsl_tf.graph.dependency import (
    LayerHandler,
    PassThrough,
    analyze,
    get_layer_handler,
    groups,
    register_layer_handler,
    supported_layers,
    trace_model,
)
from acsl_tf.pruning.shrink import plan_shrink, shrink


def test_residual_add_couples_producers():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    a = L.BatchNormalization(name="bna")(a)
    b = L.Conv2D(4, 1, name="b")(a)
    b = L.BatchNormalization(name="bnb")(b)
    x = L.Add(name="add")([a, b])
    c = L.Conv2D(5, 1, name="c")(x)
    c = L.BatchNormalization(name="bnc")(c)
    m = keras.Model(i, L.Conv2D(2, 1, name="out")(c))
    plan = plan_shrink(m, ratio=0.0)
    prunable = [g for g in plan.groups if g.prunable]
    assert len(prunable) == 2
    res = [g for g in prunable if set(g.units) == {"bna", "bnb"}]
    assert len(res) == 1 and res[0].size == 4
    outs = {name for name, role in res[0].members if role == "out"}
    assert outs == {"a", "b"}
    # input channels and output channels are never prunable
    assert not any(g.prunable for g in plan.groups if ("out", "out") in g.members)


def test_concat_offsets_and_bn_over_concat():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(3, 1, name="a")(i)
    b = L.Conv2D(5, 1, name="b")(i)
    c = L.Concatenate()([a, b])
    c = L.BatchNormalization(name="bn")(c)
    m = keras.Model(i, L.Conv2D(2, 1)(c))
    plan = plan_shrink(m, keep={"bn": [0, 2, 3, 7]})
    sizes = sorted(len(g.keep) for g in plan.groups if g.prunable)
    assert sizes == [2, 2]  # a keeps 0,2 ; b keeps 0,4
    g_a = [g for g in plan.groups if ("a", "out") in g.members][0]
    g_b = [g for g in plan.groups if ("b", "out") in g.members][0]
    assert g_a.keep == (0, 2) and g_b.keep == (0, 4)
    small = shrink(m, keep={"bn": [0, 2, 3, 7]})
    assert small.get_layer("bn").gamma.shape == (4,)


def test_depthwise_couples_input_and_output_and_multiplier_fixes():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="pw")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(y))
    an = analyze(trace_model(m))
    gs = groups(an)
    g = [s for s in gs.values() if ("dw", "depthwise") in s.members]
    assert len(g) == 1
    assert {u for u, _ in g[0].units} == {"bn1", "bn2"}
    assert "depth_multiplier" in g[0].fixed


def test_grouped_conv_fixes_channels():
    i = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 1, name="c")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(8, 3, groups=2, name="g")(x)
    x = L.BatchNormalization(name="bn2")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    plan = plan_shrink(m, ratio=0.5)
    assert "bn" not in plan.bn_keep and "bn2" not in plan.bn_keep
    assert plan.channels_removed == 0


def test_se_block_stays_consistent():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c")(i)
    x = L.BatchNormalization(name="bn")(x)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Dense(2, name="sq")(s)
    s = L.Dense(8, name="ex")(s)
    x = L.Multiply()([x, L.Reshape((1, 1, 8))(s)])
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    plan = plan_shrink(m, keep={"bn": [1, 2, 5]})
    g = [g for g in plan.groups if ("ex", "out") in g.members][0]
    assert g.keep == (1, 2, 5) and ("c", "out") in g.members
    small = shrink(m, keep={"bn": [1, 2, 5]})
    assert small.get_layer("ex").kernel.shape == (2, 3)
    assert small.get_layer("sq").kernel.shape == (3, 2)


def test_reshape_of_channel_axis_fixes():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(6, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Reshape((4, 24))(x)
    m = keras.Model(i, L.Dense(2)(x))
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 0
    assert any(g.reason and "Reshape" in g.reason for g in plan.groups)


def test_channels_first_raises():
    i = keras.Input((3, 8, 8))
    x = L.Conv2D(4, 3, data_format="channels_first", name="cf")(i)
    m = keras.Model(i, x)
    with pytest.raises(ValueError, match="channels_last"):
        plan_shrink(m, ratio=0.1)


def test_shared_layer_one_channel_set():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="c0")(i)
    x = L.BatchNormalization(name="bn0")(x)
    conv = L.Conv2D(4, 1, name="shared")
    y1 = conv(x)
    y2 = conv(y1)
    y = L.BatchNormalization(name="bn")(L.Add()([y1, y2]))
    m = keras.Model(i, L.Conv2D(2, 1)(y))
    an = analyze(trace_model(m))
    roots = {an.find(s) for s in an.maps[an.trace.calls[2].out_keys[0]].sources}
    # shared conv: its input (bn0 group) and output are unified across calls
    g = groups(an)
    shared_out = [s for s in g.values() if ("shared", "out") in s.members]
    assert len(shared_out) == 1
    assert {u for u, _ in shared_out[0].units} >= {"bn0", "bn"}
    assert roots


def test_nested_and_raw_ops_traced():
    inner_in = keras.Input((8, 8, 3))
    t = L.Conv2D(4, 1, name="ic")(inner_in)
    t = L.BatchNormalization(name="ibn")(t)
    inner = keras.Model(inner_in, t, name="inner")
    i = keras.Input((8, 8, 3))
    x = inner(i)
    x = x * keras.ops.sigmoid(x) + 1.0
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(x))
    tr = trace_model(m)
    names = [type(c.op).__name__ for c in tr.calls]
    assert "Functional" not in names
    assert {"Sigmoid", "Multiply", "Add"} <= set(names)
    plan = plan_shrink(m, keep={"ibn": [0, 3]})
    small = shrink(m, keep={"ibn": [0, 3]})
    assert small.get_layer("head").kernel.shape == (1, 1, 2, 2)
    assert small.count_params() == plan.params_after


def test_register_custom_handler():
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    x = Twice(name="twice")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError, match="Twice"):
        plan_shrink(m, ratio=0.5)
    register_layer_handler(Twice, PassThrough())
    assert get_layer_handler(Twice()) is not None
    assert "Twice" in supported_layers()
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 2
    small = shrink(m, ratio=0.5)
    x_in = np.ones((1, 6, 6, 3), "float32")
    assert small(x_in).shape == (1, 6, 6, 2)
    with pytest.raises(ValueError, match="LayerHandler"):
        register_layer_handler(Twice, object())
    assert isinstance(PassThrough(), LayerHandler)


def test_model_io_never_pruned():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    m = keras.Model(i, x)
    plan = plan_shrink(m, ratio=0.9)
    assert plan.channels_removed == 0
    assert any(g.reason == "model output" for g in plan.groups)
    assert any(g.reason == "model input" for g in plan.groups)
