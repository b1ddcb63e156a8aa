"""Deployment: verified TFLite / TFLite Micro / ONNX artifacts and latency.

- :func:`to_tflite`: float32, float16, dynamic-range or full-int8 TFLite,
  checked against the Keras model.
- :func:`to_c_source`: a TFLite flatbuffer as C++ source for TFLite Micro.
- :func:`to_onnx`: ONNX via tf2onnx, checked with onnxruntime.
- :func:`benchmark_tflite` / :func:`compare_tflite`: interpreter latency;
  :func:`inspect_delegation`: which operators XNNPACK runs.

tf2onnx, onnxruntime and ai_edge_litert are optional; install them with
``pip install "acsl_tf[export]"``.
"""

from acsl_tf.export._report import DEFAULT_TOLERANCES, ExportReport, ParityError, TensorInfo
from acsl_tf.export.benchmark import (
    LatencyComparison,
    LatencyStats,
    benchmark_tflite,
    compare_tflite,
)
from acsl_tf.export.c_source import to_c_source
from acsl_tf.export.onnx import to_onnx
from acsl_tf.export.tflite import (
    QUANTIZATION_MODES,
    inspect_delegation,
    inspect_tflite,
    run_tflite,
    to_tflite,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "ExportReport",
    "LatencyComparison",
    "LatencyStats",
    "ParityError",
    "QUANTIZATION_MODES",
    "TensorInfo",
    "benchmark_tflite",
    "compare_tflite",
    "inspect_delegation",
    "inspect_tflite",
    "run_tflite",
    "to_c_source",
    "to_onnx",
    "to_tflite",
]
