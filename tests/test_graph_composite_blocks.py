"""Composite layers: keras-hub's MobileNet blocks pruned inside and across
their boundaries.

keras-hub is not a test dependency, so the blocks are re-implemented here
with the same sublayer attributes, call order and config as
keras_hub.src.models.mobilenet.mobilenet_backbone (0.32), and their
``__module__`` set to that module: the default registry matches them by
qualified name exactly as it matches keras-hub's own classes.
"""

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf.graph import DependencyGraph
from acsl_tf.graph.handlers.composite import KERAS_HUB_MOBILENET, adjust_channels

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


class SqueezeAndExcite2D(keras.layers.Layer):
    def __init__(
        self,
        filters,
        bottleneck_filters=None,
        squeeze_activation="relu",
        excite_activation="sigmoid",
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.filters = filters
        self.bottleneck_filters = bottleneck_filters
        self.squeeze_activation = squeeze_activation
        self.excite_activation = excite_activation
        self.name = name
        self.spatial_dims = (1, 2)
        self.conv_reduce = keras.layers.Conv2D(
            bottleneck_filters, (1, 1), name=f"{name}_conv_reduce", dtype=dtype
        )
        self.activation1 = keras.layers.Activation(
            self.squeeze_activation, name=self.name + "squeeze_activation", dtype=dtype
        )
        self.conv_expand = keras.layers.Conv2D(
            filters, (1, 1), name=f"{name}_conv_expand", dtype=dtype
        )
        self.gate = keras.layers.Activation(
            self.excite_activation, name=self.name + "excite_activation", dtype=dtype
        )

    def build(self, input_shape):
        self.conv_reduce.build(input_shape)
        shape = self.conv_reduce.compute_output_shape(input_shape)
        self.activation1.build(shape)
        self.conv_expand.build(shape)
        shape = self.conv_expand.compute_output_shape(shape)
        self.gate.build(shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x_se = keras.ops.mean(inputs, axis=self.spatial_dims, keepdims=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.activation1(x_se)
        x_se = self.conv_expand(x_se)
        return inputs * self.gate(x_se)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "bottleneck_filters": self.bottleneck_filters,
                "squeeze_activation": self.squeeze_activation,
                "excite_activation": self.excite_activation,
                "name": self.name,
                "spatial_dims": self.spatial_dims,
            }
        )
        return config


class DepthwiseConvBlock(keras.layers.Layer):
    def __init__(
        self,
        infilters,
        filters,
        kernel_size=3,
        stride=2,
        squeeze_excite_ratio=None,
        residual=False,
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.infilters = infilters
        self.filters = filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.squeeze_excite_ratio = squeeze_excite_ratio
        self.residual = residual
        self.name = name = f"{name}_0"
        self.pad = keras.layers.ZeroPadding2D(padding=(1, 1), name=f"{name}_pad", dtype=dtype)
        self.conv1 = keras.layers.Conv2D(
            infilters,
            kernel_size,
            strides=stride,
            padding="valid",
            groups=infilters,
            use_bias=False,
            name=f"{name}_conv1",
            dtype=dtype,
        )
        self.batch_normalization1 = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn1", dtype=dtype
        )
        self.activation1 = keras.layers.ReLU(dtype=dtype)
        if squeeze_excite_ratio:
            self.se_layer = SqueezeAndExcite2D(
                filters=infilters,
                bottleneck_filters=adjust_channels(infilters * squeeze_excite_ratio),
                squeeze_activation="relu",
                excite_activation=keras.activations.hard_sigmoid,
                name=f"{name}_squeeze_excite",
                dtype=dtype,
            )
        self.conv2 = keras.layers.Conv2D(
            filters, kernel_size=1, use_bias=False, name=f"{name}_conv2", dtype=dtype
        )
        self.batch_normalization2 = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn2", dtype=dtype
        )

    def build(self, input_shape):
        self.pad.build(input_shape)
        shape = self.pad.compute_output_shape(input_shape)
        self.conv1.build(shape)
        shape = self.conv1.compute_output_shape(shape)
        self.batch_normalization1.build(shape)
        self.activation1.build(shape)
        if self.squeeze_excite_ratio:
            self.se_layer.build(shape)
        self.conv2.build(shape)
        shape = self.conv2.compute_output_shape(shape)
        self.batch_normalization2.build(shape)
        self.built = True

    def call(self, inputs):
        x = self.pad(inputs)
        x = self.conv1(x)
        x = self.batch_normalization1(x)
        x = self.activation1(x)
        if self.squeeze_excite_ratio:
            x = self.se_layer(x)
        x = self.conv2(x)
        x = self.batch_normalization2(x)
        if self.residual:
            x = x + inputs
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "infilters": self.infilters,
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "stride": self.stride,
                "squeeze_excite_ratio": self.squeeze_excite_ratio,
                "residual": self.residual,
                "name": self.name,
            }
        )
        return config


