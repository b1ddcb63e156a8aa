"""Fast tests of the pure helpers of benchmarks/int8_speed.py (no timing)."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import int8_speed as bench  # noqa: E402


def test_round_up():
    assert [bench.round_up(n, 8) for n in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]
    assert bench.round_up(5, 1) == 5
    with pytest.raises(ValueError, match="step"):
        bench.round_up(5, 0)


def _info(ops):
    """A minimal inspect_tflite-like dict: ops as (name, weight shape, output shape)."""
    tensors, details = {}, []
    for k, (name, w, out) in enumerate(ops):
        tensors[3 * k] = {"shape": [1, 1, 1, 1]}
        tensors[3 * k + 1] = {"shape": list(w)}
        tensors[3 * k + 2] = {"shape": list(out)}
        details.append({"op": name, "inputs": [3 * k, 3 * k + 1], "outputs": [3 * k + 2]})
    return {"tensors": tensors, "op_details": details}


def test_tile_macs_counts_and_pads_each_op_kind():
    info = _info(
        [
            ("CONV_2D", (10, 3, 3, 5), (1, 4, 4, 10)),
            ("DEPTHWISE_CONV_2D", (1, 3, 3, 12), (1, 4, 4, 12)),
            ("FULLY_CONNECTED", (10, 20), (1, 10)),
            ("MAX_POOL_2D", (1, 2, 2, 1), (1, 2, 2, 10)),  # no MACs counted
        ]
    )
    plain = 16 * 9 * 10 * 5 + 16 * 9 * 12 + 10 * 20
    assert bench.tile_macs(info) == plain
    padded = 16 * 9 * 16 * 8 + 16 * 9 * 16 + 16 * 24
    assert bench.tile_macs(info, cin_step=8, cout_step=16) == padded
    # multiples of the steps are not padded
    aligned = _info([("CONV_2D", (16, 3, 3, 8), (1, 4, 4, 16))])
    assert bench.tile_macs(aligned, 8, 16) == bench.tile_macs(aligned) == 16 * 9 * 16 * 8


def test_tile_macs_matches_profile_on_a_converted_model(tmp_path):
    pytest.importorskip("ai_edge_litert")
    import keras

    import acsl_tf
    from acsl_tf.export import inspect_tflite, to_tflite

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(y)
    y = keras.layers.Conv2D(5, 1)(y)
    y = keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(x, y)
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, verify=False)
    info = inspect_tflite(path)
    assert bench.tile_macs(info) == acsl_tf.profile(model).total_macs
    expected = 64 * 9 * 16 * 8 + 16 * 9 * 16 + 16 * 16 * 8 + 16 * 8
    assert bench.tile_macs(info, 8, 16) == expected


def test_plateau_step_finds_the_block_size():
    cs = list(bench.SWEEP)
    step8 = [math.ceil(c / 8) for c in cs]
    step16 = [math.ceil(c / 16) * 1.01 for c in cs]  # 1% noise inside blocks is fine
    linear = [c / 32 for c in cs]
    assert bench.plateau_step(cs, step8) == 8
    assert bench.plateau_step(cs, step16) == 16
    assert bench.plateau_step(cs, linear) == 1
    with pytest.raises(ValueError, match="length"):
        bench.plateau_step([8, 16], [1.0])


def test_speedup_stats_are_medians_of_per_round_ratios():
    base = [10.0, 20.0, 12.0, 11.0]
    variant = [5.0, 5.0, 6.0, 5.5]  # ratios 2, 4, 2, 2
    np.testing.assert_allclose(bench.round_ratios(base, variant), [2, 4, 2, 2])
    s = bench.speedup_stats(base, variant)
    assert s["median"] == pytest.approx(2.0) and s["rounds"] == 4
    assert s["q1"] <= s["median"] <= s["q3"]
    # not the ratio of the pooled medians
    assert s["median"] != pytest.approx(np.median(base) / np.median(variant))
    with pytest.raises(ValueError, match="one length"):
        bench.round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        bench.round_ratios([1.0], [0.0])


def test_efficiency_and_aim_summary():
    assert bench.efficiency(3.5, 7.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="macs_ratio"):
        bench.efficiency(1.0, 0.0)
    s = bench.aim_summary([0.5, 0.7, 0.9, None, float("nan")])
    assert s["n"] == 3 and s["reached"] == 2
    assert s["min"] == pytest.approx(0.5) and s["median"] == pytest.approx(0.7)
    assert bench.aim_summary([])["n"] == 0


def test_unreachable_note_reads_the_shrink_error():
    msg = (
        "target_flops=0.85 cannot be met: removing every prunable channel (min_channels=1) "
        "reduces it by 0.7333. Lower the target."
    )
    assert bench.unreachable_note(msg) == (
        "unreachable (at most 73.3% of the FLOPs can be removed)"
    )
    assert bench.unreachable_note("Something else. More.") == "unreachable (Something else)"


def test_markdown_table_alignment_and_row_length():
    t = bench.markdown_table(["name", "ratio"], [["a", "1.50"], ["b", "2.00x"]])
    assert t.splitlines()[1] == "|---|---:|"
    with pytest.raises(ValueError, match="cells"):
        bench.markdown_table(["a", "b"], [["only one"]])


def _row(model, target, round_to, eff, f32_eff=None):
    macs_ratio = 4.0
    row = {
        "model": model,
        "target": target,
        "round_to": round_to,
        "params": 1000,
        "macs_ratio": macs_ratio,
        "channels_mult16": 0.5,
        "int8": {
            "speedup": eff * macs_ratio,
            "speedup_q1": eff * macs_ratio,
            "speedup_q3": eff * macs_ratio,
            "wall_speedup": 1.0,
            "tile_macs_ratio": 3.0,
            "efficiency": eff,
            "tile_efficiency": eff * macs_ratio / 3.0,
        },
    }
    if f32_eff is not None:
        row["float32"] = dict(row["int8"], efficiency=f32_eff)
    return row


def test_summary_and_render_on_a_synthetic_record():
    models = [
        {
            "model": "m",
            "rows": [
                _row("m", 0.5, 1, 0.5, f32_eff=0.8),
                _row("m", 0.5, 16, 0.8),
                {"model": "m", "target": 0.85, "round_to": 16, "unreachable": True},
            ],
            "base": {
                "macs": 2e6,
                "params": 1000,
                "int8_cpu_ms": 1.0,
                "int8_wall_ms": 2.0,
                "float32_cpu_ms": 3.0,
                "int8_relative_error": 0.01,
                "conv_channels": [8, 16],
            },
            "notes": ["target 85%, round_to=16: unreachable (at most 73.3% ...)"],
        }
    ]
    summary = bench.summarize(models)
    assert summary["by_round_to"]["1"]["reached"] == 0
    assert summary["by_round_to"]["16"]["reached"] == 1
    assert summary["float32_round_to_1"]["median"] == pytest.approx(0.8)
    record = {
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "tensorflow": "x",
            "keras": "y",
            "ai_edge_litert": "z",
        },
        "settings": {"rounds": 3, "runs": 5},
        "kernel_steps": None,
        "models": models,
        "summary": summary,
        "options": None,
        "breakdown": [],
        "load_average_1min": 1.0,
        "seconds": 60.0,
    }
    md = bench.render(record)
    assert "| m | 50% | 16 |" in md and "unreachable" in md
    assert "3 interleaved rounds" in md
