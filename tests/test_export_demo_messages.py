"""The demo speaks only for itself: no Keras `shuffle=True was passed` warning."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "examples", "demo.py")


def test_demo_fits_its_shuffled_dataset_with_shuffle_false():
    """The demo's tf.data pipeline shuffles itself; every `fit` on it says so."""
    tree = ast.parse(open(DEMO, encoding="utf-8").read())
    fits = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "fit"
    ]
    assert len(fits) == 2
    for call in fits:
        shuffle = [k.value for k in call.keywords if k.arg == "shuffle"]
        assert len(shuffle) == 1 and isinstance(shuffle[0], ast.Constant)
        assert shuffle[0].value is False


@pytest.mark.slow
def test_demo_prints_no_shuffle_warning(tmp_path):
    from acsl_tf.datasets import load_fashion_mnist

    try:
        load_fashion_mnist()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available: {e}")
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "always::UserWarning",
            DEMO,
            "--train-size",
            "512",
            "--test-size",
            "128",
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--width",
            "0.25",
            "--target-flops",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shuffle=True" not in proc.stdout + proc.stderr
    assert "accuracy after fine-tuning" in proc.stdout