class InvertedResidualBlock(keras.layers.Layer):
    def __init__(
        self,
        expansion,
        infilters,
        filters,
        kernel_size,
        stride,
        squeeze_excite_ratio,
        activation,
        padding,
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.expansion = expansion
        self.infilters = infilters
        self.filters = filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.squeeze_excite_ratio = squeeze_excite_ratio
        self.activation = activation
        self.padding = padding
        self.name = name
        expanded_channels = adjust_channels(expansion)
        self.conv1 = keras.layers.Conv2D(
            expanded_channels, kernel_size=1, use_bias=False, name=f"{name}_conv1", dtype=dtype
        )
        self.batch_normalization1 = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn1", dtype=dtype
        )
        self.activation1 = keras.layers.Activation(activation=activation, dtype=dtype)
        self.pad = keras.layers.ZeroPadding2D(
            padding=(padding, padding), name=f"{name}_pad", dtype=dtype
        )
        self.conv2 = keras.layers.Conv2D(
            expanded_channels,
            kernel_size,
            strides=stride,
            padding="valid",
            groups=expanded_channels,
            use_bias=False,
            name=f"{name}_conv2",
            dtype=dtype,
        )
        self.batch_normalization2 = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn2", dtype=dtype
        )
        self.activation2 = keras.layers.Activation(activation=activation, dtype=dtype)
        self.squeeze_excite = None
        if self.squeeze_excite_ratio:
            self.squeeze_excite = SqueezeAndExcite2D(
                filters=expanded_channels,
                bottleneck_filters=adjust_channels(expanded_channels * squeeze_excite_ratio),
                squeeze_activation="relu",
                excite_activation=keras.activations.hard_sigmoid,
                name=f"{name}_se",
                dtype=dtype,
            )
        self.conv3 = keras.layers.Conv2D(
            filters, kernel_size=1, use_bias=False, name=f"{name}_conv3", dtype=dtype
        )
        self.batch_normalization3 = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn3", dtype=dtype
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.batch_normalization1.build(shape)
        self.activation1.build(shape)
        self.pad.build(shape)
        shape = self.pad.compute_output_shape(shape)
        self.conv2.build(shape)
        shape = self.conv2.compute_output_shape(shape)
        self.batch_normalization2.build(shape)
        self.activation2.build(shape)
        if self.squeeze_excite_ratio:
            self.squeeze_excite.build(shape)
        self.conv3.build(shape)
        shape = self.conv3.compute_output_shape(shape)
        self.batch_normalization3.build(shape)
        self.built = True

    def call(self, inputs):
        x = self.conv1(inputs)
        x = self.batch_normalization1(x)
        x = self.activation1(x)
        x = self.pad(x)
        x = self.conv2(x)
        x = self.batch_normalization2(x)
        x = self.activation2(x)
        if self.squeeze_excite:
            x = self.squeeze_excite(x)
        x = self.conv3(x)
        x = self.batch_normalization3(x)
        if self.stride == 1 and self.infilters == self.filters:
            x = inputs + x
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "expansion": self.expansion,
                "infilters": self.infilters,
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "stride": self.stride,
                "squeeze_excite_ratio": self.squeeze_excite_ratio,
                "activation": self.activation,
                "padding": self.padding,
                "name": self.name,
            }
        )
        return config


class ConvBnActBlock(keras.layers.Layer):
    def __init__(self, filter, activation, name=None, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.filter = filter
        self.activation = activation
        self.name = name
        self.conv = keras.layers.Conv2D(
            filter, kernel_size=1, use_bias=False, name=f"{name}_conv", dtype=dtype
        )
        self.batch_normalization = keras.layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn", dtype=dtype
        )
        self.activation_layer = keras.layers.Activation(activation, dtype=dtype)

    def build(self, input_shape):
        self.conv.build(input_shape)
        shape = self.conv.compute_output_shape(input_shape)
        self.batch_normalization.build(shape)
        self.activation_layer.build(shape)
        self.built = True

    def call(self, inputs):
        x = self.conv(inputs)
        x = self.batch_normalization(x)
        x = self.activation_layer(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"filter": self.filter, "activation": self.activation, "name": self.name})
        return config


