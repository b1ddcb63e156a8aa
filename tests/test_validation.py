"""The shared argument validators (acsl_tf._validation) and the entry points
that use them: error types, messages and what is accepted."""

import pathlib

import numpy as np
import pytest

from acsl_tf import _validation as v

NAN, INF = float("nan"), float("inf")


# --- number and its intervals -------------------------------------------------


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("0.5", TypeError, r"`x` must be a number.*Received: x='0.5'$"),
        (None, TypeError, "Received: x=None"),
        (True, TypeError, "Received: x=True"),
        (np.bool_(True), TypeError, "Received: x="),
        ([0.5], TypeError, r"Received: x=\[0.5\]"),
        (np.array(0.5), TypeError, "Received: x="),
        (1 + 2j, TypeError, "Received: x="),
        (NAN, ValueError, r"`x` must be a finite number\. Received: x=nan$"),
        (INF, ValueError, "Received: x=inf$"),
        (-INF, ValueError, "Received: x=-inf$"),
        (np.float32("nan"), ValueError, "Received: x=nan$"),
    ],
)
def test_number_rejects(value, error, match):
    with pytest.raises(error, match=match):
        v.number(value, "x")


@pytest.mark.parametrize(
    "value", [0, -3, 2.5, np.float32(0.25), np.float64(-1.5), np.int64(7), np.uint8(3)]
)
def test_number_accepts_python_and_numpy_scalars(value):
    out = v.number(value, "x")
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize(
    "kwargs, value, ok",
    [
        (dict(low=0.0), 0.0, True),
        (dict(low=0.0, low_open=True), 0.0, False),
        (dict(high=1.0), 1.0, True),
        (dict(high=1.0, high_open=True), 1.0, False),
        (dict(low=1.0, low_open=True), 1.0 + 1e-12, True),
        (dict(low=0.0, high=1.0), -1e-12, False),
        (dict(low=0.0), INF, False),
    ],
)
def test_number_interval_bounds(kwargs, value, ok):
    if ok:
        assert v.number(value, "x", **kwargs) == value
    else:
        with pytest.raises(ValueError, match="must be a finite number in"):
            v.number(value, "x", **kwargs)


def test_number_interval_is_named_in_the_message():
    with pytest.raises(ValueError, match=r"in \(0, 1\]\. Received: x=1\.5$"):
        v.fraction(1.5, "x", low_open=True, high_open=False)
    with pytest.raises(ValueError, match=r"in \(0, inf\)\. Received: x=0\.0$"):
        v.positive(0, "x")
    with pytest.raises(ValueError, match=r"in \[0, inf\)\. Received: x=-1\.0$"):
        v.non_negative(-1, "x")
    with pytest.raises(ValueError, match=r"in \[0, 1\)\. Received: x=1\.0$"):
        v.fraction(1, "x")


@pytest.mark.parametrize(
    "helper, bad_values",
    [
        (v.positive, [0, -1e-9, NAN, INF]),
        (v.non_negative, [-1e-9, NAN, INF, -INF]),
        (v.fraction, [-0.1, 1.0, NAN, INF]),
    ],
)
def test_interval_helpers_reject_out_of_range_values(helper, bad_values):
    for value in bad_values:
        with pytest.raises(ValueError, match=f"Received: x={float(value)!r}"):
            helper(value, "x")
    for value in ("1", None, True, False):
        with pytest.raises(TypeError, match="must be a number"):
            helper(value, "x")


def test_type_error_class_can_be_chosen():
    with pytest.raises(ValueError, match="Received: x='a'"):
        v.number("a", "x", type_error=ValueError)


