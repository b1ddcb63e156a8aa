"""acsl_tf.workflow on the "tiny" task sizes."""

import os
import warnings

import keras
import numpy as np
import pytest

from acsl_tf import workflow as wf
from acsl_tf.datasets import fashion_mnist

try:
    fashion_mnist.load_fashion_mnist()
    HAVE_DATA = True
except (FileNotFoundError, OSError, ValueError):
    HAVE_DATA = False

needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST is not installed")


@pytest.fixture(scope="module")
def tasks():
    if not HAVE_DATA:
        pytest.skip("Fashion-MNIST is not installed")
    return {name: wf.make_task(name, size="tiny") for name in wf.TASKS}


@needs_data
@pytest.mark.parametrize("name", wf.TASKS)
def test_make_task_shapes_and_metric(tasks, name):
    task = tasks[name]
    cfg = wf.SIZES[name]["tiny"]
    assert task.name == name
    assert task.x_val.shape[0] == cfg["n_val"]
    assert task.steps_per_epoch == cfg["n_train"] // cfg["batch_size"]
    model = task.build_model()
    assert tuple(model.input_shape[1:]) == task.input_shape
    y = wf.predict(model, task.x_val[:5])
    assert y.shape[0] == 5
    if name == "classification":
        assert y.shape == (5, 10)
    elif name == "segmentation":
        assert y.shape == (5, *task.input_shape[:2], 11)
    else:
        assert y.shape == (5, *task.y_val.shape[1:])
    x_b, y_b = next(iter(task.train_ds()))
    assert x_b.shape[0] == cfg["batch_size"] and y_b.shape[0] == cfg["batch_size"]
    m = wf.evaluate(model, task)
    if task.higher_is_better:
        assert 0.0 <= m <= 1.0
    else:
        assert m >= 0.0
    # A perfect prediction scores best.
    if name == "classification":
        perfect = np.eye(10)[task.y_val]
        assert task.score(task.y_val, perfect) == 1.0
    elif name == "segmentation":
        perfect = np.eye(11)[task.y_val]
        assert task.score(task.y_val, perfect) == pytest.approx(1.0)
    else:
        assert task.score(task.y_val, task.y_val) == 0.0
        assert task.score(task.y_val, task.y_val + 0.01) == pytest.approx(
            0.01 * np.prod(task.y_val.shape[1:])
        )
    assert task.better(1.0, 0.5) is task.higher_is_better


@needs_data
def test_full_pipeline_classification(tasks, tmp_path):
    task = tasks["classification"]
    base = task.build_model()
    hist = wf.train(base, task, 1, lr=0.05, verbose=0)
    assert len(hist.history["loss"]) == 1
    wrapped = wf.sparsity_train(base, task, epochs=1, target_flops=0.4, verbose=0)
    from acsl_tf import get_wrappers

    assert len(get_wrappers(wrapped)) == 6
    assert not get_wrappers(base)
    small = wf.prune(wrapped, target_flops=0.4)
    before = wf.record(base, task, stage="baseline")
    after = wf.record(small, task, stage="pruned")
    assert after["params"] < before["params"]
    assert after["flops"] <= 0.6 * before["flops"] * 1.02
    assert before["stage"] == "baseline" and before["metric_name"] == "accuracy"
    wf.finetune(small, task, 1, teacher=base, verbose=0)
    acc = wf.evaluate(small, task)
    assert 0.0 <= acc <= 1.0
    info = wf.export_and_measure(small, task, tmp_path / "out", runs=5, progress=False)
    for key in ("tflite", "int8"):
        assert os.path.isfile(info[f"{key}_path"])
        assert info[f"{key}_bytes"] == os.path.getsize(info[f"{key}_path"])
        assert info[f"latency_ms_{'float32' if key == 'tflite' else 'int8'}"] > 0
    assert info["int8_bytes"] < info["tflite_bytes"]
    assert info["tflite_relative_error"] < 1e-3
    row = wf.record(small, task, metric=acc, export=info)
    assert row["metric"] == acc and row["int8_bytes"] == info["int8_bytes"]
    assert "int8_path" not in row


@needs_data
def test_sparsity_methods(tasks):
    from acsl_tf import get_wrappers

    task = tasks["counting"]
    base = task.build_model()
    ns = wf.sparsity_train(base, task, epochs=0, method="ns")
    assert {w.direction for w in get_wrappers(ns)} == {"uniform"}
    acsl = wf.sparsity_train(base, task, epochs=0, method="acsl")
    assert {w.direction for w in get_wrappers(acsl)} == {"redundant"}
    small = wf.prune(acsl, target_flops=0.3, criterion="l1")
    assert small.count_params() < base.count_params()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="name"):
        wf.make_task("detection")
    with pytest.raises(ValueError, match="size"):
        wf.make_task("classification", size="huge")
    with pytest.raises(ValueError, match="Unknown configuration"):
        wf.make_task("classification", size="tiny", canvas=3)
    with pytest.raises(ValueError, match="target_flops"):
        wf.prune(None, target_flops=1.5)


