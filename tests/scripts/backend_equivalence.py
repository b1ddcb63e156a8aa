"""Sparsity training of one tiny wrapped BN CNN on the backend named on the
command line; prints the whole sparsity state as JSON.

Usage: ``backend_equivalence.py BACKEND WORKDIR [OTHER.keras]``

BACKEND is ``tensorflow`` or ``jax`` (set as KERAS_BACKEND before Keras is
imported). Weights and data come from a seeded NumPy generator, training is
plain SGD on unshuffled batches, so both backends start from the same numbers
and see the same batches; tests/test_backends.py compares their results.

What it runs and records:

- ``budget``: a fit with a polynomial strength schedule, ``BudgetStrength``
  (rate controller, checks every 2 steps, ``kept_weight=0.5``) and
  ``PenaltyMetrics`` (and ``SparsityTensorBoard``, whose event files are
  counted): every wrapper's state (affinity, strength, step,
  updates, budget_scale, penalty_total, controller_state, budget_mask,
  gamma), the epoch logs and the controller's history.
- ``coupled``: a fit with ``CoupledStrength`` (the coupled units' strengths
  are equal after it), or the error it raised.
- ``saved``: the budget model saved to ``WORKDIR/<backend>.keras`` and loaded
  again in this process; ``OTHER.keras`` (saved by the other backend), when
  given, is loaded too; a wrapper file of the layout before
  ``controller_state`` (float64/int64 arrays, as TensorFlow wrote them) is
  loaded into a fresh wrapper.
- ``tf_only`` (other backends): the errors of the TFLite and ONNX exporters.
- ``shrink``: ``profile``, ``plan_shrink`` and ``apply_plan`` (exactness
  measured, ``verify="raise"``) on the trained model, and
  ``recalibrate_batchnorm`` on NumPy input; the shrunk model is saved to
  ``WORKDIR/<backend>_small.keras`` with its outputs on fixed inputs.
"""

import json
import os
import sys
import warnings

if __name__ == "__main__":  # imported by backend_export.py for its helpers
    os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests._models import small_cnn  # noqa: E402

BACKEND = keras.backend.backend()
WORKDIR = OTHER = None

STATE = (
    "affinity",
    "strength",
    "step",
    "updates",
    "budget_scale",
    "penalty_total",
    "controller_state",
    "budget_mask",
)


def fixed_model():
    """small_cnn with weights from a seeded generator; negative betas, so a
    channel whose gamma is zeroed outputs exactly 0 after the ReLU and shrink
    is exact."""
    rng = np.random.default_rng(0)
    model = small_cnn()
    values = []
    for v in model.weights:
        name = v.path.split("/")[-1]
        shape = tuple(v.shape)
        if name == "gamma":
            values.append(rng.uniform(0.05, 1.0, shape))
        elif name == "beta":
            values.append(-np.abs(rng.normal(0.2, 0.05, shape)))
        elif name == "moving_variance":
            values.append(rng.uniform(0.5, 2.0, shape))
        elif name in ("moving_mean", "bias"):
            values.append(rng.normal(0.0, 0.1, shape))
        else:
            fan_in = int(np.prod(shape[:-1]))
            values.append(rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape))
    model.set_weights([a.astype("float32") for a in values])
    return model


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    return x, y


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def state_of(model):
    out = {}
    for w in acsl_tf.get_wrappers(model):
        entry = {k: np.asarray(keras.ops.convert_to_numpy(getattr(w, k))).tolist() for k in STATE}
        entry["gamma"] = np.asarray(keras.ops.convert_to_numpy(w.layer.gamma)).tolist()
        entry["moving_mean"] = np.asarray(keras.ops.convert_to_numpy(w.layer.moving_mean)).tolist()
        entry["dtypes"] = {k: str(np.asarray(getattr(w, k)).dtype) for k in STATE}
        out[w.layer.name] = entry
    return out


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def run_budget(x, y):
    wrapped = acsl_tf.prune_low_correlation(
        fixed_model(),
        penalty=2e-2,
        update_every=1,
        warmup=1,
        center=True,
        schedule=acsl_tf.PolynomialStrength(0.5, 1.0, 0, 6, power=1.0),
        target=0.3,
    )
    compile_model(wrapped)
    budget = acsl_tf.BudgetStrength(update_every=2, kept_weight=0.5, threshold=0.05, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the budget is missed in 8 steps
        history = wrapped.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[
                acsl_tf.callbacks.PenaltyMetrics(),
                budget,
                acsl_tf.SparsityTensorBoard(os.path.join(WORKDIR, f"tb_{BACKEND}")),
            ],
        )
    logs = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    events = [f for _, _, fs in os.walk(os.path.join(WORKDIR, f"tb_{BACKEND}")) for f in fs]
    return wrapped, {
        "state": state_of(wrapped),
        "logs": logs,
        "controller": budget.history,
        "tensorboard_files": len(events),
    }


