import keras
import numpy as np
import pytest
from keras import layers as L

import acsl_tf
from acsl_tf.pruning import ShrinkPlan, plan_shrink, shrink, shrink_report
from acsl_tf.pruning.criteria import get_criterion, list_criteria, register_criterion
from acsl_tf.pruning.profile import profile


def set_bn(layer, gamma=None, beta=None, seed=0):
    rng = np.random.default_rng(seed)
    n = layer.gamma.shape[0]
    g = rng.uniform(0.5, 1.5, n) if gamma is None else np.asarray(gamma, float)
    b = rng.normal(0, 0.5, n) if beta is None else np.asarray(beta, float)
    layer.set_weights(
        [g, b, rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
        if layer.center
        else [g, rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
    )


def small_cnn(k2=1, padding="valid", bias2=False):
    i = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(6, k2, padding=padding, use_bias=bias2, name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    o = L.Dense(3, name="head")(x)
    m = keras.Model(i, o)
    for n, bn in enumerate(["bn1", "bn2"]):
        set_bn(m.get_layer(bn), seed=n)
    return m


X = np.random.default_rng(5).standard_normal((4, 10, 10, 3)).astype("float32")


def test_exactly_one_selection_argument():
    m = small_cnn()
    with pytest.raises(ValueError, match="exactly one"):
        shrink(m)
    with pytest.raises(ValueError, match="exactly one"):
        plan_shrink(m, ratio=0.2, threshold=0.1)
    with pytest.raises(ValueError, match="ratio"):
        plan_shrink(m, ratio=1.5)
    with pytest.raises(ValueError, match="min_channels"):
        plan_shrink(m, ratio=0.2, min_channels=0)
    with pytest.raises(ValueError, match="round_to"):
        plan_shrink(m, ratio=0.2, round_to=0)
    with pytest.raises(ValueError, match="Unknown criterion"):
        plan_shrink(m, ratio=0.2, criterion="nope")
    with pytest.raises(ValueError, match="ignored_layers"):
        plan_shrink(m, ratio=0.2, ignored_layers=["missing"])
    with pytest.raises(ValueError, match="neither a BatchNormalization unit"):
        plan_shrink(m, keep={"nope": [0]})


def test_input_model_is_not_mutated():
    m = small_cnn()
    cfg = m.get_config()
    ws = [np.array(w) for w in m.get_weights()]
    n_nodes = {layer.name: len(layer._inbound_nodes) for layer in m.layers}
    small = shrink(m, ratio=0.5)
    assert small is not m
    assert m.get_config() == cfg
    for a, b in zip(ws, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert {layer.name: len(layer._inbound_nodes) for layer in m.layers} == n_nodes
    # no layer object is shared between the two models
    assert not {id(x) for x in m.layers} & {id(x) for x in small.layers}


def test_plan_is_frozen_and_consistent():
    m = small_cnn()
    plan = plan_shrink(m, ratio=0.5)
    assert isinstance(plan, ShrinkPlan)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.params_after = 0
    assert plan.params_before == m.count_params()
    assert plan.flops_before == profile(m).total_flops
    # 8 + 6 prunable channels, half removed
    assert plan.channels_before == 14
    assert plan.channels_removed == 7
    assert set(plan.bn_keep) == {"bn1", "bn2"}
    small = shrink(m, plan=plan)
    assert small.count_params() == plan.params_after < plan.params_before
    assert profile(small).total_flops == plan.flops_after
    assert "ShrinkPlan" in plan.summary()


def test_ratio_removes_lowest_gamma_globally():
    m = small_cnn()
    g1 = np.array([0.9, 0.01, 0.8, 0.02, 0.7, 0.6, 0.5, 0.4])
    g2 = np.array([0.03, 0.9, 0.9, 0.9, 0.04, 0.9])
    set_bn(m.get_layer("bn1"), gamma=g1)
    set_bn(m.get_layer("bn2"), gamma=g2, seed=1)
    plan = plan_shrink(m, ratio=4 / 14)
    assert plan.bn_keep["bn1"] == (0, 2, 4, 5, 6, 7)
    assert plan.bn_keep["bn2"] == (1, 2, 3, 5)


def test_threshold_min_channels_and_round_to():
    m = small_cnn()
    set_bn(m.get_layer("bn1"), gamma=[0.001] * 7 + [1.0])
    set_bn(m.get_layer("bn2"), gamma=[0.001, 0.5, 0.5, 0.5, 0.5, 0.001], seed=1)
    plan = plan_shrink(m, threshold=0.01)
    assert plan.bn_keep["bn1"] == (7,)
    assert plan.bn_keep["bn2"] == (1, 2, 3, 4)
    plan = plan_shrink(m, threshold=0.01, min_channels=3)
    assert len(plan.bn_keep["bn1"]) == 3 and 7 in plan.bn_keep["bn1"]
    plan = plan_shrink(m, threshold=0.01, round_to=4)
    assert len(plan.bn_keep["bn1"]) == 4
    assert len(plan.bn_keep["bn2"]) == 4
    plan = plan_shrink(m, threshold=0.0001)
    assert plan.channels_removed == 0
    assert plan.params_after == plan.params_before


@pytest.mark.parametrize("mode", ["target_flops", "target_params"])
def test_targets_are_met_minimally(mode):
    m = small_cnn(k2=3)
    for target in (0.2, 0.5):
        plan = plan_shrink(m, **{mode: target})
        attr = "flops" if mode == "target_flops" else "params"
        red = 1 - getattr(plan, f"{attr}_after") / getattr(plan, f"{attr}_before")
        assert red >= target
        # one channel fewer removed would not meet it: check with ratio
        fewer = plan_shrink(m, ratio=(plan.channels_removed - 1) / plan.channels_before)
        red2 = 1 - getattr(fewer, f"{attr}_after") / getattr(fewer, f"{attr}_before")
        assert red2 < target
        small = shrink(m, **{mode: target})
        assert small.count_params() == plan.params_after
    with pytest.raises(ValueError, match="cannot be met"):
        plan_shrink(m, target_params=0.99)


def test_fold_exact_for_1x1_conv_dense_and_valid_conv():
    for k2, padding, bias2 in [(1, "valid", False), (3, "valid", True), (1, "same", True)]:
        m = small_cnn(k2=k2, padding=padding, bias2=bias2)
        # removed channels: gamma = 0, beta > 0 -> constant relu(beta) > 0
        set_bn(m.get_layer("bn1"), gamma=[0, 1, 0, 1, 1, 0, 1, 1], beta=[0.7] * 8)
        set_bn(m.get_layer("bn2"), gamma=[1, 0, 1, 1, 0, 1], beta=[0.4, 0.9, 0.1, 0.2, 1.2, 0.3])
        keep = {"bn1": [1, 3, 4, 6, 7], "bn2": [0, 2, 3, 5]}
        y0 = np.asarray(m(X, training=False))
        y1 = np.asarray(shrink(m, keep=keep)(X, training=False))
        np.testing.assert_allclose(y0, y1, atol=1e-5)
        y2 = np.asarray(shrink(m, keep=keep, fold_removed=False)(X, training=False))
        assert np.abs(y0 - y2).max() > 1e-2  # folding is what makes it exact


def test_fold_same_padding_is_approximate_but_better():
    m = small_cnn(k2=3, padding="same", bias2=False)
    set_bn(m.get_layer("bn1"), gamma=[0, 1, 0, 1, 1, 0, 1, 1], beta=[0.7] * 8)
    keep = {"bn1": [1, 3, 4, 6, 7]}
    y0 = np.asarray(m(X, training=False))
    err_fold = np.abs(y0 - np.asarray(shrink(m, keep=keep)(X, training=False))).max()
    err_none = np.abs(
        y0 - np.asarray(shrink(m, keep=keep, fold_removed=False)(X, training=False))
    ).max()
    assert err_fold < err_none


def test_keep_validation():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="c")(i)
    x = L.BatchNormalization(name="bn_out")(x)
    m = keras.Model(i, x)
    with pytest.raises(ValueError, match="cannot be pruned"):
        plan_shrink(m, keep={"bn_out": [0, 1]})
    m2 = small_cnn()
    with pytest.raises(ValueError, match="every channel"):
        plan_shrink(m2, keep={"bn1": []})
    with pytest.raises(ValueError, match="outside"):
        plan_shrink(m2, keep={"bn1": [9]})


def test_ignored_layers_keep_channels():
    m = small_cnn()
    plan = plan_shrink(m, ratio=0.5, ignored_layers=["c2"])
    assert plan.channels_removed == 0  # c2's input (bn1) and output (bn2) kept
    assert plan.params_after == plan.params_before
    plan = plan_shrink(m, ratio=0.5, ignored_layers=["bn2"])
    assert "bn2" not in plan.bn_keep
    assert len(plan.bn_keep["bn1"]) == 4


def test_unsupported_layer_error_and_ignore():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3)(i)
    x = L.BatchNormalization()(x)
    x = L.Lambda(lambda t: t * 2.0, name="lam")(x)
    x = L.Conv2D(2, 1)(x)
    m = keras.Model(i, x)
    with pytest.raises(ValueError, match=r"'lam' of class Lambda.*strict=True"):
        plan_shrink(m, ratio=0.5, strict=True)
    # by default a layer without a handler keeps its channels and is listed
    plan = plan_shrink(m, ratio=0.5)
    assert plan.channels_removed == 0
    assert plan.unknown_layers == ("lam",)
    assert "lam" in plan.summary()
    plan = plan_shrink(m, ratio=0.5, ignored_layers=["lam"], strict=True)
    assert plan.channels_removed == 0


def test_subclassed_model_rejected():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="Functional and Sequential"):
        plan_shrink(m, ratio=0.1)


def test_criteria_registry_and_l1_random():
    assert {"gamma", "l1", "random"} <= set(list_criteria())
    seen = []

    def beta_abs(unit):
        seen.append((unit.name, unit.producer.name if unit.producer else None, unit.wrapper))
        return np.abs(np.asarray(unit.bn.beta))

    register_criterion("test_beta", beta_abs)
    assert get_criterion("test_beta").fn is beta_abs
    m = small_cnn()
    set_bn(m.get_layer("bn1"), beta=[5, 0, 5, 0, 5, 5, 5, 5])
    plan = plan_shrink(m, ratio=2 / 14, criterion="test_beta")
    assert plan.bn_keep["bn1"] == (0, 2, 4, 5, 6, 7)
    assert ("bn1", "c1", None) in seen and ("bn2", "c2", None) in seen
    # l1: filter norms of the producer
    k = np.ones((3, 3, 3, 8), "float32")
    k[..., 3] = 0.001
    m.get_layer("c1").set_weights([k, np.zeros(8, "float32")])
    plan = plan_shrink(m, ratio=1 / 14, criterion="l1")
    assert 3 not in plan.bn_keep["bn1"]
    a = plan_shrink(m, ratio=0.5, criterion="random", seed=1).bn_keep
    b = plan_shrink(m, ratio=0.5, criterion="random", seed=1).bn_keep
    c = plan_shrink(m, ratio=0.5, criterion="random", seed=2).bn_keep
    assert a == b and a != c
    with pytest.raises(TypeError, match="callable"):
        register_criterion("x", 3)


def test_report_rows_and_table():
    m = small_cnn()
    small = shrink(m, keep={"bn1": [0, 1, 2], "bn2": [0, 1]})
    rep = shrink_report(m, small)
    rows = {r.name: r for r in rep.rows}
    assert rows["c1"].channels_before == 8 and rows["c1"].channels_after == 3
    assert rows["c2"].params_after == 3 * 2  # 1x1, no bias
    assert rows["head"].params_after == 2 * 3 + 3
    assert rep.params_before == m.count_params() and rep.params_after == small.count_params()
    text = str(rep)
    assert "c1" in text and "total" in text


def test_public_reexports():
    for n in ("profile", "plan_shrink", "shrink", "shrink_report", "register_layer_handler"):
        assert n in acsl_tf.__all__
        assert callable(getattr(acsl_tf, n))


def test_wrapped_model_shrinks_to_plain_model():
    from acsl_tf.sparsity.api import prune_low_correlation

    m = small_cnn()
    set_bn(m.get_layer("bn1"), gamma=[0.0, 1, 0.0, 1, 1, 1, 1, 1], beta=[0.0] * 8)
    wrapped = prune_low_correlation(m)
    assert any(isinstance(x, keras.layers.Wrapper) for x in wrapped.layers)
    seen = []

    def spy(unit):
        seen.append((unit.name, type(unit.wrapper).__name__))
        return unit.gamma

    register_criterion("test_spy", spy)
    plan = plan_shrink(wrapped, ratio=2 / 14, criterion="test_spy")
    assert ("bn1", "PruneLowCorrelation") in seen
    assert plan.bn_keep["bn1"] == (1, 3, 4, 5, 6, 7)
    assert plan.params_before == m.count_params()
    small = shrink(wrapped, plan=plan)
    assert not any(isinstance(x, keras.layers.Wrapper) for x in small.layers)
    assert small.get_layer("bn1").gamma.shape == (6,)
    assert small.count_params() == plan.params_after
    y0 = np.asarray(m(X, training=False))
    np.testing.assert_allclose(y0, np.asarray(small(X, training=False)), atol=1e-5)


def test_ties_spread_evenly_across_groups():
    # freshly initialised gammas are all 1: every channel ties
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1)(i)
    x = L.BatchNormalization(name="a")(x)
    x = L.Conv2D(16, 1)(x)
    x = L.BatchNormalization(name="b")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    plan = plan_shrink(m, ratio=0.5)
    assert len(plan.bn_keep["a"]) == 4 and len(plan.bn_keep["b"]) == 8
    assert shrink(m, plan=plan).count_params() == plan.params_after


