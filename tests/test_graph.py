"""The dependency graph: groups, coverage, handlers and their registry."""

import keras
import numpy as np
import pytest
from keras import layers as L

import acsl_tf
from acsl_tf.graph import (
    DependencyGraph,
    LayerHandler,
    PassThrough,
    get_layer_handler,
    supported_layers,
    trace_model,
)
from acsl_tf.graph import handlers as H
from acsl_tf.pruning import plan_shrink, shrink


def group_of(graph, name, role="out"):
    gs = [g for g in graph.groups.values() if (name, role) in g.members]
    assert len(gs) == 1, gs
    return gs[0]


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
    assert len(res) == 1 and res[0].size == 4 and res[0].covered
    outs = {name for name, role in res[0].members if role == "out"}
    assert outs == {"a", "b"}
    assert not any(g.prunable for g in plan.groups if ("out", "out") in g.members)


def test_concat_offsets_and_bn_over_concat():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(3, 1, name="a")(i)
    b = L.Conv2D(5, 1, name="b")(i)
    c = L.Concatenate()([a, b])
    c = L.BatchNormalization(name="bn")(c)
    m = keras.Model(i, L.Conv2D(2, 1)(c))
    plan = plan_shrink(m, keep={"bn": [0, 2, 3, 7]})
    g_a = [g for g in plan.groups if ("a", "out") in g.members][0]
    g_b = [g for g in plan.groups if ("b", "out") in g.members][0]
    assert g_a.keep == (0, 2) and g_b.keep == (0, 4)
    small = shrink(m, keep={"bn": [0, 2, 3, 7]}, verify="raise")
    assert small.get_layer("bn").gamma.shape == (4,)


def test_depthwise_couples_input_and_output_and_multiplier_fixes():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="pw")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(y))
    g = group_of(DependencyGraph(m), "dw", "depthwise")
    assert set(g.units) == {"bn1", "bn2"}
    assert "depth_multiplier" in g.fixed


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


def test_se_block_is_conditional_and_consistent():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c")(i)
    x = L.BatchNormalization(name="bn")(x)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Dense(2, name="sq")(s)
    s = L.Dense(8, name="ex")(s)
    x = L.Multiply()([x, L.Reshape((1, 1, 8))(s)])
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    g = group_of(DependencyGraph(m), "ex")
    assert g.covered and g.conditional  # the gate multiplies a constant channel
    plan = plan_shrink(m, keep={"bn": [1, 2, 5]})
    pg = [g for g in plan.groups if ("ex", "out") in g.members][0]
    assert pg.keep == (1, 2, 5) and ("c", "out") in pg.members
    assert any("squeeze-and-excitation" in n for n in plan.notes)
    small = shrink(m, plan=plan, verify=False)
    assert small.get_layer("ex").kernel.shape == (2, 3)
    assert small.get_layer("sq").kernel.shape == (3, 2)


def test_reshape_of_channel_axis_keeps_channels():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(6, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Reshape((4, 24))(x)
    m = keras.Model(i, L.Dense(2)(x))
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 0
    assert any(g.reason and "reshapes the channel axis" in g.reason for g in plan.groups)


def test_channels_first_keeps_channels():
    i = keras.Input((3, 8, 8))
    x = L.Conv2D(4, 3, data_format="channels_first", name="cf")(i)
    x = L.BatchNormalization(axis=1, name="bn")(x)
    m = keras.Model(i, L.Conv2D(2, 1, data_format="channels_first")(x))
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 0
    assert any(g.reason and "channels_last" in g.reason for g in plan.groups)


def test_shared_layer_one_channel_set():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="c0")(i)
    x = L.BatchNormalization(name="bn0")(x)
    conv = L.Conv2D(4, 1, name="shared")
    y1 = conv(x)
    y2 = conv(y1)
    y = L.BatchNormalization(name="bn")(L.Add()([y1, y2]))
    m = keras.Model(i, L.Conv2D(2, 1)(y))
    g = group_of(DependencyGraph(m), "shared")
    assert set(g.units) >= {"bn0", "bn"}
    calls = [c for c in trace_model(m).calls if c.op.name == "shared"]
    assert [c.call_index for c in calls] == [0, 1]


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
    small = shrink(m, keep={"ibn": [0, 3]}, verify="raise")
    assert small.get_layer("head").kernel.shape == (1, 1, 2, 2)
    assert small.count_params() == plan.params_after


class Twice(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def _twice_model():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    x = Twice(name="twice")(x)
    return keras.Model(i, L.Conv2D(2, 1)(x))


def test_handlers_are_scoped_to_the_call():
    m = _twice_model()
    # unknown layers keep their channels by default and are listed
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 0 and plan.unknown_layers == ("twice",)
    with pytest.raises(ValueError, match="Twice"):
        plan_shrink(m, ratio=0.5, strict=True)
    plan = plan_shrink(m, ratio=0.5, handlers={Twice: PassThrough(flops="out")})
    assert plan.channels_removed == 2
    small = shrink(m, ratio=0.5, handlers={Twice: PassThrough()}, verify="raise")
    assert small(np.ones((1, 6, 6, 3), "float32")).shape == (1, 6, 6, 2)
    # nothing leaked into the defaults
    assert get_layer_handler(Twice()) is None
    assert plan_shrink(m, ratio=0.5).channels_removed == 0
    with pytest.raises(TypeError, match="LayerHandler"):
        plan_shrink(m, ratio=0.5, handlers={Twice: object()})


def test_register_layer_handler_process_wide():
    class Thrice(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    acsl_tf.register_layer_handler(Thrice, PassThrough())
    try:
        assert get_layer_handler(Thrice()) is not None
        assert "Thrice" in supported_layers()
    finally:
        H.default_registry().by_class.pop(Thrice)
    assert isinstance(PassThrough(), LayerHandler)


def test_model_io_never_pruned():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1)(i)
    x = L.BatchNormalization(name="bn")(x)
    m = keras.Model(i, x)
    with pytest.warns(UserWarning, match="none prunable"):
        plan = plan_shrink(m, ratio=0.9)
    assert plan.channels_removed == 0
    assert any(g.reason == "model output" for g in plan.groups)
    assert any(g.reason == "model input" for g in plan.groups)


def test_nothing_prunable_says_why():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3)(i)
    x = L.Conv2D(5, 3)(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError, match="criterion='l1'"):
        plan_shrink(m, target_flops=0.5)
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        plan_shrink(m, ratio=0.5)
    assert plan_shrink(m, ratio=0.5, criterion="l1").channels_removed == 4


def test_fingerprint_ignores_names_and_weights():
    def build(prefix, seed):
        keras.utils.set_random_seed(seed)
        i = keras.Input((6, 6, 3))
        x = L.BatchNormalization(name=prefix + "bn")(L.Conv2D(4, 3, name=prefix + "c")(i))
        return keras.Model(i, L.Conv2D(2, 1, name=prefix + "o")(x))

    a, b = build("a", 0), build("b", 1)
    assert DependencyGraph(a).fingerprint() == DependencyGraph(b).fingerprint()
    i = keras.Input((6, 6, 3))
    c = keras.Model(i, L.Conv2D(2, 1)(L.BatchNormalization()(L.Conv2D(5, 3)(i))))
    assert DependencyGraph(c).fingerprint() != DependencyGraph(a).fingerprint()
