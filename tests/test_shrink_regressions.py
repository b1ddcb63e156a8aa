"""Regression tests: models on which shrinking used to be silently wrong,
crash or refuse. Each rewrite is checked against the original model with the
removed channels silenced (gamma 0 where the gammas cover a group, the
producers' outputs otherwise)."""

import warnings

import keras
import numpy as np
import pytest
from _models import randomize_bn
from keras import layers as L

import acsl_tf
from acsl_tf.graph import DependencyGraph
from acsl_tf.pruning import ApproximateShrinkWarning, apply_plan, plan_shrink, profile, shrink

X = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype("float32")


def silence(model, bn_name, removed):
    """Set gamma (and nothing else) of ``removed`` channels of a BN to 0."""
    bn = model.get_layer(bn_name)
    ws = bn.get_weights()
    ws[0][removed] = 0.0
    bn.set_weights(ws)


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            randomize_bn(layer, rng, beta_mean=0.3)


def same(a, b, x=X, atol=1e-5):
    ya = np.asarray(a(x, training=False))
    yb = np.asarray(b(x, training=False))
    np.testing.assert_allclose(ya, yb, atol=atol, rtol=1e-4)


# --- silently wrong outputs ---------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [
        lambda t: L.Activation("sigmoid")(t),
        lambda t: L.Activation("softplus")(t),
        lambda t: keras.ops.exp(t),
        lambda t: t * 2.0 + 1.0,
    ],
    ids=["sigmoid", "softplus", "exp", "affine"],
)
def test_nonzero_constant_of_removed_channel_is_folded(act):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="c1")(i)
    x = L.BatchNormalization(center=False, name="bn")(x)  # beta = 0: act(0) != 0
    x = act(x)
    m = keras.Model(i, L.Conv2D(3, 1, name="c2")(x))
    randomize(m)
    silence(m, "bn", [1, 4])
    small = shrink(m, keep={"bn": [0, 2, 3, 5]}, verify="raise")
    assert small.get_layer("c2").kernel.shape == (1, 1, 4, 3)
    same(m, small)


@pytest.mark.parametrize("where", ["conv", "dense", "activation"])
def test_channel_mixing_activation_keeps_channels(where):
    i = keras.Input((8, 8, 3))
    if where == "conv":
        x = L.Conv2D(6, 1, activation="softmax", name="p")(i)
        x = L.BatchNormalization(name="bn")(x)
    elif where == "dense":
        x = L.Dense(6, activation="softmax", name="p")(i)
        x = L.BatchNormalization(name="bn")(x)
    else:
        x = L.Conv2D(6, 1, name="p")(i)
        x = L.BatchNormalization(name="bn")(x)
        x = L.Activation("softmax")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    plan = plan_shrink(m, ratio=0.5)
    g = [g for g in plan.groups if ("p", "out") in g.members][0]
    assert not g.prunable and "softmax" in g.reason
    assert plan.channels_removed == 0


def test_python_callable_activation_is_not_assumed_elementwise():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, activation=lambda t: t / keras.ops.sum(t, axis=-1, keepdims=True))(i)
    x = L.BatchNormalization(name="bn")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    assert plan_shrink(m, ratio=0.5).channels_removed == 0


