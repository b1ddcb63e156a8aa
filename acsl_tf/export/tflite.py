"""Keras 3 model -> verified TFLite (LiteRT) flatbuffer."""

from __future__ import annotations

import collections
import os
import time
import warnings

import numpy as np

from acsl_tf import _io, _keras, _validation
from acsl_tf.export import _batchnorm_check, _common, _upsampling
from acsl_tf.export._report import DEFAULT_TOLERANCES, ExportReport, ParityError, TensorInfo
from acsl_tf.export._report import compare_outputs as _compare_outputs

QUANTIZATION_MODES = ("none", "float16", "dynamic", "int8")

_LITERT_WHAT = "Running TFLite models (verification, benchmarking)"


def _litert():
    return _common.require("ai_edge_litert.interpreter", _LITERT_WHAT)


def _read_tflite(path_or_bytes, argname="tflite_path_or_bytes") -> bytes:
    """Accept a path or the flatbuffer bytes; check the TFLite file identifier."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        content = bytes(path_or_bytes)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        p = os.fspath(path_or_bytes)
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"No TFLite file at {p!r}. Pass an existing .tflite path or the model bytes. "
                f"Received: {argname}={p!r}"
            )
        with open(p, "rb") as f:
            content = f.read()
    else:
        raise TypeError(
            f"`{argname}` must be a path or bytes. Received: {argname}={type(path_or_bytes).__name__}"
        )
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(
            "This is not a TFLite flatbuffer (the file identifier 'TFL3' is missing at byte 4). "
            f"Received: {argname} with {len(content)} bytes starting {content[:8]!r}"
        )
    return content


def _make_interpreter(content: bytes, *, threads: int | None = 1, delegates: bool = True):
    lite = _litert()
    kwargs = {"model_content": content, "num_threads": threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = (
            lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    return lite.Interpreter(**kwargs)


def _tensor_info(d) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    # The allocated (batch 1) shape, with -1 where the signature's batch
    # dimension is dynamic. (The converter sometimes marks static inner
    # dimensions as -1 in the signature, e.g. after UpSampling2D, so only the
    # batch dimension is taken from it.)
    shape = [int(s) for s in d["shape"]]
    signature = d.get("shape_signature")
    if shape and signature is not None and len(signature) and int(signature[0]) < 0:
        shape[0] = -1
    return TensorInfo(
        name=str(d["name"]),
        shape=shape,
        dtype=np.dtype(d["dtype"]).name,
        scale=float(scale) if scale else None,
        zero_point=int(zp) if scale else None,
    )


def inspect_tflite(tflite_path_or_bytes) -> dict:
    """List the operators and I/O tensors of a TFLite model.

    Operators are read with the builtin resolver and no delegates, so the names
    are the model's own (no ``DELEGATE`` nodes).

    Args:
        tflite_path_or_bytes: Path to a ``.tflite`` file or its bytes.

    Returns:
        A dict with ``ops`` (sorted unique names), ``op_counts``, ``op_details``
        (one entry per node in execution order: ``{"op", "input_dtypes",
        "output_dtypes", "inputs", "outputs"}``; tensor indices included),
        ``tensors`` (index -> ``{"name", "shape", "dtype", "bytes", "scale",
        "zero_point"}``; scale and zero point are ``None`` for float tensors),
        ``inputs`` and ``outputs`` (lists of :class:`TensorInfo`) and their
        tensor indices ``input_indices`` / ``output_indices``.

    Example:
    ```python
    info = acsl_tf.export.inspect_tflite("model.tflite")
    print(info["ops"])  # ['ADD', 'CONV_2D', 'FULLY_CONNECTED', 'MEAN']
    ```
    """
    content = _read_tflite(tflite_path_or_bytes)
    it = _make_interpreter(content, threads=1, delegates=False)
    # Allocation (batch 1) propagates shapes the converter left dynamic, e.g.
    # after UpSampling2D, so the shapes below are the ones used at run time.
    it.allocate_tensors()
    tensors = {}
    for d in it.get_tensor_details():
        shape = [int(s) for s in d["shape"]]
        dtype = np.dtype(d["dtype"])
        q_scale, q_zero = d.get("quantization", (0.0, 0))
        tensors[int(d["index"])] = {
            "name": d["name"],
            "shape": shape,
            "dtype": dtype.name,
            "scale": float(q_scale) if q_scale else None,
            "zero_point": int(q_zero) if q_scale else None,
            "bytes": int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if shape
            else dtype.itemsize,
        }
    op_details = []
    for op in it._get_ops_details():
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        outs = [int(i) for i in op["outputs"] if int(i) >= 0]
        op_details.append(
            {
                "op": op["op_name"],
                "inputs": ins,
                "outputs": outs,
                "input_dtypes": [tensors[i]["dtype"] for i in ins if i in tensors],
                "output_dtypes": [tensors[i]["dtype"] for i in outs if i in tensors],
            }
        )
    counts = collections.Counter(o["op"] for o in op_details)
    in_details, out_details = it.get_input_details(), it.get_output_details()
    signatures = it.get_signature_list()
    if len(signatures) == 1:
        # Order the outputs as the Keras model's (signature names output_0, output_1, ...).
        runner = it.get_signature_runner(next(iter(signatures)))
        by_index = {int(d["index"]): d for d in out_details}
        sig_out = runner.get_output_details()
        ordered = [int(sig_out[n]["index"]) for n in sorted(sig_out, key=_natural_key)]
        if sorted(ordered) == sorted(by_index):
            out_details = [by_index[i] for i in ordered]
    return {
        "ops": sorted(counts),
        "op_counts": dict(sorted(counts.items())),
        "op_details": op_details,
        "tensors": tensors,
        "inputs": [_tensor_info(d) for d in in_details],
        "outputs": [_tensor_info(d) for d in out_details],
        "input_indices": [int(d["index"]) for d in in_details],
        "output_indices": [int(d["index"]) for d in out_details],
    }


def inspect_delegation(tflite_path_or_bytes, *, threads: int = 1) -> dict:
    """Which operators the interpreter's default delegate (XNNPACK) runs.

    The model is loaded with the LiteRT interpreter and its default delegates,
    as :func:`benchmark_tflite` and :func:`run_tflite` run it. The delegate
    replaces each group of consecutive operators it takes by one ``DELEGATE``
    node (a *partition*); the operators it does not take run on the builtin
    reference kernels, between partitions. A node belongs to a partition when
    it is reached walking back from the partition's output tensors without
    crossing one of its input tensors.

    Args:
        tflite_path_or_bytes: Path to a ``.tflite`` file or its bytes.
        threads: Interpreter threads (the delegate is created with them).

    Returns:
        A dict with ``partitions`` (number of ``DELEGATE`` nodes),
        ``delegated`` and ``not_delegated`` (``{op name: count}``, sorted by
        name) and ``not_delegated_nodes`` (``[{"index", "op"}]`` in execution
        order). One partition and an empty ``not_delegated`` mean the whole
        graph runs in XNNPACK.

    Example:
    ```python
    d = acsl_tf.export.inspect_delegation("unet.tflite")
    print(d["partitions"], d["not_delegated"])  # 1 {}
    ```
    """
    content = _read_tflite(tflite_path_or_bytes)
    threads = _validation.positive_int(threads, "threads", type_error=ValueError)
    it = _make_interpreter(content, threads=threads)
    it.allocate_tensors()
    ops = it._get_ops_details()
    by_index = {int(op["index"]): op for op in ops}
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): int(op["index"]) for op in originals for t in op["outputs"] if int(t) >= 0}
    covered = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer:
                continue
            index = producer[t]
            if index in covered:
                continue
            covered.add(index)
            stack.extend(int(i) for i in by_index[index]["inputs"] if int(i) >= 0)
    left = [op for op in originals if int(op["index"]) not in covered]
    taken = collections.Counter(op["op_name"] for op in originals if int(op["index"]) in covered)
    return {
        "partitions": len(delegates),
        "delegated": dict(sorted(taken.items())),
        "not_delegated": dict(sorted(collections.Counter(op["op_name"] for op in left).items())),
        "not_delegated_nodes": [{"index": int(op["index"]), "op": op["op_name"]} for op in left],
    }


def run_tflite(tflite_path_or_bytes, x, *, threads: int = 1) -> list[np.ndarray]:
    """Run a single-input TFLite model on each sample of ``x`` (batch 1).

    Float inputs are quantized, and quantized outputs dequantized, with the
    tensors' own scale and zero point, so the results are comparable with the
    Keras model whatever the I/O types.

    Args:
        tflite_path_or_bytes: Path to a ``.tflite`` file or its bytes.
        x: Float array of shape ``(N,) + input_shape``.
        threads: Interpreter threads.

    Returns:
        One float32 array of shape ``(N,) + output_shape`` per output, in the
        order of the Keras model's outputs (signature outputs ``output_0``, ...).
    """
    content = _read_tflite(tflite_path_or_bytes)
    try:
        return _run(content, x, threads)
    except RuntimeError as e:
        if "XNNPACK" not in str(e):
            raise
        tiny = _degenerate_scales(content)
        if not tiny:
            raise
        raise RuntimeError(
            f"The quantized model cannot run: tensor(s) {tiny} have a quantization scale below "
            "1e-6, i.e. they were constant (e.g. a ReLU output that is zero) on all the "
            "representative data, and XNNPACK refuses such tensors. Check that the "
            "representative data are preprocessed like the training inputs and that the model "
            f"is trained (a dead output layer gives this). Runtime error: {e}"
        ) from e


def _degenerate_scales(content: bytes, floor: float = 1e-6) -> list[str]:
    """Names of the quantized tensors whose scale is positive but below ``floor``."""
    it = _make_interpreter(content, threads=1, delegates=False)
    names = []
    for d in it.get_tensor_details():
        scales = np.asarray(d.get("quantization_parameters", {}).get("scales", ()), np.float64)
        if scales.size and np.all(scales > 0) and float(scales.max()) < floor:
            names.append(d["name"])
    return names


def _run(content: bytes, x, threads) -> list[np.ndarray]:
    it = _make_interpreter(content, threads=threads)
    signatures = it.get_signature_list()
    if signatures:
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        out_names = sorted(signatures[key]["outputs"], key=_natural_key)
        runner = it.get_signature_runner(key)
        in_details = runner.get_input_details()
        out_details = runner.get_output_details()
        if len(in_details) != 1:
            raise ValueError(
                f"Only single-input TFLite models can be run. Received: inputs={sorted(in_details)}"
            )
        in_name, in_d = next(iter(in_details.items()))
        results = [[] for _ in out_names]
        for sample in x:
            out = runner(**{in_name: _quantize(sample[None], in_d)})
            for k, name in enumerate(out_names):
                results[k].append(_dequantize(out[name], out_details[name]))
        return [np.concatenate(r, axis=0) for r in results]
    # Models converted without signatures: use the raw tensor order.
    in_d = it.get_input_details()[0]
    sample_shape = (1,) + tuple(np.asarray(x).shape[1:])
    if tuple(in_d["shape"]) != sample_shape:
        it.resize_tensor_input(in_d["index"], list(sample_shape))
    it.allocate_tensors()
    out_ds = it.get_output_details()
    results = [[] for _ in out_ds]
    for sample in x:
        it.set_tensor(in_d["index"], _quantize(sample[None], in_d))
        it.invoke()
        for k, d in enumerate(out_ds):
            results[k].append(_dequantize(it.get_tensor(d["index"]), d))
    return [np.concatenate(r, axis=0) for r in results]


def _natural_key(name):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _quantize(x, d):
    dtype = np.dtype(d["dtype"])
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zp = d["quantization"]
    if not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


def _dequantize(y, d):
    dtype = np.dtype(d["dtype"])
    scale, zp = d["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)
    return np.asarray(y, dtype=np.float32)


def _quantized_output_ranges(info) -> list:
    """Per output, ``255 * scale`` of its int8 tensor: the output tensor itself
    (int8 I/O) or the input of the ``DEQUANTIZE`` that produces it (float I/O);
    ``None`` for float outputs."""
    producers = {t: op for op in info["op_details"] for t in op["outputs"]}
    ranges = []
    for index in info["output_indices"]:
        t = info["tensors"].get(index, {})
        scale = t.get("scale")
        op = producers.get(index)
        if scale is None and op is not None and op["op"] == "DEQUANTIZE" and op["inputs"]:
            scale = info["tensors"].get(op["inputs"][0], {}).get("scale")
        ranges.append(255.0 * scale if scale else None)
    return ranges


def _convert(
    model, quantization, calibration, int8_io, verbose=False, *, lower_upsampling=True, record=None
):
    """Export to a SavedModel (inference-mode ``serve`` endpoint) and convert it.

    With ``lower_upsampling``, nearest ``UpSampling2D`` layers are traced as
    concatenations and a reshape (:mod:`acsl_tf.export._upsampling`); what
    happened to each is added to ``record`` (an
    :class:`~acsl_tf.export._upsampling.UpsamplingRecord`) when one is given.

    The SavedModel lives in ``acsl_tf-export-<pid>-*`` in the system temp
    folder and is removed on every exit path (see ``acsl_tf._io``). Unless
    ``verbose``, what TensorFlow and the converter print is captured and only
    shown (its tail) in the error message of a failed conversion.
    """
    import tensorflow as tf

    with _io.export_temp_dir() as d, _common.quiet_output(not verbose) as captured:
        saved = os.path.join(d, "saved_model")
        from acsl_tf import onednn

        # The plain strided convolutions, not the training workaround; nearest
        # upsampling as ops the XNNPACK delegate takes.
        with (
            onednn.suspended(),
            _upsampling.lowered_nearest_upsampling(lower_upsampling) as traced,
        ):
            model.export(saved, format="tf_saved_model", verbose=bool(verbose))
        if record is not None:
            record.lowered.extend(n for n in traced.lowered if n not in record.lowered)
            record.kept.update(traced.kept)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

            def representative_dataset():
                for k in range(len(calibration)):
                    yield [calibration[k : k + 1]]

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            return converter.convert()
        except Exception as e:
            hint = (
                " Some layer has no int8 builtin kernel; try quantization='dynamic' or replace "
                "the layer."
                if quantization == "int8"
                else ""
            )
            log = _common.log_tail(captured())
            log = f"\n  Converter log (last lines; verbose=True shows all):\n{log}" if log else ""
            raise RuntimeError(
                f"TFLite conversion failed (quantization={quantization!r}).{hint} "
                f"Converter error: {e}{log}"
            ) from e


def to_tflite(
    model,
    path,
    *,
    quantization: str = "none",
    representative_data=None,
    int8_io: bool = True,
    verify: bool = True,
    overwrite: bool = True,
    labels=None,
    num_verify_samples: int = 32,
    num_calibration_samples: int = 200,
    tolerance: float | None = None,
    threads: int = 1,
    verbose: bool = False,
    check_batchnorm: bool = True,
    lower_upsampling: bool = True,
) -> ExportReport:
    """Convert a Keras 3 model to a TFLite flatbuffer, check it, and write it.

    The model is exported to a SavedModel (its inference-mode ``serve``
    endpoint, as ``model.export`` does) and converted with
    ``tf.lite.TFLiteConverter.from_saved_model``. With ``verify=True`` the
    flatbuffer is run with the LiteRT interpreter (``ai_edge_litert``) on sample
    inputs and compared with the Keras model before anything is written.

    Modes:
      - ``"none"``: float32.
      - ``"float16"``: float16 weights (dequantized at load or run in fp16).
      - ``"dynamic"``: int8 weights, float activations (dynamic-range).
      - ``"int8"``: full-integer: int8 weights and activations, only
        ``TFLITE_BUILTINS_INT8`` ops (no float fallback; conversion fails if a
        layer has no int8 kernel). With ``int8_io=True`` the model's input and
        output tensors are int8 too (microcontroller style); with
        ``int8_io=False`` they stay float32 with a ``QUANTIZE`` /
        ``DEQUANTIZE`` op at the edges. Needs ``representative_data``.

    Parity: the relative error ``max|y_tflite - y_keras| / scale`` (int8
    outputs dequantized) must stay within ``tolerance`` (defaults: none 1e-3,
    float16 1e-2, dynamic 5e-2, int8 1e-1). ``scale`` is the output's range:
    ``max|y_keras|``, but 1 for probability outputs (softmax) and at least the
    range of an int8 output tensor (see
    :func:`acsl_tf.export._report.output_scale`). The tolerances are about 10x
    above what healthy conversions give, so a failure means a broken artifact;
    then :class:`ParityError` is raised and nothing is written.

    Nearest upsampling: Keras computes ``UpSampling2D(interpolation="nearest")``
    as a repeat, which converts to ``EXPAND_DIMS``/``TILE``/``SHAPE``/
    ``STRIDED_SLICE``/``CONCATENATION``/``RESHAPE`` ops that XNNPACK does not
    take, so each such layer splits the delegated graph. With
    ``lower_upsampling=True`` (the default) these layers are traced as
    concatenations of copies and one reshape, which XNNPACK runs: the values
    are bit-identical (float32 and int8), a U-Net runs as one XNNPACK
    partition instead of 5, and it is a little faster (1.01x for a 128x128
    U-Net, up to 1.7x for one upsampling layer; docs/EXPORT.md). Only the
    trace changes, never the model. ``report.extra["upsampling_lowered"]``
    lists the layers so traced and ``report.extra["upsampling_kept"]`` the
    ones kept with the reason (bilinear: its ``RESIZE_BILINEAR`` is delegated
    already; spatial size unknown at trace time).

    Parity compares the artifact with the Keras model, so it cannot reveal a
    Keras model that is itself wrong. With ``representative_data`` and
    ``check_batchnorm=True``, the moving statistics of every
    BatchNormalization layer are compared with the batch statistics of that
    data; stale statistics (e.g. right after sparsity training) give a
    ``UserWarning`` and are recorded in ``report.batchnorm_check``.

    Args:
        model: A built, single-input Keras 3 model.
        path: Output ``.tflite`` path. Written atomically.
        quantization: One of ``"none"``, ``"float16"``, ``"dynamic"``, ``"int8"``.
        representative_data: Sample inputs, preprocessed like the model's
            training inputs: a NumPy array ``(N,) + input_shape``, a
            ``tf.data.Dataset`` (batched or not; ``(x, y)`` elements allowed),
            a generator, or a callable returning an iterable. Used for int8
            calibration (first ``num_calibration_samples``; ~100-500 real
            samples are typical) and, in every mode, as verification inputs
            (first ``num_verify_samples``). Without it, verification uses
            uniform random inputs in [0, 1).
        int8_io: For ``"int8"``: int8 input/output tensors (True) or float32
            I/O with quantize/dequantize at the edges (False).
        verify: Run the artifact and compare it with Keras.
        overwrite: Replace an existing file at ``path`` (the default, as
            ``keras.Model.save``). With ``overwrite=False`` an existing file
            raises ``FileExistsError`` before the conversion starts.
        labels: Optional ground-truth labels aligned with
            ``representative_data`` (class ids or one-hot; per-pixel ids for
            dense outputs). The report then has the argmax accuracy of Keras
            and of the artifact on the verification samples.
        num_verify_samples: Number of verification inputs.
        num_calibration_samples: Maximum number of int8 calibration inputs.
        tolerance: Relative parity tolerance; ``None`` uses the mode's default.
        threads: Interpreter threads used for verification.
        verbose: Show what TensorFlow, the converter and the interpreter print
            (about a dozen log lines). By default they are captured, and their
            last lines are added to the error of a failed conversion.
        check_batchnorm: Compare BatchNorm moving statistics with the batch
            statistics of ``representative_data`` and warn when they are stale
            (see ``report.batchnorm_check``).
        lower_upsampling: Trace nearest ``UpSampling2D`` layers (channels_last
            or channels_first, any integer ``size``) as concatenations and a
            reshape, which XNNPACK delegates, instead of Keras' repeat (see
            above). False gives the graph Keras' own trace gives.

    Returns:
        An :class:`ExportReport` (path, size, ops, I/O dtypes and shapes,
        errors, ``passed``, tolerance, ``batchnorm_check``).

    Raises:
        TypeError: ``model`` is not a Keras 3 model, or ``path`` is not a path.
        ValueError: unknown ``quantization``; int8 without
            ``representative_data``; representative data of the wrong shape or
            dtype; non-finite weights; a multi-input model; an empty ``path``
            or one ending with a path separator.
        IsADirectoryError: ``path`` is an existing directory.
        FileExistsError: ``path`` exists and ``overwrite=False``.
        FileNotFoundError / PermissionError: the directory is missing or not writable.
        RuntimeError: Keras runs on a backend other than TensorFlow (the
            conversion traces a TensorFlow graph): load the ``.keras`` file in a
            process with ``KERAS_BACKEND=tensorflow`` and export there.
        RuntimeError: the converter failed.
        ParityError: the artifact's outputs differ from Keras beyond ``tolerance``.

    Example:
    ```python
    report = acsl_tf.export.to_tflite(
        model, "model_int8.tflite", quantization="int8",
        representative_data=x_train[:200])
    print(report)                    # size, ops, I/O types, parity
    assert report.inputs[0].dtype == "int8"
    ```
    """
    _keras.require_tensorflow("acsl_tf.export.to_tflite")
    _validation.choice(quantization, "quantization", QUANTIZATION_MODES)
    # A wrong type is a ValueError too, as to_tflite has always raised.
    num_verify_samples = _validation.positive_int(
        num_verify_samples, "num_verify_samples", type_error=ValueError
    )
    num_calibration_samples = _validation.positive_int(
        num_calibration_samples, "num_calibration_samples", type_error=ValueError
    )
    threads = _validation.positive_int(threads, "threads", type_error=ValueError)
    path = _io.check_writable(path, overwrite=overwrite)
    input_name, input_shape, _ = _common.input_spec(model)
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs `representative_data` to calibrate activation ranges: "
            "pass ~100-500 preprocessed training inputs (NumPy array, tf.data.Dataset or "
            "generator). Received: representative_data=None"
        )
    if verify:
        _litert()  # fail early with the install hint
    samples = None
    if representative_data is not None:
        samples = _common.collect_samples(
            representative_data,
            input_shape,
            argname="representative_data",
            limit=max(num_calibration_samples, num_verify_samples),
        )
    if labels is not None and samples is None:
        raise ValueError(
            "`labels` are aligned with `representative_data`, which is missing. "
            "Pass the inputs the labels belong to. Received: representative_data=None"
        )
    if labels is not None:
        _common.check_labels(labels, min(len(samples), num_verify_samples))
    tol = (
        DEFAULT_TOLERANCES[quantization]
        if tolerance is None
        else _validation.non_negative(tolerance, "tolerance")
    )

    bn_check = None
    if check_batchnorm and samples is not None:
        bn_check = _batchnorm_check.check_batchnorm_statistics(
            model, samples[:num_calibration_samples]
        )
        if bn_check and bn_check["stale"]:
            warnings.warn(
                _batchnorm_check.stale_message(bn_check, quantization), UserWarning, stacklevel=2
            )

    start = time.perf_counter()
    calibration = samples[:num_calibration_samples] if samples is not None else None
    upsampling = _upsampling.UpsamplingRecord()
    content = _convert(
        model,
        quantization,
        calibration,
        int8_io,
        verbose=verbose,
        lower_upsampling=bool(lower_upsampling),
        record=upsampling,
    )
    seconds = time.perf_counter() - start

    with _common.quiet_output(not verbose):
        info = inspect_tflite(content)
    report = ExportReport(
        path=None,
        format="tflite",
        quantization=quantization,
        size_bytes=len(content),
        ops=info["ops"],
        op_counts=info["op_counts"],
        inputs=info["inputs"],
        outputs=info["outputs"],
        tolerance=tol,
        batchnorm_check=bn_check,
        extra={"conversion_seconds": round(seconds, 3), **upsampling.as_extra()},
    )
    if quantization == "int8":
        report.extra["num_calibration_samples"] = int(len(calibration))
        report.extra["int8_io"] = bool(int8_io)

    if verify:
        if samples is not None:
            x = samples[:num_verify_samples]
            report.verify_data = "representative_data"
        else:
            if any(s is None for s in input_shape):
                raise ValueError(
                    "The model's input shape has undefined dimensions, so random verification "
                    "inputs cannot be made. Pass `representative_data` or verify=False. "
                    f"Received: input_shape={input_shape}"
                )
            rng = np.random.default_rng(0)
            x = rng.random((num_verify_samples,) + tuple(input_shape), dtype=np.float32)
            report.verify_data = "random"
        y_labels = _common.check_labels(labels, len(x))
        reference = _common.keras_outputs(model, x)
        with _common.quiet_output(not verbose):
            produced = run_tflite(content, x, threads=threads)
        stats = _compare_outputs(
            reference, produced, labels=y_labels, quantized_ranges=_quantized_output_ranges(info)
        )
        report.verified = True
        report.num_verify_samples = int(len(x))
        for k, v in stats.items():
            setattr(report, k, v)
        report.passed = bool(report.relative_error <= tol)
        if not report.passed:
            raise ParityError(
                f"The TFLite model ({quantization}) does not reproduce the Keras model: "
                f"relative error {report.relative_error:.3g} > tolerance {tol:g} "
                f"(max abs error {report.max_abs_error:.3g}). Nothing was written to {path!r}. "
                "Check the representative data (it must be preprocessed like training "
                "inputs), try another quantization mode, or pass a larger `tolerance` / "
                "verify=False to write it anyway. Received: quantization="
                f"{quantization!r}",
                report,
            )

    _io.atomic_write_bytes(path, content, overwrite=overwrite)
    report.path = path
    return report
