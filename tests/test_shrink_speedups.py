"""What the fast paths of ``apply_plan`` must preserve.

The new layers create their weights directly from the sliced values (no
random initial values, nothing assigned or read back afterwards), the fold
statistics avoid float64 copies, and the reference run is skipped when
nothing reads it. None of this may change a result: the weights are the
sliced originals bit for bit, independent of the random seed, the layer
configs are the originals', and the fold statistics equal the plain float64
computation.
"""

import keras
import numpy as np
import pytest
from _models import randomize_bn, small_cnn

import acsl_tf
from acsl_tf.pruning import fold as fold_mod

# Same-padded convs fold approximately here (reported); expected in these tests.
pytestmark = pytest.mark.filterwarnings("ignore:shrink of:UserWarning")

WIDTH_KEYS = {"filters", "units"}


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = small_cnn()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            randomize_bn(layer, rng)
    return model


def _keep(plan, name, role):
    for g in plan.groups:
        if (name, role) in g.members:
            return np.array(g.keep)
    raise AssertionError(f"no group holds ({name!r}, {role!r})")


def _expected_weights(model, plan):
    """The original weights sliced by the plan's kept indices."""
    out = {}
    for layer in model.layers:
        ws = [np.array(w) for w in layer.weights]
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            ik, ok = _keep(plan, layer.name, "in"), _keep(plan, layer.name, "out")
            kernel = ws[0][..., ik, :][..., ok]
            out[layer.name] = [kernel] + [b[ok] for b in ws[1:]]
        elif isinstance(layer, keras.layers.BatchNormalization):
            k = _keep(plan, layer.name, "bn")
            out[layer.name] = [w[k] for w in ws]
        else:
            out[layer.name] = ws
    return out


def test_rebuilt_weights_are_the_sliced_originals_bit_for_bit():
    model = _model()
    plan = acsl_tf.plan_shrink(model, ratio=0.4)
    assert plan.channels_removed > 0
    small = acsl_tf.apply_plan(model, plan, fold_removed=False, verify=False).model
    expected = _expected_weights(model, plan)
    for layer in small.layers:
        want = expected[layer.name]
        got = layer.weights
        assert [w.shape for w in want] == [tuple(v.shape) for v in got], layer.name
        for v, w in zip(got, want):
            a = np.array(v)
            assert a.dtype == w.dtype and np.array_equal(a, w), v.path


def test_no_initializer_or_seed_reaches_the_weights_and_configs_are_kept(tmp_path):
    model = _model()
    plan = acsl_tf.plan_shrink(model, ratio=0.4)
    keras.utils.set_random_seed(1)
    a = acsl_tf.apply_plan(model, plan).model
    keras.utils.set_random_seed(2)
    b = acsl_tf.apply_plan(model, plan).model
    for va, vb in zip(a.weights, b.weights):
        assert va.path == vb.path and np.array_equal(np.array(va), np.array(vb))
    for layer in a.layers:
        assert "add_weight" not in vars(layer)  # the interception is gone after the build
        orig = model.get_layer(layer.name)
        cfg, ocfg = layer.get_config(), orig.get_config()
        assert {k: v for k, v in cfg.items() if k not in WIDTH_KEYS} == {
            k: v for k, v in ocfg.items() if k not in WIDTH_KEYS
        }, layer.name
    path = tmp_path / "small.keras"
    a.save(path)
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(a(x)))


def test_the_new_model_shares_no_state_with_the_original():
    model = _model()
    before = [np.array(w) for w in model.weights]
    small = acsl_tf.shrink(model, ratio=0.4)
    small_before = [np.array(w) for w in small.weights]
    for v in small.weights:
        v.assign(np.full(v.shape, 7.0, v.dtype))
    for v, w in zip(model.weights, before):
        np.testing.assert_array_equal(np.array(v), w)
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    assert all(np.all(np.array(v) == 7.0) for v in small.weights)
    assert any(not np.all(w == 7.0) for w in small_before)


