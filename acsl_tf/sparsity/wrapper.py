"""`PruneLowCorrelation`: the wrapper that makes a BatchNormalization an ACSL unit."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from acsl_tf import _keras, _validation
from acsl_tf._keras import register
from acsl_tf.sparsity import affinity as affinity_lib
from acsl_tf.sparsity import schedules as schedules_lib
from acsl_tf.sparsity.regularizer import CorrelationSparsity

#: Activation layers that may follow a unit and are applied (statelessly) to
#: the BN output when the affinity statistics are computed.
STATISTICS_ACTIVATIONS = ("Activation", "ReLU", "LeakyReLU", "ELU")

METHODS = ("acsl", "cap")

#: Optimizers that normalise each parameter's update (or its sign). They cancel
#: most of the difference between the channels' L1 penalties, so ACSL and
#: Network Slimming need SGD (docs/ACSL.md).
L1_CANCELLING_OPTIMIZERS = (
    "Adam",
    "AdamW",
    "Adamax",
    "Nadam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Adafactor",
    "Lion",
    "Lamb",
)

#: Length of the ``controller_state`` weight that :class:`acsl_tf.BudgetStrength`
#: keeps in every wrapper (its layout belongs to the callback).
CONTROLLER_STATE_SIZE = 8

#: Numbers of weights a wrapper saved before ``penalty_total`` and
#: ``controller_state`` (5), and before ``budget_mask`` (7) existed; such
#: files still load.
_LEGACY_WEIGHTS = (5, 7)


def _replicas_in_sync() -> int:
    """Replicas whose batches make up the global batch (1 outside tf.distribute)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def check_strategy_supported(strategy=None) -> None:
    """Refuse a tf.distribute strategy that sparsity training does not
    support (:func:`acsl_tf.distributed.check_strategy`; default: the current
    one). Other backends have no tf.distribute strategies: nothing to check."""
    if keras.backend.backend() != "tensorflow":
        return
    from acsl_tf.distributed import check_strategy

    check_strategy(strategy)


def _optimizer_name(optimizer):
    inner = getattr(optimizer, "inner_optimizer", None)  # LossScaleOptimizer
    return type(inner if inner is not None else optimizer).__name__