def _bnless_skip_model():
    # r2-U-Net style: a 1x1 skip conv without BN added to a BN branch.
    i = keras.Input((8, 8, 3))
    skip = L.Conv2D(6, 1, name="skip")(i)
    y = L.Conv2D(6, 3, padding="same", name="body")(i)
    y = L.BatchNormalization(name="bn")(y)
    x = L.ReLU()(L.Add()([skip, y]))
    x = L.Conv2D(4, 1, name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    return keras.Model(i, L.Conv2D(2, 1, name="head")(L.ReLU()(x)))


def test_bnless_producer_in_a_group_is_not_covered_by_gamma():
    m = _bnless_skip_model()
    randomize(m)
    g = [g for g in DependencyGraph(m).groups.values() if ("skip", "out") in g.members][0]
    assert not g.covered and "'skip'" in g.uncovered_reason
    plan = plan_shrink(m, ratio=0.5)
    pg = [g for g in plan.groups if ("skip", "out") in g.members][0]
    assert not pg.prunable and pg.removed == 0
    assert "bn" not in plan.bn_keep and "bn2" in plan.bn_keep
    # the sparsity wrapper wraps exactly the units the graph calls prunable
    wrapped = acsl_tf.prune_low_correlation(m)
    assert [w.layer.name for w in acsl_tf.get_wrappers(wrapped)] == ["bn2"]
    # a weight criterion prunes it, exactly w.r.t. the silenced producers
    res = apply_plan(m, plan_shrink(m, ratio=0.5, criterion="l1"), verify="raise")
    assert res.exact and res.model.get_layer("skip").kernel.shape[-1] < 6


def test_nan_gamma_is_an_error():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 1)(i))
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    ws = m.get_layer("bn").get_weights()
    ws[0][1] = np.nan
    m.get_layer("bn").set_weights(ws)
    with pytest.raises(ValueError, match="NaN"):
        plan_shrink(m, ratio=0.5)


def test_keep_accepts_boolean_mask():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 1)(i))
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    plan = plan_shrink(m, keep={"bn": np.array([True, False, False, True])})
    assert plan.bn_keep["bn"] == (0, 3)
    with pytest.raises(ValueError, match="boolean mask"):
        plan_shrink(m, keep={"bn": [True, False]})


def test_shared_consumer_of_two_bns_is_reported_not_silently_wrong():
    i = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bna")(L.Conv2D(4, 1, name="ca")(i))
    b = L.BatchNormalization(name="bnb")(L.Conv2D(4, 1, name="cb")(i))
    shared = L.Conv2D(3, 1, name="shared")
    y = L.Concatenate()([shared(a), shared(b)])
    m = keras.Model(i, y)
    randomize(m)
    for n in ("bna", "bnb"):
        silence(m, n, [2])
    res = apply_plan(m, plan_shrink(m, keep={"bna": [0, 1, 3]}), verify=False)
    assert any("shared" in n for n in res.approximations)
    with pytest.warns(ApproximateShrinkWarning, match="shared"):
        shrink(m, keep={"bna": [0, 1, 3]})


def test_bn_after_add_and_concat_is_wrapped():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 1)(i)
    b = L.Conv2D(4, 3, padding="same")(i)
    x = L.BatchNormalization(name="post_add")(L.Add()([a, b]))
    c = L.Conv2D(3, 1)(i)
    y = L.BatchNormalization(name="post_cat")(L.Concatenate()([x, c]))
    m = keras.Model(i, L.Conv2D(2, 1)(L.ReLU()(y)))
    wrapped = acsl_tf.prune_low_correlation(m)
    names = sorted(w.layer.name for w in acsl_tf.get_wrappers(wrapped))
    assert names == ["post_add", "post_cat"]


@pytest.mark.parametrize("order", [("bn1", "bn2"), ("bn2", "bn1")])
def test_keep_validation_does_not_depend_on_dict_order(order):
    i = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn1")(L.Conv2D(4, 1)(i))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1)(a))
    m = keras.Model(i, L.Conv2D(2, 1)(L.Add()([a, b])))
    spec = {"bn1": [0, 1, 2, 3], "bn2": [0, 1]}
    with pytest.raises(ValueError, match="keep different channels"):
        plan_shrink(m, keep={k: spec[k] for k in order})
    ok = {"bn1": [0, 1], "bn2": [0, 1]}
    assert plan_shrink(m, keep={k: ok[k] for k in order}).bn_keep["bn2"] == (0, 1)


