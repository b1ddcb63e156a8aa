"""acsl_tf.benchmark_tflite / compare_tflite: statistics and interleaving (no timing asserts)."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf.export import LatencyStats, to_tflite  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    paths = {}
    for name, width in (("thin", 4), ("wide", 16)):
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
        paths[name] = str(d / f"{name}.tflite")
        to_tflite(keras.Model(inputs, outputs), paths[name], verify=False)
    rep = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    paths["int8"] = str(d / "int8.tflite")
    to_tflite(
        keras.Model(inputs, outputs),
        paths["int8"],
        quantization="int8",
        representative_data=rep,
        verify=False,
    )
    return paths


def test_latency_stats_from_known_times():
    s = LatencyStats.from_times([0.001, 0.002, 0.003, 0.004, 0.010], threads=2)
    assert s.median_ms == pytest.approx(3.0)
    assert s.mean_ms == pytest.approx(4.0)
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(10.0)
    assert s.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert s.runs == 5 and s.threads == 2
    assert s.to_dict()["median_ms"] == pytest.approx(3.0)


@pytest.mark.parametrize("which", ["wide", "int8"])
def test_benchmark_tflite_stats_are_consistent(models, which):
    stats = acsl_tf.benchmark_tflite(models[which], threads=1, runs=20, warmup=2)
    assert stats.runs == 20 and stats.threads == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    with open(models[which], "rb") as f:
        from_bytes = acsl_tf.benchmark_tflite(f.read(), runs=3, warmup=0)
    assert from_bytes.runs == 3


def test_compare_tflite_interleaves_rounds(models):
    cmp = acsl_tf.compare_tflite(models["wide"], models["thin"], runs=5, rounds=4, warmup=1)
    assert len(cmp.round_ratios) == 4 and cmp.rounds == 4 and cmp.runs_per_round == 5
    assert cmp.a.runs == cmp.b.runs == 20
    assert cmp.speedup == pytest.approx(float(np.median(cmp.round_ratios)))
    assert all(r > 0 for r in cmp.round_ratios)
    assert cmp.min_ratio == pytest.approx(cmp.a.min_ms / cmp.b.min_ms)
    assert "speed-up of B over A" in str(cmp)
    assert cmp.to_dict()["a"]["runs"] == 20


def test_benchmark_bad_arguments(models, tmp_path):
    with pytest.raises(ValueError, match="runs"):
        acsl_tf.benchmark_tflite(models["thin"], runs=0)
    with pytest.raises(ValueError, match="threads"):
        acsl_tf.benchmark_tflite(models["thin"], threads=0)
    with pytest.raises(ValueError, match="rounds"):
        acsl_tf.compare_tflite(models["thin"], models["wide"], rounds=0)
    with pytest.raises(ValueError, match="TFL3"):
        acsl_tf.benchmark_tflite(b"not a flatbuffer")
    with pytest.raises(FileNotFoundError):
        acsl_tf.benchmark_tflite(str(tmp_path / "missing.tflite"))
    with pytest.raises(TypeError):
        acsl_tf.benchmark_tflite(123)


def test_cpu_clock_times_the_calling_thread(models):
    stats = acsl_tf.benchmark_tflite(models["wide"], runs=10, warmup=1, clock="cpu")
    assert stats.clock == "cpu" and stats.runs == 10
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
    assert "thread CPU time" in str(stats)
    assert acsl_tf.benchmark_tflite(models["wide"], runs=2, warmup=0).clock == "wall"
    cmp = acsl_tf.compare_tflite(
        models["wide"], models["thin"], runs=5, rounds=2, warmup=1, clock="cpu"
    )
    assert cmp.a.clock == cmp.b.clock == "cpu" and len(cmp.round_ratios) == 2
    assert all(r > 0 for r in cmp.round_ratios)


def test_cpu_clock_needs_one_thread_and_a_known_name(models):
    with pytest.raises(ValueError, match=r'clock="cpu" .* threads=1.*threads=2'):
        acsl_tf.benchmark_tflite(models["wide"], threads=2, clock="cpu")
    with pytest.raises(ValueError, match="threads=1"):
        acsl_tf.compare_tflite(models["wide"], models["thin"], threads=4, clock="cpu")
    with pytest.raises(ValueError, match="clock"):
        acsl_tf.benchmark_tflite(models["wide"], clock="gpu")