def run_tf_only(wrapped):
    """The exporters refuse other backends with a message naming the way out."""
    out = {}
    small = acsl_tf.strip_pruning(wrapped)
    for name, fn in (
        ("to_tflite", acsl_tf.export.to_tflite),
        ("to_onnx", acsl_tf.export.to_onnx),
    ):
        try:
            fn(small, os.path.join(WORKDIR, f"never_{name}"))
            out[name] = "no error"
        except RuntimeError as e:
            out[name] = str(e)
    return out


def run_coupled(x, y):
    wrapped = acsl_tf.prune_low_correlation(
        fixed_model(), penalty=1e-2, update_every=1, warmup=0, affinity="attention"
    )
    compile_model(wrapped)
    coupled = acsl_tf.callbacks.CoupledStrength()
    try:
        wrapped.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[coupled])
    except Exception as e:  # reported, judged by the test
        return {"error": f"{type(e).__name__}: {e}"}
    groups = [[(w.layer.name, off) for w, off in members] for _, members in coupled.groups]
    return {"state": state_of(wrapped), "groups": groups}


def run_saved(wrapped):
    path = os.path.join(WORKDIR, f"{BACKEND}.keras")
    wrapped.save(path)
    again = keras.models.load_model(path)
    out = {
        "path": path,
        "reload": state_of(again),
        "reload_equal": all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(wrapped.get_weights(), again.get_weights())
        ),
    }
    if OTHER:
        other = keras.models.load_model(OTHER)
        out["other"] = state_of(other)
        x = data()[0]
        out["other_outputs"] = np.asarray(other.predict(x, verbose=0)).tolist()
    # A wrapper file of the layout before controller_state: five arrays,
    # float32/int64 as TensorFlow wrote them.
    fresh = acsl_tf.get_wrappers(acsl_tf.prune_low_correlation(fixed_model(), penalty=1e-2))[0]
    c = fresh.channels
    old = {
        "0": np.full((c, c), 0.25, "float32"),
        "1": np.linspace(0.5, 1.5, c).astype("float32"),
        "2": np.array(3.0, "float32"),
        "3": np.array(41, "int64"),
        "4": np.array(7, "int64"),
    }
    fresh.load_own_variables(old)
    out["legacy"] = {k: np.asarray(getattr(fresh, k)).tolist() for k in STATE}
    return out


def run_shrink(wrapped, x):
    prof = acsl_tf.profile(wrapped)
    plan = acsl_tf.plan_shrink(wrapped, target_flops=0.3)
    result = acsl_tf.apply_plan(wrapped, plan, verify="raise")
    small = result.model
    used = acsl_tf.recalibrate_batchnorm(small, x, batch_size=8, steps=2)
    path = os.path.join(WORKDIR, f"{BACKEND}_small.keras")
    small.save(path)
    return {
        "flops": int(prof.total_flops),
        "params": int(prof.total_params),
        "bn_keep": {k: [int(i) for i in v] for k, v in plan.bn_keep.items()},
        "flops_after": int(plan.flops_after),
        "exact": bool(result.exact),
        "deviation": float(result.max_abs_error),
        "small_params": int(small.count_params()),
        "recalibrated": used,
        "path": path,
        "outputs": np.asarray(small.predict(x, verbose=0)).tolist(),
    }


def main():
    global WORKDIR, OTHER
    assert BACKEND == sys.argv[1], BACKEND
    WORKDIR = sys.argv[2]
    OTHER = sys.argv[3] if len(sys.argv) > 3 else None
    x, y = data()
    wrapped, budget = run_budget(x, y)
    result = {
        "backend": keras.backend.backend(),
        "onednn_workaround": acsl_tf.onednn.workaround_installed(),
        "budget": budget,
        "coupled": run_coupled(x, y),
        "saved": run_saved(wrapped),
        "shrink": run_shrink(wrapped, x),
        "outputs": np.asarray(wrapped.predict(x, verbose=0)).tolist(),
    }
    if BACKEND != "tensorflow":
        result["tf_only"] = run_tf_only(wrapped)
    print("RESULT" + json.dumps(plain(result)))


if __name__ == "__main__":
    main()