def test_params_after_ignores_unread_nested_outputs():
    ii = keras.Input((8, 8, 3))
    t = L.BatchNormalization(name="ibn")(L.Conv2D(4, 1, name="ic")(ii))
    unused = L.Conv2D(16, 3, name="unused")(t)
    inner = keras.Model(ii, [t, unused], name="inner")
    i = keras.Input((8, 8, 3))
    feat, _ = inner(i)
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(feat))
    plan = plan_shrink(m, keep={"ibn": [0, 1]})
    assert plan.params_before == m.count_params()
    small = shrink(m, plan=plan, verify="raise")
    assert small.count_params() == plan.params_after == profile(small).total_params
    assert plan.flops_after == profile(small).total_flops


# --- crashes and refusals -----------------------------------------------------


def _seq():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(2),
        ]
    )


def _list_input():
    i = keras.Input((8, 8, 3), name="img")
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(i)))
    return keras.Model([i], L.Dense(2)(L.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("make", [_seq, _list_input], ids=["sequential", "list_input"])
def test_sequential_and_list_input_models_strip_and_shrink(make):
    m = make()
    w = acsl_tf.prune_low_correlation(m)
    x = X if make is _seq else [X]
    np.testing.assert_allclose(np.asarray(w(x)), np.asarray(m(x)), atol=1e-6)
    plain = acsl_tf.strip_pruning(w)
    same(m, plain, x=x)
    small = shrink(w, ratio=0.5, verify="raise")
    assert small.count_params() < m.count_params()
    assert np.asarray(small(x)).shape == (3, 2)


def test_nested_models_with_colliding_names():
    def block(name):
        ii = keras.Input((8, 8, 4))
        t = L.BatchNormalization(name="bn")(L.Conv2D(4, 1, name="conv")(ii))
        return keras.Model(ii, L.ReLU(name="relu")(t), name=name)

    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="stem")(i)
    x = block("b1")(x)
    x = block("b2")(x)
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(x))
    randomize(m)
    graph = DependencyGraph(m)
    assert {"b1_bn", "b2_bn"} <= set(graph.units)
    small = shrink(m, keep={"b1_bn": [0, 2], "b2_bn": [1, 3]}, verify="raise")
    names = [layer.name for layer in small.layers]
    assert len(names) == len(set(names)) and "b1_conv" in names and "b2_conv" in names
    assert small.get_layer("b2_conv").kernel.shape == (1, 1, 2, 2)


def test_pad_split_resizing_prune_exactly():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(6, 1, name="c")(i))
    x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    a, b = keras.ops.split(x, 2, axis=1)
    x = L.Add()([a, b])
    x = L.Resizing(8, 8)(x)
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(x))
    randomize(m)
    silence(m, "bn", [0, 5])
    ws = m.get_layer("bn").get_weights()
    ws[1][[0, 5]] = 0.0  # constant 0: zero padding keeps it constant
    m.get_layer("bn").set_weights(ws)
    small = shrink(m, keep={"bn": [1, 2, 3, 4]}, verify="raise")
    assert small.get_layer("head").kernel.shape == (1, 1, 4, 2)


