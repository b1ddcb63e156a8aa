"""acsl_tf.interop.quantize_aware: QAT through tfmot and a verified int8 TFLite file."""

import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import acsl_tf
from acsl_tf import export, interop

pytest.importorskip("ai_edge_litert")
try:  # through the guard: a bare `import tensorflow_model_optimization` would flip tf.keras
    interop.import_tfmot()
except ImportError:  # pragma: no cover - tfmot is installed by scripts/bootstrap.sh
    pytest.skip("tf_keras / tensorflow-model-optimization not installed", allow_module_level=True)

from _models import small_cnn  # noqa: E402

INT8_TOL = export.DEFAULT_TOLERANCES["int8"]


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 3), dtype=np.float32)
    y = (x[:, :4, :, 0].mean(axis=(1, 2)) > 0.5).astype("int32") + (x[..., 1].mean((1, 2)) > 0.5)
    return x, y.astype("int32")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    keras.utils.set_random_seed(7)
    out = tmp_path_factory.mktemp("qat")
    model = acsl_tf.shrink(small_cnn((8, 8, 3), filters=(8, 12)), ratio=0.3)
    # Logits of a useful size (an untrained head gives |y| ~ 0.05, a few int8 steps).
    model.get_layer("fc").kernel.assign(model.get_layer("fc").kernel * 20.0)
    x, y = _data()
    env_before = os.environ.get("TF_USE_LEGACY_KERAS")
    result = interop.quantize_aware(
        model,
        out / "m.tflite",
        x,
        y,
        loss=_loss(),
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        epochs=2,
        batch_size=32,
        verbose=0,
        labels=y,
        num_calibration_samples=64,
        c_source_dir=out,
        c_source_name="qat_net",
    )
    return {"result": result, "model": model, "x": x, "y": y, "dir": out, "env": env_before}


def test_int8_file_matches_qat_model(qat_run):
    r = qat_run["result"]
    rep = r.report
    assert rep.passed and rep.verified and rep.num_verify_samples == 32
    assert rep.relative_error <= INT8_TOL and rep.tolerance == INT8_TOL
    # Independent check on other samples: the file against the QAT model.
    x = _data(48, seed=1)[0]
    produced = export.run_tflite(rep.path, x)[0]
    reference = r.model(x, training=False).numpy()
    rel = np.abs(produced - reference).max() / max(np.abs(reference).max(), 1e-3)
    assert rel <= INT8_TOL
    assert (produced.argmax(-1) == reference.argmax(-1)).mean() >= 0.9
    # Full integer: int8 I/O and only int8/int32 tensors.
    assert rep.inputs[0].dtype == "int8" and rep.outputs[0].dtype == "int8"
    info = export.inspect_tflite(rep.path)
    dtypes = {d for op in info["op_details"] for d in op["input_dtypes"] + op["output_dtypes"]}
    assert dtypes <= {"int8", "int32"}
    assert "CONV_2D" in info["ops"] and "FULLY_CONNECTED" in info["ops"]
    assert os.path.getsize(rep.path) == rep.size_bytes


def test_history_metrics_and_ranges(qat_run):
    r = qat_run["result"]
    assert sorted(r.history) == ["acc", "loss"]
    assert len(r.history["loss"]) == 2 and all(np.isfinite(r.history["loss"]))
    assert r.range_init_samples == 64 == r.report.extra["range_init_samples"]
    assert r.report.keras_accuracy is not None and r.report.artifact_accuracy is not None
    assert abs(r.report.keras_accuracy - r.report.artifact_accuracy) <= 0.1
    # The QAT model holds the shrunk model's parameters (plus quantizer state).
    assert interop.is_tf_keras_model(r.model)


def test_c_source_is_the_same_flatbuffer(qat_run):
    r = qat_run["result"]
    h, cc = r.c_source
    assert os.path.basename(h) == "qat_net.h" and os.path.basename(cc) == "qat_net.cc"
    text = open(cc).read()
    array = re.search(r"_data\[\] = \{(.*?)\};", text, re.S).group(1)
    data = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", array))
    with open(r.report.path, "rb") as f:
        assert data == f.read()
    assert "qat_net_register_ops" in open(h).read()


