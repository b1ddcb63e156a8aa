"""Knowledge distillation from the unpruned model into its pruned copy.

:class:`Distiller` is a ``keras.Model`` whose ``fit`` trains a student (the
pruned model) on the task loss plus a distillation loss computed from a frozen
teacher (the unpruned model). ``evaluate``/``predict``/``call`` use the student
only, and ``distiller.student`` is the plain Keras model to save and export.
The loss formulas live in :mod:`acsl_tf.losses`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from acsl_tf import _keras
from acsl_tf._keras import register
from acsl_tf.distill import losses

__all__ = ["Distiller"]

TASKS = ("classification", "segmentation", "counting")


def _check_weight(name: str, value, upper: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}") from None
    if not (math.isfinite(v) and v >= 0 and (upper is None or v <= upper)):
        bound = f"in [0, {upper:g}]" if upper is not None else ">= 0"
        raise ValueError(f"`{name}` must be a finite number {bound}. Received: {name}={value!r}")
    return v


def _names_list(name: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    try:
        value = list(value)
    except TypeError:
        raise ValueError(
            f"`{name}` must be a list of layer names. Received: {name}={value!r}"
        ) from None
    for v in value:
        if not isinstance(v, str):
            raise ValueError(f"`{name}` must be a list of layer names. Received: {name}={value!r}")
    return value


def _output_layer(model: keras.Model):
    """The layer producing the model's (single) output, or None if unknown."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1] if model.layers else None
    if not _keras.is_functional(model):
        return None
    outs = model.get_config().get("output_layers")
    if not outs:
        return None
    first = outs
    while isinstance(first, (list, tuple)) and first and isinstance(first[0], (list, tuple)):
        first = first[0]
    if isinstance(first, dict):  # dict-structured outputs
        first = next(iter(first.values()))
    try:
        return model.get_layer(first[0])
    except (ValueError, TypeError, IndexError):
        return None


def _ends_with_softmax(model: keras.Model) -> bool:
    layer = _output_layer(model)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    act = getattr(layer, "activation", None)
    if act is None:
        return False
    try:
        return keras.activations.serialize(act) == "softmax"
    except (ValueError, TypeError):
        return False


def _single_output_shape(model: keras.Model, role: str):
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"Distiller supports models with a single output; the {role} has "
            f"{len(outputs)}. Received: {role}.outputs={outputs}"
        )
    return tuple(outputs[0].shape)


def _feature_model(model: keras.Model, names: list[str], role: str, arg: str) -> keras.Model:
    if not _keras.is_functional(model) or not getattr(model, "inputs", None):
        raise ValueError(
            f"`{arg}` needs a Functional or Sequential {role} built on an Input, so "
            f"that intermediate layers can be read. Received: {role} of type "
            f"{type(model).__name__}"
        )
    feats = []
    existing = [layer.name for layer in model.layers]
    for n in names:
        if n not in existing:
            shown = ", ".join(existing[:30]) + (", ..." if len(existing) > 30 else "")
            raise ValueError(
                f"`{arg}` names a layer that the {role} does not have. Existing layers: "
                f"[{shown}]. Received: {arg}={names!r} (missing {n!r})"
            )
        layer = model.get_layer(n)
        try:
            out = layer.output
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"Layer {n!r} of the {role} has no unique output (it is called several "
                f"times or not at all), so it cannot be used in `{arg}`. Received: {arg}={names!r}"
            ) from e
        if isinstance(out, (list, tuple)) or len(out.shape) not in (3, 4):
            raise ValueError(
                f"Affinity distillation needs (batch, height, width, channels) feature "
                f"maps; layer {n!r} of the {role} outputs {getattr(out, 'shape', out)}. "
                f"Received: {arg}={names!r}"
            )
        feats.append(out)
    return keras.Model(
        model.inputs, [model.outputs[0], *feats], name=f"{model.name}_{role}_features"
    )


class _FunctionLoss(keras.losses.Loss):
    """A loss function ``fn(y_true, y_pred)`` with Keras' reduction and sample weights."""

    def __init__(self, fn):
        super().__init__(name="task_loss")
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