class ConvBlock(keras.layers.Layer):
    """A composite layer holding its own conv (keras-hub style)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same")

    def call(self, x):
        return keras.ops.relu(self.conv(x))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_custom_composite_layer_keeps_its_channels():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(6, 1, name="c1")(i))
    x = ConvBlock(5, name="block")(x)
    x = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1, name="c2")(x))
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(x))
    plan = plan_shrink(m, ratio=0.5)
    assert plan.unknown_layers == ("block",)
    assert "bn1" not in plan.bn_keep and len(plan.bn_keep["bn2"]) == 2
    small = shrink(m, plan=plan, verify="raise")
    assert small.get_layer("block").conv.kernel.shape == (3, 3, 6, 5)


def test_models_without_gammas_prune_with_weight_criteria():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(i)
    x = L.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = L.BatchNormalization(scale=False, name="bn")(x)  # InceptionV3 style
    x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(i, L.Dense(3, name="fc")(x))
    with pytest.warns(UserWarning, match="none prunable"):
        assert plan_shrink(m, ratio=0.5).channels_removed == 0
    for crit in ("l1", "l2", "fpgm", "l1_layer", "fpgm_layer", "random"):
        plan = plan_shrink(m, ratio=0.5, criterion=crit)
        res = apply_plan(m, plan, verify="raise")
        assert res.exact
        assert res.model.count_params() == plan.params_after < m.count_params()


def test_layernorm_pruning_is_reported_as_approximate():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c1")(i)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(16, activation="gelu", name="d1")(x)
    x = L.Dense(8, name="d2")(x)
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(x))
    plan = plan_shrink(m, ratio=0.3, criterion="l1")
    assert any("LayerNormalization" in n for n in plan.notes)
    with pytest.warns(ApproximateShrinkWarning, match="approximate") as rec:
        small = shrink(m, plan=plan)
    assert "deviation" in str(rec[0].message)
    assert small.get_layer("ln").gamma.shape[0] < 8


def test_lambda_and_python_callables_survive_wrap_and_shrink():
    from keras.src.saving import serialization_lib

    def swishish(t):
        return t * keras.ops.sigmoid(t)

    i = keras.Input((8, 8, 3))
    x = L.Lambda(lambda t: t * 0.5, name="half")(i)
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="c")(x))
    x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(i, L.Dense(2, activation=swishish, name="fc")(x))
    w = acsl_tf.prune_low_correlation(m)
    same(m, w)
    plain = acsl_tf.strip_pruning(w)
    same(m, plain)
    assert plain.get_layer("fc").activation is swishish
    small = shrink(w, ratio=0.0)
    same(m, small)
    assert serialization_lib.in_safe_mode() is not False


def test_plan_file_round_trip_and_mismatch(tmp_path):
    def build(width=6):
        i = keras.Input((8, 8, 3))
        x = L.BatchNormalization()(L.Conv2D(width, 3, padding="same")(i))
        x = L.ReLU()(x)
        return keras.Model(i, L.Conv2D(2, 1)(x))

    keras.utils.set_random_seed(1)
    a = build()
    randomize(a)
    plan = plan_shrink(a, ratio=0.5)
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = acsl_tf.ShrinkPlan.load(path)
    assert loaded.params == (plan.params_before, plan.params_after)
    with pytest.raises(FileExistsError, match="overwrite"):
        plan.save(path, overwrite=False)
    keras.utils.set_random_seed(2)
    b = build()  # same architecture, other weights and names
    small_b = shrink(b, plan=loaded, verify="raise")
    small_a = shrink(a, plan=plan)
    assert [w.shape for w in small_a.weights] == [w.shape for w in small_b.weights]
    np.testing.assert_array_equal(
        small_b.layers[1].kernel.numpy(), b.layers[1].kernel.numpy()[..., list(plan.groups[1].keep)]
    )
    with pytest.raises(ValueError, match="another architecture"):
        shrink(build(width=5), plan=loaded)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an acsl_tf plan"):
        acsl_tf.ShrinkPlan.load(tmp_path / "bad.json")


def test_validation_types_and_values():
    m = _seq()
    with pytest.raises(TypeError, match="min_channels"):
        plan_shrink(m, ratio=0.5, min_channels=2.5)
    assert plan_shrink(m, ratio=0.5, min_channels=np.int64(2)).channels_removed == 2
    with pytest.raises(TypeError, match="ratio"):
        plan_shrink(m, ratio="0.5")
    with pytest.raises(ValueError, match="ratio"):
        plan_shrink(m, ratio=float("nan"))
    with pytest.raises(TypeError, match="pruning_policy"):
        acsl_tf.prune_low_correlation(m, pruning_policy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_shrink(m, ratio=0.5)


def test_taylor_criterion_ranks_by_activation_times_gradient():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="c1", use_bias=False)(i)
    x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(i, L.Dense(1, name="fc", use_bias=False)(x))
    k = np.zeros((1, 1, 3, 4), "float32")
    k[0, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    m.get_layer("c1").set_weights([k])
    m.get_layer("fc").set_weights([np.array([[1.0], [1.0], [0.0], [1.0]], "float32")])
    x_in = np.ones((4, 8, 8, 3), "float32")
    y = np.zeros((4, 1), "float32")
    crit = acsl_tf.criteria.TaylorCriterion((x_in, y), "mse")
    # loss = (sum_k w_k a_k)^2 with a = (1,2,3,4), w = (1,1,0,1): score_k ∝ a_k * w_k
    plan = plan_shrink(m, ratio=0.5, criterion=crit)
    assert plan.groups[1].keep == (1, 3)


class TrainsWhenUnset(keras.layers.Layer):
    """A layer that, like some third-party code, behaves as in training
    whenever no `training` flag reaches it (keras-hub's
    SpatialPyramidPooling did not run in inference mode here without one)."""

    def call(self, x, training=None):
        return x + 1.0 if training is None else x


class Block(keras.layers.Layer):
    """A composite layer whose call() takes no `training` argument."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = TrainsWhenUnset()

    def call(self, x):
        return self.inner(x)


