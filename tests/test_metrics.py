import keras
import numpy as np
import pytest

from acsl_tf import metrics as M


def test_confusion_matrix_hand_computed():
    y_true = np.array([[[0, 1], [2, 255]], [[1, 1], [2, 0]]])
    y_pred = np.array([[[0, 2], [2, 0]], [[1, 0], [2, 0]]])
    cm = M.confusion_matrix(y_true, y_pred, 3).numpy()
    # true 0: pred 0 twice; true 1: pred 2, 1, 0; true 2: pred 2 twice; 255 ignored
    np.testing.assert_array_equal(cm, [[2, 0, 0], [1, 1, 1], [0, 0, 2]])


def test_confusion_matrix_from_scores_and_weights():
    y_true = np.array([[0, 1, 1]])
    logits = np.array([[[3.0, -1.0], [0.2, 0.1], [-5.0, 5.0]]])  # argmax 0, 0, 1
    cm = M.confusion_matrix(y_true, logits, 2).numpy()
    np.testing.assert_array_equal(cm, [[1, 0], [1, 1]])
    cm = M.confusion_matrix(
        y_true[..., None], logits, 2, sample_weight=np.array([[1.0, 2.0, 0.5]])
    ).numpy()
    np.testing.assert_array_equal(cm, [[1, 0], [2, 0.5]])


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(Exception, match="labels must lie in"):
        M.confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        M.confusion_matrix(np.array([[0]]), np.array([[0]]), 1)


def test_iou_from_confusion():
    cm = np.array([[2, 0, 0], [1, 1, 1], [0, 0, 2]])
    iou = M.iou_from_confusion(cm)
    # class0: 2/(2+3-2)=2/3; class1: 1/(3+1-1)=1/3; class2: 2/(2+3-2)=2/3
    np.testing.assert_allclose(iou, [2 / 3, 1 / 3, 2 / 3])
    assert M.mean_iou_from_confusion(cm) == pytest.approx(5 / 9)
    cm4 = np.zeros((4, 4))
    cm4[:3, :3] = cm  # class 3 absent -> left out of the mean
    assert np.isnan(M.iou_from_confusion(cm4)[3])
    assert M.mean_iou_from_confusion(cm4) == pytest.approx(5 / 9)
    assert M.mean_iou_from_confusion(np.zeros((2, 2))) == 0.0


def test_mean_iou_metric_accumulates():
    m = M.MeanIoU(num_classes=3)
    m.update_state(np.array([[[0, 1], [2, 255]]]), np.array([[[0, 2], [2, 0]]]))
    m.update_state(np.array([[[1, 1], [2, 0]]]), np.array([[[1, 0], [2, 0]]]))
    assert float(m.result()) == pytest.approx(5 / 9, rel=1e-6)
    np.testing.assert_allclose(m.per_class_iou(), [2 / 3, 1 / 3, 2 / 3])
    m.reset_state()
    assert float(m.result()) == 0.0


def test_mean_iou_matches_keras_without_ignore():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (3, 5, 5))
    s = rng.normal(size=(3, 5, 5, 4)).astype("float32")
    ours = M.MeanIoU(4, ignore_index=None)
    ours.update_state(y, s)
    ref = keras.metrics.MeanIoU(num_classes=4)
    ref.update_state(y, s.argmax(-1))
    assert float(ours.result()) == pytest.approx(float(ref.result()), rel=1e-6)


def test_pixel_accuracy():
    m = M.PixelAccuracy(num_classes=3)
    m.update_state(np.array([[[0, 1], [2, 255]]]), np.array([[[0, 2], [2, 0]]]))
    assert float(m.result()) == pytest.approx(2 / 3)


def test_count_metrics_hand_computed():
    t = np.zeros((3, 4, 4, 1), np.float32)
    t[0, 0, 0, 0] = 10.0  # counts 10, 0, 4
    t[2] = 0.25
    p = np.zeros((3, 2, 2, 1), np.float32)  # prediction at lower resolution
    p[0] = 2.0  # 8
    p[1, 0, 0, 0] = 3.0  # 3
    p[2] = 1.0  # 4
    mae, rmse, mse = M.CountMAE(), M.CountRMSE(), M.CountMSE()
    for m in (mae, rmse, mse):
        m.update_state(t, p)
    assert float(mae.result()) == pytest.approx((2 + 3 + 0) / 3)
    assert float(rmse.result()) == pytest.approx(np.sqrt((4 + 9 + 0) / 3))
    assert float(mse.result()) == float(rmse.result())
    assert mse.name == "count_mse" and rmse.name == "count_rmse"
    # per-image sample weights
    w = M.CountMAE()
    w.update_state(t, p, sample_weight=np.array([1.0, 0.0, 1.0]))
    assert float(w.result()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "metric",
    [
        M.MeanIoU(5, ignore_index=None, argmax=True),
        M.PixelAccuracy(5, ignore_index=7),
        M.CountMAE(name="mae_x"),
        M.CountRMSE(),
        M.CountMSE(),
    ],
)
def test_get_config_round_trip(metric):
    cfg = keras.metrics.serialize(metric)
    back = keras.metrics.deserialize(cfg)
    assert type(back) is type(metric)
    assert back.get_config() == metric.get_config()


def test_metrics_in_compile_and_evaluate_segmentation():
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Conv2D(3, 1)(inp)
    model = keras.Model(inp, out)
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[M.MeanIoU(3, ignore_index=None), M.PixelAccuracy(3, ignore_index=None)],
    )
    x = np.random.default_rng(0).normal(size=(6, 4, 4, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, (6, 4, 4)).astype("int32")
    res = model.evaluate(x, y, batch_size=3, return_dict=True, verbose=0)
    pred = model.predict(x, verbose=0).argmax(-1)
    cm = np.zeros((3, 3))
    np.add.at(cm, (y.ravel(), pred.ravel()), 1)
    assert res["mean_iou"] == pytest.approx(M.mean_iou_from_confusion(cm), rel=1e-5)
    assert res["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), rel=1e-5)


def test_metrics_in_compile_and_evaluate_counting():
    inp = keras.Input((8, 8, 1))
    out = keras.layers.AveragePooling2D(2)(inp)
    model = keras.Model(inp, out)
    model.compile("sgd", "mse", metrics=[M.CountMAE(), M.CountMSE()])
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    y = np.zeros((4, 4, 4, 1), np.float32)
    y[:, 0, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    res = model.evaluate(x, y, batch_size=2, return_dict=True, verbose=0)
    pc = x.sum((1, 2, 3)) / 4.0
    err = pc - np.array([1.0, 2.0, 3.0, 4.0])
    assert res["count_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert res["count_mse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-5)
