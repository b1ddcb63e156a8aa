import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import models as M


def _conv_followed_by_bn(model, exclude=()):
    """Every Conv2D (except `exclude`) feeds exactly one BatchNormalization."""
    consumers = {}
    for lc in model.get_config()["layers"]:
        for node in lc["inbound_nodes"]:
            from acsl_tf._keras import inbound_keras_tensors

            for src, _, _ in inbound_keras_tensors(node):
                consumers.setdefault(src, []).append(lc["class_name"])
    convs = [
        la.name
        for la in model.layers
        if isinstance(la, keras.layers.Conv2D) and la.name not in exclude
    ]
    assert convs
    for name in convs:
        assert consumers.get(name) == ["BatchNormalization"], (name, consumers.get(name))


def _train_step(model, x, y, loss, min_fraction=1.0):
    """One eager SGD step (no tf.function tracing: fast for tiny models)."""
    import tensorflow as tf

    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    opt = keras.optimizers.SGD(0.01)
    before = [w.numpy().copy() for w in model.trainable_weights]
    with tf.GradientTape() as tape:
        value = keras.ops.mean(loss_fn(y, model(x, training=True)))
    grads = tape.gradient(value, model.trainable_weights)
    assert all(g is not None for g in grads)
    opt.apply(grads, model.trainable_weights)
    assert np.isfinite(float(value))
    changed = sum(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))
    assert changed >= min_fraction * len(before)


def _rng():
    return np.random.default_rng(0)


# ---- counting ---------------------------------------------------------------------------


def test_vgg16_decoder_full_size_params_match_csrnet():
    m = M.vgg16_decoder()
    # CSRNet: 16.26M conv params; BN adds 4 per channel
    assert m.count_params() == 16_277_505
    assert m.output_shape == (None, None, None, 1)
    assert [la.name for la in m.layers][-1] == "density"
    assert m.get_layer("backend1_conv").dilation_rate == (2, 2)


def test_vgg16_decoder_small_trains():
    m = M.vgg16_decoder((32, 32, 1), width=0.125)
    assert m.output_shape == (None, 4, 4, 1)
    _conv_followed_by_bn(m, exclude=("density",))
    x = _rng().uniform(size=(2, 32, 32, 1)).astype("float32")
    y = _rng().uniform(size=(2, 4, 4, 1)).astype("float32")
    _train_step(m, x, y, "mse")
    names = [la.name for la in M.vgg16_decoder((32, 32, 1), width=0.125).layers]
    assert names == [la.name for la in m.layers]  # stable names


def test_resnet_counter_trains():
    m = M.resnet_counter((32, 32, 1), width=0.25)
    assert m.output_shape == (None, 4, 4, 1)
    _conv_followed_by_bn(m, exclude=("density",))
    x = _rng().uniform(size=(2, 32, 32, 1)).astype("float32")
    _train_step(m, x, np.ones((2, 4, 4, 1), "float32"), "mse")
    assert m.get_layer("backbone_stage1_block1_shortcut_bn") is not None


def test_resnet101_counter_builds():
    m = M.resnet101_counter((32, 32, 3))
    assert m.output_shape == (None, 4, 4, 1)
    assert m.get_layer("conv3_block4_out") is not None and m.layers[-1].name == "density"


@pytest.mark.slow
def test_resnet101_counter_trains_both_stages():
    for stage in ("conv3", "conv4"):
        m = M.resnet101_counter((32, 32, 3), stage=stage)
        assert m.output_shape == (None, 4, 4, 1)
        x = _rng().uniform(size=(2, 32, 32, 3)).astype("float32")
        _train_step(m, x, np.ones((2, 4, 4, 1), "float32"), "mse")


def test_resnet101_counter_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        M.resnet101_counter((32, 32, 3), weights=tmp_path / "missing.h5")


def test_counting_validation():
    with pytest.raises(ValueError, match="width"):
        M.vgg16_decoder(width=0)
    with pytest.raises(ValueError, match="input_shape"):
        M.vgg16_decoder((32, 32))
    with pytest.raises(ValueError, match="stage"):
        M.resnet101_counter(stage="conv5")
    with pytest.raises(ValueError, match="output_activation"):
        M.resnet_counter(output_activation="sigmoid")


# ---- segmentation -----------------------------------------------------------------------


def test_unet_trains():
    m = M.unet((32, 32, 1), 11, width=0.125, depth=3)
    assert m.output_shape == (None, 32, 32, 11)
    _conv_followed_by_bn(m, exclude=("logits",))
    x = _rng().uniform(size=(2, 32, 32, 1)).astype("float32")
    y = _rng().integers(0, 11, (2, 32, 32)).astype("int32")
    _train_step(m, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="multiples of 2\\*\\*depth=8"):
        M.unet((36, 36, 1), 3, depth=3)


def test_pspnet_small_trains_and_names_branches():
    m = M.pspnet((48, 48, 1), 11, width=0.25)
    assert m.output_shape == (None, 48, 48, 11)
    _conv_followed_by_bn(m, exclude=("classifier",))
    assert M.psp_branch_names(m) == [f"psp_branch{i}_bn" for i in (1, 2, 3, 4)]
    # the branches pool the 6x6 feature map to 1, 2, 3 and 6 bins
    assert [m.get_layer(f"psp_branch{i}_pool").output.shape[1] for i in (1, 2, 3, 4)] == [
        1,
        2,
        3,
        6,
    ]
    assert m.get_layer("psp_branch2_up").output.shape[1:3] == (6, 6)
    x = _rng().uniform(size=(2, 48, 48, 1)).astype("float32")
    y = _rng().integers(0, 11, (2, 48, 48)).astype("int32")
    _train_step(
        m, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    )


