"""Property-based tests: random functional graphs, random keep masks that
respect channel groups, outputs equal after zeroing the removed channels."""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import layers as L

from acsl_tf.pruning.profile import profile
from acsl_tf.pruning import plan_shrink, shrink

BLOCKS = ["conv", "residual", "concat", "depthwise", "upsample", "branch_add", "se", "separable"]


def cbr(x, f, k=3):
    x = L.Conv2D(f, k, padding="same")(x)
    x = L.BatchNormalization()(x)
    return L.ReLU()(x)


def build(data):
    i = keras.Input((8, 8, 3))
    x = cbr(i, data.draw(st.integers(2, 6), label="stem"))
    n = data.draw(st.integers(1, 4), label="n_blocks")
    for _ in range(n):
        kind = data.draw(st.sampled_from(BLOCKS), label="block")
        c = x.shape[-1]
        if kind == "conv":
            x = cbr(x, data.draw(st.integers(2, 6)), data.draw(st.sampled_from([1, 3])))
        elif kind == "residual":
            y = cbr(x, data.draw(st.integers(2, 6)))
            y = L.BatchNormalization()(L.Conv2D(c, 3, padding="same")(y))
            x = L.ReLU()(L.Add()([x, y]))
        elif kind == "concat":
            y = cbr(x, data.draw(st.integers(2, 5)), 1)
            x = L.Concatenate()([x, y])
            if data.draw(st.booleans()):
                x = L.BatchNormalization()(x)
        elif kind == "depthwise":
            x = L.DepthwiseConv2D(3, padding="same")(x)
            x = L.ReLU()(L.BatchNormalization()(x))
        elif kind == "upsample":
            x = L.UpSampling2D()(x)
            x = L.MaxPooling2D()(x)
        elif kind == "branch_add":
            f = data.draw(st.integers(2, 6))
            a = L.BatchNormalization()(L.Conv2D(f, 1)(x))
            b = L.BatchNormalization()(L.Conv2D(f, 3, padding="same")(x))
            x = L.ReLU()(L.Add()([a, b]))
        elif kind == "se":
            s = L.GlobalAveragePooling2D(keepdims=True)(x)
            s = L.Conv2D(2, 1, activation="relu")(s)
            s = L.Conv2D(c, 1, activation="sigmoid")(s)
            x = L.Multiply()([x, s])
        elif kind == "separable":
            x = L.SeparableConv2D(data.draw(st.integers(2, 6)), 3, padding="same")(x)
            x = L.ReLU()(L.BatchNormalization()(x))
    if data.draw(st.booleans(), label="dense_head"):
        x = L.GlobalAveragePooling2D()(x)
        y = L.Dense(3)(x)
    else:
        y = L.Conv2D(2, 1)(x)
    return keras.Model(i, y)


def randomize_and_zero(model, rng, frac):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.5, n),
                    rng.normal(0, 0.5, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )
    graph = plan_shrink(model, ratio=0.0)._graph
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
        g, b, mm, mv = layer.get_weights()
        mask = np.ones(g.shape[0], bool)
        mask[f] = False
        g[mask] = 0.0
        b[mask] = 0.0
        layer.set_weights([g, b, mm, mv])
    return bn_keep


def check(data):
    model = build(data)
    seed = data.draw(st.integers(0, 2**16), label="seed")
    frac = data.draw(st.floats(0.1, 0.8), label="frac")
    rng = np.random.default_rng(seed)
    keep = randomize_and_zero(model, rng, frac)
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    y0 = np.asarray(model(x, training=False))
    plan = plan_shrink(model, keep=keep)
    small = shrink(model, keep=keep)
    y1 = np.asarray(small(x, training=False))
    np.testing.assert_allclose(y0, y1, atol=1e-5, rtol=1e-4)
    assert small.count_params() == plan.params_after
    assert profile(small).total_flops == plan.flops_after
    if keep and any(len(v) < model.get_layer(k).gamma.shape[0] for k, v in keep.items()):
        assert plan.params_after < plan.params_before


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_graphs_equivalent(data):
    check(data)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_graphs_equivalent_many(data):
    check(data)