# The default registry matches keras-hub's classes by module and qualified name.
for _cls in (SqueezeAndExcite2D, DepthwiseConvBlock, InvertedResidualBlock, ConvBnActBlock):
    _cls.__module__ = KERAS_HUB_MOBILENET


def _irb(x, expansion, filters, kernel, stride, se, act, name):
    return InvertedResidualBlock(
        expansion=expansion,
        infilters=x.shape[-1],
        filters=filters,
        kernel_size=kernel,
        stride=stride,
        squeeze_excite_ratio=se,
        activation=act,
        padding=kernel // 2,
        name=name,
    )(x)


def mobilenet_v3_like(size=32, head=None):
    """MobileNetBackbone's layout: stem, DepthwiseConvBlock, stages of
    InvertedResidualBlocks (plain, with squeeze-and-excitation, residual,
    stride-1 without residual), ConvBnActBlock (the model output unless a
    head follows)."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D((1, 1), name="input_pad")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False, name="input_conv")(x)
    x = keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="input_batch_norm"
    )(x)
    x = keras.layers.Activation("hard_swish")(x)
    x = DepthwiseConvBlock(16, 8, stride=2, squeeze_excite_ratio=0.5, name="block_0")(x)
    x = _irb(x, 40, 16, 3, 2, None, "relu", "block_1_0")
    x = _irb(x, 56, 16, 3, 1, None, "relu", "block_1_1")  # residual
    x = _irb(x, 64, 24, 5, 1, 0.25, "hard_swish", "block_2_0")  # stride 1, 16 -> 24: no residual
    x = _irb(x, 72, 24, 5, 1, 0.3, "hard_swish", "block_2_1")  # residual with SE
    x = _irb(x, 72, 32, 3, 2, 0.25, "hard_swish", "block_3_0")
    x = ConvBnActBlock(filter=48, activation="hard_swish", name="block_4_0")(x)
    if head:
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(head, name="logits")(x)
    return keras.Model(inputs, x, name="mobilenet_v3_like")


def randomize_bn(model, seed=0):
    """Random BatchNorm statistics (as benchmarks/applications_coverage.py),
    BNs inside composite layers included."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.2, n),
                    rng.normal(0, 0.2, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )


def zero_removed(plan):
    """gamma = beta = 0 on the removed channels of gamma-covered groups (as
    the coverage benchmarks): the removed channels are then exactly 0."""
    graph = plan._graph
    covered = {r for r, g in graph.groups.items() if g.covered}
    keep = {r: k for r, k in plan._keep.items() if r in covered}
    for unit in graph.units.values():
        f = graph.keep_features(unit.map, keep)
        if f is None:
            continue
        ws = unit.layer.get_weights()
        mask = np.ones(ws[0].shape[0], bool)
        mask[f] = False
        ws[0][mask] = 0.0
        ws[1][mask] = 0.0
        unit.layer.set_weights(ws)


def fresh():
    keras.utils.set_random_seed(0)
    m = mobilenet_v3_like(head=10)
    randomize_bn(m)
    return m


@pytest.fixture(scope="module")
def model():
    return fresh()


def _groups_of(graph, name, role=None):
    return [
        g
        for g in graph.groups.values()
        if any(n == name and role in (None, r) for n, r in g.members)
    ]


def test_blocks_are_known_and_open_their_inner_channels(model):
    graph = DependencyGraph(model)
    assert graph.unknown == []
    # the expanded channels of an inverted residual block: their own group,
    # scaled by both inner BatchNormalizations, multiples of 8
    (hidden,) = _groups_of(graph, "block_1_0_conv2")
    assert hidden.size == 40 and hidden.multiple == 8 and hidden.prunable and hidden.covered
    assert set(hidden.units) == {"block_1_0_bn1", "block_1_0_bn2"}
    assert not hidden.conditional
    # behind a squeeze-and-excitation gate: conditional
    (hidden_se,) = _groups_of(graph, "block_2_1_conv2")
    assert hidden_se.covered and hidden_se.conditional
    # the bottleneck of a squeeze-and-excitation gate keeps its channels
    (bottleneck,) = _groups_of(graph, "block_2_1_se_conv_reduce", "out")
    assert "squeeze-and-excitation bottleneck" in bottleneck.fixed
    # the stem's channels run through the depthwise block (its first BN is a unit)
    (stem,) = _groups_of(graph, "input_conv", "out")
    assert {"input_batch_norm", "block_0_0_bn1"} <= set(stem.units) and stem.covered
    # a residual block couples its input and output channels
    (stream,) = _groups_of(graph, "block_1_1_bn3")
    assert {"block_1_0_bn3", "block_1_1_bn3"} <= set(stream.units) and stream.covered
    # sparsity training wraps the model's own BatchNormalizations only
    units = acsl_tf.sparsity.api.find_units(model)
    assert [bn.name for bn, _ in units.values()] == ["input_batch_norm"]


