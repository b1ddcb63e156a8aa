"""Trains the same wrapped model on one device and under a MirroredStrategy over
two logical CPU devices, and with mixed precision; prints JSON results.

Run as a subprocess: logical devices must be configured before TensorFlow
initialises its runtime.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests._models import small_cnn  # noqa: E402

center = sys.argv[1] == "center" if len(sys.argv) > 1 else True
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
y = rng.integers(0, 3, 32)


def run(strategy=None, policy="float32"):
    keras.utils.set_random_seed(7)
    keras.mixed_precision.set_global_policy(policy)
    scope = strategy.scope() if strategy is not None else tf.init_scope()
    with scope:
        # Synchronized BN: every replica normalises with the global batch
        # statistics, so the feature maps equal the single-device ones.
        base = small_cnn(synchronized=True)
        wrapped = acsl_tf.prune_low_correlation(
            base, penalty=1e-3, update_every=1, warmup=0, center=center
        )
        wrapped.compile(
            optimizer=keras.optimizers.SGD(0.0),  # lr 0: weights stay, statistics move
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    hist = wrapped.fit(ds, epochs=2, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    wr = acsl_tf.get_wrappers(wrapped)
    return {
        "loss": [float(v) for v in hist.history["loss"]],
        "strength": [np.asarray(w.strength).tolist() for w in wr],
        "affinity": [np.asarray(w.affinity).tolist() for w in wr],
        "step": int(np.asarray(wr[0].step)),
        "updates": int(np.asarray(wr[0].updates)),
        "penalty_total": [np.asarray(w.penalty_total).tolist() for w in wr],
        "strength_dtype": str(wr[0].strength.dtype),
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
    }


out = {
    "single": run(),
    "mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    "mixed": run(policy="mixed_float16"),
}
print("RESULT" + json.dumps(out))
