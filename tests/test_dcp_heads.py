"""Auxiliary heads of DCP for classification, segmentation and counting."""

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import dcp


def test_head_points_at_resolution_changes():
    vgg = acsl_tf.models.vgg_small((16, 16, 1), width=0.125)
    assert dcp.auxiliary_head_points(vgg) == ["block1_conv2_relu", "block2_conv2_relu"]
    res = acsl_tf.models.cifar_resnet(20, input_shape=(16, 16, 3), width=0.25)
    assert dcp.auxiliary_head_points(res) == ["stage1_block3_out", "stage2_block3_out"]
    unet = acsl_tf.models.unet((16, 16, 1), 3, width=0.125, depth=2)
    pts = dcp.auxiliary_head_points(unet, max_heads=None)
    assert pts == ["enc0_conv2_relu", "enc1_conv2_relu", "bottleneck_conv2_relu", "dec1_conv2_relu"]
    # at most P heads: those nearest to depths 1/(P+1), ..., P/(P+1)
    assert dcp.auxiliary_head_points(unet) == pts[1:]
    assert dcp.auxiliary_head_points(unet, max_heads=2) == ["enc1_conv2_relu", "dec1_conv2_relu"]


def test_head_points_skip_padding_and_follow_published_counts():
    keras_apps = keras.applications
    resnet = keras_apps.ResNet50(input_shape=(64, 64, 3), weights=None, classes=5)
    # three heads for ResNet-50, after stages 2, 3 and 4 (the stem is not a stage end)
    assert dcp.auxiliary_head_points(resnet) == [
        "conv2_block3_out",
        "conv3_block4_out",
        "conv4_block6_out",
    ]
    mnv2 = keras_apps.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=5)
    # the stride-2 depthwise convs read a ZeroPadding2D: the head reads what it pads
    assert dcp.auxiliary_head_points(mnv2, max_heads=None) == [
        "block_1_expand_relu",
        "block_3_expand_relu",
        "block_6_expand_relu",
        "block_13_expand_relu",
    ]


