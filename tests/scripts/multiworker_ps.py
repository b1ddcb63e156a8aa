"""ParameterServerStrategy with ACSL training: one in-process cluster (chief,
1 worker, 1 parameter server on 127.0.0.1, free ports); prints a JSON line
``RESULT {...}`` with what ``check_strategy`` says and what Keras' ``fit``
does under the strategy.

Run as a subprocess: the in-process servers hold ports and threads until the
process ends.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.pop("TF_CONFIG", None)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf
    from acsl_tf import distributed
    from tests._models import small_cnn

    chief, worker, ps = (f"{distributed.LOOPBACK}:{p}" for p in distributed.free_ports(3))
    cluster = tf.train.ClusterSpec({"chief": [chief], "worker": [worker], "ps": [ps]})
    servers = [
        tf.distribute.Server(cluster, job_name=job, task_index=0, protocol="grpc", start=True)
        for job in ("worker", "ps")
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type="chief", task_id=0, rpc_layer="grpc"
    )
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    out = {"strategy": type(strategy).__name__}
    try:
        distributed.check_strategy(strategy)
        out["check"] = "accepted"
    except distributed.UnsupportedStrategyError as e:
        out["check"] = "refused"
        out["check_message"] = str(e)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    try:
        with strategy.scope():
            model = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-3, update_every=1)
            model.compile(
                keras.optimizers.SGD(0.01),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
        out["fit"] = "ran"
    except Exception as e:  # noqa: BLE001 - the outcome is the result
        out["fit"] = "failed"
        out["fit_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    print("RESULT " + json.dumps(out), flush=True)
    del servers
    os._exit(0)  # the in-process servers do not shut down cleanly


if __name__ == "__main__":
    main()
