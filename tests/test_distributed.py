"""Mixed precision and tf.distribute: run in a subprocess because logical CPU
devices must be configured before TensorFlow starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distributed_strengths.py")


def _run(mode):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def results():
    return _run("center")


def test_mirrored_strategy_matches_single_device(results):
    single, mirrored = results["single"], results["mirrored"]
    assert mirrored["replicas"] == 2
    # 2 epochs x 2 batches; the step counter counts global steps, not replicas.
    assert single["step"] == mirrored["step"] == 4
    assert single["updates"] == mirrored["updates"] == 4
    for a, b in zip(single["affinity"], mirrored["affinity"]):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-4)
    for a, b in zip(single["strength"], mirrored["strength"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-3, atol=1e-4)
        assert not np.allclose(a, 1.0)
    # The penalty sum counts every replica's samples (2 epochs x 32 samples).
    for a, b in zip(single["penalty_total"], mirrored["penalty_total"]):
        assert a[1] == b[1] == 64
        np.testing.assert_allclose(b[0], a[0], rtol=1e-5)


def test_mixed_precision_trains(results):
    mixed, single = results["mixed"], results["single"]
    assert np.isfinite(mixed["loss"]).all()
    assert mixed["strength_dtype"] == "float32"
    assert mixed["step"] == 4
    for a, b in zip(single["strength"], mixed["strength"]):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=5e-2)