@pytest.mark.parametrize("criterion", ["gamma", "l1"])
def test_shrink_inside_and_across_blocks_is_exact(criterion):
    clone = fresh()
    plan = acsl_tf.plan_shrink(clone, ratio=0.3, criterion=criterion)
    graph = plan._graph
    pruned = {r for r in plan._keep}
    names = {n for r in pruned for n, _ in graph.groups[r].members}
    # channels removed inside blocks, across their outputs and through the depthwise block
    wanted = {"block_1_0_conv2", "block_0_0_bn1"}
    if criterion == "gamma":
        wanted |= {"block_1_1_bn3", "block_3_0_bn3"}
    assert wanted <= names
    for r, k in plan._keep.items():
        assert len(k) % graph.groups[r].multiple == 0
    zero_removed(plan)
    res = acsl_tf.apply_plan(clone, plan, verify="raise")
    assert res.exact and res.rel_error < 1e-5
    prof = acsl_tf.profile(res.model)
    assert prof.total_params == plan.params_after == res.model.count_params()
    assert prof.total_flops == plan.flops_after < plan.flops_before
    assert acsl_tf.profile(clone).total_flops == plan.flops_before
    # the thin model is made of the same blocks, with the planned widths
    assert type(res.model.get_layer("block_2_0")) is InvertedResidualBlock
    kept = {graph.groups[r].members[0][0]: len(k) for r, k in plan._keep.items()}
    if "block_1_0_conv1" in kept:
        assert res.model.get_layer("block_1_0").conv1.filters == kept["block_1_0_conv1"]


def test_target_flops_counts_the_blocks(model):
    plan = acsl_tf.plan_shrink(model, target_flops=0.4)
    assert plan.flops_reduction >= 0.4
    inner = [
        g for g in plan.groups if g.size != len(g.keep) and "block_2_1_conv2" in dict(g.members)
    ]
    assert inner and len(inner[0].keep) % 8 == 0


def test_stride_one_block_without_residual_stays_without_one():
    """block_2_0 (stride 1, 16 -> 24 channels) has no residual; keeping 16 of
    its 24 outputs must not add one."""
    clone = fresh()
    keep = {"block_2_0_bn3": np.arange(16)}
    plan = acsl_tf.plan_shrink(clone, keep=keep)
    zero_removed(plan)
    res = acsl_tf.apply_plan(clone, plan, verify="raise")
    block = res.model.get_layer("block_2_0")
    assert block.filters == block.infilters == 16 and block.stride == (1, 1)
    assert res.exact


def test_keep_must_respect_the_multiple_of_eight(model):
    with pytest.raises(ValueError, match="multiple of 8"):
        acsl_tf.plan_shrink(model, keep={"block_1_0_bn1": np.arange(30)})
    plan = acsl_tf.plan_shrink(model, keep={"block_1_0_bn1": np.arange(32)})
    assert plan.params_after < plan.params_before


def test_squeeze_and_excite_on_its_own_and_config_round_trip():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = SqueezeAndExcite2D(16, bottleneck_filters=8, name="se")(x)
    x = keras.layers.Conv2D(4, 1, name="head")(x)
    model = keras.Model(inputs, x)
    randomize_bn(model)
    plan = acsl_tf.plan_shrink(model, ratio=0.25)
    assert plan.params_after < plan.params_before
    zero_removed(plan)
    res = acsl_tf.apply_plan(model, plan, verify="raise")
    se = res.model.get_layer("se")
    assert se.conv_expand.filters == 12 and se.conv_reduce.filters == 8
    assert acsl_tf.profile(res.model).total_params == plan.params_after


def test_a_class_of_the_same_name_elsewhere_is_not_matched():
    class InvertedResidualBlock(keras.layers.Layer):  # noqa: F811 - another module's class
        def call(self, x):
            return x

    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1)(inputs)
    x = InvertedResidualBlock()(x)
    graph = DependencyGraph(keras.Model(inputs, keras.layers.Conv2D(2, 1)(x)))
    assert [type(op).__name__ for op in graph.unknown] == ["InvertedResidualBlock"]
