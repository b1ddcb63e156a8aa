"""Distiller: training wrapper from an unpruned teacher into its pruned student."""

import warnings

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import Distiller

# ----------------------------------------------------------------- models


def classifier(ch, name, softmax=False, classes=4):
    i = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(ch, 3, padding="same", name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    o = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="fc")(x)
    return keras.Model(i, o, name=name)


def segmenter(ch, name, classes=3):
    i = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(ch, 3, padding="same", name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="feat")(x)
    o = keras.layers.Conv2D(classes, 1, name="logits")(x)
    return keras.Model(i, o, name=name)


def counter(ch, name):
    i = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(ch, 3, padding="same", name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="feat")(x)
    o = keras.layers.Conv2D(1, 1, activation="relu", name="density")(x)
    return keras.Model(i, o, name=name)


BUILDERS = {"classification": classifier, "segmentation": segmenter, "counting": counter}


def data(task, n=16):
    r = np.random.default_rng(0)
    x = r.random((n, 16, 16, 3)).astype("float32")
    if task == "classification":
        y = r.integers(0, 4, n)
    elif task == "segmentation":
        y = r.integers(0, 3, (n, 16, 16))
        y[:, :4] = 255  # unlabelled band
    else:
        y = r.random((n, 16, 16, 1)).astype("float32") * 0.1
    return x, y


def copy_of(model, name):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.name = name
    return clone


def _teacher_in_trainable(distiller):
    teacher_ids = {id(v) for v in distiller.teacher.variables}
    return bool(teacher_ids & {id(v) for v in distiller.trainable_variables})


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


# ------------------------------------------------------------ training


@pytest.mark.parametrize(
    "task,jit", [("classification", True), ("segmentation", False), ("counting", False)]
)
def test_fit_trains_student_only(task, jit):
    teacher = BUILDERS[task](16, "teacher")
    student = BUILDERS[task](8, "student")
    x, y = data(task)
    d = Distiller(
        student,
        teacher,
        task=task,
        affinity_weight=1.0,
        student_features=["feat"],
        teacher_features=["feat"],
        affinity_pool_size=2,
    )
    d.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit)
    t_before, s_before = weights_of(teacher), weights_of(student)
    hist = d.fit(x, y, batch_size=16, epochs=5, verbose=0).history
    for key in ("loss", "task_loss", "distill_loss", "affinity_loss"):
        assert key in hist and len(hist[key]) == 5
        assert np.all(np.isfinite(hist[key]))
    assert hist["loss"][-1] < hist["loss"][0]
    for a, b in zip(t_before, weights_of(teacher)):
        np.testing.assert_array_equal(a, b)  # BN moving statistics included
    changed = [not np.allclose(a, b) for a, b in zip(s_before, weights_of(student))]
    assert all(changed[:2]) and sum(changed) >= len(changed) - 1
    assert teacher.trainable is True  # the user's model is not changed
    assert {id(v) for v in d.trainable_weights} == {id(v) for v in student.trainable_weights}


def test_distiller_does_not_change_the_teacher_object():
    teacher = classifier(8, "teacher")
    student = classifier(4, "student")
    frozen_layer = teacher.get_layer("bn1")
    frozen_layer.trainable = False  # the user's own choice survives too
    flags = [layer.trainable for layer in teacher.layers]
    n_trainable = len(teacher.trainable_weights)
    d = Distiller(
        student,
        teacher,
        affinity_weight=1.0,
        student_features=["feat"],
        teacher_features=["feat"],
    )
    assert teacher.trainable is True
    assert [layer.trainable for layer in teacher.layers] == flags
    assert len(teacher.trainable_weights) == n_trainable == 4  # c1 and fc kernels and biases
    teacher_ids = {id(v) for v in teacher.variables}
    student_ids = {id(v) for v in student.trainable_variables}
    assert {id(v) for v in d.trainable_variables} == student_ids
    assert {id(v) for v in d.trainable_weights} == student_ids
    assert teacher_ids <= {id(v) for v in d.non_trainable_variables}
    assert teacher_ids <= {id(v) for v in d.non_trainable_weights}
    x, y = data("classification")
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    t_before = weights_of(teacher)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(t_before, weights_of(teacher)):
        np.testing.assert_array_equal(a, b)
    assert teacher.trainable is True
    assert [layer.trainable for layer in teacher.layers] == flags
    # The user can still train the teacher on its own afterwards.
    teacher.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    teacher.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(t_before[0], teacher.get_layer("c1").get_weights()[0])


