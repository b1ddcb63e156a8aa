"""Global rankings that empty whole layers: the LayerCollapseWarning and the
per-group cap ``max_fraction`` of plan_shrink / shrink / the CLI.

A raw weight criterion (L1 of a filter) grows with the layer's fan-in, so a
global ranking removes the early, high-resolution layers first: on a U-Net it
cuts the first encoder level and the layer before the logits to a single
channel, and the pruned model predicts one class everywhere.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from keras import layers as L

import acsl_tf
from acsl_tf import cli
from acsl_tf.models import segmentation
from acsl_tf.pruning import LayerCollapseWarning, plan_shrink, shrink


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(3)
    return segmentation.unet((32, 32, 3), num_classes=5, base_filters=16, depth=3)


def _widths(plan):
    return {g.members[0][0]: (g.size, len(g.keep)) for g in plan.groups if g.prunable}


def _third_party_cnn():
    """Written the way a tutorial writes it: Sequential, default names, the
    first conv sees 3 input channels and the last one 64."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(10),
        ]
    )


def test_global_raw_l1_collapses_the_unet_and_warns(unet):
    with pytest.warns(LayerCollapseWarning) as rec:
        plan = plan_shrink(unet, target_flops=0.5, criterion="l1")
    msg = str(rec[0].message)
    assert "min_channels=1" in msg and "criterion='l1_layer'" in msg and "max_fraction=" in msg
    collapsed = [g for g in plan.groups if g.prunable and g.size >= 4 and len(g.keep) == 1]
    assert f"cut {len(collapsed)} of" in msg and len(collapsed) >= 2
    # the warning carries the groups: (first producer, channels before, kept)
    assert [size for _, size, _ in rec[0].message.groups] == [g.size for g in collapsed]
    assert {kept for _, _, kept in rec[0].message.groups} == {1}
    assert rec[0].message.groups[0][0] in {n for n, _ in collapsed[0].members}
    # the first encoder level is among them (small fan-in, small L1)
    first = [g for g in collapsed if any(n.startswith("enc0_conv1") for n, _ in g.members)]
    assert first, _widths(plan)


def test_max_fraction_keeps_a_share_of_every_group_and_meets_the_target(unet):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        plan = plan_shrink(unet, target_flops=0.5, criterion="l1", max_fraction=0.75)
    assert plan.flops_reduction >= 0.5
    for g in plan.groups:
        if g.prunable:
            assert len(g.keep) >= math.ceil(0.25 * g.size), (g.members[0][0], g.size, g.keep)
    # shrink takes the same cap and builds that plan
    small = shrink(unet, target_flops=0.5, criterion="l1", max_fraction=0.75, verify=False)
    assert small.count_params() == plan.params_after


def test_per_layer_criteria_do_not_warn(unet):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        plan = plan_shrink(unet, target_flops=0.5, criterion="l1_layer")
    assert min(k for _, k in _widths(plan).values()) >= 2


def test_third_party_cnn_warns_at_a_high_ratio_and_the_cap_holds():
    model = _third_party_cnn()
    with pytest.warns(LayerCollapseWarning, match=r"conv2d(_\d+)? 32->1"):
        plan_shrink(model, target_flops=0.7, criterion="l1")
    # max_fraction=1.0 is no cap: the same plan, the same warning
    with pytest.warns(LayerCollapseWarning, match=r"conv2d(_\d+)? 32->1"):
        plan_shrink(model, target_flops=0.7, criterion="l1", max_fraction=1.0)
    plan = plan_shrink(model, target_flops=0.7, criterion="l1", max_fraction=0.9)
    assert plan.flops_reduction >= 0.7
    assert all(len(g.keep) >= math.ceil(0.1 * g.size) for g in plan.groups if g.prunable)


def test_threshold_mode_respects_max_fraction():
    model = _third_party_cnn()
    everything = plan_shrink(model, threshold=1e9, criterion="l1", max_fraction=0.5)
    for g in everything.groups:
        if g.prunable:
            assert len(g.keep) == math.ceil(0.5 * g.size)


def test_a_floor_set_by_max_fraction_is_not_a_collapse():
    model = _third_party_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        # every group is cut to its floor of 1/16 (2 or 4 channels): intended
        plan_shrink(model, threshold=1e9, criterion="l1", max_fraction=15 / 16, min_channels=1)


def test_target_beyond_the_floors_names_them():
    model = _third_party_cnn()
    with pytest.raises(ValueError, match=r"min_channels=1, max_fraction=0.5\) reduces it by"):
        plan_shrink(model, target_flops=0.9, criterion="l1", max_fraction=0.5)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan")])
def test_max_fraction_is_validated(bad):
    model = _third_party_cnn()
    with pytest.raises(ValueError, match="max_fraction"):
        plan_shrink(model, ratio=0.5, criterion="l1", max_fraction=bad)
    with pytest.raises(TypeError, match="max_fraction"):
        plan_shrink(model, ratio=0.5, criterion="l1", max_fraction="0.5")
    # 1.0 is allowed (no cap beyond min_channels)
    assert plan_shrink(model, ratio=0.1, criterion="l1_layer", max_fraction=1.0).channels_removed


def test_max_fraction_with_a_ready_plan_is_refused():
    model = _third_party_cnn()
    plan = plan_shrink(model, ratio=0.3, criterion="l1_layer")
    with pytest.raises(ValueError, match="either plan= or a selection"):
        shrink(model, plan=plan, max_fraction=0.5)


def test_cli_max_fraction(tmp_path, capsys):
    model = _third_party_cnn()
    path = tmp_path / "cnn.keras"
    model.save(path)
    out = tmp_path / "small.keras"
    plan_path = tmp_path / "plan.json"
    argv = ["shrink", str(path), "--target-flops", "0.7", "--criterion", "l1", "-q"]
    rc = cli.main([*argv, "--max-fraction", "0.9", "-o", str(out), "--save-plan", str(plan_path)])
    assert rc == 0
    plan = acsl_tf.ShrinkPlan.load(plan_path)
    assert all(len(k) >= math.ceil(0.1 * plan.sizes[i]) for i, k in plan.keep.items())
    small = keras.models.load_model(out, compile=False)
    assert small.count_params() == plan.params[1] < model.count_params()
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert small.predict(x, verbose=0).shape == (2, 10)
    capsys.readouterr()
    assert cli.main([*argv, "--max-fraction", "0", "-o", str(tmp_path / "b.keras")]) == 1
    err = capsys.readouterr().err
    assert "max_fraction" in err and "Received: max_fraction=0.0" in err
