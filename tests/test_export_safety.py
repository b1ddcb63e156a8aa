"""to_tflite / to_onnx: paths checked before converting, temporary files cleaned
up on every exit path, a quiet converter, parity for probability outputs, and
the stale-BatchNorm check."""

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

from acsl_tf import _io  # noqa: E402
from acsl_tf.export import _report, to_tflite  # noqa: E402
from acsl_tf.export import tflite as tflite_module  # noqa: E402
from acsl_tf.export._batchnorm_check import check_batchnorm_statistics  # noqa: E402


def bn_cnn():
    """8x8x3 -> Conv-BN-ReLU x2, GAP, Dense softmax (3 classes)."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="bn_cnn")


def set_batch_statistics(model, x):
    """Set every BN's moving statistics to the batch statistics of its input on
    ``x`` (in order, so later layers see already-corrected inputs)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            feed = keras.Model(model.inputs[0], layer.input)
            a = np.asarray(feed(x, training=False), np.float64)
            layer.moving_mean.assign(a.mean(axis=(0, 1, 2)).astype("float32"))
            layer.moving_variance.assign(a.var(axis=(0, 1, 2)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def rep():
    return np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def fresh(rep):
    keras.utils.set_random_seed(3)
    return set_batch_statistics(bn_cnn(), rep)


def _forbid_conversion(monkeypatch):
    def convert(*args, **kwargs):
        raise AssertionError("the conversion must not start")

    monkeypatch.setattr(tflite_module, "_convert", convert)


# --- paths are validated before the conversion ----------------------------------


@pytest.mark.parametrize(
    "path, error, match",
    [
        ("", ValueError, "`path` is empty"),
        ("newdir/", ValueError, "ends with a path separator"),
        ("existing_dir", IsADirectoryError, "existing directory"),
    ],
)
def test_bad_paths_fail_before_converting(fresh, rep, tmp_path, monkeypatch, path, error, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_dir").mkdir()
    _forbid_conversion(monkeypatch)
    with pytest.raises(error, match=match):
        to_tflite(fresh, path, quantization="int8", representative_data=rep, overwrite=True)
    assert os.listdir(tmp_path) == ["existing_dir"]
    assert os.listdir(tmp_path / "existing_dir") == []


def test_existing_file_fails_before_converting_without_overwrite(fresh, tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    _forbid_conversion(monkeypatch)
    with pytest.raises(FileExistsError, match="Received: path="):
        to_tflite(fresh, path, overwrite=False)
    assert path.read_bytes() == b"old"


def test_overwrite_is_the_default(fresh, tmp_path):
    """As keras.Model.save: a re-run replaces the file."""
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    report = to_tflite(fresh, path, verify=False)
    assert path.read_bytes()[4:8] == b"TFL3" and report.path == str(path)
    to_tflite(fresh, path, verify=False)  # a second run works too
    assert os.listdir(tmp_path) == ["m.tflite"]


# --- temporary files are cleaned up ---------------------------------------------


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize("exc", [RuntimeError("converter crashed"), KeyboardInterrupt()])
def test_failed_conversion_leaves_no_temporary_files(
    fresh, tmp_path, private_tempdir, monkeypatch, exc
):
    import tensorflow as tf

    seen = []

    def from_saved_model(saved_dir, *args, **kwargs):
        seen.append(saved_dir)
        assert os.path.isdir(saved_dir)  # the SavedModel was written
        raise exc

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", from_saved_model)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(type(exc)):
        to_tflite(fresh, out / "m.tflite")
    assert seen and os.path.basename(os.path.dirname(seen[0])).startswith(
        f"{_io.EXPORT_TMP_PREFIX}{os.getpid()}-"
    )
    assert os.listdir(private_tempdir) == []
    assert os.listdir(out) == []


def test_failed_write_leaves_no_temporary_file(fresh, tmp_path, private_tempdir, monkeypatch):
    def replace(src, dst):
        assert os.path.basename(src).startswith(f"{_io.TMP_PREFIX}{os.getpid()}-")
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        to_tflite(fresh, tmp_path / "m.tflite", verify=False)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["systmp"]
    assert os.listdir(private_tempdir) == []


def test_stale_export_directory_of_a_dead_process_is_removed(fresh, tmp_path, private_tempdir):
    import subprocess
    import sys

    pid = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    leftover = private_tempdir / f"{_io.EXPORT_TMP_PREFIX}{pid}-killed" / "saved_model"
    leftover.mkdir(parents=True)
    to_tflite(fresh, tmp_path / "m.tflite", verify=False)
    assert os.listdir(private_tempdir) == []


# --- the converter is quiet unless asked -------------------------------------------


def test_converter_is_quiet_unless_verbose(fresh, tmp_path, capfd):
    capfd.readouterr()
    to_tflite(fresh, tmp_path / "q.tflite")
    out, err = capfd.readouterr()
    assert out + err == ""
    to_tflite(fresh, tmp_path / "v.tflite", verbose=True)
    out, err = capfd.readouterr()
    assert "Saved artifact at" in out + err  # model.export speaks too


QUIET_SCRIPT = """
import numpy as np, keras
from acsl_tf.export import to_tflite
i = keras.Input((8, 8, 3))
x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(i))
m = keras.Model(i, keras.layers.Dense(3, activation="softmax")(x))
rep = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
print("=== START", flush=True)
to_tflite(m, "q.tflite", quantization="int8", representative_data=rep)
print("=== END", flush=True)
"""


def test_conversion_prints_nothing_in_a_plain_process(tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL the converter's C++ logging is on; none of
    it reaches the terminal."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order written
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    between = proc.stdout.split("=== START", 1)[1].split("=== END", 1)[0]
    assert between.strip() == "", between
    assert (tmp_path / "q.tflite").is_file()


# --- parity of probability outputs -------------------------------------------------


def wide_softmax(classes=1000):
    """GAP -> Dense(1000) softmax with tiny weights: every output is ~1e-3."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(
        classes,
        activation="softmax",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.05),
        name="probs",
    )
    return keras.Model(inputs, dense(x), name="wide_softmax")


def test_int8_softmax_with_small_probabilities_passes(rep, tmp_path):
    keras.utils.set_random_seed(5)
    model = wide_softmax()
    y = np.asarray(model(rep, training=False))
    assert y.max() < 2e-3 and abs(y.sum(-1) - 1).max() < 1e-5  # all ~1e-3
    report = to_tflite(model, tmp_path / "p.tflite", quantization="int8", representative_data=rep)
    assert report.passed
    assert report.error_scales == [1.0]
    # int8 softmax outputs step by 1/256: values ~1e-3 round to 0 or 1/256.
    assert 5e-4 < report.max_abs_error < 1 / 256
    assert report.relative_error == pytest.approx(report.max_abs_error)
    assert report.relative_error < 0.1 * report.tolerance
    # The former criterion (divide by max|y|) called this a 100 % error.
    assert report.max_abs_error / max(y.max(), 1e-3) > 0.3


def test_output_scale_rules():
    probs = np.full((4, 1000), 1e-3)
    assert _report.is_probability(probs)
    assert _report.output_scale(probs) == 1.0
    logits = np.array([[0.5, -2.0, 1.5]])
    assert not _report.is_probability(logits)
    assert _report.output_scale(logits) == 2.0
    sigmoid = np.full((4, 3), 1e-3)  # in [0, 1] but not summing to 1
    assert not _report.is_probability(sigmoid)
    assert _report.output_scale(sigmoid) == 1e-3
    assert _report.output_scale(sigmoid, quantized_range=255 / 256) == pytest.approx(255 / 256)
    assert _report.output_scale(np.zeros((2, 1))) == _report.SCALE_FLOOR
    stats = _report.compare_outputs([probs, logits], [probs + 2e-3, logits + 0.1])
    assert stats["error_scales"] == [1.0, 2.0]
    assert stats["relative_error"] == pytest.approx(0.05)


# --- stale BatchNorm statistics ------------------------------------------------------


def test_fresh_batchnorm_statistics_give_no_warning(fresh, rep, tmp_path, recwarn):
    report = to_tflite(fresh, tmp_path / "f.tflite", quantization="int8", representative_data=rep)
    assert not [w for w in recwarn if "BatchNormalization" in str(w.message)]
    check = report.batchnorm_check
    assert check["layers"] == 2 and check["stale"] == []
    assert check["max_score"] < 0.05
    assert "stale" not in str(report).lower()


def test_stale_batchnorm_statistics_warn(fresh, rep, tmp_path):
    stale = bn_cnn()
    stale.set_weights(fresh.get_weights())
    bn = stale.get_layer("bn2")
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    bn.moving_mean.assign(mean + 3.0 * np.sqrt(var))  # 3 standard deviations off
    bn.moving_variance.assign(var * 0.01)  # and 10x too narrow
    with pytest.warns(UserWarning, match="moving statistics of 1 of 2 layers") as caught:
        report = to_tflite(
            stale, tmp_path / "s.tflite", quantization="int8", representative_data=rep
        )
    message = next(str(w.message) for w in caught if "BatchNormalization" in str(w.message))
    assert "bn2" in message and "recalibrate_batchnorm" in message
    assert "parity check" in message and "Received: max score=" in message
    assert report.passed  # the artifact does reproduce the (wrong) Keras model ...
    check = report.batchnorm_check
    assert [s["layer"] for s in check["stale"]] == ["bn2"]
    assert check["stale"][0]["mean_shift"] > 2 and check["stale"][0]["std_ratio"] > 5
    assert check["scores"]["bn1"] < 0.05
    text = str(report)
    # ... and the report says that parity does not prove the model is good.
    assert "does not show that the model is accurate" in text
    assert "WARNING: stale BatchNorm statistics in 1 of 2 layers: bn2" in text
    # The check can be turned off.
    report = to_tflite(
        stale,
        tmp_path / "s2.tflite",
        quantization="int8",
        representative_data=rep,
        check_batchnorm=False,
    )
    assert report.batchnorm_check is None


def test_batchnorm_check_restores_the_layers(fresh, rep):
    before = fresh.predict(rep, verbose=0)
    check = check_batchnorm_statistics(fresh, rep)
    assert check["layers"] == 2
    for layer in fresh.layers:
        assert "call" not in vars(layer)
    np.testing.assert_array_equal(fresh.predict(rep, verbose=0), before)
    assert check_batchnorm_statistics(wide_softmax(), rep) is None


def test_batchnorm_check_reaches_nested_models(fresh, rep):
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Activation("linear")(fresh(inputs)))
    check = check_batchnorm_statistics(outer, rep)
    assert sorted(check["scores"]) == ["bn1", "bn2"]
    assert check["stale"] == []