def test_pspnet_validation():
    with pytest.raises(ValueError, match="multiples of 48"):
        M.pspnet((50, 50, 3), 5)
    with pytest.raises(ValueError, match="fixed input"):
        M.pspnet((None, None, 3), 5)
    with pytest.raises(ValueError, match="backbone"):
        M.pspnet((48, 48, 3), 5, backbone="vgg")
    with pytest.raises(ValueError, match="fixed width"):
        M.pspnet((96, 96, 3), 5, backbone="resnet50", width=0.5)
    m = M.pspnet((32, 32, 3), 5, bins=(1, 2, 4))  # lcm 4 x stride 8
    assert m.output_shape == (None, 32, 32, 5)


@pytest.mark.slow
def test_pspnet_resnet50_trains():
    m = M.pspnet((96, 96, 3), 5, backbone="resnet50")
    assert m.output_shape == (None, 96, 96, 5)
    assert len(M.psp_branch_names(m)) == 4
    # batch 2: with batch 1 the 1x1 bin-1 branch is constant under training-mode BN (zero gradient)
    x = _rng().uniform(size=(2, 96, 96, 3)).astype("float32")
    y = _rng().integers(0, 5, (2, 96, 96)).astype("int32")
    _train_step(m, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))


# ---- classification ---------------------------------------------------------------------


def test_cifar_resnet_params_and_training():
    assert M.cifar_resnet(20).count_params() == 274_042
    m = M.cifar_resnet(20, num_classes=4, input_shape=(16, 16, 3), width=0.25)
    assert m.output_shape == (None, 4)
    _conv_followed_by_bn(m)
    # option-B shortcuts: one projection per stage change, Adds join two BN outputs
    assert m.get_layer("stage2_block1_shortcut_bn") is not None
    assert "stage1_block1_shortcut_conv" not in [la.name for la in m.layers]
    x = _rng().uniform(size=(4, 16, 16, 3)).astype("float32")
    _train_step(
        m, x, np.array([0, 1, 2, 3]), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    with pytest.raises(ValueError, match="6n \\+ 2"):
        M.cifar_resnet(18)


@pytest.mark.slow
def test_cifar_resnet56_params():
    m56 = M.cifar_resnet(56)
    assert m56.count_params() == 860_026 and m56.name == "resnet56"
    assert len([la for la in m56.layers if isinstance(la, keras.layers.Add)]) == 27


def test_vgg_small():
    m = M.vgg_small()
    assert m.count_params() == 289_066 and m.output_shape == (None, 10)
    _conv_followed_by_bn(m)
    s = M.vgg_small(width=0.25)
    x = _rng().uniform(size=(4, 28, 28, 1)).astype("float32")
    _train_step(
        s, x, np.array([0, 1, 2, 3]), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    p = M.vgg_small(width=0.25, classifier_activation="softmax")(x).numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)


def test_mobilenet_v2():
    m = M.mobilenet_v2((32, 32, 3), 5, alpha=0.35)
    assert m.output_shape == (None, 5)
    x = _rng().uniform(size=(2, 32, 32, 3)).astype("float32")
    _train_step(
        m,
        x,
        np.array([0, 4]),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        min_fraction=0.9,  # a few ReLU6-saturated units get no gradient at random init
    )
    with pytest.raises(ValueError, match="at least 32"):
        M.mobilenet_v2((16, 16, 3))


# ---- shrink integration ----------------------------------------------------------------

SHRINKABLE = {
    "vgg16_decoder": lambda: M.vgg16_decoder((32, 32, 1), width=0.125),
    "resnet_counter": lambda: M.resnet_counter((32, 32, 1), width=0.25),
    "unet": lambda: M.unet((32, 32, 1), 5, width=0.125, depth=2),
    "pspnet": lambda: M.pspnet((48, 48, 1), 5, width=0.25),
    "cifar_resnet": lambda: M.cifar_resnet(20, input_shape=(16, 16, 3), width=0.25),
    "vgg_small": lambda: M.vgg_small(width=0.25),
}


def _randomize_gammas(model):
    rng = np.random.default_rng(1)
    for la in model.layers:
        if isinstance(la, keras.layers.BatchNormalization):
            g, b, mu, var = la.get_weights()
            la.set_weights([rng.uniform(0.05, 1.0, g.shape).astype("float32"), b, mu, var])


@pytest.mark.parametrize("name", sorted(SHRINKABLE))
def test_shrink_reduces_params_and_keeps_output_shape(name):
    model = SHRINKABLE[name]()
    _randomize_gammas(model)
    small = acsl_tf.shrink(model, ratio=0.3)
    assert small.output_shape == model.output_shape
    assert small.count_params() < model.count_params()
    x = _rng().uniform(size=(1,) + tuple(model.input_shape[1:])).astype("float32")
    assert small(x).shape == model(x).shape


@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [
        lambda: M.resnet101_counter((32, 32, 3)),
        lambda: M.pspnet((96, 96, 3), 5, backbone="resnet50"),
        lambda: M.mobilenet_v2((32, 32, 3), 5, alpha=0.35),
    ],
)
def test_shrink_large_models(build):
    model = build()
    _randomize_gammas(model)
    small = acsl_tf.shrink(model, ratio=0.3)
    assert small.output_shape == model.output_shape
    assert small.count_params() < model.count_params()
