import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import PruneLowCorrelation, get_wrappers, prune_low_correlation, strip_pruning
from tests._models import small_cnn


def _data(n=16, shape=(8, 8, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, n)


def _compile(m, lr=0.01, jit=False):
    m.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return m


def test_wraps_every_unit_and_keeps_outputs():
    m = small_cnn()
    x, _ = _data()
    w = prune_low_correlation(m)
    names = [layer.name for layer in get_wrappers(w)]
    assert names == ["acsl_bn1", "acsl_bn2", "acsl_bn3"]
    assert w.inputs[0].name == "img"
    np.testing.assert_allclose(np.asarray(w(x)), np.asarray(m(x)), atol=1e-6)
    # The input model is untouched.
    assert not get_wrappers(m)
    assert [layer.name for layer in m.layers][2] == "bn1"
    # Statistics activation: bn1 -> ReLU, bn2 -> Add (none), bn3 -> Activation.
    acts = [wr.feature_activation is not None for wr in get_wrappers(w)]
    assert acts == [True, False, True]


def test_regularization_loss_equals_weighted_l1():
    m = small_cnn()
    w = prune_low_correlation(m, penalty=3e-3, update_every=1, warmup=0)
    x, y = _data()
    # Make gammas and strengths non-trivial.
    for i, wr in enumerate(get_wrappers(w)):
        c = wr.layer.gamma.shape[0]
        wr.layer.gamma.assign(np.linspace(-1.0, 2.0, c).astype("float32") * (i + 1))
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    w(x)
    total = float(sum(np.asarray(v) for v in w.losses))
    want = 0.0
    for wr in get_wrappers(w):
        lam = wr.channel_penalties()
        assert not np.allclose(lam, lam[0])  # adaptive: not all equal
        want += float(np.sum(lam * np.abs(np.asarray(wr.layer.gamma))))
    assert len(w.losses) == 3
    assert total == pytest.approx(want, abs=1e-6)


def test_channel_penalties_mean_equals_penalty():
    w = prune_low_correlation(small_cnn(), penalty=1e-3, update_every=1, warmup=0)
    x, y = _data()
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    for wr in get_wrappers(w):
        assert wr.channel_penalties().mean() == pytest.approx(1e-3, rel=1e-5)


def _duplicate_model(direction, n_dup=4, n_unique=3):
    """A 1x1 frozen conv that copies input channel 0 into `n_dup` outputs and
    channels 1.. into unique outputs, then BN; the BN output is the feature map."""
    c_in = 1 + n_unique
    inp = keras.Input((6, 6, c_in))
    conv = keras.layers.Conv2D(n_dup + n_unique, 1, use_bias=False, trainable=False, name="conv")
    x = conv(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    # A frozen all-zero head: the task gradient on gamma is exactly zero, so
    # only the sparsity penalty moves the gammas.
    head = keras.layers.Dense(1, name="head", kernel_initializer="zeros", trainable=False)
    out = head(keras.layers.GlobalAveragePooling2D()(x))
    m = keras.Model(inp, out)
    k = np.zeros((1, 1, c_in, n_dup + n_unique), "float32")
    k[0, 0, 0, :n_dup] = 1.0
    for j in range(n_unique):
        k[0, 0, 1 + j, n_dup + j] = 1.0
    conv.set_weights([k])
    return prune_low_correlation(
        m, penalty=5e-2, direction=direction, update_every=1, warmup=1, momentum=0.5
    )


@pytest.mark.parametrize("direction", ["redundant", "uniform"])
def test_duplicated_channels_are_pushed_harder(direction):
    w = _duplicate_model(direction)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 4)).astype("float32")
    y = np.zeros((64, 1), "float32")
    w.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    w.fit(x, y, epochs=3, batch_size=16, verbose=0)
    wr = get_wrappers(w)[0]
    gamma = np.asarray(wr.layer.gamma)
    lam = wr.channel_penalties()
    if direction == "redundant":
        r = wr.redundancy()
        assert r[:4].min() > 0.4 and r[4:].max() < 0.3
        assert lam[:4].min() > 2 * lam[4:].max()
        assert gamma[:4].max() < gamma[4:].min()
    else:
        np.testing.assert_allclose(lam, 5e-2, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(wr.strength), 1.0)
        # Same penalty, no task gradient: all gammas move together.
        assert np.ptp(gamma) < 1e-6 and gamma[0] < 1.0


