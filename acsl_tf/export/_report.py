"""Result records of the exporters: :class:`ExportReport` and :class:`ParityError`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Relative parity tolerances, per export mode. The error measured is, per
# output, ``max|y_artifact - y_keras| / scale`` over the verification samples
# (dequantized outputs for int8), where ``scale`` is the output's range (see
# :func:`output_scale`). The values are an order of magnitude
# above what healthy conversions give on small CNNs (float32 ~1e-6, float16
# ~4e-4, dynamic ~3e-3, int8 ~1e-2; see docs/EXPORT.md), so a failure means a
# broken artifact, not unlucky rounding.
DEFAULT_TOLERANCES = {
    "none": 1e-3,
    "float16": 1e-2,
    "dynamic": 5e-2,
    "int8": 1e-1,
    "onnx": 1e-4,
}

# Floor of the output scale in the relative error, so that models whose
# outputs are all close to zero are judged on an absolute scale.
SCALE_FLOOR = 1e-3
# Outputs whose entries lie in [0, 1] and sum to 1 along the last axis (within
# this tolerance) are probabilities: their range is 1 whatever the values.
PROBABILITY_SUM_TOLERANCE = 1e-3


def is_probability(y) -> bool:
    """Whether ``y`` (at least 2-D) holds probability vectors along its last
    axis: entries in [0, 1] that sum to 1 (softmax outputs)."""
    import numpy as np

    y = np.asarray(y, dtype=np.float64)
    if y.ndim < 2 or y.shape[-1] < 2 or y.size == 0:
        return False
    if y.min() < -1e-6 or y.max() > 1 + 1e-6:
        return False
    return bool(np.all(np.abs(y.sum(-1) - 1.0) <= PROBABILITY_SUM_TOLERANCE))


def output_scale(y, quantized_range: float | None = None) -> float:
    """The scale that parity errors of one output are measured against.

    It is the largest of: ``max|y|``; 1 for probability outputs (see
    :func:`is_probability`), since a softmax over 1000 classes has entries
    near 1e-3 but a range of 1; the range an int8 output tensor can represent
    (``255 * scale``), since its rounding step is a fixed fraction of that
    range; and :data:`SCALE_FLOOR`.

    Args:
        y: The Keras model's output on the verification samples.
        quantized_range: ``255 * scale`` of the artifact's int8 output tensor,
            or ``None``.

    Returns:
        The scale (a positive float).
    """
    import numpy as np

    y = np.asarray(y, dtype=np.float64)
    scale = float(np.abs(y).max()) if y.size else 0.0
    if is_probability(y):
        scale = max(scale, 1.0)
    if quantized_range:
        scale = max(scale, float(quantized_range))
    return max(scale, SCALE_FLOOR)


class ParityError(RuntimeError):
    """The exported artifact does not reproduce the Keras model's outputs.

    The full :class:`ExportReport` is attached as ``error.report``; nothing is
    written to disk when this is raised.
    """

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class TensorInfo:
    """Name, shape, dtype and (for quantized tensors) scale/zero point of an
    artifact's input or output."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


