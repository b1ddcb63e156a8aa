"""Property-based tests: random functional graphs, random keep masks that
respect channel groups, and the rewrite is never silently wrong.

The generator mixes residual and BN-less adds, concatenations, depthwise and
separable convs, squeeze-and-excitation gates, activations whose constant is
not zero (sigmoid, softplus, ``x*2+1``), channel-mixing activations, nested
models with colliding layer names, shared layers, and raw ``pad`` / ``split``
/ ``Resizing``. Removed channels keep a non-zero beta. For every example the
shrunk model either matches the original with the removed gammas zeroed, or
``shrink`` reports where it is approximate (and says so with the deviation).
"""

import itertools

import keras
import numpy as np
import pytest
from _models import randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import layers as L

from acsl_tf.pruning import apply_plan, plan_shrink, profile

BLOCKS = [
    "conv", "residual", "concat", "depthwise", "upsample", "branch_add", "se", "separable",
    "bnless_add", "const_act", "mix_act", "nested", "shared", "pad_split",
]  # fmt: skip
_NESTED = itertools.count()


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
        elif kind == "bnless_add":
            skip = L.Conv2D(c, 1)(x)  # no BN: the group is not covered by gammas
            y = L.BatchNormalization()(L.Conv2D(c, 3, padding="same")(x))
            x = L.ReLU()(L.Add()([skip, y]))
        elif kind == "const_act":
            f = data.draw(st.integers(2, 6))
            y = L.Conv2D(f, 1)(x)
            y = L.BatchNormalization(center=data.draw(st.booleans()))(y)
            act = data.draw(st.sampled_from(["sigmoid", "softplus", "tanh", "affine"]))
            x = y * 2.0 + 1.0 if act == "affine" else L.Activation(act)(y)
        elif kind == "mix_act":
            x = L.Conv2D(data.draw(st.integers(2, 6)), 1, activation="softmax")(x)
            x = L.BatchNormalization()(x)
        elif kind == "nested":
            ii = keras.Input(x.shape[1:])
            t = L.Conv2D(data.draw(st.integers(2, 6)), 1, name="nb_conv")(ii)
            t = L.ReLU(name="nb_relu")(L.BatchNormalization(name="nb_bn")(t))
            x = keras.Model(ii, t, name=f"nested_{next(_NESTED)}")(x)
        elif kind == "shared":
            conv = L.Conv2D(c, 1)
            x = L.ReLU()(L.BatchNormalization()(conv(x)))
            x = L.BatchNormalization()(conv(x))
        elif kind == "pad_split":
            y = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
            a, b = keras.ops.split(y, 2, axis=2)
            x = L.Resizing(8, 8)(L.Add()([a, b]))
    if data.draw(st.booleans(), label="dense_head"):
        x = L.GlobalAveragePooling2D()(x)
        y = L.Dense(3)(x)
    else:
        y = L.Conv2D(2, 1)(x)
    return keras.Model(i, y)


def randomize_and_zero(model, rng, frac):
    """Random BN statistics; pick channels to remove in covered groups and
    zero their gammas (beta stays non-zero). Returns ``keep`` for shrink."""
    graph = plan_shrink(model, keep={})._graph
    for unit in graph.units.values():
        randomize_bn(unit.layer, rng, beta_mean=0.2)
    keep_roots = {}
    for r, grp in graph.groups.items():
        if grp.prunable and grp.covered and grp.size > 1:
            k = max(1, int(round(grp.size * (1 - frac))))
            keep_roots[r] = np.sort(rng.choice(grp.size, k, replace=False))
    bn_keep = {}
    for name, unit in graph.units.items():
        f = graph.keep_features(unit.map, keep_roots)
        if f is None:
            continue
        bn_keep[name] = f.tolist()
        ws = unit.layer.get_weights()
        mask = np.ones(ws[0].shape[0], bool)
        mask[f] = False
        ws[0][mask] = 0.0
        unit.layer.set_weights(ws)
    return bn_keep


def check(data):
    model = build(data)
    seed = data.draw(st.integers(0, 2**16), label="seed")
    frac = data.draw(st.floats(0.1, 0.8), label="frac")
    rng = np.random.default_rng(seed)
    keep = randomize_and_zero(model, rng, frac)
    plan = plan_shrink(model, keep=keep)
    res = apply_plan(model, plan, verify=False)
    small = res.model
    # measured here, independently of shrink's own probe
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    y0 = np.asarray(model(x, training=False), np.float64)
    y1 = np.asarray(small(x, training=False), np.float64)
    rel = np.abs(y0 - y1).max() / max(np.abs(y0).max(), 1e-6)
    notes = set(res.approximations)
    assert rel <= 1e-4 or notes, f"silently wrong: relative deviation {rel:.3g}"
    assert small.count_params() == plan.params_after
    assert profile(small).total_flops == plan.flops_after
    if any(g.removed for g in plan.groups):
        assert plan.params_after < plan.params_before


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_graphs_equivalent(data):
    check(data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_graphs_equivalent_many(data):
    check(data)
