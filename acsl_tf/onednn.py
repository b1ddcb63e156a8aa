"""A narrow workaround for a oneDNN crash in TensorFlow's CPU training.

TensorFlow 2.21's oneDNN CPU kernels corrupt the heap (segmentation fault,
``munmap_chunk(): invalid pointer``, ``double free or corruption``) in one
place: the **filter gradient of a 1x1 convolution with stride > 1** when the
strided windows do not reach the last row or column of the input, i.e. when
``(n - 1) % stride != 0`` for an input size ``n`` (96x96 at stride 2 crashes,
97x97 does not). The forward pass and the input gradient are fine; 3x3
kernels at the same stride are fine. ResNet-style 1x1 stride-2 shortcut
convolutions are exactly this case.

A 1x1 convolution with stride ``s`` reads only every ``s``-th pixel, so it is
*exactly* a strided slice of the input followed by a stride-1 1x1
convolution (for ``"valid"`` and ``"same"`` padding alike: a 1x1 kernel
needs no padding). :func:`install_workaround` makes Keras' TensorFlow
backend compute strided 1x1 convolutions that way; the filter gradient then
runs at stride 1, which does not crash. Every other convolution, and every
other backend, is untouched (under ``KERAS_BACKEND=jax`` nothing is
installed and TensorFlow is not imported for it).

``import acsl_tf`` installs the workaround when oneDNN is on (TensorFlow's
default on x86 Linux), so oneDNN's faster kernels stay on everywhere else.
The exporters (``acsl_tf.export``) trace inside :func:`suspended`, so
exported graphs keep the plain strided convolution. Set
``ACSL_TF_ONEDNN_WORKAROUND=0`` before importing to keep Keras unchanged;
:func:`hazards` then lists the layers of a model that can crash,
and ``TF_ENABLE_ONEDNN_OPTS=0`` (set before importing TensorFlow) is the
blunt alternative.
"""

from __future__ import annotations

import contextlib
import functools
import os

__all__ = [
    "enabled",
    "hazards",
    "install_workaround",
    "suspended",
    "uninstall_workaround",
    "workaround_installed",
]

_ENV = "ACSL_TF_ONEDNN_WORKAROUND"
_original_conv = None


def enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - other TF builds
        value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        return value is None or value.strip().lower() not in ("0", "false")


def _tf_nn():
    from acsl_tf import _keras

    return _keras.tensorflow_nn_module()


def workaround_installed() -> bool:
    """Whether :func:`install_workaround` is active."""
    return _original_conv is not None


def _as_tuple(value, rank):
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    return value * rank if len(value) == 1 else value


def _strided_1x1_conv(original):
    @functools.wraps(original)
    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        rank = len(kernel.shape) - 2
        if rank >= 1 and all(k == 1 for k in kernel.shape[:rank]):
            steps = _as_tuple(strides, rank)
            if any(s > 1 for s in steps):
                from acsl_tf import _keras

                fmt = _keras.standardize_data_format(data_format)
                full = slice(None)
                spatial = tuple(slice(None, None, s) for s in steps)
                if fmt == "channels_last":
                    index = (full,) + spatial + (full,)
                else:
                    index = (full, full) + spatial
                return original(
                    inputs[index], kernel, strides=1, padding="valid",
                    data_format=data_format, dilation_rate=1,
                )
        return original(
            inputs, kernel, strides=strides, padding=padding,
            data_format=data_format, dilation_rate=dilation_rate,
        )

    conv._acsl_tf_onednn = True
    return conv


def install_workaround() -> bool:
    """Route strided 1x1 convolutions of Keras' TensorFlow backend around the crash.

    Returns True when the workaround is (now) installed. It is exact: the
    slice-then-convolve form computes the same numbers as the strided
    convolution. Calling it twice is harmless.
    """
    global _original_conv
    if _original_conv is not None:
        return True
    tf_nn = _tf_nn()
    _original_conv = tf_nn.conv
    tf_nn.conv = _strided_1x1_conv(_original_conv)
    return True


def uninstall_workaround() -> None:
    """Restore Keras' own convolution (undo :func:`install_workaround`)."""
    global _original_conv
    if _original_conv is None:
        return
    _tf_nn().conv = _original_conv
    _original_conv = None


@contextlib.contextmanager
def suspended():
    """Keras' own convolution inside the block, the workaround again after it.

    The exporters trace models inside this block, so an exported inference
    graph has plain strided convolutions rather than the slice-then-convolve
    form (a ``STRIDED_SLICE`` that, for instance, XNNPACK does not take,
    splitting the TFLite graph). Training, which needs the workaround, does
    not happen there. Code that exports with ``model.export`` directly can
    use it the same way.
    """
    was = workaround_installed()
    uninstall_workaround()
    try:
        yield
    finally:
        if was:
            install_workaround()


def hazards(model) -> list[str]:
    """Names of the layers of ``model`` whose training can hit the oneDNN crash.

    These are 1x1 convolutions with stride > 1 whose strided windows leave
    the last row or column of their input unread. The list does not depend
    on whether oneDNN or the workaround is on; it says which layers the
    workaround protects.
    """
    import keras

    from acsl_tf.graph.trace import trace_model

    trace = trace_model(model)
    found = []
    for call in trace.calls:
        layer = call.op
        if not isinstance(layer, keras.layers.Layer) or not hasattr(layer, "kernel_size"):
            continue
        if isinstance(layer, keras.layers.Conv2DTranspose) or not hasattr(layer, "strides"):
            continue
        ks, st = tuple(layer.kernel_size), tuple(layer.strides)
        if not all(k == 1 for k in ks) or not any(s > 1 for s in st):
            continue
        shape = trace.shapes.get(call.in_keys[0]) if call.in_keys else None
        if shape is None:
            continue
        fmt = getattr(layer, "data_format", "channels_last")
        dims = shape[1:-1] if fmt == "channels_last" else shape[2:]
        for n, s in zip(dims, st):
            if n is None or (s > 1 and (int(n) - 1) % s != 0):
                found.append(trace.names.get(id(layer), call.name))
                break
    return found


def _auto_install() -> None:
    setting = os.environ.get(_ENV, "1").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        # Other backends never run TensorFlow's convolution: nothing to patch,
        # and TensorFlow is not imported for it.
        return
    try:
        if enabled():
            install_workaround()
    except ImportError:  # pragma: no cover - keras without a TF backend module
        pass
