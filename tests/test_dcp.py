"""DCP channel selection and DKP kernel selection (acsl_tf.dcp)."""

import math

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import dcp


def _dense_pair(n_in=5, hidden=6, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((n_in,), name="x")
    h = keras.layers.Dense(hidden, use_bias=False, name="a")(inp)
    out = keras.layers.Dense(n_out, name="b")(h)
    m = keras.Model(inp, out)
    m.get_layer("a").set_weights([rng.normal(size=(n_in, hidden)).astype("float32")])
    m.get_layer("b").set_weights(
        [
            rng.normal(size=(hidden, n_out)).astype("float32"),
            rng.normal(size=(n_out,)).astype("float32"),
        ]
    )
    return m


def _numpy_dcp(X, Wa, Wb, bb, count, steps, lr):
    """Reference: greedy selection of a's channels for consumer b (no
    activation, reconstruction loss only), plain SGD."""
    H = X @ Wa
    Y = H @ Wb + bb
    n = Y.size

    def vg(W):
        r = H @ W + bb - Y
        return float(np.mean(r**2)), 2.0 / n * H.T @ r

    sel = []
    W = np.zeros_like(Wb)
    loss, G = vg(W)
    losses, scores = [loss], []
    for _ in range(count):
        sc = np.linalg.norm(G, axis=1)
        scores.append(sc)
        sc = np.where(np.isin(np.arange(len(sc)), sel), -np.inf, sc)
        k = int(np.argmax(sc))
        sel.append(k)
        W[k] = Wb[k]
        mask = np.isin(np.arange(len(W)), sel)[:, None]
        for _ in range(steps):
            _, G = vg(W)
            W = W - lr * G * mask
        loss, G = vg(W)
        losses.append(loss)
    return sel, losses, scores, W


def test_greedy_step_matches_numpy_reference():
    m = _dense_pair()
    x = np.random.default_rng(1).normal(size=(32, 5)).astype("float32")
    res = dcp.select_channels(
        m, x, channels=3, steps=4, learning_rate=0.05, momentum=0.0, verbose=0
    )
    Wa = m.get_layer("a").get_weights()[0].astype(np.float64)
    Wb, bb = (w.astype(np.float64) for w in m.get_layer("b").get_weights())
    sel, losses, _, W = _numpy_dcp(x.astype(np.float64), Wa, Wb, bb, 3, 4, 0.05)
    (layer,) = res.layers
    assert layer.name == "a" and layer.consumers == ("b",)
    assert list(layer.order) == sel
    np.testing.assert_allclose(layer.losses, losses, rtol=1e-4)
    np.testing.assert_allclose(res.kernels["b"], W, rtol=1e-4, atol=1e-6)
    assert res.keep == {"a": tuple(sorted(sel))}
    # the unselected rows of b are zero
    assert np.all(res.kernels["b"][[i for i in range(6) if i not in sel]] == 0)


def test_greedy_scores_are_kernel_slice_frobenius_norms_and_reopt_lowers_loss():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 3, 4, 2))
    origin = rng.normal(size=(3, 3, 4, 2))

    def vg(ws):
        d = ws[0] - target
        return float(np.sum(d**2)), [2 * d]

    unit_of = [np.repeat(np.arange(4)[:, None], 2, axis=1)]
    tr = dcp.greedy_select(
        vg, [origin], unit_of, 4, count=4, steps=3, learning_rate=0.1, momentum=0.0
    )
    g0 = 2 * (0 - target)
    expected = np.sqrt((g0**2).sum(axis=(0, 1, 3)))
    np.testing.assert_allclose(tr.scores[0], expected, rtol=1e-6)
    assert tr.order[0] == int(np.argmax(expected))
    # the SGD steps lower the loss after every addition
    for before, after in zip(tr.before_reopt, tr.losses[1:]):
        assert after < before
    # each SGD step shrinks a selected slice's residual by (1 - 2 lr) = 0.8; the
    # first channel is re-optimised after each of the 4 additions (12 steps)
    k = tr.order[0]
    np.testing.assert_allclose(
        tr.kernels[0][:, :, k] - target[:, :, k],
        (origin[:, :, k] - target[:, :, k]) * 0.8**12,
        rtol=1e-6,
    )


