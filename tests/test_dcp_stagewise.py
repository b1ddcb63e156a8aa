"""DCP's stage-wise schedule (acsl_tf.dcp.select_channels_stagewise)."""

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import dcp
from acsl_tf.dcp import stagewise

HEAD = "block2_conv2_relu"  # one head: stage 1 ends there, stage 2 at the output
STAGE1 = ("block1_conv1_conv", "block1_conv2_conv", "block2_conv1_conv")
OPTS = dict(steps=1, n_samples=16, batch_size=16, verbose=0)


def _setup(seed=0):
    keras.utils.set_random_seed(seed)
    m = acsl_tf.models.vgg_small((16, 16, 1), num_classes=3, width=0.125)
    rng = np.random.default_rng(seed)
    x = rng.random((32, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 3, 32)
    return m, x, y, dcp.with_auxiliary_heads(m, at=[HEAD])


def test_each_stage_is_selected_before_the_next_is_fine_tuned(monkeypatch):
    m, x, y, aux = _setup()
    events = []
    real = stagewise._select_group

    def traced(run, i, verbose):
        sel = real(run, i, verbose)
        events.append(("select", sel.name))
        return sel

    monkeypatch.setattr(stagewise, "_select_group", traced)

    class Log(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            # the kernel reading block1_conv1's channels, as the fine-tuning sees it
            net = self.model.model if isinstance(self.model, dcp.AuxiliaryHeads) else self.model
            k = np.asarray(net.get_layer("block1_conv2_conv").kernel)
            events.append(("fit", k))

    res = dcp.select_channels_stagewise(
        m, x, y, heads=aux, stage_epochs=1, target_flops=0.5, callbacks=[Log()], **OPTS
    )
    kinds = [e[0] if e[0] == "fit" else e[1] for e in events]
    assert kinds == [
        "fit",
        *STAGE1,
        "fit",
        "block2_conv2_conv",
        "block3_conv1_conv",
        "block3_conv2_conv",
    ]
    assert [(s.index, s.head, s.groups) for s in res.stages] == [
        (0, HEAD, STAGE1),
        (1, "output", ("block2_conv2_conv", "block3_conv1_conv", "block3_conv2_conv")),
    ]
    # stage 2 is fine-tuned on the network thinned in stage 1: the removed
    # channels' slices are zero when its fine-tuning starts (not before stage 1's)
    kept = res.keep["block1_conv1_conv"]
    gone = [c for c in range(4) if c not in kept]
    assert gone
    first, second = (e[1] for e in events if e[0] == "fit")
    assert np.all(second[:, :, gone, :] == 0) and np.any(first[:, :, gone, :] != 0)
    assert [s.stage for s in res.layers] == [0, 0, 0, 1, 1, 1]
    assert set(res.stages[0].history) == {"loss", "task_loss", "aux1_loss"}
    assert set(res.stages[1].history) == {"loss"}  # the output stage: the task loss
    assert res.stages[0].flops_reduction < res.stages[1].flops_reduction


def test_the_plan_applies_exactly_without_the_heads_and_meets_the_target():
    m, x, y, aux = _setup()
    before = [w.copy() for w in m.get_weights()]
    head_before = [w.copy() for w in aux.heads[0].get_weights()]
    res = dcp.select_channels_stagewise(
        m, x, y, heads=aux, stage_epochs=1, target_flops=0.5, **OPTS
    )
    assert res.schedule == "stagewise" and res.plan.criterion == "dcp"
    assert res.plan.flops_reduction >= 0.5 - 1e-9  # the planner meets the target
    small = res.apply(verify="raise")
    assert small.count_params() == res.plan.params_after
    assert len(small.outputs) == 1 and not [la for la in small.layers if "aux" in la.name]
    np.testing.assert_allclose(small(x[:8]), res.model(x[:8]), atol=1e-5)
    # plain shrink of the fine-tuned copy gives the same thin model
    plain = acsl_tf.shrink(res.model, plan=res.plan, verify="raise")
    np.testing.assert_allclose(plain(x[:8]), small(x[:8]), atol=1e-5)
    # the model and the heads passed in are not changed; the copy was fine-tuned
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(head_before, aux.heads[0].get_weights()))
    assert res.model is not m and res.heads.model is res.model
    assert "stage 1 (block2_conv2_relu): fine-tuned 1 epoch(s)" in res.summary()


def test_without_fine_tuning_it_is_the_once_selection():
    m, x, y, aux = _setup(1)
    opts = dict(OPTS)
    opts.pop("batch_size")
    once = dcp.select_channels(m, x, y, heads=aux, target_flops=0.5, **opts)
    stw = dcp.select_channels_stagewise(
        m, x, y, heads=aux, stage_epochs=0, target_flops=0.5, **opts
    )
    # the groups' stages follow the graph order here, so the visits coincide
    assert [s.name for s in stw.layers] == [s.name for s in once.layers]
    assert stw.keep == once.keep
    for a, b in zip(once.layers, stw.layers):
        assert a.order == b.order and a.loss_head == b.loss_head
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5, atol=1e-6)
    assert set(stw.kernels) == set(once.kernels)
    for name, k in once.kernels.items():
        np.testing.assert_allclose(stw.kernels[name], k, atol=1e-6)
    np.testing.assert_allclose(
        stw.apply(verify="raise")(x[:8]), once.apply(verify="raise")(x[:8]), atol=1e-5
    )
    assert all(s.epochs == 0 and s.history == {} for s in stw.stages)


def test_adaptive_stopping_and_one_call():
    m, x, y, _ = _setup(2)
    res = acsl_tf.discrimination_aware_prune(
        m,
        x,
        y,
        at=[HEAD],
        epochs=0,
        schedule="stagewise",
        stage_epochs=1,
        epsilon=0.05,
        **OPTS,
    )
    assert res.schedule == "stagewise" and len(res.stages) == 2
    assert 0.0 < res.plan.flops_reduction < 1.0
    res.apply(verify="raise")


def test_bad_options_are_clear_errors():
    m, x, y, aux = _setup()
    with pytest.raises(ValueError, match="schedule"):
        acsl_tf.discrimination_aware_prune(m, x, y, schedule="weekly", target_flops=0.5)
    with pytest.raises(TypeError, match="schedule"):
        acsl_tf.discrimination_aware_prune(m, x, y, schedule=2, target_flops=0.5)
    with pytest.raises(ValueError, match="stage_epochs"):
        acsl_tf.discrimination_aware_prune(m, x, y, stage_epochs=2, target_flops=0.5)
    with pytest.raises(ValueError, match="stage_epochs"):
        dcp.select_channels_stagewise(m, x, y, heads=aux, stage_epochs=-1, target_flops=0.5)
    with pytest.raises(TypeError, match="stage_epochs"):
        dcp.select_channels_stagewise(m, x, y, heads=aux, stage_epochs=1.5, target_flops=0.5)
    with pytest.raises(ValueError, match="needs the targets"):
        dcp.select_channels_stagewise(m, x, None, stage_epochs=1, target_flops=0.5)
    with pytest.raises(TypeError, match="optimizer"):
        dcp.select_channels_stagewise(m, x, y, heads=aux, optimizer=3, target_flops=0.5)
    other, *_ = _setup(3)
    with pytest.raises(ValueError, match="heads wraps another model"):
        dcp.select_channels_stagewise(other, x, y, heads=aux, target_flops=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        dcp.select_channels_stagewise(m, x, y, heads=aux)
