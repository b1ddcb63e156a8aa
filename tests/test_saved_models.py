"""The pruned reference models in saved_models/ load, work and agree with each other."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1] / "saved_models"
PREFIX = "classification_pruned"
KERAS = ROOT / f"{PREFIX}.keras"
TFLITE = ROOT / f"{PREFIX}_int8.tflite"
CC = ROOT / f"{PREFIX}.cc"
README = ROOT / "README.md"

# Stated in saved_models/README.md: the reference model's accuracy on the
# 10,000 Fashion-MNIST test images is at least this.
ACCURACY_FLOOR = 0.86


def _readme_value(label: str) -> str:
    text = README.read_text()
    m = re.search(rf"^\|\s*{re.escape(label)}\s*\|\s*([^|]+?)\s*\|", text, re.M)
    assert m, f"no '{label}' row in {README}"
    return m.group(1)


@pytest.fixture(scope="module")
def test_set():
    from acsl_tf.datasets import load_fashion_mnist

    try:
        _, (x, y) = load_fashion_mnist(normalize=True)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(y).astype(np.int64)


@pytest.fixture(scope="module")
def model():
    import keras

    return keras.models.load_model(KERAS)


def test_files_exist_and_are_small():
    for p in (KERAS, TFLITE, CC, ROOT / f"{PREFIX}.h", README):
        assert p.is_file(), p
    total = sum(p.stat().st_size for p in ROOT.iterdir() if p.is_file())
    assert total < 600 * 1024


def test_keras_model_accuracy_and_params(model, test_set):
    x, y = test_set
    logits = model.predict(x, batch_size=500, verbose=0)
    acc = float(np.mean(np.argmax(logits, -1) == y))
    assert acc >= ACCURACY_FLOOR
    assert model.count_params() == int(_readme_value("Parameters").replace(",", ""))
    info = json.loads((ROOT / f"{PREFIX}.json").read_text())
    assert info["params"] == model.count_params()
    # The README's test accuracy is what this model scores (4 decimals).
    assert acc == pytest.approx(float(_readme_value("Test accuracy (10,000 images)")), abs=6e-5)


def test_int8_tflite_agrees_with_keras(model, test_set):
    from ai_edge_litert.interpreter import Interpreter

    x, y = test_set
    x = x[:1000]
    it = Interpreter(model_content=TFLITE.read_bytes(), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    scale, zero = inp["quantization"]
    preds = []
    for sample in x:
        q = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        preds.append(int(np.argmax(it.get_tensor(out["index"])[0])))
    preds = np.asarray(preds)
    keras_preds = np.argmax(model.predict(x, batch_size=500, verbose=0), -1)
    assert np.mean(preds == keras_preds) >= 0.9
    assert np.mean(preds == y[:1000]) >= ACCURACY_FLOOR - 0.05


def test_c_array_round_trips_to_tflite_bytes():
    text = CC.read_text()
    m = re.search(r"const unsigned char " + PREFIX + r"_data\[\]\s*=\s*\{(.*?)\};", text, re.S)
    assert m
    data = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-fA-F]{2})", m.group(1)))
    assert data == TFLITE.read_bytes()
    assert f"{PREFIX}_data_len = {len(data)};" in text