def test_an_adapted_normalization_layer_keeps_its_statistics():
    # Normalization derives its mean/variance tensors from its weights when
    # it is built; weights assigned after the build left them at 0 and 1.
    rng = np.random.default_rng(0)
    inp = keras.Input((8, 8, 3))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(rng.normal(5.0, 3.0, (64, 8, 8, 3)).astype("float32"))
    x = norm(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    res = acsl_tf.apply_plan(model, acsl_tf.plan_shrink(model, ratio=0.25, criterion="l1"))
    assert res.exact and res.rel_error < 1e-5
    new = res.model.get_layer("norm")
    np.testing.assert_array_equal(np.asarray(new.mean), np.asarray(norm.mean))
    np.testing.assert_array_equal(np.asarray(new.variance), np.asarray(norm.variance))


def test_weights_without_a_matching_name_are_assigned_after_the_build():
    from keras.src.applications.convnext import LayerScale  # add_weight without a name

    inp = keras.Input((6, 6, 4))
    x = LayerScale(1e-6, 4, name="scale")(inp)  # on the model input: its channels are kept
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    gamma = np.linspace(0.5, 1.5, 4).astype("float32")
    model.get_layer("scale").weights[0].assign(gamma)
    plan = acsl_tf.plan_shrink(model, ratio=0.25, criterion="l1")
    assert plan.channels_removed > 0
    res = acsl_tf.apply_plan(model, plan)
    assert res.exact
    np.testing.assert_array_equal(np.array(res.model.get_layer("scale").weights[0]), gamma)
    assert "add_weight" not in vars(res.model.get_layer("scale"))


def _reference_stats(value, removed):
    v = np.asarray(value).reshape(-1, removed.shape[0])[:, removed].astype(np.float64)
    mean = v.mean(axis=0)
    return mean, float(np.abs(v - mean).max())


@pytest.mark.parametrize(
    "shape, kind",
    [
        ((2, 112, 112, 24), "normal"),
        ((2, 7, 7, 300), "offset"),
        ((2, 9, 9, 16), "constant"),
        ((3, 5, 5, 12), "nan"),
        ((2, 4, 4, 10), "float64"),
        ((2, 64), "normal"),
    ],
)
def test_fold_statistics_equal_the_float64_computation_bit_for_bit(shape, kind):
    rng = np.random.default_rng(sum(shape))
    v = rng.standard_normal(shape).astype("float32")
    if kind == "offset":
        v = (v * 1e3 + 4e4).astype("float32")
    elif kind == "constant":
        v[..., ::2] = np.float32(0.731)
    elif kind == "nan":
        v[1, 2, 3, 4] = np.nan
    elif kind == "float64":
        v = v.astype("float64") / 3.0
    removed = rng.random(shape[-1]) < 0.4
    removed[0] = True
    st = fold_mod._RemovedStats(v, removed)
    mean, spread = _reference_stats(v, removed)
    assert st.mean.dtype == np.float64
    np.testing.assert_array_equal(st.mean, mean)
    assert st.spread == spread or (np.isnan(st.spread) and np.isnan(spread))


def test_the_reference_run_is_skipped_only_when_nothing_reads_it(monkeypatch):
    model = _model()
    plan = acsl_tf.plan_shrink(model, ratio=0.4)
    calls = []
    real = fold_mod.probe

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fold_mod, "probe", counting)
    res = acsl_tf.apply_plan(model, plan, fold_removed=False, verify=False)
    assert calls == [] and np.isnan(res.rel_error) and not res.exact
    for fold, verify in ((True, False), (False, "warn"), (True, "warn")):
        with pytest.warns(acsl_tf.ApproximateShrinkWarning) if verify else _nothing():
            acsl_tf.apply_plan(model, plan, fold_removed=fold, verify=verify)
    assert len(calls) == 3


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_shared_layers_and_unchanged_layers_take_the_fast_path(monkeypatch):
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(6, 3, padding="same", name="c")(inp)
    bn = keras.layers.BatchNormalization(name="bn")(conv)
    shared = keras.layers.Conv2D(4, 1, name="shared")
    a = shared(keras.layers.ReLU()(bn))
    b = shared(keras.layers.ReLU(max_value=6.0)(bn))
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(a + b))
    model = keras.Model(inp, out)
    bn = model.get_layer("bn")
    randomize_bn(bn, np.random.default_rng(0))
    bn.beta.assign(np.zeros(6, "float32"))  # removed channels carry 0: exact without folds
    assigned = []
    real = keras.layers.Layer.set_weights
    monkeypatch.setattr(
        keras.layers.Layer,
        "set_weights",
        lambda self, w: (assigned.append(self.name), real(self, w)),
    )
    res = acsl_tf.apply_plan(model, acsl_tf.plan_shrink(model, ratio=0.5), fold_removed=False)
    assert assigned == [] and res.exact
    np.testing.assert_array_equal(
        np.array(res.model.get_layer("head").kernel), np.array(model.get_layer("head").kernel)
    )
