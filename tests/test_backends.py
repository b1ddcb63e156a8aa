"""The JAX backend: sparsity training gives the numbers TensorFlow gives,
shrink/profile/plans work on JAX models, JAX-trained models export under
TensorFlow, and TensorFlow-only functions say what to do.

Each backend runs in its own process (KERAS_BACKEND is read when Keras is
first imported): tests/scripts/backend_equivalence.py trains the same tiny
wrapped CNN from the same weights on the same batches and prints its state;
tests/scripts/backend_export.py loads the JAX-saved files under TensorFlow
and exports them to TFLite.

Tolerance of the equivalence (docs/BACKENDS.md): float state, logs and the
controller's history agree within ``rtol=1e-5, atol=1e-5`` (measured: at
most 5e-6 relative, from float32 round-off in different kernels); counters,
budget masks, channel selections and FLOPs are equal.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from acsl_tf import _keras

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "backend_equivalence.py")
EXPORT = os.path.join(HERE, "scripts", "backend_export.py")
ROOT = os.path.dirname(HERE)

RTOL = ATOL = 1e-5
FLOAT_STATE = ("affinity", "strength", "budget_scale", "gamma", "moving_mean")

needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason='jax is not installed: pip install "acsl_tf[jax]" (scripts/bootstrap.sh installs it)',
)


def _env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, backend):
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_env(backend),
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("backends"))
    tf = _run([SCRIPT, "tensorflow", work], "tensorflow")
    jax = _run([SCRIPT, "jax", work, os.path.join(work, "tensorflow.keras")], "jax")
    export = _run([EXPORT, work, "jax"], "tensorflow")
    return {"tf": tf, "jax": jax, "export": export}


def _close(actual, expected, **kw):
    np.testing.assert_allclose(
        np.asarray(actual, float),
        np.asarray(expected, float),
        **({"rtol": RTOL, "atol": ATOL} | kw),
    )


@needs_jax
def test_training_state_is_the_same_on_both_backends(runs):
    tf, jax = runs["tf"]["budget"], runs["jax"]["budget"]
    assert runs["tf"]["backend"] == "tensorflow" and runs["jax"]["backend"] == "jax"
    assert set(tf["state"]) == set(jax["state"]) == {"bn1", "bn2", "bn3"}
    for name, t in tf["state"].items():
        j = jax["state"][name]
        for key in FLOAT_STATE:
            _close(j[key], t[key], err_msg=f"{name}.{key}")
        assert j["step"] == t["step"] == 8  # 2 epochs x 4 batches
        assert j["updates"] == t["updates"] == 8  # update_every=1
        # The controller's mask (kept_weight=0.5) comes from the same plan.
        assert j["budget_mask"] == t["budget_mask"]
        assert sorted(set(t["budget_mask"])) == [0.5, 1.0]
        _close(j["penalty_total"], t["penalty_total"], rtol=1e-6)
        assert t["penalty_total"][1] == 64.0  # samples: 2 epochs x 32
        _close(j["controller_state"], t["controller_state"])
        assert not np.allclose(t["strength"], 1.0)  # the affinity moved the strengths
    # Epoch logs: loss, penalty_loss/task_loss (PenaltyMetrics and
    # BudgetStrength), the controller's acsl_* values.
    assert set(tf["logs"]) == set(jax["logs"])
    assert {"loss", "penalty_loss", "task_loss", "acsl_budget_scale"} <= set(tf["logs"])
    for key, values in tf["logs"].items():
        _close(jax["logs"][key], values, err_msg=key)
    # The controller acted at the same steps with the same measurements.
    assert len(tf["controller"]) == len(jax["controller"]) == 4
    for t, j in zip(tf["controller"], jax["controller"]):
        assert (t["epoch"], t["step"]) == (j["epoch"], j["step"])
        for key in ("reduction", "scale", "level", "kept_min", "bound"):
            _close(j[key], t[key], err_msg=key)
    # The controller acted: the multiplier changed from check to check.
    assert len({round(h["scale"], 6) for h in tf["controller"]}) > 1


@needs_jax
def test_state_dtypes_follow_the_backend(runs):
    tf = runs["tf"]["budget"]["state"]["bn1"]["dtypes"]
    jax = runs["jax"]["budget"]["state"]["bn1"]["dtypes"]
    assert (tf["step"], tf["penalty_total"], tf["controller_state"]) == (
        "int64",
        "float64",
        "float64",
    )
    # JAX without jax_enable_x64 holds 32-bit arrays; the weights say so.
    assert (jax["step"], jax["penalty_total"], jax["controller_state"]) == (
        "int32",
        "float32",
        "float32",
    )
    assert tf["strength"] == jax["strength"] == "float32"


@needs_jax
def test_tensorboard_callback_and_onednn_under_jax(runs):
    assert runs["jax"]["budget"]["tensorboard_files"] >= 1
    assert runs["tf"]["budget"]["tensorboard_files"] >= 1
    # The oneDNN workaround patches TensorFlow's convolution only.
    assert runs["jax"]["onednn_workaround"] is False


@needs_jax
def test_coupled_strength_on_both_backends(runs):
    tf, jax = runs["tf"]["coupled"], runs["jax"]["coupled"]
    assert "error" not in tf, tf
    assert "error" not in jax, jax
    assert tf["groups"] == jax["groups"] == [[["bn1", 0], ["bn2", 0]]]
    for name, t in tf["state"].items():
        _close(jax["state"][name]["strength"], t["strength"], err_msg=name)
    # The coupled units carry one strength per channel.
    assert jax["state"]["bn1"]["strength"] == jax["state"]["bn2"]["strength"]


@needs_jax
def test_saved_files_load_across_backends(runs):
    tf, jax = runs["tf"], runs["jax"]
    assert tf["saved"]["reload_equal"] and jax["saved"]["reload_equal"]
    for name, t in tf["saved"]["reload"].items():
        for key in FLOAT_STATE:
            assert jax["saved"]["reload"][name][key] == jax["budget"]["state"][name][key]
            assert t[key] == tf["budget"]["state"][name][key]
    # The TensorFlow file (float64/int64 state) loads under JAX (32-bit state)...
    other = jax["saved"]["other"]
    for name, t in tf["budget"]["state"].items():
        for key in (*FLOAT_STATE, "penalty_total", "controller_state", "budget_mask"):
            _close(other[name][key], t[key], rtol=1e-6, atol=0, err_msg=f"{name}.{key}")
        assert other[name]["step"] == t["step"] and other[name]["updates"] == t["updates"]
        assert other[name]["dtypes"]["penalty_total"] == "float32"
    _close(jax["saved"]["other_outputs"], tf["outputs"], rtol=0, atol=1e-6)
    # ... and so does a file of the layout before controller_state existed.
    for run in (tf, jax):
        legacy = run["saved"]["legacy"]
        assert legacy["step"] == 41 and legacy["updates"] == 7
        assert legacy["budget_scale"] == 3.0
        assert legacy["penalty_total"] == [0.0, 0.0]
        assert legacy["budget_mask"] == [1.0] * 6


@needs_jax
def test_shrink_profile_and_plans_on_a_jax_model(runs):
    tf, jax = runs["tf"]["shrink"], runs["jax"]["shrink"]
    assert (jax["flops"], jax["params"]) == (tf["flops"], tf["params"]) == (121008, 1260)
    assert jax["bn_keep"] == tf["bn_keep"]
    assert jax["flops_after"] == tf["flops_after"] <= 0.7 * tf["flops"]
    assert jax["small_params"] == tf["small_params"] < tf["params"]
    # verify="raise" passed; the exactness measurement is float round-off.
    assert jax["exact"] and tf["exact"]
    assert jax["deviation"] < 1e-5 and tf["deviation"] < 1e-5
    assert jax["recalibrated"] == tf["recalibrated"] == 2  # NumPy input on JAX
    _close(jax["outputs"], tf["outputs"])


@needs_jax
def test_jax_trained_model_exports_under_tensorflow(runs):
    jax, export = runs["jax"], runs["export"]
    assert export["backend"] == "tensorflow"
    # The JAX-saved files give JAX's outputs under TensorFlow.
    _close(export["outputs"], jax["outputs"], rtol=0, atol=1e-5)
    _close(export["small_outputs"], jax["shrink"]["outputs"], rtol=0, atol=1e-5)
    for name, state in jax["budget"]["state"].items():
        for key in (*FLOAT_STATE, "penalty_total", "controller_state", "budget_mask"):
            _close(export["state"][name][key], state[key], rtol=0, atol=0, err_msg=key)
        assert export["state"][name]["dtypes"]["step"] == "int64"
    # LiteRT parity of the float32 TFLite file.
    assert export["passed"] is True
    assert export["relative_error"] <= 1e-5 < export["tolerance"]
    assert set(export["ops"]) == {"ADD", "CONV_2D", "FULLY_CONNECTED", "MEAN"}
    _close(export["tflite_outputs"], jax["shrink"]["outputs"], rtol=0, atol=1e-5)


@needs_jax
def test_exporters_refuse_jax_with_the_way_out(runs):
    errors = runs["jax"]["tf_only"]
    for name in ("to_tflite", "to_onnx"):
        message = errors[name]
        assert message.startswith(f"acsl_tf.export.{name} needs Keras' TensorFlow backend")
        assert "KERAS_BACKEND=tensorflow" in message and "model.save('model.keras')" in message
        assert message.endswith("Received: backend='jax'")


@needs_jax
def test_import_and_training_under_jax_without_tensorflow():
    code = """