def test_uniform_is_network_slimming():
    """direction='uniform' gives exactly lambda * sum|gamma| per unit."""
    w = prune_low_correlation(small_cnn(), penalty=1e-2, direction="uniform")
    x, y = _data()
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    w(x)
    want = sum(1e-2 * np.abs(np.asarray(wr.layer.gamma)).sum() for wr in get_wrappers(w))
    assert float(sum(np.asarray(v) for v in w.losses)) == pytest.approx(want, rel=1e-6)
    # No statistics are computed for plain Network Slimming.
    assert all(int(np.asarray(wr.updates)) == 0 for wr in get_wrappers(w))


def test_update_every_and_warmup_counters():
    w = prune_low_correlation(small_cnn(), update_every=3, warmup=2)
    x, y = _data(n=8)
    _compile(w).fit(x, y, epochs=7, batch_size=8, verbose=0)  # 7 steps
    wr = get_wrappers(w)[0]
    assert int(np.asarray(wr.step)) == 7
    assert int(np.asarray(wr.updates)) == 3  # steps 0, 3, 6
    assert not np.allclose(np.asarray(wr.strength), 1.0)


def test_warmup_keeps_uniform_weights():
    w = prune_low_correlation(small_cnn(), update_every=1, warmup=100)
    x, y = _data(n=8)
    _compile(w).fit(x, y, epochs=3, batch_size=8, verbose=0)
    for wr in get_wrappers(w):
        np.testing.assert_allclose(np.asarray(wr.strength), 1.0)
        assert np.abs(np.asarray(wr.affinity)).sum() > 0


def test_inference_does_not_touch_state():
    w = prune_low_correlation(small_cnn(), update_every=1)
    x, _ = _data()
    w.predict(x, verbose=0)
    w(x, training=False)
    for wr in get_wrappers(w):
        assert int(np.asarray(wr.step)) == 0
        assert np.abs(np.asarray(wr.affinity)).sum() == 0


@pytest.mark.parametrize("jit", [False, True])
def test_trains_with_and_without_jit(jit):
    w = prune_low_correlation(small_cnn(), penalty=1e-3, update_every=2, warmup=0)
    x, y = _data()
    hist = _compile(w, jit=jit).fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    wr = get_wrappers(w)[0]
    assert int(np.asarray(wr.step)) == 4 and int(np.asarray(wr.updates)) == 2


def test_attention_affinity_trains():
    w = prune_low_correlation(small_cnn(), affinity="attention", update_every=1, warmup=0)
    x, y = _data()
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    a = np.asarray(get_wrappers(w)[0].affinity)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)  # row-softmax


def test_save_load_round_trip_and_resume(tmp_path):
    x, y = _data(n=32)
    w = prune_low_correlation(
        small_cnn(),
        penalty=1e-3,
        update_every=1,
        warmup=0,
        schedule=acsl_tf.PolynomialStrength(0.5, 1.0, 0, 10),
    )
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "wrapped.keras"
    w.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(w(x)), atol=1e-6)
    for a, b in zip(get_wrappers(w), get_wrappers(loaded)):
        assert isinstance(b, PruneLowCorrelation)
        ca, cb = a.get_config(), b.get_config()
        assert {k: v for k, v in ca.items() if k != "layer"} == {
            k: v for k, v in cb.items() if k != "layer"
        }
        assert b.layer.get_config() == a.layer.get_config()
        assert isinstance(b.schedule, acsl_tf.PolynomialStrength)
        for va, vb in zip(a.non_trainable_weights, b.non_trainable_weights):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
        assert int(np.asarray(b.step)) == 4
    # Resume: one more epoch on both gives the same weights and state.
    w.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for a, b in zip(w.weights, loaded.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_strip_pruning_output_equality():
    x, y = _data()
    w = prune_low_correlation(small_cnn(), update_every=1)
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    s = strip_pruning(w)
    assert not get_wrappers(s)
    assert [layer.name for layer in s.layers] == [layer.name for layer in small_cnn().layers]
    np.testing.assert_allclose(np.asarray(s(x)), np.asarray(w(x)), atol=1e-6)
    # Trainable weights identical; wrapper state gone.
    assert s.count_params() < w.count_params()
    assert len(s.trainable_weights) == len(w.trainable_weights)


def test_sequential_model():
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="c"),
            keras.layers.BatchNormalization(name="b"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="d"),
            keras.layers.BatchNormalization(name="b2"),
            keras.layers.Dense(2),
        ]
    )
    w = prune_low_correlation(m, update_every=1)
    assert [wr.name for wr in get_wrappers(w)] == ["acsl_b", "acsl_b2"]
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(w(x)), np.asarray(m(x)), atol=1e-6)
    _compile(w).fit(x, np.zeros(8), epochs=1, verbose=0)
    assert not np.allclose(np.asarray(get_wrappers(w)[1].affinity), 0)  # Dense unit: batch axis