def test_fit_without_features_logs_and_metrics():
    teacher = classifier(16, "teacher")
    student = classifier(8, "student")
    x, y = data("classification")
    d = Distiller(student, teacher, temperature=2.0)
    d.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    hist = d.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y)).history
    assert set(hist) == {
        "loss",
        "task_loss",
        "distill_loss",
        "accuracy",
        "val_loss",
        "val_task_loss",
        "val_distill_loss",
        "val_accuracy",
    }
    res = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    # evaluate reports the student's accuracy
    acc = np.mean(np.argmax(np.asarray(student(x, training=False)), -1) == y)
    assert res["accuracy"] == pytest.approx(acc, abs=1e-6)
    np.testing.assert_allclose(
        np.asarray(d(x, training=False)), np.asarray(student(x, training=False)), atol=1e-6
    )


# ------------------------------------------------------ loss semantics


@pytest.mark.parametrize("task", ["classification", "segmentation", "counting"])
def test_teacher_equal_to_student_gives_zero_distillation(task):
    teacher = BUILDERS[task](8, "teacher")
    student = copy_of(teacher, "student")
    x, y = data(task)
    d = Distiller(student, teacher, task=task, student_features=["feat"], teacher_features=["feat"])
    d.compile(optimizer="sgd", run_eagerly=True)
    res = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert abs(res["distill_loss"]) < 1e-6
    assert abs(res["affinity_loss"]) < 1e-6
    assert res["task_loss"] > 0
    # affinity_weight=0 only monitors: total = task + distill
    assert res["loss"] == pytest.approx(res["task_loss"] + res["distill_loss"], rel=1e-5)


def test_affinity_with_fewer_student_channels_reduces_affinity_loss():
    teacher = segmenter(16, "teacher")
    student = segmenter(8, "student")
    x, y = data("segmentation")
    d = Distiller(
        student,
        teacher,
        task="segmentation",
        task_weight=0.0,
        distill_weight=0.0,
        affinity_weight=1.0,
        student_features="feat",
        teacher_features="feat",
    )
    assert d._student_feature_model.outputs[1].shape[-1] == 8
    assert d._teacher_feature_model.outputs[1].shape[-1] == 16
    d.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    before = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)["affinity_loss"]
    d.fit(x, y, batch_size=16, epochs=3, verbose=0)
    after = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)["affinity_loss"]
    assert before > 0 and after < before


def test_weights_and_alpha_combine_terms():
    teacher = classifier(16, "teacher")
    student = classifier(8, "student")
    x, y = data("classification")
    d = Distiller(student, teacher, alpha=0.3)
    assert (d.task_weight, d.distill_weight) == pytest.approx((0.7, 0.3))
    d.compile(optimizer="sgd", run_eagerly=True)
    res = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert res["loss"] == pytest.approx(
        0.7 * res["task_loss"] + 0.3 * res["distill_loss"], rel=1e-5
    )
    c = Distiller(counter(8, "s"), counter(16, "t"), task="counting", alpha=0.5)
    assert (c.task_weight, c.distill_weight) == (1.0, 0.5)


def test_distill_loss_values_match_reference():
    teacher = classifier(16, "teacher")
    student = classifier(8, "student")
    x, y = data("classification")
    d = Distiller(student, teacher, temperature=3.0)
    d.compile(optimizer="sgd", run_eagerly=True)
    res = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    s = np.asarray(student(x, training=False))
    t = np.asarray(teacher(x, training=False))
    ref = float(acsl_tf.distillation_kl_divergence(t, s, temperature=3.0))
    assert res["distill_loss"] == pytest.approx(ref, rel=1e-5)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, s)
    assert res["task_loss"] == pytest.approx(float(ce), rel=1e-5)
    total = d.compute_loss(x, y, d(x, training=False), training=False)
    assert float(total) == pytest.approx(res["loss"], rel=1e-5)