@needs_data
def test_invalid_step_arguments(tasks):
    task = tasks["classification"]
    model = task.build_model()
    with pytest.raises(ValueError, match="method"):
        wf.sparsity_train(model, task, epochs=1, method="magic")
    with pytest.raises(ValueError, match="direction"):
        wf.sparsity_train(model, task, epochs=1, method="ns", direction="redundant")
    with pytest.raises(ValueError, match="epochs"):
        wf.train(model, task, -1)
    with pytest.raises(ValueError, match="optimizer"):
        wf.train(model, task, 1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="schedule"):
        wf.train(model, task, 1, schedule="linear")
    with pytest.raises(ValueError, match="lr"):
        wf.train(model, task, 1, lr=-1.0, schedule="cosine")


def test_cosine_schedule_decays_to_one_percent(tasks):
    task = tasks["classification"]
    model = task.build_model()
    wf.train(model, task, 2, lr=0.04, schedule="cosine", verbose=0, recalibrate=0)
    opt = model.optimizer
    steps = 2 * task.steps_per_epoch
    assert int(opt.iterations.numpy()) == steps
    assert float(opt.learning_rate) == pytest.approx(0.04 * 0.01, rel=1e-4)
    assert float(opt._learning_rate(0)) == pytest.approx(0.04)


@needs_data
def test_segmentation_task_with_coarse_classes():
    task = wf.make_task("segmentation", size="tiny", seed=0, classes="coarse")
    assert task.build_model().output.shape[-1] == 5
    assert int(task.y_val.max()) <= 4
    with pytest.raises(ValueError, match="classes"):
        wf.make_task("segmentation", size="tiny", classes="medium")


@needs_data
def test_compress_per_target_and_shared(tasks, monkeypatch):
    task = tasks["classification"]
    base = task.build_model()
    wf.train(base, task, 1, verbose=0)
    aims = []
    real = wf.sparsity_train

    def spy(model, task, **kw):
        aims.append(kw["target_flops"])
        return real(model, task, **kw)

    monkeypatch.setattr(wf, "sparsity_train", spy)
    base_flops = wf.record(base, task)["flops"]
    out = wf.compress(base, task, targets=(0.3, 0.5), sparsity_epochs=1, finetune_epochs=0)
    assert aims == [0.3, 0.5] and list(out) == [0.3, 0.5]
    for t, row in out.items():
        assert row["sparsity_target"] == t
        assert row["flops"] <= (1 - t) * base_flops * 1.02
        assert 0.0 <= row["metric"] <= 1.0 and 0.0 <= row["metric_pruned"] <= 1.0
        assert row["model"].count_params() == row["params"]
    aims.clear()
    shared = wf.compress(base, task, targets=(0.3, 0.5), per_target=False, method="ns",
                         sparsity_epochs=1, finetune_epochs=0)
    assert aims == [0.5] and {r["sparsity_target"] for r in shared.values()} == {0.5}
    for bad in ((), (0.5, 0.5), (1.2,), "x"):
        with pytest.raises(ValueError, match="targets"):
            wf.compress(base, task, targets=bad)


class _StaleWarning(keras.callbacks.Callback):
    """Emits BudgetStrength's end-of-training warning about moving gammas
    (the real emitter is checked in test_budget_strength_warns_moving_gammas_by_category)."""

    def on_train_end(self, logs=None):
        from acsl_tf.sparsity.callbacks import StaleStatisticsWarning

        warnings.warn(
            "BudgetStrength: the removable flops still changed by 9.0% in the last epoch",
            StaleStatisticsWarning,
            stacklevel=2,
        )


@pytest.mark.parametrize("recalibrate", [0, 5])
def test_sparsity_train_drops_the_stale_statistics_warning_only_when_it_recalibrates(
    tasks, recalibrate
):
    task = tasks["classification"]
    model = task.build_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wf.sparsity_train(
            model, task, epochs=1, verbose=0, recalibrate=recalibrate, callbacks=[_StaleWarning()]
        )
    stale = [w for w in caught if "still changed by" in str(w.message)]
    assert len(stale) == (0 if recalibrate else 1)


def test_budget_strength_warns_moving_gammas_by_category():
    from acsl_tf.sparsity.callbacks import BudgetStrength, StaleStatisticsWarning

    cb = BudgetStrength(threshold=0.05)
    cb._kind = "flops"
    cb.history = [dict(epoch=0, reduction=0.40), dict(epoch=1, reduction=0.50)]
    with pytest.warns(StaleStatisticsWarning, match="still changed by 10.0%"):
        cb._warn_if_still_moving(cb.history[-1])
    cb.history[-1]["reduction"] = 0.41  # within the tolerance: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb._warn_if_still_moving(cb.history[-1])