@register
class Distiller(keras.Model):
    """Trains a pruned student against its frozen, unpruned teacher.

    ``fit`` minimises::

        loss = task_weight * task_loss
             + distill_weight * distill_loss
             + affinity_weight * affinity_loss
             + sum(student.losses)          # the student's own regularisers

    where, per ``task``:

    - ``"classification"``: ``task_loss`` is sparse categorical cross-entropy
      on integer labels and ``distill_loss`` is Hinton's
      ``T**2 * KL(softmax(t/T) || softmax(s/T))``;
    - ``"segmentation"``: ``task_loss`` is pixel-wise sparse categorical
      cross-entropy that skips ``ignore_index`` (255) and ``distill_loss`` is
      the pixel-wise KL (mean over all pixels, ``T**2`` scaled);
    - ``"counting"``: ``task_loss = MSE(student, ground truth)`` and
      ``distill_loss = MSE(student, teacher)`` on the density maps.

    ``affinity_loss`` (any task) is the pair-wise spatial-affinity loss between
    the named intermediate feature maps (:func:`acsl_tf.losses.affinity_distillation_loss`);
    the student's maps may have fewer channels than the teacher's.

    The teacher is frozen inside the Distiller: it is always called with
    ``training=False``, and its weights are left out of the Distiller's
    ``trainable_weights`` (they appear in ``non_trainable_weights``), so only
    the student's trainable weights are updated. The teacher object itself is
    not changed: its ``trainable`` flags stay as they were.
    ``call``/``predict``/``evaluate`` run the student only. The logs contain
    ``loss`` (total), ``task_loss``, ``distill_loss``, ``affinity_loss`` (when
    feature layers are given) and the compiled metrics of the student.

    Args:
        student: The model to train (typically the output of ``shrink``).
        teacher: The unpruned model; must be a different object with the same
            output shape.
        task: ``"classification"``, ``"segmentation"`` or ``"counting"``.
        temperature: Softening temperature ``T > 0`` (classification and
            segmentation).
        alpha: Shortcut for the weights, as in the thesis formulas. For
            classification/segmentation ``alpha`` in ``[0, 1]`` gives
            ``(1 - alpha) * task + alpha * distill``; for counting it gives
            ``task + alpha * distill``. Cannot be combined with
            ``task_weight``/``distill_weight``.
        distill_weight: Weight of the distillation term (default 1.0).
        task_weight: Weight of the task term (default 1.0).
        affinity_weight: Weight of the affinity term (default 0.0; with
            feature layers and weight 0 the term is only logged).
        student_features: Names of student layers whose outputs are
            distilled with the affinity loss, paired by position with
        teacher_features: the names of the matching teacher layers.
        affinity_pool_size: Average-pooling window applied to the feature
            maps before building the ``N x N`` affinities (bounds ``N``).
        from_logits: Whether the outputs are logits. ``None`` infers it from
            each model's last layer (a softmax activation or ``Softmax``
            layer means probabilities, whose logits are recovered as
            ``log(p)``).
        ignore_index: Label skipped by the segmentation task loss (``None``
            to use every pixel).
        **kwargs: Passed to ``keras.Model`` (e.g. ``name``).

    Raises:
        ValueError: For non-Keras models, the same object as student and
            teacher, an unknown task, negative weights or temperature,
            mismatched output shapes, or feature layer names that do not exist.

    Example:
        >>> small = acsl_tf.shrink(model)          # pruned copy
        >>> d = acsl_tf.Distiller(small, model, task="classification", temperature=4.0)
        >>> d.compile(optimizer="adam", metrics=["accuracy"])
        >>> d.fit(x, y, epochs=5)
        >>> d.student.save("small.keras")
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        *,
        task: str = "classification",
        temperature: float = 4.0,
        alpha: float | None = None,
        distill_weight: float | None = None,
        task_weight: float | None = None,
        affinity_weight: float = 0.0,
        student_features: list[str] | str | None = None,
        teacher_features: list[str] | str | None = None,
        affinity_pool_size: int = 1,
        from_logits: bool | None = None,
        ignore_index: int | None = 255,
        **kwargs,
    ):
        for role, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, keras.Model):
                raise ValueError(
                    f"`{role}` must be a Keras 3 `keras.Model`. Received: {role} of type "
                    f"{type(m).__module__}.{type(m).__name__}"
                )
        if student is teacher:
            raise ValueError(
                "`student` and `teacher` must be different model objects (the teacher is "
                "frozen). Pass the pruned copy as the student, e.g. the output of "
                "`acsl_tf.shrink(model)` or `keras.models.clone_model(model)`. "
                f"Received: student is teacher (name={student.name!r})"
            )
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        temperature = float(losses._check_temperature(temperature))
        affinity_weight = _check_weight("affinity_weight", affinity_weight)
        if alpha is not None:
            if task_weight is not None or distill_weight is not None:
                raise ValueError(
                    "Pass either `alpha` or `task_weight`/`distill_weight`, not both. "
                    f"Received: alpha={alpha!r}, task_weight={task_weight!r}, "
                    f"distill_weight={distill_weight!r}"
                )
            if task == "counting":
                alpha = _check_weight("alpha", alpha)
                task_weight, distill_weight = 1.0, alpha
            else:
                alpha = _check_weight("alpha", alpha, upper=1.0)
                task_weight, distill_weight = 1.0 - alpha, alpha
        task_weight = _check_weight("task_weight", 1.0 if task_weight is None else task_weight)
        distill_weight = _check_weight(
            "distill_weight", 1.0 if distill_weight is None else distill_weight
        )
        if task_weight == 0 and distill_weight == 0 and affinity_weight == 0:
            raise ValueError(
                "At least one of `task_weight`, `distill_weight`, `affinity_weight` must be "
                "positive. Received: all three are 0"
            )
        if from_logits is not None and not isinstance(from_logits, bool):
            raise ValueError(
                f"`from_logits` must be True, False or None. Received: from_logits={from_logits!r}"
            )
        if (
            isinstance(affinity_pool_size, bool)
            or not isinstance(affinity_pool_size, int)
            or (affinity_pool_size < 1)
        ):
            raise ValueError(
                "`affinity_pool_size` must be an integer >= 1. "
                f"Received: affinity_pool_size={affinity_pool_size!r}"
            )
        student_features = _names_list("student_features", student_features)
        teacher_features = _names_list("teacher_features", teacher_features)
        if len(student_features) != len(teacher_features):
            raise ValueError(
                "`student_features` and `teacher_features` are paired by position and "
                f"must have the same length. Received: student_features={student_features!r}, "
                f"teacher_features={teacher_features!r}"
            )
        if affinity_weight > 0 and not student_features:
            raise ValueError(
                "`affinity_weight` > 0 needs feature layers: pass `student_features` and "
                f"`teacher_features`. Received: affinity_weight={affinity_weight}"
            )

        s_shape = _single_output_shape(student, "student")
        t_shape = _single_output_shape(teacher, "teacher")
        if s_shape is not None and t_shape is not None and s_shape[1:] != t_shape[1:]:
            raise ValueError(
                "The student and the teacher must produce outputs of the same shape for "
                f"{'density' if task == 'counting' else 'logit'} distillation. "
                f"Received: student output shape={s_shape}, teacher output shape={t_shape}"
            )

        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.task = task
        self.temperature = temperature
        self.task_weight = task_weight
        self.distill_weight = distill_weight
        self.affinity_weight = affinity_weight
        self.student_features = student_features
        self.teacher_features = teacher_features
        self.affinity_pool_size = affinity_pool_size
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        if from_logits is None:
            self._student_from_logits = not _ends_with_softmax(student)
            self._teacher_from_logits = not _ends_with_softmax(teacher)
        else:
            self._student_from_logits = self._teacher_from_logits = from_logits

        self._student_feature_model = None
        self._teacher_feature_model = None
        if student_features:
            self._student_feature_model = _feature_model(
                student, student_features, "student", "student_features"
            )
            self._teacher_feature_model = _feature_model(
                teacher, teacher_features, "teacher", "teacher_features"
            )
            for sn, tn, so, to in zip(
                student_features,
                teacher_features,
                self._student_feature_model.outputs[1:],
                self._teacher_feature_model.outputs[1:],
            ):
                ss, ts = tuple(so.shape), tuple(to.shape)
                if len(ss) != len(ts) or ss[1:-1] != ts[1:-1]:
                    raise ValueError(
                        "Paired feature maps must have the same spatial size (channels may "
                        f"differ). Received: student layer {sn!r} shape={ss}, teacher layer "
                        f"{tn!r} shape={ts}"
                    )

        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        self.affinity_loss_tracker = (
            keras.metrics.Mean(name="affinity_loss") if student_features else None
        )
        self._task_loss_fn = None
        self._user_task_loss = None
        if student.built and teacher.built:
            self.built = True

    # ------------------------------------------------------- frozen teacher

    def _teacher_variable_ids(self) -> set:
        teacher = getattr(self, "teacher", None)
        return {id(v) for v in teacher.variables} if teacher is not None else set()

    @property
    def trainable_weights(self):
        """The trainable weights of the student (the teacher's are excluded)."""
        frozen = self._teacher_variable_ids()
        return [v for v in super().trainable_weights if id(v) not in frozen]

    @property
    def trainable_variables(self):
        """Same as :attr:`trainable_weights`."""
        frozen = self._teacher_variable_ids()
        return [v for v in super().trainable_variables if id(v) not in frozen]

    @property
    def non_trainable_weights(self):
        """Every weight that is not in :attr:`trainable_weights`, the teacher's included."""
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    @property
    def non_trainable_variables(self):
        """Every variable that is not in :attr:`trainable_variables`."""
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]

    # ------------------------------------------------------------------ API

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training of the student.

        Args:
            optimizer: Any Keras optimizer (or its name).
            loss: The task loss ``fn(y_true, y_pred)`` or a Keras loss name;
                ``None`` picks the task default (sparse categorical
                cross-entropy with the student's ``from_logits``, with
                ``ignore_class=ignore_index`` for segmentation; mean squared
                error for counting).
            metrics: Metrics of the student's output against ``y``.
            **kwargs: Passed to ``keras.Model.compile`` (``jit_compile``,
                ``run_eagerly``, ``steps_per_execution``, ...).
        """
        if kwargs.get("loss_weights") is not None:
            raise ValueError(
                "The Distiller weighs its terms with `task_weight`, `distill_weight` and "
                "`affinity_weight` (constructor arguments), not `loss_weights`. "
                f"Received: loss_weights={kwargs['loss_weights']!r}"
            )
        self._user_task_loss = loss
        if loss is None:
            if self.task == "classification":
                loss = keras.losses.SparseCategoricalCrossentropy(
                    from_logits=self._student_from_logits, name="task_loss"
                )
            elif self.task == "segmentation":
                loss = keras.losses.SparseCategoricalCrossentropy(
                    from_logits=self._student_from_logits,
                    ignore_class=self.ignore_index,
                    name="task_loss",
                )
            else:
                loss = keras.losses.MeanSquaredError(name="task_loss")
        else:
            loss = keras.losses.get(loss)
            if loss is None or not callable(loss):
                raise ValueError(
                    f"`loss` must be a Keras loss or a callable. Received: loss={loss!r}"
                )
            if not isinstance(loss, keras.losses.Loss):
                # gives plain functions Keras' reduction and sample weighting
                loss = _FunctionLoss(loss)
        self._task_loss_fn = loss
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and self._user_task_loss is not None:
            config["loss"] = keras.saving.serialize_keras_object(self._user_task_loss)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Total distillation loss for a batch (see the class docstring).

        ``y_pred`` is the student's output; the teacher is evaluated on ``x``.
        With feature layers the student is run once more to read them.
        """
        s_feats = []
        if self._student_feature_model is not None:
            s_out = self._student_feature_model(x, training=training)
            y_pred, s_feats = s_out[0], list(s_out[1:])
        elif y_pred is None:
            y_pred = self.student(x, training=training)
        t_pred, t_feats = self._run_teacher(x)
        return self._loss_terms(y, y_pred, sample_weight, t_pred, s_feats, t_feats)["loss"]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        t_pred, t_feats = self._run_teacher(x)
        with tf.GradientTape() as tape:
            y_pred, s_feats = self._run_student(x, training=True)
            terms = self._loss_terms(y, y_pred, sample_weight, t_pred, s_feats, t_feats)
            loss = terms["loss"]
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        weights = self.student.trainable_weights
        grads = tape.gradient(loss, weights)
        self.optimizer.apply_gradients(zip(grads, weights))
        return self._update_metrics(terms, x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        t_pred, t_feats = self._run_teacher(x)
        y_pred, s_feats = self._run_student(x, training=False)
        terms = self._loss_terms(y, y_pred, sample_weight, t_pred, s_feats, t_feats)
        return self._update_metrics(terms, x, y, y_pred, sample_weight)

    # ------------------------------------------------------------ internals

    def _run_teacher(self, x):
        if self._teacher_feature_model is not None:
            out = self._teacher_feature_model(x, training=False)
            return ops.stop_gradient(out[0]), [ops.stop_gradient(o) for o in out[1:]]
        return ops.stop_gradient(self.teacher(x, training=False)), []

    def _run_student(self, x, training):
        if self._student_feature_model is not None:
            out = self._student_feature_model(x, training=training)
            return out[0], list(out[1:])
        return self.student(x, training=training), []

    def _loss_terms(self, y, y_pred, sample_weight, t_pred, s_feats, t_feats):
        if self._task_loss_fn is None:
            raise ValueError(
                "The Distiller must be compiled before training or evaluation: call "
                "`distiller.compile(optimizer=...)`. Received: no task loss"
            )
        if isinstance(y_pred, (list, tuple)) or isinstance(t_pred, (list, tuple)):
            raise ValueError(
                "Distiller supports models with a single output. Received: a structured "
                "output of the student or teacher"
            )
        y_pred_f = ops.cast(y_pred, "float32")
        t_pred_f = ops.cast(t_pred, "float32")
        if y is None:
            raise ValueError("The Distiller needs targets `y` for the task loss. Received: y=None")
        task = self._task_loss_fn(y, y_pred_f, sample_weight=sample_weight)
        task = ops.cast(task, "float32")
        if self.task == "counting":
            losses._check_same_shape(t_pred_f, y_pred_f, "density maps")
            distill = ops.mean(ops.square(y_pred_f - t_pred_f))
        else:
            s_logits = (
                y_pred_f if self._student_from_logits else losses.probabilities_to_logits(y_pred_f)
            )
            t_logits = (
                t_pred_f if self._teacher_from_logits else losses.probabilities_to_logits(t_pred_f)
            )
            distill = losses.distillation_kl_divergence(
                t_logits, s_logits, temperature=self.temperature, from_logits=True
            )
        total = self.task_weight * task + self.distill_weight * distill
        terms = {"task_loss": task, "distill_loss": distill}
        if s_feats:
            aff = ops.zeros((), "float32")
            for sf, tf_ in zip(s_feats, t_feats):
                aff = aff + losses.affinity_distillation_loss(
                    ops.cast(tf_, "float32"), ops.cast(sf, "float32"), self.affinity_pool_size
                )
            aff = aff / len(s_feats)
            terms["affinity_loss"] = aff
            if self.affinity_weight > 0:
                total = total + self.affinity_weight * aff
        reg = self.student.losses
        if reg:
            total = total + ops.cast(ops.sum([ops.cast(r, "float32") for r in reg]), "float32")
        terms["loss"] = total
        return terms

    def _update_metrics(self, terms, x, y, y_pred, sample_weight):
        batch = ops.shape(_first_tensor(x))[0]
        self._loss_tracker.update_state(terms["loss"], sample_weight=batch)
        self.task_loss_tracker.update_state(terms["task_loss"], sample_weight=batch)
        self.distill_loss_tracker.update_state(terms["distill_loss"], sample_weight=batch)
        if self.affinity_loss_tracker is not None:
            self.affinity_loss_tracker.update_state(terms["affinity_loss"], sample_weight=batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # -------------------------------------------------------- serialization

    def get_config(self):
        config = {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "task": self.task,
            "temperature": self.temperature,
            "task_weight": self.task_weight,
            "distill_weight": self.distill_weight,
            "affinity_weight": self.affinity_weight,
            "student_features": list(self.student_features),
            "teacher_features": list(self.teacher_features),
            "affinity_pool_size": self.affinity_pool_size,
            "from_logits": self.from_logits,
            "ignore_index": self.ignore_index,
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        student = keras.saving.deserialize_keras_object(
            config.pop("student"), custom_objects=custom_objects
        )
        teacher = keras.saving.deserialize_keras_object(
            config.pop("teacher"), custom_objects=custom_objects
        )
        config.pop("trainable", None)  # the teacher stays frozen whatever the flag
        return cls(student, teacher, **config)


def _first_tensor(x):
    """First non-None tensor of a (possibly nested) input structure."""
    return next(t for t in keras.tree.flatten(x) if t is not None)