def test_segmentation_task_loss_ignores_255():
    teacher = segmenter(16, "teacher")
    student = segmenter(8, "student")
    x, y = data("segmentation")
    d = Distiller(student, teacher, task="segmentation")
    d.compile(optimizer="sgd", run_eagerly=True)
    res = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    s = np.asarray(student(x, training=False))
    ref = float(acsl_tf.masked_sparse_categorical_crossentropy(y, s, ignore_index=255))
    assert res["task_loss"] == pytest.approx(ref, rel=1e-5)


def test_softmax_outputs_recover_logits():
    """A softmax head gives the same distillation loss as its logits head."""
    t_logits = classifier(16, "t_logits")
    s_logits = classifier(8, "s_logits")
    t_soft = classifier(16, "t_soft", softmax=True)
    s_soft = classifier(8, "s_soft", softmax=True)
    t_soft.set_weights(t_logits.get_weights())
    s_soft.set_weights(s_logits.get_weights())
    x, y = data("classification")
    d1 = Distiller(s_logits, t_logits, temperature=4.0)
    d2 = Distiller(s_soft, t_soft, temperature=4.0)
    assert d1._student_from_logits and not d2._student_from_logits
    assert not d2._teacher_from_logits
    d1.compile(optimizer="sgd", run_eagerly=True)
    d2.compile(optimizer="sgd", run_eagerly=True)
    r1 = d1.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    r2 = d2.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert r1["distill_loss"] == pytest.approx(r2["distill_loss"], rel=1e-4, abs=1e-6)
    assert r1["task_loss"] == pytest.approx(r2["task_loss"], rel=1e-4)


# ------------------------------------------------------- serialization


def test_student_saves_and_loads(tmp_path):
    """shrink -> Distiller fine-tune -> save the plain student."""
    teacher = classifier(16, "teacher")
    student = acsl_tf.shrink(teacher, ratio=0.5)
    assert student.get_layer("feat").output.shape[-1] < 16
    x, y = data("classification")
    d = Distiller(
        student, teacher, affinity_weight=1.0, student_features=["feat"], teacher_features=["feat"]
    )
    d.compile(optimizer="adam", run_eagerly=True)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    d.student.save(path)
    back = keras.models.load_model(path)
    assert [layer.name for layer in back.layers] == [layer.name for layer in student.layers]
    np.testing.assert_allclose(
        np.asarray(back(x, training=False)), np.asarray(student(x, training=False)), atol=1e-6
    )


def test_distiller_config_roundtrip_and_save(tmp_path):
    teacher = segmenter(16, "teacher")
    student = segmenter(8, "student")
    x, y = data("segmentation")
    d = Distiller(
        student,
        teacher,
        task="segmentation",
        temperature=2.0,
        affinity_weight=0.5,
        student_features=["feat"],
        teacher_features=["feat"],
        affinity_pool_size=2,
    )
    cfg = d.get_config()
    d2 = Distiller.from_config(cfg)
    cfg2 = d2.get_config()
    for k in ("task", "temperature", "task_weight", "distill_weight", "affinity_weight"):
        assert cfg2[k] == cfg[k]
    assert cfg2["student_features"] == ["feat"] and cfg2["affinity_pool_size"] == 2
    assert d2.teacher.trainable is True
    assert not _teacher_in_trainable(d2)
    task_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    d.compile(optimizer="adam", loss=task_loss, run_eagerly=True)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", UserWarning
        )  # no "not built" / "compile not called" warnings
        d.save(path)
        back = keras.models.load_model(path)
    assert isinstance(back, Distiller) and back.compiled
    assert isinstance(back._task_loss_fn, keras.losses.SparseCategoricalCrossentropy)
    assert back.affinity_weight == 0.5 and not _teacher_in_trainable(back)
    np.testing.assert_allclose(
        np.asarray(back(x, training=False)), np.asarray(d(x, training=False)), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(back.teacher(x, training=False)),
        np.asarray(teacher(x, training=False)),
        atol=1e-6,
    )


# --------------------------------------------------------------- errors


