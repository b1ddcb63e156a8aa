"""Quantization-aware fine-tuning through tensorflow-model-optimization (tfmot).

:func:`quantize_aware` converts a (pruned) Keras 3 model to tf_keras, applies
``tfmot.quantization.keras.quantize_model`` (the default 8-bit scheme),
fine-tunes it with the user's data, loss and optimizer, and writes a verified
full-int8 TFLite file (optionally also TFLite Micro C source).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import keras
import numpy as np

from acsl_tf import _io
from acsl_tf.interop import _legacy
from acsl_tf.interop import tf_keras as _convert

__all__ = ["QATResult", "quantize_aware"]


@dataclasses.dataclass
class QATResult:
    """What :func:`quantize_aware` produced.

    Attributes:
        report: The ``acsl_tf.export.ExportReport`` of the int8 file; its parity
            figures compare the file with the fine-tuned QAT model.
        history: ``History.history`` of the fine-tuning (``{"loss": [...], ...}``).
        model: The fine-tuned tf_keras QAT model (tfmot quantize wrappers);
            keep it to fine-tune further or to evaluate in float.
        c_source: ``(header, source)`` paths when C source was written, else ``None``.
        range_init_samples: Number of samples used to initialize the activation
            ranges before fine-tuning (0 when disabled).
    """

    report: Any
    history: dict
    model: Any = None
    c_source: Any = None
    range_init_samples: int = 0

    def __str__(self) -> str:
        epochs = len(next(iter(self.history.values()), []))
        lines = [f"quantization-aware fine-tuning: {epochs} epoch(s)"]
        for k, v in self.history.items():
            if v:
                lines.append(f"  final {k}: {v[-1]:.4g}")
        lines.append(str(self.report))
        if self.c_source is not None:
            lines.append(f"  C source: {self.c_source[0]}, {self.c_source[1]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Keras 3 training objects -> tf_keras
# --------------------------------------------------------------------------


def _to_tfk_object(obj, namespace, kind):
    """A Keras 3 optimizer/loss/metric object -> the tf_keras one of the same class."""
    if obj is None or isinstance(obj, str) or _legacy.is_tf_keras_object(obj):
        return obj
    module = type(obj).__module__
    if not module.startswith("keras.") or not hasattr(obj, "get_config"):
        if callable(obj) and not hasattr(obj, "get_config"):
            return obj  # a plain function of (y_true, y_pred)
        raise TypeError(
            f"The {kind} {type(obj).__name__} cannot be used to train a tf_keras model. Pass "
            f"a string, a tf_keras {kind}, or a built-in Keras 3 {kind}. "
            f"Received: {kind}={obj!r}"
        )
    cls_name = type(obj).__name__
    cfg = dict(obj.get_config())
    target = getattr(namespace, cls_name, None)
    if not isinstance(target, type):
        raise ValueError(
            f"tf_keras has no {kind} {cls_name!r}. Pass a string or a tf_keras {kind}. "
            f"Received: {kind}={cls_name}"
        )
    allowed = _convert._accepted_kwargs(target, {"name", "dtype", "reduction"})
    dropped = {k: v for k, v in cfg.items() if k not in allowed}
    cfg = {k: v for k, v in cfg.items() if k in allowed}
    if isinstance(cfg.get("dtype"), dict):
        cfg["dtype"] = _convert._policy_name(cfg["dtype"])
    for key in ("learning_rate",):
        if isinstance(cfg.get(key), dict):
            raise ValueError(
                f"The {kind}'s `{key}` is a schedule, which cannot be carried over to tf_keras. "
                f"Pass a tf_keras optimizer with a tf_keras schedule instead. "
                f"Received: {key}={cfg[key]!r}"
            )
    harmless = {"name": None, "axis": -1, "loss_scale_factor": None}
    meaningful = {
        k: v
        for k, v in dropped.items()
        if v not in (None, False, 0, 1) and not (k in harmless and harmless[k] in (None, v))
    }
    if kind == "optimizer":
        meaningful = {
            k: v
            for k, v in meaningful.items()
            if k not in ("loss_scale_factor", "gradient_accumulation_steps")
        }
    if meaningful:
        raise ValueError(
            f"The {kind} {cls_name} uses settings tf_keras does not have: {sorted(meaningful)}. "
            f"Pass a tf_keras {kind} instead. Received: {kind}={cls_name}({meaningful})"
        )
    return target.from_config(cfg)


def _metrics_to_tfk(metrics, tfk):
    if metrics is None:
        return None
    if isinstance(metrics, dict):
        return {k: _metrics_to_tfk(v, tfk) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [_to_tfk_object(m, tfk.metrics, "metric") for m in metrics]
    return _to_tfk_object(metrics, tfk.metrics, "metric")


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def _samples(data, input_shape, limit, argname):
    """First ``limit`` float32 inputs from an array, a dataset or an iterable."""
    if data is None:
        return None
    if hasattr(data, "shape") and hasattr(data, "dtype") and not hasattr(data, "element_spec"):
        out = np.asarray(data)
        if out.ndim == len(input_shape):
            out = out[None]
    else:
        chunks, total = [], 0
        iterable = data() if callable(data) and not hasattr(data, "__iter__") else data
        for element in iterable:
            x = element
            if isinstance(x, dict):
                x = next(iter(x.values()))
            elif isinstance(x, (tuple, list)):
                x = x[0]
            x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
            if x.ndim == len(input_shape):
                x = x[None]
            chunks.append(x)
            total += len(x)
            if total >= limit:
                break
        if not chunks:
            raise ValueError(f"`{argname}` is empty. Received: {argname}={data!r}")
        out = np.concatenate(chunks, axis=0)
    expected = tuple(input_shape)
    if out.ndim != len(expected) + 1 or any(
        e is not None and e != s for e, s in zip(expected, out.shape[1:])
    ):
        raise ValueError(
            f"`{argname}` has the wrong shape for this model: expected samples of shape "
            f"(N,)+{expected}. Received: {argname}.shape={tuple(out.shape)}"
        )
    if not np.issubdtype(out.dtype, np.floating):
        raise ValueError(
            f"`{argname}` must hold floating-point inputs, preprocessed as for training. "
            f"Received: {argname}.dtype={out.dtype}"
        )
    out = out[:limit].astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"`{argname}` contains NaN or inf values. Received: {argname}")
    return out


# --------------------------------------------------------------------------
# activation-range initialization
# --------------------------------------------------------------------------


def _init_ranges(qat_model, x, batch_size=64):
    """Set the activation ranges from ``x`` before fine-tuning.

    tfmot starts every activation range at [-6, 6] and moves it towards the
    batch range by an exponential moving average with decay 0.999, so a short
    fine-tuning ends with ranges far wider than the activations (coarse int8
    steps). Here each range is set to the mean over the batches of ``x`` of
    the batch min / max (what post-training calibration measures), by forward
    passes in training mode with a per-batch decay of k / (k + 1). All other
    variables (BatchNorm statistics, ...) are restored afterwards.

    Returns:
        The number of samples used (0 if this tfmot has no hook for it).
    """
    try:
        from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    except ImportError:  # pragma: no cover - other tfmot layouts
        return 0
    original = getattr(quant_ops, "MovingAvgQuantize", None)
    if original is None:  # pragma: no cover
        return 0
    decay = {"value": 0.0}

    def moving_avg_quantize(*args, **kwargs):
        kwargs["ema_decay"] = decay["value"]
        return original(*args, **kwargs)

    saved = [(v, v.numpy()) for v in qat_model.weights]
    quant_ops.MovingAvgQuantize = moving_avg_quantize
    try:
        n_batches = max(1, int(np.ceil(len(x) / batch_size)))
        for k in range(n_batches):
            decay["value"] = k / (k + 1)
            qat_model(x[k * batch_size : (k + 1) * batch_size], training=True)
    finally:
        quant_ops.MovingAvgQuantize = original
    for v, value in saved:
        name = v.name.split("/")[-1].split(":")[0]
        if not (name.endswith("_min") or name.endswith("_max")):
            v.assign(value)
    return int(len(x))


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------


def _convert_int8(qat_model, input_shape, calibration, int8_io, upsampling_cls=None):
    """``(full-int8 flatbuffer, UpsamplingRecord)`` of the QAT model; with
    ``upsampling_cls`` (the tf_keras ``UpSampling2D``), nearest upsampling is
    traced as concatenations and a reshape (see
    ``acsl_tf.export.to_tflite(lower_upsampling=...)``), and the record says
    which layers were."""
    import tensorflow as tf

    from acsl_tf.export import _upsampling

    spec = tf.TensorSpec((None,) + tuple(input_shape), tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def serve(x):
        return qat_model(x, training=False)

    with _upsampling.lowered_nearest_upsampling(
        upsampling_cls is not None, cls=upsampling_cls
    ) as traced:
        concrete = serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative_dataset():
        for k in range(len(calibration)):
            yield [calibration[k : k + 1]]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        return converter.convert(), traced
    except Exception as e:
        raise RuntimeError(
            "TFLite conversion of the QAT model failed (full int8, no float fallback). Some "
            f"layer has no int8 builtin kernel; replace it. Converter error: {e}"
        ) from e


def _compare(reference, produced, labels):
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(produced, dtype=np.float64).reshape(ref.shape)
    diff = np.abs(ref - out)
    stats = {
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "relative_error": float(diff.max()) / max(float(np.abs(ref).max()), 1e-3),
    }
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        ra, oa = ref.argmax(-1), out.argmax(-1)
        stats["argmax_agreement"] = float((ra == oa).mean())
        if labels is not None:
            y = np.asarray(labels)
            if y.shape == ref.shape:
                y = y.argmax(-1)
            y = y.reshape(ra.shape)
            stats["keras_accuracy"] = float((ra == y).mean())
            stats["artifact_accuracy"] = float((oa == y).mean())
    return stats


def _op_layers(model):
    """tf_keras layers that wrap TensorFlow ops or Python code, recursing into nested models."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found += _op_layers(layer)
        elif type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda", "Lambda"):
            found.append(layer.name)
    return found


