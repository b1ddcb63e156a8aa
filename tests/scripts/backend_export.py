"""Loads the models that tests/scripts/backend_equivalence.py saved under
another backend (JAX) into a TensorFlow process and exports the shrunk one
to TFLite with LiteRT parity checked; prints JSON.

Usage: ``backend_export.py WORKDIR BACKEND`` (BACKEND: the backend that
saved ``WORKDIR/<BACKEND>.keras`` and ``WORKDIR/<BACKEND>_small.keras``).
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
from backend_equivalence import data, state_of  # noqa: E402

WORKDIR, SOURCE = sys.argv[1], sys.argv[2]


def main():
    x, _ = data()
    wrapped = keras.models.load_model(os.path.join(WORKDIR, f"{SOURCE}.keras"))
    small = keras.models.load_model(os.path.join(WORKDIR, f"{SOURCE}_small.keras"))
    report = acsl_tf.export.to_tflite(
        small, os.path.join(WORKDIR, f"{SOURCE}_small.tflite"), representative_data=x
    )
    lite = acsl_tf.export.run_tflite(report.path, x)[0]
    result = {
        "backend": keras.backend.backend(),
        "state": state_of(wrapped),
        "outputs": np.asarray(wrapped.predict(x, verbose=0)).tolist(),
        "small_outputs": np.asarray(small.predict(x, verbose=0)).tolist(),
        "tflite_outputs": np.asarray(lite).tolist(),
        "passed": bool(report.passed),
        "relative_error": float(report.relative_error),
        "tolerance": float(report.tolerance),
        "ops": list(report.ops),
    }
    print("RESULT" + json.dumps(result))


if __name__ == "__main__":
    main()