def _linear_losses(n_units=8, seed=0):
    rng = np.random.default_rng(seed)
    # decreasing channel importance: loss drops fast first, then slowly
    target = (rng.normal(size=(n_units, 3)) * (0.5 ** np.arange(n_units))[:, None]).astype(
        np.float64
    )

    def vg(ws):
        d = ws[0] - target
        return float(np.sum(d**2)), [2 * d]

    return vg, target


@pytest.mark.parametrize("eps", [0.2, 0.02, 0.001])
def test_adaptive_stopping_follows_the_formula(eps):
    vg, target = _linear_losses()
    unit_of = [np.repeat(np.arange(8)[:, None], 3, axis=1)]
    tr = dcp.greedy_select(vg, [target], unit_of, 8, epsilon=eps, steps=0)
    L = tr.losses
    # with warm start from the exact optimum each unit removes its own error
    t_stop = next(t for t in range(1, len(L)) if abs(L[t - 1] - L[t]) / L[0] <= eps)
    assert len(tr.order) == t_stop
    assert all(abs(L[t - 1] - L[t]) / L[0] > eps for t in range(1, t_stop))


def test_larger_epsilon_keeps_fewer_channels():
    vg, target = _linear_losses()
    unit_of = [np.repeat(np.arange(8)[:, None], 3, axis=1)]
    kept = [
        len(dcp.greedy_select(vg, [target], unit_of, 8, epsilon=e, steps=0).order)
        for e in (0.2, 0.02, 0.001)
    ]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    assert kept == [3, 6, 7]


@pytest.mark.parametrize("per_step, eps", [(2, 0.004), (3, 0.005)])
def test_adaptive_stopping_takes_the_decrease_per_unit(per_step, eps):
    # 12 units of decreasing importance; a step adds `per_step` of them. The
    # epsilons fall between a step's decrease per unit and its whole decrease.
    vg, target = _linear_losses(n_units=12, seed=4)
    unit_of = [np.repeat(np.arange(12)[:, None], 3, axis=1)]
    tr = dcp.greedy_select(vg, [target], unit_of, 12, epsilon=eps, steps=0, per_step=per_step)
    L = tr.losses
    sizes = [min(per_step, 12 - per_step * t) for t in range(len(L) - 1)]
    per_unit = [abs(L[t - 1] - L[t]) / (sizes[t - 1] * L[0]) for t in range(1, len(L))]
    t_stop = next(t for t, d in enumerate(per_unit, 1) if d <= eps)
    assert len(L) - 1 == t_stop
    assert all(d > eps for d in per_unit[: t_stop - 1])
    # the undivided decrease would not have stopped there: the division matters
    assert abs(L[t_stop - 1] - L[t_stop]) / L[0] > eps
    # the per-step loss decrease summed the units' own decreases (warm start
    # at the exact optimum), so per unit the rule keeps what per_step=1 keeps,
    # rounded up to whole steps
    one = dcp.greedy_select(vg, [target], unit_of, 12, epsilon=eps, steps=0)
    assert len(one.order) <= len(tr.order) <= len(one.order) + 2 * per_step


def test_select_channels_adaptive_on_a_model():
    m = _dense_pair(hidden=8)
    x = np.random.default_rng(1).normal(size=(32, 5)).astype("float32")
    small = dcp.select_channels(m, x, epsilon=0.2, steps=5, verbose=0)
    large = dcp.select_channels(m, x, epsilon=0.01, steps=5, verbose=0)
    L = small.layers[0].losses
    assert abs(L[-2] - L[-1]) <= 0.2 * L[0]
    assert all(abs(L[t - 1] - L[t]) > 0.2 * L[0] for t in range(1, len(L) - 1))
    assert len(small.keep["a"]) < len(large.keep["a"])