def test_nested_functional_backbone():
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    inp = keras.Input((32, 32, 3))
    x = backbone(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4)(x)
    m = keras.Model(inp, out)
    w = prune_low_correlation(m)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone.layers)
    assert len(get_wrappers(w)) == n_bn == 52
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(w(x)), np.asarray(m(x)), atol=1e-5)
    s = strip_pruning(w)
    np.testing.assert_allclose(np.asarray(s(x)), np.asarray(m(x)), atol=1e-5)


def test_ignored_layers_and_policy():
    m = small_cnn()
    # bn1 and bn2 scale one residual group: keeping bn2's channels keeps the group
    w = prune_low_correlation(m, ignored_layers=["bn2"])
    assert [wr.layer.name for wr in get_wrappers(w)] == ["bn3"]
    w = prune_low_correlation(m, ignored_layers="bn3")  # one name, not its characters
    assert [wr.layer.name for wr in get_wrappers(w)] == ["bn1", "bn2"]
    w = prune_low_correlation(m, pruning_policy=lambda bn: bn.name != "bn3")
    assert [wr.layer.name for wr in get_wrappers(w)] == ["bn1", "bn2"]


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.c = keras.layers.Conv2D(2, 3)
        self.b = keras.layers.BatchNormalization()

    def call(self, x):
        return self.b(self.c(x))


def _no_units_model():
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(2)(inp))


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda: "not a model", {}, "expects a keras.Model"),
        (lambda: _Sub(), {}, "subclassed"),
        (_no_units_model, {}, "no prunable unit"),
        (small_cnn, dict(penalty=-1.0), "penalty"),
        (small_cnn, dict(penalty=float("nan")), "penalty"),
        (small_cnn, dict(affinity="euclid"), "affinity"),
        (small_cnn, dict(direction="sideways"), "direction"),
        (small_cnn, dict(momentum=1.0), "momentum"),
        (small_cnn, dict(momentum=-0.1), "momentum"),
        (small_cnn, dict(update_every=0), "update_every"),
        (small_cnn, dict(update_every=2.5), "update_every"),
        (small_cnn, dict(temperature=0.0), "temperature"),
        (small_cnn, dict(warmup=-1), "warmup"),
        (small_cnn, dict(clip=(2.0, 1.0)), "clip"),
        (small_cnn, dict(method="magic"), "method"),
        (small_cnn, dict(target=1.5), "target_flops"),
        (small_cnn, dict(target={"latency": 0.5}), "target"),
        (small_cnn, dict(ignored_layers=["nope"]), "not in the model"),
        (small_cnn, dict(schedule="fast"), "schedule"),
        (small_cnn, dict(penalty="1e-3"), r"Received: penalty='1e-3'"),
        (small_cnn, dict(temperature=None), "Received: temperature=None"),
    ],
)
def test_rejected_inputs(make, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        prune_low_correlation(make(), **kwargs)


def test_rejects_double_wrapping_and_unbuilt():
    w = prune_low_correlation(small_cnn())
    with pytest.raises(ValueError, match="already wrapped"):
        prune_low_correlation(w)
    unbuilt = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="built"):
        prune_low_correlation(unbuilt)


def test_wrapper_rejects_non_bn_and_scale_false():
    with pytest.raises(ValueError, match="BatchNormalization"):
        PruneLowCorrelation(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="scale=False"):
        PruneLowCorrelation(keras.layers.BatchNormalization(scale=False))


def test_cap_method_tracks_affinity_with_uniform_penalty():
    w = prune_low_correlation(small_cnn(), method="cap", update_every=1, warmup=0)
    x, y = _data()
    _compile(w).fit(x, y, epochs=1, batch_size=8, verbose=0)
    wr = get_wrappers(w)[0]
    assert wr.direction == "uniform" and wr.method == "cap"
    np.testing.assert_allclose(np.asarray(wr.strength), 1.0)
    assert int(np.asarray(wr.updates)) == 2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(penalty="0.1"), TypeError),
        (dict(momentum=True), TypeError),
        (dict(attention_scale=[0.1]), TypeError),
        (dict(penalty=-1.0), ValueError),
        (dict(moving_stats_momentum="fast"), TypeError),
        (dict(moving_stats_momentum=-0.5), ValueError),
    ],
)
def test_wrapper_number_arguments_type_and_value_errors(kwargs, error):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(error, match=f"Received: {name}="):
        PruneLowCorrelation(keras.layers.BatchNormalization(), **kwargs)
