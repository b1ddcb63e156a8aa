"""Keras 3 model -> verified ONNX model (tf2onnx, checked with onnxruntime)."""

from __future__ import annotations

import collections
import time

import numpy as np

from acsl_tf import _io, _keras, _validation
from acsl_tf.export import _common
from acsl_tf.export._report import DEFAULT_TOLERANCES, ExportReport, ParityError, TensorInfo
from acsl_tf.export._report import compare_outputs as _compare_outputs

_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    10: "float16",
    11: "float64",
}


def _value_info(v) -> TensorInfo:
    t = v.type.tensor_type
    shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return TensorInfo(
        name=v.name, shape=shape, dtype=_ONNX_DTYPES.get(t.elem_type, str(t.elem_type))
    )


def to_onnx(
    model,
    path,
    *,
    opset: int = 17,
    verify: bool = True,
    overwrite: bool = True,
    sample_data=None,
    labels=None,
    num_verify_samples: int = 32,
    tolerance: float | None = None,
    input_name: str | None = None,
    verbose: bool = False,
) -> ExportReport:
    """Convert a Keras 3 model to ONNX, check it with onnxruntime, and write it.

    Uses ``tf2onnx.convert.from_keras`` with an explicit input signature
    ``(None,) + input_shape`` (dynamic batch) named after the Keras input (or
    ``input_name``). ``model.export(format="onnx")`` is not used: it names the
    input ``keras_tensor_N`` and fails on some layers (e.g. ``Normalization``).

    With ``verify=True`` the ONNX model runs in ``onnxruntime`` on the whole
    verification batch and is compared with Keras; the relative error
    ``max|y_onnx - y_keras| / scale`` (``scale``: the output's range, 1 for
    probability outputs; see :func:`to_tflite`) must stay within
    ``tolerance`` (default 1e-4; healthy conversions give ~1e-6), otherwise
    :class:`ParityError` is raised and nothing is written.

    Args:
        model: A built, single-input Keras 3 model.
        path: Output ``.onnx`` path. Written atomically.
        opset: ONNX opset version.
        verify: Run the ONNX model and compare it with Keras.
        overwrite: Replace an existing file (the default, as ``keras.Model.save``).
        sample_data: Verification inputs (same forms as ``representative_data``
            of :func:`to_tflite`); default: uniform random inputs in [0, 1).
        labels: Optional labels aligned with ``sample_data`` (accuracy report).
        num_verify_samples: Number of verification inputs.
        tolerance: Relative parity tolerance (default 1e-4).
        input_name: Name of the ONNX input (default: the Keras input's name).
        verbose: Show what tf2onnx and TensorFlow print during the conversion
            (captured by default; the tail is added to a conversion error).

    Returns:
        An :class:`ExportReport` (``format="onnx"``, ``extra={"opset": ...}``).

    Raises:
        TypeError / ValueError / FileExistsError / FileNotFoundError /
        PermissionError: as :func:`to_tflite`.
        RuntimeError: tf2onnx failed, or Keras runs on a backend other than
            TensorFlow (load the ``.keras`` file in a process with
            ``KERAS_BACKEND=tensorflow`` and export there).
        ParityError: the ONNX outputs differ from Keras beyond ``tolerance``.

    Example:
    ```python
    report = acsl_tf.export.to_onnx(model, "model.onnx", opset=17)
    print(report.max_abs_error)
    ```
    """
    _keras.require_tensorflow("acsl_tf.export.to_onnx")
    # A wrong type is a ValueError too, as to_onnx has always raised.
    opset = _validation.integer(opset, "opset", minimum=7, type_error=ValueError)
    num_verify_samples = _validation.positive_int(
        num_verify_samples, "num_verify_samples", type_error=ValueError
    )
    path = _io.check_writable(path, overwrite=overwrite)
    keras_name, input_shape, _ = _common.input_spec(model)
    tf2onnx = _common.require("tf2onnx", "ONNX export")
    if verify:
        _common.require("onnxruntime", "ONNX verification")
    samples = None
    if sample_data is not None:
        samples = _common.collect_samples(
            sample_data, input_shape, argname="sample_data", limit=num_verify_samples
        )
    if labels is not None and samples is None:
        raise ValueError(
            "`labels` are aligned with `sample_data`, which is missing. Received: sample_data=None"
        )
    if labels is not None:
        _common.check_labels(labels, len(samples))
    name = input_name or keras_name or "input"
    tol = (
        DEFAULT_TOLERANCES["onnx"]
        if tolerance is None
        else _validation.non_negative(tolerance, "tolerance")
    )

    import tensorflow as tf

    start = time.perf_counter()
    spec = (tf.TensorSpec((None,) + tuple(input_shape), tf.float32, name=name),)
    with _common.quiet_output(not verbose) as captured:
        try:
            from acsl_tf import onednn

            with onednn.suspended():  # the plain strided convolutions in the graph
                proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        except Exception as e:
            log = _common.log_tail(captured())
            log = f"\n  tf2onnx log (last lines; verbose=True shows all):\n{log}" if log else ""
            raise RuntimeError(
                f"ONNX conversion with tf2onnx failed (opset={opset}): {e}{log}"
            ) from e
    seconds = time.perf_counter() - start
    content = proto.SerializeToString()

    counts = collections.Counter(n.op_type for n in proto.graph.node)
    initializers = {i.name for i in proto.graph.initializer}
    report = ExportReport(
        path=None,
        format="onnx",
        quantization="none",
        size_bytes=len(content),
        ops=sorted(counts),
        op_counts=dict(sorted(counts.items())),
        inputs=[_value_info(v) for v in proto.graph.input if v.name not in initializers],
        outputs=[_value_info(v) for v in proto.graph.output],
        tolerance=tol,
        extra={"opset": int(opset), "conversion_seconds": round(seconds, 3)},
    )

    if verify:
        import onnxruntime as ort

        if samples is not None:
            x = samples
            report.verify_data = "sample_data"
        else:
            if any(s is None for s in input_shape):
                raise ValueError(
                    "The model's input shape has undefined dimensions; pass `sample_data` or "
                    f"verify=False. Received: input_shape={input_shape}"
                )
            rng = np.random.default_rng(0)
            x = rng.random((num_verify_samples,) + tuple(input_shape), dtype=np.float32)
            report.verify_data = "random"
        y_labels = _common.check_labels(labels, len(x))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        feed_name = session.get_inputs()[0].name
        produced = session.run(None, {feed_name: x})
        reference = _common.keras_outputs(model, x)
        stats = _compare_outputs(reference, produced, labels=y_labels)
        report.verified = True
        report.num_verify_samples = int(len(x))
        for k, v in stats.items():
            setattr(report, k, v)
        report.passed = bool(report.relative_error <= tol)
        if not report.passed:
            raise ParityError(
                f"The ONNX model does not reproduce the Keras model: relative error "
                f"{report.relative_error:.3g} > tolerance {tol:g} (max abs error "
                f"{report.max_abs_error:.3g}). Nothing was written to {path!r}. Try another "
                f"opset, or pass a larger `tolerance` / verify=False. Received: opset={opset}",
                report,
            )
    _io.atomic_write_bytes(path, content, overwrite=overwrite)
    report.path = path
    return report
