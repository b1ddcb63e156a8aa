"""The `make demo` script on a small budget (slow)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    pytest.importorskip("acsl_tf.datasets")
    from acsl_tf.datasets import load_fashion_mnist

    try:
        load_fashion_mnist()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available: {e}")
    out = tmp_path / "small.keras"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "demo.py"),
            "--train-size",
            "1024",
            "--test-size",
            "256",
            "--epochs",
            "2",
            "--finetune-epochs",
            "1",
            "--width",
            "0.25",
            "--target-flops",
            "0.3",
            "--save",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Channel sparsity" in proc.stdout and "block3_conv2_bn" in proc.stdout
    assert "FLOPs" in proc.stdout and out.exists()
    import keras

    small = keras.models.load_model(out)
    assert small.count_params() < 18706  # vgg_small(width=0.25)
