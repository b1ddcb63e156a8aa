"""Tests of benchmarks/selection_overlap.py's set and width helpers (fast)."""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import selection_overlap as so  # noqa: E402


def _model_with_gammas(gammas):
    import keras

    inp = keras.Input((8, 8, 1))
    x = inp
    for i, g in enumerate(gammas):
        x = keras.layers.Conv2D(len(g), 3, padding="same", name=f"c{i}")(x)
        bn = keras.layers.BatchNormalization(name=f"bn{i}")
        x = bn(x)
        x = keras.layers.ReLU()(x)
        bn.gamma.assign(np.asarray(g, "float32"))
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def test_kept_widths_and_markdown():
    a = _model_with_gammas([[1.0, 0.0, 1.0, 0.0], [1.0] * 6 + [0.0] * 2])
    w = so.kept_widths(a, 0.3)
    # 30% of the FLOPs: one channel of each layer goes, a zero-gamma one
    assert w == {"bn0": (3, 4), "bn1": (7, 8)}
    widths = {
        (0, 0.5): {"baseline": {"bn0": (2, 4)}, "acsl": {"bn0": (1, 4)}, "ns": {"bn0": (3, 4)}},
        (1, 0.5): {"baseline": {"bn0": (4, 4)}, "acsl": {"bn0": (2, 4)}, "ns": {"bn0": (3, 4)}},
    }
    text = so.widths_markdown(widths)
    assert "at 50% fewer FLOPs (mean over 2 seeds)" in text
    assert "| bn0 | 4 | 3.0 | 1.5 | 3.0 |" in text


def test_jaccard():
    assert so.jaccard({1, 2}, {2, 3}) == 1 / 3
    assert so.jaccard(set(), set()) == 1.0


def test_widths_markdown_with_an_extra_method_missing_in_one_run():
    widths = {
        (0, 0.85): {
            "baseline": {"bn0": (2, 4)},
            "acsl": {"bn0": (1, 4)},
            "ns": {"bn0": (3, 4)},
            "acsl_galloc": {"bn0": (2, 4)},
        },
        (1, 0.85): {"baseline": {"bn0": (4, 4)}, "acsl": {"bn0": (2, 4)}, "ns": {"bn0": (3, 4)}},
    }
    text = so.widths_markdown(widths, extra=("acsl_galloc",))
    assert "| layer | channels | baseline order | ACSL | NS | `acsl_galloc` |" in text
    # acsl_galloc's mean is over the one run that has it
    assert "| bn0 | 4 | 3.0 | 1.5 | 3.0 | 2.0 |" in text