def _learnable_images(n=64, size=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, size, size, 1)).astype("float32")
    x[:, : size // 2] += (y == 1)[:, None, None, None]
    x[:, size // 2 :] += (y == 2)[:, None, None, None]
    return x, y


def test_classification_heads_shapes_and_losses_decrease():
    x, y = _learnable_images()
    m = acsl_tf.models.vgg_small((16, 16, 1), num_classes=3, width=0.125)
    aux = dcp.with_auxiliary_heads(m)
    outs = aux(x[:4])
    assert [tuple(o.shape) for o in outs] == [(4, 3), (4, 3), (4, 3)]
    assert [type(h.layers[i]).__name__ for h in aux.heads for i in range(1, 5)][:4] == [
        "BatchNormalization",
        "ReLU",
        "GlobalAveragePooling2D",
        "Dense",
    ]
    aux.compile(keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    hist = aux.fit(x, y, epochs=4, batch_size=16, verbose=0).history
    for k in ("aux1_loss", "aux2_loss", "task_loss"):
        assert hist[k][-1] < hist[k][0]
    total = hist["task_loss"][-1] + hist["aux1_loss"][-1] + hist["aux2_loss"][-1]
    assert hist["loss"][-1] == pytest.approx(total, rel=0.05)
    assert "accuracy" in hist
    # the wrapped model is trained in place
    assert aux.model is m


def test_segmentation_heads_predict_pixels_at_stage_resolution():
    rng = np.random.default_rng(0)
    m = acsl_tf.models.unet((16, 16, 1), 3, width=0.125, depth=2)
    x = rng.normal(size=(16, 16, 16, 1)).astype("float32")
    y = (x[..., 0] > 0).astype("int32") + (x[..., 0] > 1).astype("int32")
    aux = dcp.with_auxiliary_heads(m, at=["enc0_conv2_relu", "enc1_conv2_relu"])
    outs = aux(x[:2])
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 3), (2, 16, 16, 3), (2, 8, 8, 3)]
    aux.compile(keras.optimizers.Adam(1e-2))
    hist = aux.fit(x, y, epochs=4, batch_size=8, verbose=0).history
    assert hist["aux1_loss"][-1] < hist["aux1_loss"][0]
    assert hist["aux2_loss"][-1] < hist["aux2_loss"][0]


def test_counting_heads_predict_density_at_stage_resolution():
    rng = np.random.default_rng(0)
    m = acsl_tf.models.vgg16_decoder((16, 16, 3), width=0.0625)
    x = rng.random((8, 16, 16, 3)).astype("float32")
    y = rng.random((8, 2, 2, 1)).astype("float32")
    aux = dcp.with_auxiliary_heads(m)
    outs = aux(x[:2])
    shapes = [tuple(o.shape) for o in outs]
    assert shapes[0] == (2, 2, 2, 1)
    assert all(s[-1] == 1 for s in shapes[1:]) and shapes[1] == (2, 16, 16, 1)
    aux.compile(keras.optimizers.Adam(1e-2))
    hist = aux.fit(x, y, epochs=4, batch_size=4, verbose=0).history
    assert hist["aux1_loss"][-1] < hist["aux1_loss"][0]


def test_resized_losses():
    dens = dcp.ResizedDensityMSE()
    y = np.ones((2, 8, 8, 1), "float32")
    # the 4x smaller map carries the same count: 4 per pixel
    assert float(dens(y, np.zeros((2, 4, 4, 1), "float32"))) == pytest.approx(16.0)
    assert float(dens(y, 4 * np.ones((2, 4, 4, 1), "float32"))) == pytest.approx(0.0)
    ce = dcp.ResizedSparseCategoricalCrossentropy()
    labels = np.zeros((1, 4, 4), "int32")
    labels[:, :, 2:] = 1
    logits = np.zeros((1, 2, 2, 2), "float32")
    logits[..., 0, 0] = 10.0  # left column predicts 0
    logits[..., 1, 1] = 10.0  # right column predicts 1
    assert float(ce(labels, logits)) == pytest.approx(4.54e-5, rel=1e-2)
    ign = dcp.ResizedSparseCategoricalCrossentropy(ignore_class=1)
    logits[..., 1, 1] = -10.0  # wrong on the right column, which is ignored
    assert float(ign(labels, logits)) == pytest.approx(4.54e-5, rel=1e-2)


def test_selection_uses_the_stage_heads():
    x, y = _learnable_images(32)
    m = acsl_tf.models.vgg_small((16, 16, 1), num_classes=3, width=0.125)
    aux = dcp.with_auxiliary_heads(m)
    res = dcp.select_channels(m, x, y, heads=aux, channels=0.5, steps=1, verbose=0)
    heads = [s.loss_head for s in res.layers]
    assert heads == [
        "block1_conv2_relu",
        "block2_conv2_relu",
        "block2_conv2_relu",
        "output",
        "output",
        "output",
    ]
    # lambda = 0: reconstruction only, and a different loss
    rec = dcp.select_channels(m, x, y, heads=aux, channels=0.5, steps=1, aux_weight=0.0, verbose=0)
    assert [s.loss_head for s in rec.layers] == [None] * 6
    assert rec.layers[0].losses[0] < res.layers[0].losses[0]


def test_bad_head_arguments():
    m = acsl_tf.models.vgg_small((16, 16, 1), width=0.125)
    with pytest.raises(ValueError, match="Received: task='detection'"):
        dcp.with_auxiliary_heads(m, task="detection")
    with pytest.raises(ValueError, match="Received: head='pixel', task='classification'"):
        dcp.with_auxiliary_heads(m, head="pixel")
    other = acsl_tf.models.vgg_small((16, 16, 1), width=0.125)
    aux = dcp.with_auxiliary_heads(other)
    with pytest.raises(ValueError, match="wraps another model"):
        dcp.select_channels(m, np.zeros((2, 16, 16, 1)), np.zeros(2), heads=aux, channels=1)


def test_discrimination_aware_prune_in_one_call():
    x, y = _learnable_images(32)
    m = acsl_tf.models.vgg_small((16, 16, 1), num_classes=3, width=0.125)
    res = acsl_tf.discrimination_aware_prune(
        m, x, y, channels=0.5, epochs=1, batch_size=16, steps=1, verbose=0
    )
    assert res.heads.points == ["block1_conv2_relu", "block2_conv2_relu"]
    assert [len(s.kept) for s in res.layers] == [2, 2, 4, 4, 8, 8]
    small = res.apply()
    assert small.count_params() == res.plan.params_after
    assert small.output_shape == (None, 3)


def test_segmentation_selection_couples_the_skip_concatenation():
    rng = np.random.default_rng(0)
    m = acsl_tf.models.unet((16, 16, 1), 3, width=0.125, depth=1)
    x = rng.normal(size=(8, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 3, (8, 16, 16))
    assert dcp.auxiliary_head_points(m) == ["enc0_conv2_relu", "bottleneck_conv2_relu"]
    aux = dcp.with_auxiliary_heads(m, at=["enc0_conv2_relu"])
    res = dcp.select_channels(m, x, y, heads=aux, channels=0.5, steps=1, verbose=0)
    by = {s.name: s for s in res.layers}
    # the encoder output feeds the pool (then the bottleneck) and the skip concat
    skip = by["enc0_conv2_conv"]
    assert set(skip.consumers) == {"bottleneck_conv1_conv", "dec0_conv1_conv"}
    assert skip.loss_head == "output" and by["enc0_conv1_conv"].loss_head == "enc0_conv2_relu"
    small = res.apply(verify="raise")
    assert small.count_params() == res.plan.params_after
    assert small.get_layer("dec0_conv1_conv").kernel.shape[-2] == 4 + 4


def test_counting_selection_with_density_heads():
    rng = np.random.default_rng(0)
    m = acsl_tf.models.vgg16_decoder((16, 16, 3), width=0.0625, output_activation="linear")
    dens = m.get_layer("density")  # initialised near zero: give the output layer a signal
    dens.kernel.assign(rng.normal(0, 0.5, dens.kernel.shape).astype("float32"))
    x = rng.random((8, 16, 16, 3)).astype("float32")
    y = rng.random((8, 16, 16, 1)).astype("float32") * 0.01  # full-resolution density
    aux = dcp.with_auxiliary_heads(m, at=["block2_conv2_relu"])
    res = dcp.select_channels(
        m,
        x,
        y,
        heads=aux,
        channels=0.5,
        steps=1,
        layers=["block1_conv2_conv", "backend6_conv"],
        verbose=0,
    )
    assert [(s.name, s.loss_head, len(s.kept)) for s in res.layers] == [
        ("block1_conv2_conv", "block2_conv2_relu", 2),
        ("backend6_conv", "output", 2),
    ]
    # the density head's loss falls as channels are added (the last group's
    # features are ~1e-4 in this random network: its loss barely moves)
    first, last = res.layers
    assert first.losses[-1] < 0.5 * first.losses[0]
    assert last.losses[-1] <= last.losses[0]


def test_dkp_with_heads_and_adaptive_stopping():
    x, y = _learnable_images(16)
    m = acsl_tf.models.vgg_small((16, 16, 1), num_classes=3, width=0.125)
    aux = dcp.with_auxiliary_heads(m)
    res = dcp.select_kernels(
        m,
        x,
        y,
        heads=aux,
        epsilon=0.01,
        layers=["block1_conv2_conv", "block3_conv2_conv"],
        steps=1,
        verbose=0,
    )
    assert [(s.name, s.loss_head) for s in res.layers] == [
        ("block1_conv2_conv", "block1_conv2_relu"),
        ("block3_conv2_conv", "output"),
    ]
    for s in res.layers:
        L = s.losses
        # a greedy step adds C_out kernels (the default per_step); the rule
        # takes the loss decrease per kernel
        k = m.get_layer(s.name).kernel.shape[-1]
        assert abs(L[-2] - L[-1]) <= 0.01 * k * L[0] or len(s.kept) == s.size
        assert all(abs(L[t - 1] - L[t]) > 0.01 * k * L[0] for t in range(1, len(L) - 1))
    # the heads stay attached to the original model
    assert aux.model is m and res.model is not m