def test_reference_runs_composite_layers_in_inference_mode():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(6, 1, name="c")(i))
    x = L.Conv2D(5, 1, name="c2")(L.ReLU()(x))
    x = L.Add()([x, Block(name="block")(L.Conv2D(5, 1, name="side")(i))])
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    randomize(m)
    silence(m, "bn", [1, 4])
    res = apply_plan(m, plan_shrink(m, keep={"bn": [0, 2, 3, 5]}), verify="raise")
    assert res.exact
    same(m, res.model)


def test_nested_backbone_with_unknown_spatial_size_is_counted_at_the_real_size():
    # keras-hub style: the backbone is built for (None, None, 3) images and
    # called on 8x8 ones; FLOPs must be counted at 8x8, as in the built model.
    ii = keras.Input((None, None, 3))
    t = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(6, 3, padding="same")(ii)))
    backbone = keras.Model(ii, t, name="backbone")
    i = keras.Input((8, 8, 3))
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(backbone(i)))
    flops = profile(m).total_flops
    assert flops == 2 * (8 * 8 * 27 * 6) + 2 * 8 * 8 * 6 + 2 * 8 * 8 * 6 * 2  # conv, BN+ReLU, head
    plan = plan_shrink(m, keep={"bn": [0, 1, 2]})
    small = shrink(m, plan=plan, verify="raise")
    assert plan.flops_before == flops
    assert plan.flops_after == profile(small).total_flops


def test_channel_times_a_per_sample_gate_is_reported():
    # A removed channel's constant times a squeeze-and-excitation gate is
    # constant inside one sample but not across samples: never exact.
    i = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same")(i)))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="sigmoid")(L.Conv2D(2, 1, activation="relu")(s))
    m = keras.Model(i, L.Conv2D(2, 1, name="head")(L.Multiply()([x, s])))
    randomize(m)
    bn = m.get_layer("bn")
    g, b, mm, mv = bn.get_weights()
    g[1], b[1] = 0.0, 1.0  # removed channel: relu(1.0) = 1, times the gate
    bn.set_weights([g, b, mm, mv])
    res = apply_plan(m, plan_shrink(m, keep={"bn": [0, 2, 3]}), verify=False)
    assert any("not constant" in n for n in res.approximations), res.approximations


def test_layerscale_width_follows_the_pruned_channels():
    """ConvNeXt's LayerScale builds its gamma from `projection_dim`: the
    rebuilt layer must get the new width (it failed to build before)."""
    from keras.src.applications.convnext import LayerScale

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 1, name="c1")(inp)
    x = LayerScale(1e-1, 16, name="ls")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    m = keras.Model(inp, x)
    small = acsl_tf.shrink(m, ratio=0.5, criterion="l1", verify="raise")
    ls = small.get_layer("ls")
    assert ls.get_config()["projection_dim"] == small.get_layer("c1").filters == 8
    assert tuple(ls.weights[0].shape) == (8,)