# --- integers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, error, match",
    [
        (True, TypeError, r"`n` must be an integer >= 1\. Received: n=True$"),
        (False, TypeError, "Received: n=False$"),
        (np.bool_(True), TypeError, "Received: n="),
        (2.0, TypeError, r"Received: n=2\.0$"),
        (2.5, TypeError, r"Received: n=2\.5$"),
        (NAN, TypeError, "Received: n=nan$"),
        (INF, TypeError, "Received: n=inf$"),
        ("3", TypeError, "Received: n='3'$"),
        (None, TypeError, "Received: n=None$"),
        (np.array(3), TypeError, "Received: n="),
        (0, ValueError, r"`n` must be an integer >= 1\. Received: n=0$"),
        (-5, ValueError, "Received: n=-5$"),
        (np.int64(0), ValueError, "Received: n=0$"),
    ],
)
def test_positive_int_rejects(value, error, match):
    with pytest.raises(error, match=match):
        v.positive_int(value, "n")


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1), np.uint16(9)])
def test_positive_int_accepts_python_and_numpy_integers(value):
    out = v.positive_int(value, "n")
    assert type(out) is int and out == int(value)


def test_integer_minimum_expected_and_type_error():
    assert v.integer(0, "warmup", minimum=0) == 0
    assert v.integer(-3, "offset") == -3
    with pytest.raises(ValueError, match=r"`warmup` must be an integer >= 0\. Received: warmup=-1"):
        v.integer(-1, "warmup", minimum=0)
    with pytest.raises(ValueError, match="Received: runs=True"):
        v.integer(True, "runs", minimum=1, type_error=ValueError)
    with pytest.raises(ValueError, match=r'must be "auto" or a count\. Received: k=0'):
        v.integer(0, "k", minimum=1, expected='"auto" or a count')


# --- choices --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kind, error",
    [
        ("pid", None, ValueError),
        ("RATE", None, ValueError),
        (None, None, ValueError),
        (1, None, ValueError),
        (["rate"], None, ValueError),
        (np.array(["rate", "epoch"]), None, ValueError),
        (1, str, TypeError),
        (None, str, TypeError),
        (b"rate", str, TypeError),
    ],
)
def test_choice_rejects(value, kind, error):
    with pytest.raises(error, match=r"`mode` must be one of \('rate', 'epoch'\)\. Received: mode="):
        v.choice(value, "mode", ("rate", "epoch"), kind=kind)


def test_choice_accepts_and_keeps_bool_apart_from_numbers():
    assert v.choice("epoch", "mode", ["rate", "epoch"]) == "epoch"
    assert v.choice(np.str_("rate"), "mode", ("rate", "epoch"), kind=str) == "rate"
    assert v.choice(2, "k", (1, 2)) == 2
    with pytest.raises(ValueError, match="Received: k=True"):
        v.choice(True, "k", (1, 2))
    with pytest.raises(ValueError, match='must be "auto" or a count'):
        v.choice("often", "k", ("auto",), expected='"auto" or a count')