@dataclasses.dataclass
class ExportReport:
    """What an exporter wrote and how well it reproduces the Keras model.

    Attributes:
        path: Where the artifact was written (``None`` when nothing was written).
        format: ``"tflite"`` or ``"onnx"``.
        quantization: ``"none"``, ``"float16"``, ``"dynamic"`` or ``"int8"``
            (``"none"`` for ONNX).
        size_bytes: Size of the artifact in bytes.
        ops: Sorted names of the operators the artifact uses (TFLite builtin
            names such as ``"CONV_2D"``, or ONNX op types such as ``"Conv"``).
        op_counts: Number of occurrences of each operator.
        inputs / outputs: :class:`TensorInfo` of each input and output.
        verified: Whether the artifact was run and compared with Keras.
        num_verify_samples: Number of inputs used for the comparison.
        verify_data: ``"representative_data"``, ``"sample_data"`` or ``"random"``.
        max_abs_error / mean_abs_error: Output differences against Keras
            (dequantized for int8 outputs).
        relative_error: The largest ``max|y_artifact - y_keras| / scale`` over
            the outputs, where ``scale`` is the output's range (see
            :func:`output_scale`: ``max|y_keras|``, 1 for probability outputs,
            the int8 output range, at least 1e-3).
        error_scales: The ``scale`` of each output.
        tolerance: The relative tolerance that ``passed`` was judged against.
        passed: ``relative_error <= tolerance`` (``None`` when not verified).
        argmax_agreement: For outputs whose last axis has more than one entry,
            the fraction of positions (samples, or pixels for dense outputs)
            where the artifact's argmax equals Keras' argmax.
        keras_accuracy / artifact_accuracy: When labels were given, the argmax
            accuracy of Keras and of the artifact on the verification samples.
        batchnorm_check: For models with BatchNormalization layers exported
            with representative data, the comparison of their moving
            statistics with the batch statistics of that data:
            ``{"layers": n, "stale": [{"layer", "score", ...}], "threshold"}``.
            A non-empty ``stale`` list means the Keras model itself is off on
            this data, and parity (measured against it) says nothing about
            accuracy. ``None`` when not checked.
        extra: Format-specific details (e.g. ``{"opset": 17}``).
    """

    path: str | None
    format: str
    quantization: str
    size_bytes: int
    ops: list[str]
    op_counts: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    verified: bool = False
    num_verify_samples: int = 0
    verify_data: str | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    relative_error: float | None = None
    tolerance: float | None = None
    passed: bool | None = None
    argmax_agreement: float | None = None
    keras_accuracy: float | None = None
    artifact_accuracy: float | None = None
    error_scales: list[float] | None = None
    batchnorm_check: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        return dataclasses.asdict(self)

    def to_json(self, **kwargs) -> str:
        """The report as a JSON string (``kwargs`` go to ``json.dumps``)."""
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """A short human-readable summary."""

        def fmt_io(infos):
            parts = []
            for t in infos:
                q = f" q=({t.scale:.3g},{t.zero_point})" if t.scale else ""
                parts.append(f"{t.name}{list(t.shape)} {t.dtype}{q}")
            return "; ".join(parts)

        lines = [
            f"{self.format} export ({self.quantization}) -> {self.path}",
            f"  size: {self.size_bytes:,} bytes",
            f"  ops: {', '.join(self.ops)}",
            f"  inputs: {fmt_io(self.inputs)}",
            f"  outputs: {fmt_io(self.outputs)}",
        ]
        stale = (self.batchnorm_check or {}).get("stale") or []
        if self.verified:
            status = "PASSED" if self.passed else "FAILED"
            lines.append(
                f"  parity {status} on {self.num_verify_samples} {self.verify_data} samples: "
                f"max abs {self.max_abs_error:.3g}, mean abs {self.mean_abs_error:.3g}, "
                f"relative {self.relative_error:.3g} (tolerance {self.tolerance:g})"
            )
            if stale:
                lines.append(
                    "  parity only shows that the artifact matches the Keras model, whose "
                    "BatchNorm statistics are stale (below): it does not show that the model "
                    "is accurate"
                )
            if self.argmax_agreement is not None:
                lines.append(f"  argmax agreement: {self.argmax_agreement:.4f}")
            if self.keras_accuracy is not None:
                lines.append(
                    f"  accuracy on labels: keras {self.keras_accuracy:.4f}, "
                    f"{self.format} {self.artifact_accuracy:.4f}"
                )
        else:
            lines.append("  not verified")
        if stale:
            names = ", ".join(f"{s['layer']} ({s['score']:.2g})" for s in stale[:5])
            more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
            lines.append(
                f"  WARNING: stale BatchNorm statistics in {len(stale)} of "
                f"{self.batchnorm_check['layers']} layers: {names}{more}; recalibrate with "
                "acsl_tf.recalibrate_batchnorm(model, x) before exporting"
            )
        for k, v in self.extra.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def compare_outputs(reference, produced, *, labels=None, quantized_ranges=None) -> dict[str, Any]:
    """Error statistics between lists of reference and produced output arrays.

    Args:
        reference: List of NumPy arrays (Keras outputs), one per model output.
        produced: List of NumPy arrays of the same shapes (artifact outputs).
        labels: Optional integer class labels (or one-hot) for the first output.
        quantized_ranges: Optional list with, per output, ``255 * scale`` of
            the artifact's int8 output tensor (``None`` for float outputs).

    Returns:
        A dict with ``max_abs_error``, ``mean_abs_error``, ``relative_error``
        (the largest per-output ``max abs error / output_scale``),
        ``error_scales``, ``argmax_agreement``, ``keras_accuracy`` and
        ``artifact_accuracy``.
    """
    import numpy as np

    quantized_ranges = list(quantized_ranges or [])
    max_abs, abs_sum, count, relative, scales = 0.0, 0.0, 0, 0.0, []
    for k, (ref, out) in enumerate(zip(reference, produced)):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64).reshape(ref.shape)
        diff = np.abs(ref - out)
        worst = float(diff.max()) if diff.size else 0.0
        max_abs = max(max_abs, worst)
        abs_sum += float(diff.sum())
        count += diff.size
        scale = output_scale(ref, quantized_ranges[k] if k < len(quantized_ranges) else None)
        scales.append(scale)
        relative = max(relative, worst / scale)
    result = {
        "max_abs_error": max_abs,
        "mean_abs_error": abs_sum / max(count, 1),
        "relative_error": relative,
        "error_scales": scales,
        "argmax_agreement": None,
        "keras_accuracy": None,
        "artifact_accuracy": None,
    }
    ref0 = np.asarray(reference[0])
    out0 = np.asarray(produced[0]).reshape(ref0.shape)
    if ref0.ndim >= 2 and ref0.shape[-1] > 1:
        ref_arg = ref0.argmax(-1)
        out_arg = out0.argmax(-1)
        result["argmax_agreement"] = float((ref_arg == out_arg).mean())
        if labels is not None:
            y = np.asarray(labels)
            if y.shape == ref0.shape:  # one-hot
                y = y.argmax(-1)
            y = y.reshape(ref_arg.shape)
            result["keras_accuracy"] = float((ref_arg == y).mean())
            result["artifact_accuracy"] = float((out_arg == y).mean())
    return result