import sys
sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
import numpy as np, keras, acsl_tf
from tests._models import small_cnn
m = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-2, update_every=1)
m.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.zeros((8, 8, 8, 3), "float32"); y = np.zeros(8, "int32")
m.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[acsl_tf.PenaltyMetrics()])
small = acsl_tf.shrink(m, ratio=0.25)
print("STEPS", int(np.asarray(acsl_tf.get_wrappers(m)[0].step)), small.count_params())
try:
    acsl_tf.Distiller
except ImportError as e:
    print("ERROR", e)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env("jax"),
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {
        ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if " " in ln
    }
    steps, params = lines["STEPS"].split()
    assert int(steps) == 2 and 0 < int(params) < 1260
    assert lines["ERROR"].startswith("acsl_tf.Distiller is written with TensorFlow ops")
    assert 'pip install "acsl_tf[cpu]"' in lines["ERROR"]


# ---------------------------------------------------------------------------
# In this (TensorFlow) process
# ---------------------------------------------------------------------------


def test_tensorflow_backend_keeps_64_bit_state_and_passes_the_checks():
    assert _keras.backend() == "tensorflow"
    assert _keras.state_dtypes() == ("float64", "int64")
    assert _keras.require_tensorflow("anything") is None
    assert set(_keras.SUPPORTED_BACKENDS) == {"tensorflow", "jax"}


def test_other_backends_are_refused(monkeypatch):
    monkeypatch.setattr(_keras.keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match=r"TensorFlow or the JAX backend.*backend='torch'"):
        _keras.check_backend()
    with pytest.raises(RuntimeError, match=r"^acsl_tf.export.to_tflite needs Keras' TensorFlow"):
        _keras.require_tensorflow("acsl_tf.export.to_tflite")
    import acsl_tf

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        acsl_tf.export.to_tflite(None, "x.tflite")


def test_tf_keras_interop_is_refused_on_another_backend(monkeypatch):
    import acsl_tf.interop as interop

    monkeypatch.setattr(_keras.keras.backend, "backend", lambda: "jax")
    for name, call in (
        ("to_tf_keras", lambda: interop.to_tf_keras(None)),
        ("from_tf_keras", lambda: interop.from_tf_keras(None)),
        ("quantize_aware", lambda: interop.quantize_aware(None, "q.tflite")),
    ):
        with pytest.raises(RuntimeError, match=rf"^acsl_tf.interop.{name} needs Keras' TensorFlow"):
            call()