def test_processes_keras_unchanged(qat_run):
    assert os.environ.get("TF_USE_LEGACY_KERAS") == qat_run["env"]
    assert keras.__version__.startswith("3.")
    assert tf.keras.layers.Dense is keras.layers.Dense
    assert tf.keras.Model is keras.Model
    # The input model is untouched and still a Keras 3 model.
    assert isinstance(qat_run["model"], keras.Model)
    assert not interop.is_tf_keras_model(qat_run["model"])


def test_range_initialization_sets_ranges_from_data():
    from acsl_tf.interop.qat import _init_ranges

    tfmot = interop.import_tfmot()
    legacy = interop.to_tf_keras(small_cnn())
    x = _data(64)[0]
    q = tfmot.quantization.keras.quantize_model(legacy)
    before = {v.name: v.numpy() for v in q.weights}
    assert _init_ranges(q, x, batch_size=32) == 64
    names = [v.name for v in q.weights]
    # The output range of the last layer: from [-6, 6] to the data's range.
    out_max = [v for v in q.weights if v.name.endswith("post_activation_max:0")]
    out_max = out_max or [v for v in q.weights if "fc" in v.name and v.name.endswith("_max:0")]
    assert out_max, names
    # What the initialization measures: the mean over batches of the batch maximum
    # (training mode, as during fine-tuning).
    expected = np.mean([max(legacy(x[k : k + 32], training=True).numpy().max(), 0.0)
                        for k in (0, 32)])  # fmt: skip
    assert float(out_max[-1].numpy()) < 6.0
    assert float(out_max[-1].numpy()) == pytest.approx(expected, rel=0.05)
    # Everything but the ranges is restored (BatchNorm statistics, ...).
    for v in q.weights:
        if not re.search(r"_(min|max):0$", v.name):
            assert np.array_equal(v.numpy(), before[v.name]), v.name


@pytest.mark.slow
def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    x, y = _data(64)
    real = export.run_tflite

    def broken(content, xs, threads=1):
        return [out + 1.0 for out in real(content, xs, threads=threads)]

    monkeypatch.setattr(export, "run_tflite", broken)
    path = tmp_path / "bad.tflite"
    with pytest.raises(export.ParityError, match=r"Nothing was written") as e:
        interop.quantize_aware(
            small_cnn(), path, x, y, loss=_loss(), epochs=1, batch_size=32, verbose=0
        )
    assert not path.exists()
    assert e.value.report.relative_error > INT8_TOL


# ---------------------------------------------------------------- bad inputs


def test_tfmot_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)
    x, y = _data(16)
    with pytest.raises(
        ImportError, match=r"tensorflow_model_optimization.*pip install .*tensorflow-model-opt"
    ):
        interop.quantize_aware(small_cnn(), tmp_path / "m.tflite", x, y, loss=_loss())
    assert not (tmp_path / "m.tflite").exists()
    assert tf.keras.layers.Dense is keras.layers.Dense