def test_duplicated_channels_keep_one_of_each_pair():
    rng = np.random.default_rng(3)
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, use_bias=False, name="a")(inp)
    out = keras.layers.Dense(4, use_bias=False, name="b")(h)
    m = keras.Model(inp, out)
    wa = rng.normal(size=(6, 3))
    m.get_layer("a").set_weights([np.repeat(wa, 2, axis=1).astype("float32")])  # 0=1, 2=3, 4=5
    m.get_layer("b").set_weights([rng.normal(size=(6, 4)).astype("float32")])
    x = rng.normal(size=(64, 6)).astype("float32")
    res = dcp.select_channels(m, x, channels=3, steps=30, learning_rate=0.1, verbose=0)
    kept = res.keep["a"]
    assert sorted(k // 2 for k in kept) == [0, 1, 2]
    # the kept channel of each pair carries both weights: reconstruction is near exact
    assert res.layers[0].losses[-1] < 1e-2 * res.layers[0].losses[0]


def _residual_model():
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(x)
    y = keras.layers.BatchNormalization(name="c1_bn")(y)
    y = keras.layers.ReLU(name="c1_relu")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(y)
    y = keras.layers.BatchNormalization(name="c2_bn")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.ReLU(name="add_relu")(x)
    z1 = keras.layers.Conv2D(4, 1, name="z1")(x)
    z2 = keras.layers.Conv2D(4, 3, padding="same", name="z2")(x)
    c = keras.layers.Concatenate(name="cat")([z1, z2])
    c = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="after_cat")(c)
    c = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    return keras.Model(inp, keras.layers.Dense(5, name="predictions")(c))


def test_coupled_groups_selected_together_and_plan_applies():
    m = _residual_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, 16)
    res = dcp.select_channels(m, x, y, channels=0.5, steps=2, verbose=0)
    by_name = {s.name: s for s in res.layers}
    res_group = by_name["stem+c2"]  # the Add couples stem and c2
    assert res_group.size == 8 and len(res_group.kept) == 4
    assert set(res_group.consumers) == {"c1", "z1", "z2"}
    assert res.keep["stem"] == res_group.kept
    # the concatenation reads two groups: each selected for the same consumer
    assert by_name["z1"].consumers == ("after_cat",) and len(by_name["z1"].kept) == 2
    assert by_name["z2"].consumers == ("after_cat",) and len(by_name["z2"].kept) == 2
    plan = res.plan
    assert plan.criterion == "dcp"
    small = acsl_tf.shrink(m, plan=plan, verify="raise")
    assert small.count_params() == plan.params_after
    thin = res.apply(verify="raise")
    assert thin.count_params() == plan.params_after
    assert thin.get_layer("c1").kernel.shape == (3, 3, 4, 3)
    assert thin.get_layer("after_cat").kernel.shape == (3, 3, 4, 3)
    # the thin model carries the re-optimised kernels, sliced to the kept channels
    k = np.asarray(thin.get_layer("c1").kernel)
    full = res.kernels["c1"][:, :, list(res.keep["stem"]), :]
    np.testing.assert_allclose(k, full[..., list(res.keep["c1"])])
    # the original model is unchanged by apply
    assert not np.allclose(np.asarray(m.get_layer("c1").kernel), res.kernels["c1"])