@register
class PruneLowCorrelation(keras.layers.Wrapper):
    """Wraps a ``BatchNormalization`` unit and puts ACSL's adaptive,
    correlation-driven L1 penalty on its gamma.

    During training, every ``update_every`` steps, the wrapper computes the
    C x C channel affinity of the unit's feature map (the BN output after the
    activation that follows it, ``feature_activation``), keeps a running
    average of it, turns it into per-channel redundancy scores and then into
    per-channel weights ``w`` (mean 1 inside the unit). Each call adds the loss
    ``sum_i lambda_i |gamma_i|`` with
    ``lambda_i = penalty * schedule(step) * budget_scale * m_i * w_i``, where
    ``m_i`` (``budget_mask``) is 1 unless :class:`acsl_tf.BudgetStrength`
    with ``kept_weight < 1`` lowers it on the channels the budget keeps.

    All of that state lives in non-trainable weights (``affinity``,
    ``strength``, ``step``, ``updates``, ``budget_scale``, the running sum of
    the penalty ``penalty_total``, the budget controller's
    ``controller_state`` and ``budget_mask``), so it is saved with the model
    and a resumed ``fit`` continues exactly. The counters and sums are 64-bit (``int64``,
    ``float64``), except on the JAX backend without ``jax_enable_x64``, where
    they are 32-bit (docs/BACKENDS.md); files load across backends.

    While training, the wrapper also keeps the BatchNorm moving statistics
    fresh: it updates them with the momentum
    ``min(bn.momentum, moving_stats_momentum, (1 + step) / (10 + step))``
    instead of ``bn.momentum`` (0.99 by default). The penalty shrinks gammas
    and with them the activations of every later unit; a 0.99 average lags
    about 100 steps behind them, and a model evaluated in inference mode right
    after ``fit`` (or through ``validation_data``) then looks collapsed while
    it is not. The BatchNorm's own configuration is not changed:
    :func:`acsl_tf.strip_pruning` returns it as it was. ``direction="uniform"`` keeps ``w = 1``:
    that is exactly Network Slimming. ``method="cap"`` (context-aware pruning)
    also trains with a uniform penalty but still tracks the affinity, which the
    ``"cap"`` pruning criterion of :func:`acsl_tf.shrink` uses.

    You rarely build this directly: :func:`acsl_tf.prune_low_correlation`
    wraps every prunable unit of a model.

    Args:
        layer: the ``keras.layers.BatchNormalization`` to wrap (``scale=True``,
            channels-last).
        penalty: base strength lambda (>= 0).
        affinity: ``"cosine"`` or ``"attention"``.
        direction: ``"redundant"`` (default), ``"informative"`` or ``"uniform"``.
        temperature: exponent t in ``w_i = r_i^t / mean(r^t)`` (> 0).
        momentum: EMA momentum of the running affinity, in [0, 1).
        update_every: compute the affinity every k training steps (>= 1).
        warmup: number of affinity updates before the weights leave 1.
        clip: optional ``(lo, hi)`` bounds of the weights.
        center: subtract channel means before the cosine (Pearson correlation).
        attention_scale: softmax temperature of the attention affinity.
        schedule: a :mod:`acsl_tf.schedules` schedule of the strength multiplier.
        feature_activation: serialized activation layer applied to the BN
            output before the statistics (set by ``prune_low_correlation``).
        method: ``"acsl"`` or ``"cap"``.
        target_flops: optional FLOPs-reduction budget (fraction), read by
            :class:`acsl_tf.callbacks.BudgetStrength`.
        target_params: optional parameter-reduction budget (fraction).
        moving_stats_momentum: momentum of the BatchNorm moving statistics
            during sparsity training, in [0, 1), or None to keep the
            BatchNorm's own momentum. The default 0.5 follows the activations
            within a few steps even under a strength multiplier of 10-20
            (docs/ACSL.md has the measurement).
        beta_weight: the same per-channel penalty on ``|beta|``, times this
            factor (>= 0; default 0: gammas only). A channel whose gamma is
            zeroed still outputs ``act(beta)``, a constant that ``shrink``
            folds into the next layer's bias, which is exact except at the
            zero-padded borders of kxk convolutions; driving the betas of the
            channels to be removed to zero as well makes those rewrites
            exact (docs/ACSL.md has the measurement).
    """

    def __init__(
        self,
        layer,
        penalty: float = 1e-4,
        affinity: str = "cosine",
        direction: str = "redundant",
        temperature: float = 1.0,
        momentum: float = 0.9,
        update_every: int = 8,
        warmup: int = 2,
        clip=None,
        center: bool = False,
        attention_scale: float = 0.1,
        schedule=None,
        feature_activation=None,
        method: str = "acsl",
        target_flops=None,
        target_params=None,
        moving_stats_momentum=0.5,
        beta_weight: float = 0.0,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                "PruneLowCorrelation wraps a keras.layers.BatchNormalization (the unit whose "
                f"gamma is penalised). Received: layer={layer!r} of class "
                f"{type(layer).__name__}"
            )
        if not layer.scale:
            raise ValueError(
                f"BatchNormalization {layer.name!r} has scale=False, so it has no gamma to "
                "penalise. Build it with scale=True or leave it out (ignored_layers)."
            )
        kwargs.setdefault("name", f"acsl_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.penalty = _validation.non_negative(penalty, "penalty")
        _validation.choice(affinity, "affinity", affinity_lib.AFFINITIES)
        _validation.choice(direction, "direction", affinity_lib.DIRECTIONS)
        _validation.choice(method, "method", METHODS)
        if method == "cap" and direction != "uniform":
            raise ValueError(
                "method='cap' trains with a uniform penalty; use direction='uniform' with it "
                f"(or method='acsl'). Received: direction={direction!r}"
            )
        self.affinity_kind = affinity
        self.direction = direction
        self.method = method
        self.temperature = _validation.positive(temperature, "temperature")
        self.momentum = _validation.fraction(momentum, "momentum")
        self.update_every = _validation.positive_int(
            update_every, "update_every", type_error=ValueError
        )
        self.warmup = _validation.integer(warmup, "warmup", minimum=0, type_error=ValueError)
        if clip is not None:
            if (
                not isinstance(clip, (tuple, list))
                or len(clip) != 2
                or not (0 <= float(clip[0]) < float(clip[1]))
            ):
                raise ValueError(
                    f"`clip` must be None or a pair (lo, hi) with 0 <= lo < hi. Received: clip={clip!r}"
                )
            clip = (float(clip[0]), float(clip[1]))
        self.clip = clip
        self.center = bool(center)
        self.attention_scale = _validation.positive(attention_scale, "attention_scale")
        self.schedule = schedules_lib.get(schedule)
        for name, value in (("target_flops", target_flops), ("target_params", target_params)):
            if value is not None:
                _validation.fraction(value, name, low_open=True)
        self.target_flops = None if target_flops is None else float(target_flops)
        self.target_params = None if target_params is None else float(target_params)
        self.feature_activation = feature_activation
        self._feature_act = None
        if feature_activation is not None:
            act = keras.saving.deserialize_keras_object(feature_activation)
            if type(act).__name__ not in STATISTICS_ACTIVATIONS:
                raise ValueError(
                    f"`feature_activation` must be one of {STATISTICS_ACTIVATIONS}. "
                    f"Received: {type(act).__name__}"
                )
            self._feature_act = act
        if moving_stats_momentum is not None:
            moving_stats_momentum = _validation.fraction(
                moving_stats_momentum, "moving_stats_momentum"
            )
        self.moving_stats_momentum = moving_stats_momentum
        self.beta_weight = _validation.non_negative(beta_weight, "beta_weight")
        self.regularizer = CorrelationSparsity(self.penalty)
        # Set by BudgetStrength for the length of a `fit`; read when the
        # training step is traced.
        self._budget_controlled = False
        # Set by recalibrate_batchnorm: plain BatchNorm updates, no warnings.
        self._recalibrating = False
        self._warned = set()

    @property
    def tracks_affinity(self) -> bool:
        """Whether this unit computes affinity statistics during training."""
        return self.direction != "uniform" or self.method == "cap"

    def build(self, input_shape):
        check_strategy_supported()  # before any variable is created
        axis = self.layer.axis
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        rank = len(input_shape)
        if len(axes) != 1 or axes[0] % rank != rank - 1:
            raise ValueError(
                f"BatchNormalization {self.layer.name!r} normalises axis {axis}; acsl_tf supports "
                "channels-last units only (axis=-1)."
            )
        super().build(input_shape)
        channels = int(input_shape[-1])
        self.channels = channels
        common = dict(trainable=False, autocast=False)
        # 64-bit counters and sums, or 32-bit ones on JAX without x64 (whose
        # arrays would silently hold 32 bits anyway): _keras.state_dtypes.
        wide_float, wide_int = _keras.state_dtypes()
        self.affinity = self.add_weight(
            name="affinity",
            shape=(channels, channels),
            initializer="zeros",
            dtype="float32",
            aggregation="mean",
            **common,
        )
        self.strength = self.add_weight(
            name="strength",
            shape=(channels,),
            initializer="ones",
            dtype="float32",
            aggregation="mean",
            **common,
        )
        self.budget_scale = self.add_weight(
            name="budget_scale",
            shape=(),
            initializer="ones",
            dtype="float32",
            aggregation="mean",
            **common,
        )
        self.step = self.add_weight(
            name="step",
            shape=(),
            initializer="zeros",
            dtype=wide_int,
            aggregation="only_first_replica",
            **common,
        )
        self.updates = self.add_weight(
            name="updates",
            shape=(),
            initializer="zeros",
            dtype=wide_int,
            aggregation="only_first_replica",
            **common,
        )
        # (sum of batch_size * penalty, sum of batch_size) over the training
        # steps: the callbacks turn its increase over an epoch into the
        # `penalty_loss` log, weighted by batch size as Keras weights `loss`.
        self.penalty_total = self.add_weight(
            name="penalty_total",
            shape=(2,),
            initializer="zeros",
            dtype=wide_float,
            aggregation="only_first_replica",
            **common,
        )
        self.controller_state = self.add_weight(
            name="controller_state",
            shape=(CONTROLLER_STATE_SIZE,),
            initializer="zeros",
            dtype=wide_float,
            aggregation="only_first_replica",
            **common,
        )
        # Per-channel factor of the penalty set by BudgetStrength(kept_weight=):
        # 1 on the channels the budget needs, `kept_weight` on those it keeps;
        # ones without the controller.
        self.budget_mask = self.add_weight(
            name="budget_mask",
            shape=(channels,),
            initializer="ones",
            dtype="float32",
            aggregation="mean",
            **common,
        )

    def load_own_variables(self, store):
        """Loads the weights. Files saved before ``penalty_total``,
        ``controller_state`` and ``budget_mask`` existed keep the missing ones
        at their initial values (zeros; ones for the mask)."""
        own = self._trainable_variables + self._non_trainable_variables
        saved = len(store.keys())
        if saved in _LEGACY_WEIGHTS and len(own) > saved:
            for i, v in enumerate(own[:saved]):
                v.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # -- the penalty ---------------------------------------------------------------

    def current_multiplier(self):
        """``schedule(step) * budget_scale`` as a float32 scalar tensor."""
        return ops.cast(self.schedule(self.step), "float32") * ops.cast(
            self.budget_scale, "float32"
        )

    def channel_weights(self):
        """Per-channel factors of the base penalty in force now (a tensor):
        ``strength * budget_mask * schedule(step) * budget_scale``."""
        return (
            ops.convert_to_tensor(self.strength)
            * ops.convert_to_tensor(self.budget_mask)
            * self.current_multiplier()
        )

    def channel_penalties(self):
        """Per-channel strengths ``lambda_i`` (NumPy array) in force now."""
        return keras.ops.convert_to_numpy(self.penalty * self.channel_weights())

    def penalty_loss(self):
        """The loss term ``sum_i lambda_i (|gamma_i| + beta_weight |beta_i|)``
        of this unit (the beta term only when ``beta_weight > 0`` and the
        BatchNorm has a beta)."""
        weights = self.channel_weights()
        loss = self.regularizer(self.layer.gamma, weights)
        if self.beta_weight > 0 and self.layer.center:
            loss = loss + self.beta_weight * self.regularizer(self.layer.beta, weights)
        return loss

    # -- statistics ------------------------------------------------------------------

    def redundancy(self):
        """Per-channel redundancy of the running affinity (NumPy array)."""
        return keras.ops.convert_to_numpy(affinity_lib.redundancy(self.affinity))

    def _update_statistics(self, outputs):
        features = outputs
        if self._feature_act is not None:
            features = self._feature_act(features)
        features = ops.stop_gradient(ops.cast(features, "float32"))
        due = ops.equal(ops.mod(self.step, self.update_every), 0)
        previous = ops.convert_to_tensor(self.affinity)
        momentum = self.momentum

        def fresh():
            a = affinity_lib.channel_affinity(
                features,
                self.affinity_kind,
                center=self.center,
                attention_scale=self.attention_scale,
            )
            first = ops.equal(self.updates, 0)
            return ops.where(first, a, momentum * previous + (1.0 - momentum) * a)

        new_affinity = ops.cond(due, fresh, lambda: previous)
        self.affinity.assign(new_affinity)
        self.updates.assign_add(ops.cast(due, self.updates.dtype))
        if self.direction != "uniform":
            # Read back: under a distribution strategy the assignment above
            # averaged the replicas' estimates.
            synced = ops.convert_to_tensor(self.affinity)
            weights = affinity_lib.strength_weights(
                affinity_lib.redundancy(synced),
                direction=self.direction,
                temperature=self.temperature,
                clip=self.clip,
            )
            ready = ops.greater_equal(ops.convert_to_tensor(self.updates), self.warmup)
            self.strength.assign(ops.where(ready, weights, ops.ones_like(weights)))

    def moving_momentum(self):
        """Momentum of the BatchNorm moving statistics at the current step."""
        m = float(self.layer.momentum)
        if self.moving_stats_momentum is None:
            return ops.convert_to_tensor(m, "float32")
        n = ops.cast(self.step, "float32")
        return ops.minimum(min(m, self.moving_stats_momentum), (1.0 + n) / (10.0 + n))

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _check_training_setup(self):
        """Warnings at trace time of a training step: a budget without its
        controller, an optimizer that cancels the L1 penalty."""
        if (self.target_flops or self.target_params) and not self._budget_controlled:
            kind = "flops" if self.target_flops else "params"
            value = self.target_flops or self.target_params
            self._warn_once(
                "budget",
                f"The model was wrapped with a budget (target={{'{kind}': {value}}}), but no "
                "acsl_tf.BudgetStrength callback is in this `fit`, so the budget is ignored "
                "and the penalty keeps its base strength. Pass "
                "callbacks=[acsl_tf.BudgetStrength(...)] to `fit`.",
            )
        optimizer = _keras.current_call_optimizer()
        if optimizer is not None and _optimizer_name(optimizer) in L1_CANCELLING_OPTIMIZERS:
            self._warn_once(
                "optimizer",
                f"Sparsity training with {_optimizer_name(optimizer)}: adaptive optimizers "
                "normalise each parameter's update, which cancels most of the L1 penalty on "
                "the gammas and the differences between the channels' strengths. Use "
                "keras.optimizers.SGD with momentum for sparsity training (docs/ACSL.md).",
            )

    def _refresh_moving_statistics(self, old_mean, old_variance):
        """Redo the BatchNorm's last moving-statistics update with
        :meth:`moving_momentum` instead of its own momentum ``m0``.

        The BatchNorm has just set ``new = m0 * old + (1 - m0) * batch``;
        ``m * old + (1 - m) * batch`` is ``(m - k m0) * old + k * new`` with
        ``k = (1 - m) / (1 - m0)``. Working from the values the BatchNorm
        wrote (rather than setting its ``momentum`` for the call) keeps the
        layer untouched, which replicas of a ``tf.distribute`` strategy
        share, and uses its own batch moments, synchronized or masked.
        """
        bn = self.layer
        m0 = float(bn.momentum)
        if bn.renorm or m0 >= 1.0:
            return
        m = self.moving_momentum()
        k = (1.0 - m) / (1.0 - m0)
        for var, old in ((bn.moving_mean, old_mean), (bn.moving_variance, old_variance)):
            new = ops.convert_to_tensor(var)
            var.assign(ops.cast((m - k * m0) * old + k * new, var.dtype))

    def call(self, inputs, training=None, mask=None):
        fresh = (
            training is True
            and not self._recalibrating
            and self.moving_stats_momentum is not None
            and self.layer.trainable
        )
        if training is True and not self._recalibrating:
            self._check_training_setup()
        if fresh:
            # Copies: a converted variable would be read after the update.
            old_mean = ops.copy(self.layer.moving_mean)
            old_variance = ops.copy(self.layer.moving_variance)
        outputs = self.layer(inputs, training=training, mask=mask)
        if fresh:
            self._refresh_moving_statistics(old_mean, old_variance)
        if training is True:
            if self.tracks_affinity:
                self._update_statistics(outputs)
            self.step.assign_add(1)
        penalty = self.penalty_loss()
        if training is True:
            wide = self.penalty_total.dtype
            # The variable keeps the first replica's value (only_first_replica):
            # count every replica's samples, as Keras' loss does.
            batch = ops.cast(ops.shape(inputs)[0], wide) * _replicas_in_sync()
            self.penalty_total.assign_add(ops.stack([ops.cast(penalty, wide) * batch, batch]))
        self.add_loss(penalty)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "penalty": self.penalty,
                "affinity": self.affinity_kind,
                "direction": self.direction,
                "temperature": self.temperature,
                "momentum": self.momentum,
                "update_every": self.update_every,
                "warmup": self.warmup,
                "clip": None if self.clip is None else list(self.clip),
                "center": self.center,
                "attention_scale": self.attention_scale,
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "feature_activation": self.feature_activation,
                "method": self.method,
                "target_flops": self.target_flops,
                "target_params": self.target_params,
                "moving_stats_momentum": self.moving_stats_momentum,
                "beta_weight": self.beta_weight,
            }
        )
        return config