def test_bad_arguments(tmp_path):
    x, y = _data(16)
    m = small_cnn()
    with pytest.raises(ValueError, match=r"needs the training loss.*Received: loss=None"):
        interop.quantize_aware(m, tmp_path / "m.tflite", x, y)
    with pytest.raises(ValueError, match=r"Received: x=None"):
        interop.quantize_aware(m, tmp_path / "m.tflite", loss=_loss())
    with pytest.raises(ValueError, match=r"Received: epochs=0"):
        interop.quantize_aware(m, tmp_path / "m.tflite", x, y, loss=_loss(), epochs=0)
    (tmp_path / "exists.tflite").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        interop.quantize_aware(m, tmp_path / "exists.tflite", x, y, loss=_loss())
    with pytest.raises(TypeError, match="expects a Keras 3 model"):
        interop.quantize_aware(interop.to_tf_keras(m), tmp_path / "m.tflite", x, y, loss=_loss())
    with pytest.raises(ValueError, match=r"PruneLowCorrelation.*strip_pruning"):
        interop.quantize_aware(
            acsl_tf.prune_low_correlation(m), tmp_path / "m.tflite", x, y, loss=_loss()
        )
    with pytest.raises(ValueError, match=r"one-shot iterable.*representative_data"):
        interop.quantize_aware(m, tmp_path / "m.tflite", iter([(x, y)]), loss=_loss())
    with pytest.raises(ValueError, match=r"`labels` must have one entry.*Received: labels.shape"):
        interop.quantize_aware(m, tmp_path / "m.tflite", x, y, loss=_loss(), labels=y[:3])
    inp = keras.Input((8, 8, 3))
    half = keras.layers.Conv2D(3, 3, name="c")(inp) * 0.5  # a TF op layer in tf_keras
    raw = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(half)))
    with pytest.raises(ValueError, match=r"TensorFlow-op layers.*Received: layers=\['tf.math"):
        interop.quantize_aware(raw, tmp_path / "m.tflite", x, y, loss=_loss())
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    with pytest.raises(ValueError, match=r"learning_rate.*schedule"):
        interop.quantize_aware(
            m,
            tmp_path / "m.tflite",
            x,
            y,
            loss=_loss(),
            optimizer=keras.optimizers.Adam(schedule),
            verbose=0,
        )
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow
def test_segmentation_shaped_model(tmp_path):
    """Per-pixel softmax with MaxPooling, ZeroPadding, bilinear UpSampling and Concatenate."""
    from test_interop_convert import _randomize, unet_like

    model = _randomize(unet_like())
    rng = np.random.default_rng(5)
    x = rng.random((64, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 5, (64, 16, 16)).astype("int32")
    r = interop.quantize_aware(
        model,
        tmp_path / "seg.tflite",
        x,
        y,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        epochs=1,
        batch_size=16,
        verbose=0,
    )
    assert r.report.passed and r.report.relative_error <= INT8_TOL
    assert {"CONCATENATION", "RESIZE_BILINEAR", "CONV_2D"} <= set(r.report.ops)
    assert r.report.outputs[0].shape == [-1, 16, 16, 5] and r.report.outputs[0].dtype == "int8"
    assert r.report.argmax_agreement >= 0.9  # per pixel


@pytest.mark.slow
def test_benchmark_quick_run(capsys):
    """benchmarks/qat.py --quick: every stage runs and the table has all rows."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "qat.py")
    spec = importlib.util.spec_from_file_location("qat_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--no-write"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 6  # header + six stages
    assert sum("QAT" in line for line in table) == 2
    assert tf.keras.layers.Dense is keras.layers.Dense


def _nearest_unet():
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="enc")(inp)
    d = keras.layers.MaxPooling2D(name="pool")(a)
    d = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="mid")(d)
    u = keras.layers.UpSampling2D(2, name="up")(d)  # nearest
    x = keras.layers.Concatenate(name="cat")([a, u])
    return keras.Model(inp, keras.layers.Conv2D(3, 1, name="logits")(x))


@pytest.mark.parametrize("lower", [True, False])
def test_nearest_upsampling_is_lowered_in_the_qat_file(tmp_path, lower):
    """tf_keras converts nearest UpSampling2D to RESIZE_NEAREST_NEIGHBOR, which
    XNNPACK does not take in int8 (the graph splits); lowered, it is
    CONCATENATION + RESHAPE in one delegated partition, with the same parity."""
    tfk = interop.import_tf_keras()
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.random((48, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, 3, (48, 8, 8)).astype("int32")
    r = interop.quantize_aware(
        _nearest_unet(), tmp_path / "u.tflite", x, y, loss=_loss(), epochs=1, batch_size=16,
        verbose=0, lower_upsampling=lower,
    )  # fmt: skip
    assert r.report.passed and r.report.relative_error <= INT8_TOL
    placement = export.inspect_delegation(tmp_path / "u.tflite")
    if lower:
        assert "RESIZE_NEAREST_NEIGHBOR" not in r.report.ops
        assert {"CONCATENATION", "RESHAPE"} <= set(r.report.ops)
        assert r.report.extra["upsampling_lowered"] == ["up"]
        assert placement["partitions"] == 1 and placement["not_delegated"] == {}
    else:
        assert "RESIZE_NEAREST_NEIGHBOR" in r.report.ops
        assert "upsampling_lowered" not in r.report.extra
        assert placement["not_delegated"].get("RESIZE_NEAREST_NEIGHBOR") == 1
    # the class is restored
    assert not getattr(tfk.layers.UpSampling2D.call, "_acsl_tf_lowered", False)
