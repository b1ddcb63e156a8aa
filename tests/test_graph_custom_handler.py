"""The worked example of docs/SHRINK.md ("Custom layers"): a handler for a
composite block (a conv, a BatchNormalization and a ReLU inside one layer,
as keras-hub and keras-cv-attention-models write them)."""

import keras
import numpy as np
from keras import layers as L

import acsl_tf
from acsl_tf.graph.handlers import ProducerHandler


class ConvBNReLU(keras.layers.Layer):
    def __init__(self, filters, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.conv = L.Conv2D(filters, kernel_size, padding="same", use_bias=False)
        self.bn = L.BatchNormalization()

    def call(self, x, training=None):
        return keras.ops.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


class ConvBNReLUHandler(ProducerHandler):
    """Output channels are new (like a Conv); input channels are sliced from
    the kernel, output channels from the kernel and the BN vectors."""

    out_key = "filters"  # the config entry that holds the output width

    def slice(self, layer, ws, ik, ok):
        kernel, *bn = ws  # layer.weights: conv kernel, gamma, beta, mean, variance
        if ik is not None:
            kernel = kernel[..., ik, :]
        if ok is not None:
            kernel = kernel[..., ok]
            bn = [v[ok] for v in bn]
        return [kernel, *bn]

    def params(self, layer, in_c, out_c):
        return layer.kernel_size**2 * in_c[0] * out_c + 4 * out_c

    def cost(self, op, ins, outs):
        pixels = int(np.prod(outs[0][1:-1]))
        macs = pixels * op.kernel_size**2 * ins[0][-1] * outs[0][-1]
        return macs, 2 * macs + 2 * pixels * outs[0][-1]  # conv, BN, ReLU

    def kernel_view(self, layer):  # for weight criteria (l1, l2, fpgm)
        k = np.asarray(layer.conv.kernel)
        return k.reshape(-1, k.shape[-1]).T


def model():
    i = keras.Input((8, 8, 3))
    x = ConvBNReLU(8, name="block1")(i)
    x = ConvBNReLU(6, name="block2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3, name="fc")(x))


def test_composite_block_without_handler_keeps_its_channels():
    plan = acsl_tf.plan_shrink(model(), ratio=0.5, criterion="l1")
    assert plan.channels_removed == 0
    assert plan.unknown_layers == ("block1", "block2")


def test_composite_block_with_handler_prunes_exactly():
    m = model()
    handlers = {ConvBNReLU: ConvBNReLUHandler()}
    plan = acsl_tf.plan_shrink(
        m, keep={"block1": [0, 2, 5, 7], "block2": [1, 3, 4]}, handlers=handlers
    )
    assert [len(g.keep) for g in plan.groups if g.removed] == [4, 3]
    res = acsl_tf.apply_plan(m, plan, verify="raise", handlers=handlers)
    small = res.model
    assert res.exact
    assert small.get_layer("block2").conv.kernel.shape == (3, 3, 4, 3)
    np.testing.assert_array_equal(
        small.get_layer("block2").conv.kernel.numpy(),
        m.get_layer("block2").conv.kernel.numpy()[:, :, [0, 2, 5, 7]][..., [1, 3, 4]],
    )
    ranked = acsl_tf.plan_shrink(m, ratio=0.5, criterion="l1_layer", handlers=handlers)
    assert ranked.channels_removed == 7
    assert small.count_params() == plan.params_after
    assert acsl_tf.profile(small, handlers=handlers).total_flops == plan.flops_after
    # the handler never leaked into the defaults
    assert acsl_tf.plan_shrink(m, ratio=0.5, criterion="l1").channels_removed == 0


def test_consumer_without_fold_rule_is_reported():
    class NoFold(ConvBNReLUHandler):
        def fold(self, layer, consts, removed):
            return None

    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="c")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("sigmoid")(x)  # removed channels carry sigmoid(beta) != 0
    x = ConvBNReLU(4, kernel_size=1, name="block")(x)
    m = keras.Model(i, L.Conv2D(2, 1)(x))
    handlers = {ConvBNReLU: NoFold()}
    plan = acsl_tf.plan_shrink(m, keep={"bn": [0, 1, 2]}, handlers=handlers)
    res = acsl_tf.apply_plan(m, plan, verify=False)
    assert len(res.approximations) == 1 and "'block'" in res.approximations[0]
    assert "no fold rule" in res.approximations[0]
