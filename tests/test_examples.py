"""The three task examples run end to end in --quick mode (slow: minutes each)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _have_data():
    from acsl_tf.datasets import load_fashion_mnist

    try:
        load_fashion_mnist()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, task",
    [
        ("classification.py", "classification"),
        ("segmentation.py", "segmentation"),
        ("crowd_counting.py", "counting"),
    ],
)
def test_example_quick(script, task, tmp_path):
    if not _have_data():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "run"
    cmd = [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out), "--runs", "10"]
    if task == "classification":
        cmd += ["--save-reference", str(tmp_path / "ref")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == task and res["size"] == "quick"
    base, sparse, shrunk, final = res["rows"]
    assert base["stage"] == "baseline" and final["stage"] == "pruned + fine-tuned"
    assert final["params"] < base["params"]
    assert final["flops"] < base["flops"]
    target = res["args"]["target_flops"]
    assert 1 - final["flops"] / base["flops"] == pytest.approx(target, abs=0.03)
    assert sparse["params"] == base["params"]
    assert shrunk["params"] == final["params"]
    assert final["tflite_bytes"] < base["tflite_bytes"]
    assert final["int8_bytes"] < base["int8_bytes"]
    for r in (base, final):
        assert r["latency_ms_float32"] > 0 and r["latency_ms_int8"] > 0
    if res["higher_is_better"]:
        assert 0 <= final["metric"] <= 1
        assert final["metric"] > 0.2  # far above chance after fine-tuning
    else:
        assert final["metric"] >= 0
    assert len(res["curve"]) == 4
    flops = [c["flops"] for c in res["curve"]]
    assert flops == sorted(flops) and flops[-1] < base["flops"]
    for name in res["plots"] + ["pruned.keras", "baseline_int8.tflite", "pruned_float32.tflite"]:
        assert (out / name).stat().st_size > 0
    assert res["table"] in proc.stdout
    if task == "classification":
        ref = tmp_path / "ref"
        for suffix in (".keras", "_int8.tflite", ".h", ".cc", ".json"):
            assert (ref / f"classification_pruned{suffix}").is_file()
        info = json.loads((ref / "classification_pruned.json").read_text())
        assert info["params"] == final["params"]