def test_errors():
    t = classifier(16, "teacher")
    s = classifier(8, "student")
    with pytest.raises(ValueError, match="keras.Model"):
        Distiller(object(), t)
    with pytest.raises(ValueError, match="keras.Model"):
        Distiller(s, lambda z: z)
    with pytest.raises(ValueError, match="different model objects"):
        Distiller(s, s)
    with pytest.raises(ValueError, match="task"):
        Distiller(s, t, task="detection")
    with pytest.raises(ValueError, match="temperature"):
        Distiller(s, t, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        Distiller(s, t, temperature=-2.0)
    for kw in ("task_weight", "distill_weight", "affinity_weight"):
        with pytest.raises(ValueError, match=kw):
            Distiller(s, t, **{kw: -0.5})
    with pytest.raises(ValueError, match="alpha"):
        Distiller(s, t, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        Distiller(s, t, alpha=-0.1)
    with pytest.raises(ValueError, match="either `alpha`"):
        Distiller(s, t, alpha=0.5, distill_weight=1.0)
    with pytest.raises(ValueError, match="same shape"):
        Distiller(classifier(8, "s5", classes=5), t)
    with pytest.raises(ValueError, match="same shape"):
        Distiller(counter(8, "cs"), segmenter(8, "ct"), task="counting")
    with pytest.raises(ValueError, match="does not have"):
        Distiller(s, t, student_features=["nope"], teacher_features=["feat"])
    with pytest.raises(ValueError, match="does not have"):
        Distiller(s, t, student_features=["feat"], teacher_features=["nope"])
    with pytest.raises(ValueError, match="same length"):
        Distiller(s, t, student_features=["feat"], teacher_features=[])
    with pytest.raises(ValueError, match="feature layers"):
        Distiller(s, t, affinity_weight=1.0)
    with pytest.raises(ValueError, match="feature maps"):
        Distiller(s, t, student_features=["gap"], teacher_features=["gap"])
    with pytest.raises(ValueError, match="positive"):
        Distiller(s, t, task_weight=0, distill_weight=0)
    d = Distiller(s, t)
    with pytest.raises(ValueError, match="compile"):
        d.compute_loss(np.zeros((1, 16, 16, 3), "float32"), np.zeros((1,)))


def test_sample_weight_applies_to_task_loss_only():
    teacher = classifier(16, "teacher")
    student = classifier(8, "student")
    x, y = data("classification")
    d = Distiller(student, teacher)
    d.compile(optimizer="sgd", run_eagerly=True)
    res = d.evaluate(
        x, y, sample_weight=np.zeros(len(y)), batch_size=16, verbose=0, return_dict=True
    )
    assert res["task_loss"] == 0.0
    assert res["distill_loss"] > 0
    assert res["loss"] == pytest.approx(res["distill_loss"], rel=1e-6)


class _Subclassed(keras.Model):
    def __init__(self, ch, classes=4, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(ch, 3, padding="same", activation="relu")
        self.gap = keras.layers.GlobalAveragePooling2D()
        self.fc = keras.layers.Dense(classes)

    def call(self, x):
        return self.fc(self.gap(self.conv(x)))


def test_subclassed_and_sequential_models():
    x, y = data("classification")
    student = _Subclassed(4)
    student(x[:1])
    teacher = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, padding="same", name="conv"),
            keras.layers.ReLU(name="feat"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    d = Distiller(student, teacher)
    d.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    hist = d.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    # feature layers need a graph model
    with pytest.raises(ValueError, match="Functional or Sequential"):
        Distiller(student, teacher, student_features=["conv"], teacher_features=["feat"])
    # a Sequential teacher exposes its layers
    seq_student = keras.models.clone_model(teacher)
    d2 = Distiller(seq_student, teacher, student_features=["feat"], teacher_features=["feat"])
    assert d2._teacher_feature_model.outputs[1].shape[-1] == 8
    # the output shape of a subclassed model is checked when the loss is traced
    wrong = _Subclassed(4, classes=5)
    wrong(x[:1])
    d3 = Distiller(wrong, teacher)
    d3.compile(optimizer="sgd", run_eagerly=True)
    with pytest.raises(ValueError, match="same shape"):
        d3.evaluate(x, y, verbose=0)