def _check_quantizable(legacy):
    """Refuse, with a clear message, what tfmot's default scheme mishandles."""
    ops = _op_layers(legacy)
    if ops:
        raise ValueError(
            "tfmot's default 8-bit scheme cannot quantize TensorFlow-op layers, which this "
            "model gets from raw `keras.ops` calls without a layer form (e.g. `x * 0.5`, a "
            "slice, a reduction over the channels). Replace them with Keras layers (e.g. "
            f"`keras.layers.Rescaling(0.5)` for `x * 0.5`). Received: layers={ops}"
        )


def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def quantize_aware(
    model,
    path,
    x=None,
    y=None,
    *,
    loss=None,
    optimizer="adam",
    metrics=None,
    epochs: int = 1,
    batch_size: int | None = None,
    validation_data=None,
    callbacks=None,
    verbose="auto",
    compile_kwargs: dict | None = None,
    fit_kwargs: dict | None = None,
    representative_data=None,
    num_calibration_samples: int = 200,
    init_ranges: bool = True,
    int8_io: bool = True,
    lower_upsampling: bool = True,
    verify: bool = True,
    num_verify_samples: int = 32,
    tolerance: float | None = None,
    labels=None,
    overwrite: bool = False,
    c_source_dir=None,
    c_source_name: str = "model",
    threads: int = 1,
    converters: dict | None = None,
) -> QATResult:
    """Quantization-aware fine-tuning with tfmot, then a verified full-int8 TFLite file.

    Steps:

    1. the Keras 3 model (plain or returned by ``acsl_tf.shrink``) is rebuilt in
       tf_keras (:func:`acsl_tf.interop.to_tf_keras`) and wrapped by
       ``tfmot.quantization.keras.quantize_model`` (default 8-bit scheme: int8
       per-channel weights, int8 per-tensor activations, BatchNorm folded);
    2. with ``init_ranges=True`` the activation ranges are set from
       ``representative_data`` (tfmot starts them at [-6, 6] and moves them
       slowly, which matters for short fine-tuning);
    3. the QAT model is compiled and fitted with ``x``, ``y`` and the compile /
       fit arguments (progress printed by Keras as usual);
    4. it is converted to a full-int8 TFLite flatbuffer (only
       ``TFLITE_BUILTINS_INT8`` ops, int8 I/O by default), run with the LiteRT
       interpreter, compared with the QAT model in inference mode, and written
       atomically. With ``c_source_dir`` the file is also written as TFLite
       Micro C source with ``acsl_tf.export.to_c_source``.

    The process's ``keras``, ``tf.keras`` and ``TF_USE_LEGACY_KERAS`` are the
    same afterwards.

    Args:
        model: A built, single-input Keras 3 functional or Sequential model.
        path: Output ``.tflite`` path.
        x, y: Training data, as for ``tf_keras.Model.fit`` (arrays, or a
            ``tf.data.Dataset`` of ``(x, y)`` batches in ``x`` with ``y=None``).
        loss: The training loss: a string, a built-in Keras 3 loss object (it
            is re-created in tf_keras), a tf_keras loss or a function.
        optimizer: A string, a built-in Keras 3 optimizer (re-created in
            tf_keras; learning-rate schedules are not carried over) or a
            tf_keras optimizer. QAT is fine-tuning: use a small learning rate.
        metrics: Metrics for ``compile`` (strings, Keras 3 or tf_keras metrics).
        epochs, batch_size, validation_data, callbacks, verbose: Passed to
            ``fit``. Callbacks must be tf_keras callbacks.
        compile_kwargs, fit_kwargs: Further arguments for ``compile`` / ``fit``.
        representative_data: Float inputs preprocessed like ``x``, used for the
            range initialization, int8 calibration of any tensor without a QAT
            range, and verification. Defaults to the first samples of ``x``.
        num_calibration_samples: Samples used for ranges and calibration.
        init_ranges: Initialize the activation ranges from the data (see above).
        int8_io: int8 input/output tensors (True) or float32 I/O with
            quantize/dequantize ops at the edges (False).
        lower_upsampling: Convert nearest ``UpSampling2D`` layers as
            concatenations and a reshape, which XNNPACK delegates, instead
            of ``RESIZE_NEAREST_NEIGHBOR``, which it does not take in int8
            (each one splits the graph); the values are identical. As in
            :func:`acsl_tf.export.to_tflite`; the report's ``extra`` lists
            the layers (``upsampling_lowered`` / ``upsampling_kept``).
        verify: Compare the file with the QAT model before writing it.
        num_verify_samples: Verification samples.
        tolerance: Relative parity tolerance; ``None`` uses
            ``acsl_tf.export.DEFAULT_TOLERANCES["int8"]``.
        labels: Optional labels aligned with the verification samples; the
            report then has the accuracy of the QAT model and of the file.
        overwrite: Replace existing files.
        c_source_dir: Also write ``<c_source_name>.h/.cc`` into this directory.
        c_source_name: C identifier for the C source.
        threads: Interpreter threads for verification.
        converters: Passed to :func:`acsl_tf.interop.to_tf_keras`.

    Returns:
        A :class:`QATResult` (``report``, ``history``, ``model``, ``c_source``).

    Raises:
        ImportError: tf_keras or tfmot is missing (the message says what to install).
        TypeError / ValueError: bad model or arguments; a layer that tf_keras or
            tfmot's default scheme cannot handle (the error names it).
        FileExistsError: ``path`` exists and ``overwrite=False``.
        RuntimeError: the converter failed.
        acsl_tf.export.ParityError: the file differs from the QAT model beyond
            ``tolerance``; nothing is written.

    Example:
    ```python
    small = acsl_tf.shrink(model, target_flops=0.75)
    result = acsl_tf.interop.quantize_aware(
        small, "small_qat.tflite", x_train, y_train,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(1e-4), epochs=2, batch_size=64)
    print(result.report)
    ```
    """
    from acsl_tf import _keras, export

    _keras.require_tensorflow("acsl_tf.interop.quantize_aware")
    _check_positive(
        epochs=epochs,
        num_calibration_samples=num_calibration_samples,
        num_verify_samples=num_verify_samples,
        threads=threads,
    )
    if x is None:
        raise ValueError("`x` (the fine-tuning data) is required. Received: x=None")
    if loss is None and "loss" not in (compile_kwargs or {}):
        raise ValueError(
            "Quantization-aware fine-tuning needs the training loss, e.g. "
            "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True). "
            "Received: loss=None"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike. Received: path={path!r}")
    path = os.fspath(path)
    _io.check_writable(path, overwrite=overwrite)
    if c_source_dir is not None and not os.path.isdir(os.fspath(c_source_dir)):
        raise FileNotFoundError(
            "The C source directory does not exist; create it first. "
            f"Received: c_source_dir={c_source_dir!r}"
        )
    tol = export.DEFAULT_TOLERANCES["int8"] if tolerance is None else float(tolerance)
    if not tol >= 0:
        raise ValueError(
            f"`tolerance` must be a non-negative number. Received: tolerance={tolerance!r}"
        )
    if not isinstance(model, keras.Model) or _legacy.is_tf_keras_object(model):
        raise TypeError(
            "quantize_aware expects a Keras 3 model (convert a tf_keras model with "
            "acsl_tf.interop.from_tf_keras, or apply tfmot to it directly). "
            f"Received: model={type(model).__module__}.{type(model).__name__}"
        )
    if model.inputs is not None and len(model.inputs) != 1:
        raise ValueError(
            "Only single-input models can be exported to TFLite here. "
            f"Received: {len(model.inputs)} inputs"
        )

    reusable = (hasattr(x, "shape") and hasattr(x, "dtype")) or hasattr(x, "element_spec")
    if representative_data is None and not reusable:
        raise ValueError(
            "`x` is a one-shot iterable, so its first samples cannot also serve for the range "
            "initialization, calibration and verification. Pass `representative_data` (a "
            f"few hundred inputs). Received: x={type(x).__name__}"
        )
    with _legacy.keras_guard():
        tfmot = _legacy.tfmot()
        tfk = _legacy.tf_keras()
        legacy = _convert.to_tf_keras(model, converters=converters)
        input_shape = tuple(legacy.inputs[0].shape[1:])
        limit = max(num_calibration_samples, num_verify_samples)
        samples = _samples(
            representative_data if representative_data is not None else x,
            input_shape,
            limit,
            "representative_data" if representative_data is not None else "x",
        )
        n_verify = min(num_verify_samples, len(samples))
        if labels is not None:
            n_labels = np.asarray(labels).shape[0] if np.ndim(labels) else 0
            if n_labels < n_verify:
                raise ValueError(
                    "`labels` must have one entry per verification sample (at least "
                    f"{n_verify}), aligned with the first samples of "
                    "`representative_data` (or `x`). Received: "
                    f"labels.shape={np.asarray(labels).shape}"
                )
        _check_quantizable(legacy)
        try:
            qat = tfmot.quantization.keras.quantize_model(legacy)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                "tfmot's default 8-bit scheme cannot quantize this model: "
                f"{e} Replace the layer it names with a supported one (Conv, Dense, "
                "BatchNormalization, ReLU, Add, Concatenate, pooling, ...). "
                f"Received: model={model.name!r}"
            ) from e
        n_init = _init_ranges(qat, samples[:num_calibration_samples]) if init_ranges else 0

        ckw = dict(compile_kwargs or {})
        ckw.setdefault("optimizer", _to_tfk_object(optimizer, tfk.optimizers, "optimizer"))
        if loss is not None:
            ckw.setdefault("loss", _to_tfk_object(loss, tfk.losses, "loss"))
        if metrics is not None:
            ckw.setdefault("metrics", _metrics_to_tfk(metrics, tfk))
        qat.compile(**ckw)
        fkw = dict(fit_kwargs or {})
        fkw.update(epochs=epochs, verbose=verbose)
        for key, value in (
            ("batch_size", batch_size),
            ("validation_data", validation_data),
            ("callbacks", callbacks),
        ):
            if value is not None:
                fkw[key] = value
        history = qat.fit(x, y, **fkw)

        start = time.perf_counter()
        calibration = samples[:num_calibration_samples]
        content, traced = _convert_int8(
            qat,
            input_shape,
            calibration,
            int8_io,
            upsampling_cls=tfk.layers.UpSampling2D if lower_upsampling else None,
        )
        seconds = time.perf_counter() - start
        info = export.inspect_tflite(content)
        report = export.ExportReport(
            path=None,
            format="tflite",
            quantization="int8",
            size_bytes=len(content),
            ops=info["ops"],
            op_counts=info["op_counts"],
            inputs=info["inputs"],
            outputs=info["outputs"],
            tolerance=tol,
            extra={
                "reference": "tfmot QAT model (tf_keras, inference mode)",
                "qat_epochs": int(epochs),
                "range_init_samples": n_init,
                "num_calibration_samples": int(len(calibration)),
                "int8_io": bool(int8_io),
                "conversion_seconds": round(seconds, 3),
                **traced.as_extra(),
            },
        )
        if verify:
            xv = samples[:num_verify_samples]
            y_labels = None if labels is None else np.asarray(labels)[: len(xv)]
            reference = np.concatenate(
                [qat(xv[k : k + 64], training=False).numpy() for k in range(0, len(xv), 64)]
            )
            produced = export.run_tflite(content, xv, threads=threads)[0]
            stats = _compare(reference, produced, y_labels)
            report.verified = True
            report.verify_data = "representative_data" if representative_data is not None else "x"
            report.num_verify_samples = int(len(xv))
            for k, v in stats.items():
                setattr(report, k, v)
            out_scale = info["outputs"][0].scale
            if out_scale:
                report.extra["max_abs_error_in_output_steps"] = round(
                    report.max_abs_error / out_scale, 2
                )
            report.passed = bool(report.relative_error <= tol)
            if not report.passed:
                steps = report.extra.get("max_abs_error_in_output_steps")
                y_max = float(np.abs(reference).max())
                hint = (
                    "Fine-tune longer so the activation ranges settle, check the "
                    "representative data, or pass a larger `tolerance`."
                )
                if steps is not None and steps <= 2:
                    hint = (
                        f"The error is {steps:g} int8 output step(s), but the QAT model's "
                        f"outputs are small (max |y| = {y_max:.3g}), so one step is a large "
                        "part of them; typical of an untrained or barely trained model. Train "
                        "the float model first, or pass a larger `tolerance`."
                    )
                raise export.ParityError(
                    "The int8 TFLite model does not reproduce the QAT model: relative error "
                    f"{report.relative_error:.3g} > tolerance {tol:g} (max abs error "
                    f"{report.max_abs_error:.3g}). Nothing was written to {path!r}. {hint} "
                    f"Received: tolerance={tol:g}",
                    report,
                )
        _io.atomic_write_bytes(path, content, overwrite=overwrite)
        report.path = path
        c_paths = None
        if c_source_dir is not None:
            c_paths = tuple(
                export.to_c_source(path, c_source_dir, name=c_source_name, overwrite=overwrite)
            )
    return QATResult(
        report=report,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        model=qat,
        c_source=c_paths,
        range_init_samples=n_init,
    )