# --- paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kwargs, error, match",
    [
        (123, {}, TypeError, r"`p` must be a path \(str or os.PathLike\)\. Received: p=123$"),
        (None, {}, TypeError, "Received: p=None$"),
        (b"dir", {}, TypeError, "Received: p=b'dir'$"),
        (["a"], {}, TypeError, r"Received: p=\['a'\]$"),
        (NAN, {}, TypeError, "Received: p=nan$"),
        (True, {}, TypeError, "Received: p=True$"),
        (3, dict(type_error=ValueError), ValueError, "Received: p=3$"),
        ("", dict(allow_empty=False), ValueError, "not an empty string. Received: p=''$"),
        ("  ", dict(allow_empty=False), ValueError, "Received: p='  '$"),
    ],
)
def test_path_rejects(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        v.path(value, "p", **kwargs)


class _BytesPath:
    def __fspath__(self):
        return b"out/model.tflite"


def test_path_accepts_str_and_pathlike():
    assert v.path("a/b.tflite", "p") == "a/b.tflite"
    assert v.path(pathlib.Path("a") / "b", "p") == str(pathlib.Path("a/b"))
    assert v.path(_BytesPath(), "p") == "out/model.tflite"
    assert v.path("", "p") == ""


# --- the entry points use them ------------------------------------------------------


def test_callbacks_use_the_shared_helpers():
    import acsl_tf

    cb = acsl_tf.BudgetStrength(
        target_params=np.float64(0.3),
        reach_at=1,
        update_every=np.int32(5),
        verbose=np.int64(0),
        protect=np.int64(0),
    )
    assert (cb.target_params, cb.reach_at, cb.update_every, cb.verbose) == (0.3, 1.0, 5, 0)
    with pytest.raises(ValueError, match=r'"auto" or an integer number of steps >= 1'):
        acsl_tf.BudgetStrength(0.5, update_every="epoch")
    with pytest.raises(TypeError, match="Received: controller=None"):
        acsl_tf.BudgetStrength(0.5, controller=None)
    with pytest.raises(ValueError, match="Received: verbose=-1"):
        acsl_tf.BudgetStrength(0.5, verbose=-1)

    tb = acsl_tf.callbacks.SparsityTensorBoard(pathlib.Path("logs"), threshold=np.float32(0.5))
    assert tb.log_dir == "logs" and tb.threshold == 0.5
    for kwargs, error in [
        (dict(threshold=0), ValueError),
        (dict(threshold=NAN), ValueError),
        (dict(threshold="0.1"), TypeError),
        (dict(max_images=-1), ValueError),
        (dict(max_images=2.0), TypeError),
    ]:
        name = next(iter(kwargs))
        with pytest.raises(error, match=f"Received: {name}="):
            acsl_tf.callbacks.SparsityTensorBoard("logs", **kwargs)
    with pytest.raises(ValueError, match="log_dir"):
        acsl_tf.callbacks.SparsityTensorBoard("")


def test_wrapper_counts_keep_value_error_for_wrong_types():
    import keras

    from acsl_tf.sparsity.wrapper import PruneLowCorrelation

    bn = keras.layers.BatchNormalization()
    for kwargs in (dict(update_every=True), dict(update_every=1.5), dict(warmup=-1)):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"Received: {name}="):
            PruneLowCorrelation(bn, **kwargs)
    w = PruneLowCorrelation(bn, update_every=np.int64(4), warmup=np.int32(0))
    assert (w.update_every, w.warmup) == (4, 0)
    with pytest.raises(ValueError, match=r"`method` must be one of .*Received: method='l2'"):
        PruneLowCorrelation(bn, method="l2")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(runs=True), "Received: runs=True"),
        (dict(threads=1.0), "Received: threads=1.0"),
        (dict(warmup=-1), "Received: warmup=-1"),
        (dict(runs="10"), "Received: runs='10'"),
    ],
)
def test_benchmark_counts_raise_value_error(kwargs, match):
    import acsl_tf

    with pytest.raises(ValueError, match=match):
        acsl_tf.benchmark_tflite(b"never read", **kwargs)


def test_export_arguments_are_checked_before_the_model(tmp_path):
    from acsl_tf.export import to_c_source, to_onnx, to_tflite

    # A wrong count is a ValueError (also for a wrong type), before the
    # model or the path are looked at.
    for kwargs in (dict(threads=True), dict(num_verify_samples=0), dict(threads=2.0)):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"Received: {name}="):
            to_tflite(None, tmp_path / "m.tflite", **kwargs)
    with pytest.raises(ValueError, match=r"`quantization` must be one of"):
        to_tflite(None, tmp_path / "m.tflite", quantization=None)
    for kwargs in (dict(opset=True), dict(opset=6), dict(opset="13")):
        with pytest.raises(ValueError, match="Received: opset="):
            to_onnx(None, tmp_path / "m.onnx", **kwargs)
    with pytest.raises(TypeError, match=r"`path` must be a path \(str or os.PathLike\)"):
        to_onnx(None, 42)
    content = b"\x00\x00\x00\x00TFL3" + b"\x00" * 8
    for out_dir in ("", None, 3):
        with pytest.raises(ValueError, match="out_dir"):
            to_c_source(content, out_dir)
    assert list(tmp_path.iterdir()) == []