def test_l1_layer_criterion_spreads_removal_over_layers():
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="b2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, keras.layers.Dense(3)(x))
    for name, scale in (("c1", 1.0), ("c2", 10.0)):
        k = np.ones(m.get_layer(name).kernel.shape, "float32")
        k *= scale * np.arange(1, 5, dtype="float32") / k[..., 0].size
        m.get_layer(name).set_weights([k, np.zeros(4, "float32")])
    # raw norms (1..4 vs 10..40): the first layer is stripped to min_channels
    raw = plan_shrink(m, ratio=0.5, criterion="l1").bn_keep
    assert raw["b1"] == (3,) and raw["b2"] == (1, 2, 3)
    # per-layer normalised: the same fraction from each layer
    per = plan_shrink(m, ratio=0.5, criterion="l1_layer").bn_keep
    assert per["b1"] == (2, 3) and per["b2"] == (2, 3)
    assert "l1_layer" in list_criteria()


def test_fpgm_layer_is_fpgm_normalised_per_producer():
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="b2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, keras.layers.Dense(3)(x))
    rng = np.random.default_rng(0)
    for name, scale in (("c1", 0.01), ("c2", 10.0)):
        k = scale * rng.normal(size=m.get_layer(name).kernel.shape).astype("float32")
        m.get_layer(name).set_weights([k, np.zeros(k.shape[-1], "float32")])

    def fpgm(name):  # summed Euclidean distance of each filter to the others
        f = m.get_layer(name).kernel.numpy().reshape(-1, m.get_layer(name).filters).T
        return np.linalg.norm(f[:, None] - f[None], axis=-1).sum(1)

    # raw distances: the small-scale first layer goes first, down to one channel
    raw = plan_shrink(m, ratio=0.4, criterion="fpgm").bn_keep
    assert len(raw["b1"]) == 1 and len(raw["b2"]) == 5
    # per producer: the 4 lowest of fpgm / mean(fpgm) over both layers
    per = plan_shrink(m, ratio=0.4, criterion="fpgm_layer").bn_keep
    scores = [(v, n, i) for n in ("c1", "c2") for i, v in enumerate(fpgm(n) / fpgm(n).mean())]
    gone = sorted(scores)[:4]
    for n, b in (("c1", "b1"), ("c2", "b2")):
        assert set(per[b]) == {i for _, nn, i in scores if nn == n} - {
            i for _, nn, i in gone if nn == n
        }
    assert 1 < len(per["b1"]) and len(per["b2"]) < 6
    assert "fpgm_layer" in list_criteria()