def test_plan_saves_and_thin_model_round_trips(tmp_path):
    m = _residual_model()
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    res = dcp.select_channels(m, x, channels=0.5, steps=1, verbose=0)
    res.plan.save(tmp_path / "plan.json")
    loaded = acsl_tf.ShrinkPlan.load(tmp_path / "plan.json")
    again = acsl_tf.shrink(m, plan=loaded)
    assert again.count_params() == res.plan.params_after
    thin = res.apply()
    thin.save(tmp_path / "thin.keras")
    back = keras.saving.load_model(tmp_path / "thin.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), thin.predict(x, verbose=0), atol=1e-6)
    assert [n for n in (w.name for w in thin.layers) if "aux" in n] == []


def test_target_flops_uses_the_plans_analytic_counts():
    m = acsl_tf.models.vgg_small((16, 16, 1), width=0.125)
    x = np.random.default_rng(0).random((16, 16, 16, 1)).astype("float32")
    res = dcp.select_channels(m, x, target_flops=0.5, steps=1, verbose=0)
    assert res.plan.flops_reduction >= 0.5
    # one keep fraction for every group: the smallest that meets the target
    fracs = {len(s.kept) / s.size for s in res.layers}
    assert max(fracs) - min(fracs) <= 0.25
    thin = res.apply()
    assert thin.count_params() == res.plan.params_after
    assert acsl_tf.profile(thin).total_flops == res.plan.flops_after


def test_dkp_pruned_kernels_are_zero_and_sparsity_matches():
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(5, 3, padding="same", name="c2")(h)
    out = keras.layers.Dense(2, name="d")(keras.layers.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype("float32")
    res = dcp.select_kernels(m, x, kernels=0.25, per_step=2, steps=1, verbose=0)
    assert [s.name for s in res.layers] == ["c1", "c2", "d"]
    zero = total = 0
    for sel in res.layers:
        k = np.asarray(res.model.get_layer(sel.name).kernel)
        assert len(sel.kept) == math.ceil(0.25 * sel.size)
        flat = k.reshape(-1, k.shape[-2] * k.shape[-1])
        nonzero = np.flatnonzero(np.abs(flat).sum(axis=0) > 0)
        assert set(nonzero.tolist()) <= set(sel.kept)
        pruned = np.setdiff1d(np.arange(sel.size), sel.kept)
        assert np.all(flat[:, pruned] == 0.0)
        zero += int((k == 0).sum())
        total += k.size
    assert res.sparsity == pytest.approx(zero / total)
    assert res.sparse_bytes < res.dense_bytes
    # same architecture, original untouched
    assert res.model.count_params() == m.count_params()
    assert np.count_nonzero(np.asarray(m.get_layer("c1").kernel)) == 3 * 3 * 3 * 4
    # fine-tuning with the callback keeps the zeros
    res.model.compile("adam", "mse")
    res.model.fit(x, np.ones((8, 2)), epochs=2, verbose=0, callbacks=[res.keep_zeros()])
    for sel in res.layers:
        k = np.asarray(res.model.get_layer(sel.name).kernel)
        assert int((k == 0).sum()) == k.size - len(sel.kept) * k.size // sel.size


def test_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    m = _dense_pair()
    x = np.random.default_rng(1).normal(size=(16, 5)).astype("float32")
    res = dcp.select_channels(m, x, channels=2, steps=1, verbose=0)
    text = res.summary()
    assert "a" in text and " 6 " in text and "reconstruction" in text
    fig = dcp.plot_widths(res, tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
    assert [b.get_height() for b in fig.axes[0].patches] == [6, 2]


# --------------------------------------------------------------------- errors


def test_unknown_layer_name_is_an_error():
    m = _dense_pair()
    x = np.zeros((4, 5), "float32")
    with pytest.raises(ValueError, match=r"not in the model.*Received: layers=\['nope'\]"):
        dcp.select_channels(m, x, channels=2, layers=["nope"], verbose=0)
    with pytest.raises(ValueError, match="Received: at="):
        dcp.with_auxiliary_heads(m, at=["nope"], task="classification")


def test_fixed_group_is_an_error():
    m = _dense_pair()
    x = np.zeros((4, 5), "float32")
    with pytest.raises(ValueError, match=r"cannot be pruned \(model output\).*Received: layers="):
        dcp.select_channels(m, x, channels=2, layers=["b"], verbose=0)


def test_non_functional_model_is_an_error():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        dcp.select_channels(sub, np.zeros((2, 3), "float32"), channels=1, verbose=0)


def test_stopping_rules_are_checked():
    m = _dense_pair()
    x = np.zeros((4, 5), "float32")
    with pytest.raises(ValueError, match="exactly one"):
        dcp.select_channels(m, x, verbose=0)
    with pytest.raises(ValueError, match="exactly one"):
        dcp.select_channels(m, x, channels=2, epsilon=0.1, verbose=0)
    with pytest.raises(ValueError, match=r"Received: channels=0"):
        dcp.select_channels(m, x, channels=0, verbose=0)
    with pytest.raises(ValueError, match="need the targets"):
        aux = dcp.with_auxiliary_heads(m, at=["a"], task="classification")
        dcp.select_channels(m, x, heads=aux, channels=2, verbose=0)


def test_per_layer_channel_counts_and_progress_output(capsys):
    m = _residual_model()
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    res = dcp.select_channels(m, x, channels={"c1": 2, "stem_bn": 0.75}, steps=1, verbose=1)
    assert {s.name: len(s.kept) for s in res.layers} == {"stem+c2": 6, "c1": 2}
    out = capsys.readouterr().out
    assert "DCP [1/2] stem+c2: 8 channels" in out and "DCP [2/2] c1: 6 channels" in out


def test_unreachable_target_is_an_error():
    m = _dense_pair()
    x = np.zeros((4, 5), "float32")
    with pytest.raises(ValueError, match=r"cannot be met.*Received: target_flops=0.99"):
        dcp.select_channels(m, x, target_flops=0.99, verbose=0)


@pytest.mark.slow
def test_dcp_model_exports_to_tflite(tmp_path):
    pytest.importorskip("ai_edge_litert")
    m = acsl_tf.models.vgg_small((16, 16, 1), width=0.125)
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 16, 1)).astype("float32")
    aux = dcp.with_auxiliary_heads(m)
    res = dcp.select_channels(
        m, x, rng.integers(0, 10, 16), heads=aux, channels=0.5, steps=1, verbose=0
    )
    thin = res.apply()
    path = tmp_path / "thin.tflite"
    acsl_tf.export.to_tflite(thin, path)
    assert path.stat().st_size > 1000
    assert all("aux" not in layer.name for layer in thin.layers)


def test_optimisation_arguments_are_checked():
    m = _dense_pair()
    x = np.zeros((4, 5), "float32")
    with pytest.raises(ValueError, match=r"Received: steps=-1"):
        dcp.select_channels(m, x, channels=2, steps=-1, verbose=0)
    with pytest.raises(ValueError, match=r"Received: n_samples=0"):
        dcp.select_channels(m, x, channels=2, n_samples=0, verbose=0)
    with pytest.raises(ValueError, match=r"Received: learning_rate=-0.1"):
        dcp.select_kernels(m, x, learning_rate=-0.1, verbose=0)
    with pytest.raises(TypeError, match=r"Received: per_step=1.5"):
        dcp.select_kernels(m, x, per_step=1.5, verbose=0)


def test_diverging_refit_keeps_the_warm_start():
    """A learning rate too large for the curvature: the SGD steps are
    discarded (the loss would grow without bound), the warm start kept."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=(4, 2))
    origin = target + 0.1 * rng.normal(size=(4, 2))

    def vg(ws):
        d = ws[0] - target
        return float(np.sum(d**2)), [2 * d]

    unit_of = [np.repeat(np.arange(4)[:, None], 2, axis=1)]
    tr = dcp.greedy_select(vg, [origin], unit_of, 4, count=3, steps=5, learning_rate=5.0)
    assert tr.rejected == 3
    assert all(math.isfinite(v) for v in tr.losses)
    assert tr.losses[1:] == tr.before_reopt
    sel = list(tr.order)
    np.testing.assert_allclose(tr.kernels[0][sel], origin[sel])
    assert np.all(tr.kernels[0][[i for i in range(4) if i not in sel]] == 0)
    ok = dcp.greedy_select(vg, [origin], unit_of, 4, count=3, steps=5, learning_rate=0.1)
    assert ok.rejected == 0


def test_select_channels_reports_discarded_refits():
    m = _dense_pair()
    x = np.random.default_rng(1).normal(size=(32, 5)).astype("float32")
    res = dcp.select_channels(m, x, channels=3, steps=3, learning_rate=50.0, verbose=0)
    (layer,) = res.layers
    assert layer.rejected == 3 and all(math.isfinite(v) for v in layer.losses)
    assert np.all(np.isfinite(res.kernels["b"]))
    assert "re-fits discarded: 3 of 3 additions" in res.summary()
    calm = dcp.select_channels(m, x, channels=3, steps=3, learning_rate=0.01, verbose=0)
    assert calm.layers[0].rejected == 0 and "re-fits discarded" not in calm.summary()


def test_per_step_adds_several_channels_per_greedy_step():
    m = _dense_pair()  # a group of 6 channels
    x = np.random.default_rng(1).normal(size=(32, 5)).astype("float32")
    kw = dict(channels=4, steps=1, verbose=0)
    one = dcp.select_channels(m, x, **kw)
    assert len(one.layers[0].losses) == 5  # L(0) and one per channel
    for per_step in (2, 0.3):  # 0.3 of 6 channels, rounded up: 2
        res = dcp.select_channels(m, x, per_step=per_step, **kw)
        (layer,) = res.layers
        assert len(layer.kept) == 4 and len(layer.losses) == 3
    # the first pair holds the largest gradient norm of the first step
    assert one.layers[0].order[0] in res.layers[0].order[:2]
    for bad in (0, 1.5, 0.0):
        with pytest.raises(ValueError, match="per_step"):
            dcp.select_channels(m, x, per_step=bad, **kw)
