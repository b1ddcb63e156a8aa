"""Input validation shared by the exporters: the model, sample data, labels."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
import tempfile

import numpy as np

EXPORT_EXTRA_HINT = 'pip install "acsl_tf[export]"'


def require(module: str, what: str):
    """Import an optional dependency or raise an ImportError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - the packages are installed in CI
        raise ImportError(
            f"{what} needs the optional package `{module.split('.')[0]}`. "
            f"Install it with: {EXPORT_EXTRA_HINT}. Received: ImportError({e})"
        ) from e


def check_model(model):
    """Validate that ``model`` is a built, single-input Keras 3 model with finite
    weights. Returns the input KerasTensor."""
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "Expected a built Keras 3 `keras.Model` (Functional, Sequential or "
            "subclassed). tf_keras models and SavedModel directories are not accepted; "
            f"load or rebuild the model with Keras 3. Received: model={type(model).__name__}"
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "The model has no defined inputs. Build it first, e.g. by creating it with "
            "`keras.Input(shape)` or calling it once on a batch. "
            f"Received: model={model.name!r}"
        )
    if len(inputs) != 1:
        raise ValueError(
            "Only single-input models can be exported. Wrap the model so that it takes "
            f"one tensor. Received: {len(inputs)} inputs "
            f"({[t.name for t in inputs]})"
        )
    for w in model.weights:
        value = np.asarray(w.numpy())
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise ValueError(
                f"The model has non-finite (NaN or inf) weights in {w.path!r} ({bad} values). "
                "An exported artifact would give meaningless outputs; fix or retrain the "
                f"model first. Received: weight={w.path!r}"
            )
    return inputs[0]


def input_spec(model):
    """``(name, shape_without_batch, dtype)`` of the single model input."""
    t = check_model(model)
    shape = tuple(t.shape[1:])
    name = getattr(t, "name", None) or "input"
    return name.split(":")[0], shape, str(t.dtype)


def _to_array(x, argname):
    if isinstance(x, dict):
        if len(x) != 1:
            raise ValueError(
                f"`{argname}` yields dicts with {len(x)} keys; the model has one input. "
                f"Received: keys={sorted(x)}"
            )
        x = next(iter(x.values()))
    if isinstance(x, (tuple, list)) and len(x) >= 1 and not np.isscalar(x[0]):
        # (x, y) or (x, y, sample_weight) tuples, or [x] lists.
        x = x[0]
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x)


def collect_samples(data, input_shape, *, argname, limit=None, labels=None):
    """Turn a NumPy array, a ``tf.data.Dataset``, a generator or a callable
    returning an iterable into a float32 array of shape ``(N,) + input_shape``.

    Elements may be batched or unbatched, bare inputs, ``(x, y)`` tuples or
    single-key dicts. Dimensions that are ``None`` in ``input_shape`` match any
    size.

    Raises:
        ValueError: empty data, wrong shape, or a non-floating dtype.
    """
    if data is None:
        raise ValueError(f"`{argname}` is required. Received: {argname}=None")
    rank = len(input_shape)
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")):
        arrays = [np.asarray(data)]
        if arrays[0].ndim == rank:
            arrays[0] = arrays[0][None]
    else:
        it = data
        if callable(it) and not hasattr(it, "__iter__"):
            it = it()
        if not hasattr(it, "__iter__"):
            raise ValueError(
                f"`{argname}` must be a NumPy array of shape (N,)+{tuple(input_shape)}, "
                "a tf.data.Dataset, a generator, or a callable returning an iterable. "
                f"Received: {argname}={type(data).__name__}"
            )
        arrays, total = [], 0
        for element in itertools.islice(iter(it), 100_000):
            x = _to_array(element, argname)
            if x.ndim == rank:
                x = x[None]
            arrays.append(x)
            total += len(x) if x.ndim else 1
            if limit is not None and total >= limit:
                break
    if not arrays:
        raise ValueError(f"`{argname}` is empty. Received: {argname}={data!r}")
    for x in arrays:
        expected = (None,) + tuple(input_shape)
        ok = x.ndim == rank + 1 and all(
            e is None or e == s for e, s in zip(expected[1:], x.shape[1:])
        )
        if not ok:
            raise ValueError(
                f"`{argname}` has the wrong shape for this model: expected samples of "
                f"shape (N,)+{tuple(input_shape)} (or single samples of shape "
                f"{tuple(input_shape)}). Received: {argname}.shape={tuple(x.shape)}"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"`{argname}` must hold floating-point inputs, preprocessed exactly as "
                "for the Keras model (e.g. `x.astype('float32') / 255`). "
                f"Received: {argname}.dtype={x.dtype}"
            )
    shapes = {x.shape[1:] for x in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"All samples in `{argname}` must have the same shape. "
            f"Received: shapes={sorted(shapes)}"
        )
    out = np.concatenate(arrays, axis=0).astype(np.float32)
    if len(out) == 0:
        raise ValueError(f"`{argname}` is empty. Received: {argname}.shape={out.shape}")
    if limit is not None:
        out = out[:limit]
    if not np.all(np.isfinite(out)):
        raise ValueError(f"`{argname}` contains NaN or inf values. Received: {argname}")
    return out


def check_labels(labels, num_samples):
    """Validate labels aligned with the first samples of the verification data."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim == 0 or len(y) < num_samples:
        raise ValueError(
            "`labels` must have one entry per sample of the verification data "
            f"(at least {num_samples}). Received: labels.shape={y.shape}"
        )
    return y[:num_samples]


def keras_outputs(model, x, batch_size=32):
    """Run the Keras model in inference mode; returns a list of NumPy arrays
    (one per output, in ``keras.tree.flatten`` order)."""
    import keras

    chunks = []
    for start in range(0, len(x), batch_size):
        y = model(x[start : start + batch_size], training=False)
        chunks.append([np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(y)])
    return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]


@contextlib.contextmanager
def quiet_output(enabled: bool = True):
    """Send what TensorFlow, the TFLite converter and the interpreter print to
    the process's stdout/stderr (C++ logging included) into an anonymous
    temporary file while the block runs.

    Yields a callable that returns the captured text, e.g. to add the
    converter's log to an error message. With ``enabled=False`` nothing is
    redirected and the callable returns ``""``.
    """
    if not enabled:
        yield lambda: ""
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # pragma: no cover - no file descriptors (embedded interpreters)
        yield lambda: ""
        return
    sink = tempfile.TemporaryFile(mode="w+b")
    text = io.TextIOWrapper(sink, encoding="utf-8", errors="replace", write_through=True)

    def captured() -> str:
        with contextlib.suppress(Exception):
            text.flush()
            pos = sink.tell()
            sink.seek(0)
            data = sink.read()
            sink.seek(pos)
            return data.decode("utf-8", "replace")
        return ""

    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield captured
    finally:
        with contextlib.suppress(Exception):
            text.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        text.close()


def log_tail(text: str, lines: int = 15) -> str:
    """The last ``lines`` non-empty lines of a captured log, indented."""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)
