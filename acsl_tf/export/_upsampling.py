"""Export-time lowering of nearest ``UpSampling2D`` to ops XNNPACK delegates.

Keras 3 computes nearest upsampling as ``ops.repeat`` along rows and columns.
Traced by TensorFlow and converted to TFLite (TF 2.21), each repeat becomes
``EXPAND_DIMS``, ``TILE``, ``SHAPE``, ``STRIDED_SLICE``, ``CONCATENATION``
and ``RESHAPE`` with a shape computed at run time, in float32 and in int8
alike. The XNNPACK delegate of LiteRT takes none of these, so every
``UpSampling2D`` splits the graph: a U-Net with 4 decoder stages runs as 5
delegated partitions with 48 ops on the reference kernels between them.
``RESIZE_NEAREST_NEIGHBOR`` (what ``tf.image.resize(..., "nearest")`` gives)
is not delegated either; ``RESIZE_BILINEAR`` is, so bilinear upsampling is
left as it is.

Repeating every pixel ``k`` times along an axis is exactly a concatenation
of ``k`` copies along the next (faster-varying) axis followed by a reshape:
for an NHWC tensor ``x`` of static shape ``(H, W, C)``,

- ``concat([x] * kw, axis=3)`` has shape ``(H, W, kw*C)``; in memory each
  pixel's channels follow each other ``kw`` times, i.e. the row is already
  the upsampled row of ``W*kw`` pixels;
- ``concat([y] * kh, axis=2)`` has shape ``(H, kh*W, kw*C)``: each (already
  widened) row follows itself ``kh`` times;
- ``reshape(..., (-1, H*kh, W*kw, C))`` names that memory as the upsampled
  image.

Only copies are involved, so the result is bit-identical to Keras' in any
dtype, and a quantized concatenation of copies of one tensor keeps that
tensor's scale. XNNPACK takes ``CONCATENATION`` with at most 5 inputs
(measured: 6 or more are left to the reference kernels), so larger factors
are built as a tree of concatenations of at most 5 inputs each; the
reshape has a constant target shape and is delegated too.

:func:`lowered_nearest_upsampling` installs this form for the duration of a
trace; the user's model and layers are not modified (the class method is
swapped and restored, as :func:`acsl_tf.onednn.suspended` does for the
convolution).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

__all__ = ["MAX_CONCAT_INPUTS", "UpsamplingRecord", "lowered_nearest_upsampling", "nearest_repeat"]

# XNNPACK's CONCATENATION takes up to this many inputs (ai-edge-litert 2.3).
MAX_CONCAT_INPUTS = 5

# Held for the whole block: concurrent exports take turns, so each restores
# the class method it found (re-entrant for nested blocks in one thread).
_lock = threading.RLock()


@dataclasses.dataclass
class UpsamplingRecord:
    """What happened to the ``UpSampling2D`` layers of one trace.

    Attributes:
        lowered: Names of the layers traced as concatenations and a reshape.
        kept: ``{layer name: reason}`` for the layers traced with Keras' own
            computation (bilinear and other interpolations, spatial size
            unknown at trace time).
    """

    lowered: list[str] = dataclasses.field(default_factory=list)
    kept: dict[str, str] = dataclasses.field(default_factory=dict)

    def add_lowered(self, name: str) -> None:
        if name not in self.lowered:
            self.lowered.append(name)

    def as_extra(self) -> dict:
        """The report entries (empty when the model has no ``UpSampling2D``)."""
        out = {}
        if self.lowered:
            out["upsampling_lowered"] = list(self.lowered)
        if self.kept:
            out["upsampling_kept"] = dict(self.kept)
        return out


def _repeat_concat(x, k: int, axis: int):
    """``concat([x] * k, axis)`` as a tree of concatenations of at most
    ``MAX_CONCAT_INPUTS`` inputs (the same values: concatenation along one
    axis is associative)."""
    import tensorflow as tf

    if k == 1:
        return x
    if k <= MAX_CONCAT_INPUTS:
        return tf.concat([x] * k, axis=axis)
    base, extra = divmod(k, MAX_CONCAT_INPUTS)
    sizes = [base + (1 if i < extra else 0) for i in range(MAX_CONCAT_INPUTS)]
    built = {}
    for s in sorted(set(sizes)):
        built[s] = _repeat_concat(x, s, axis)
    return tf.concat([built[s] for s in sizes], axis=axis)


def nearest_repeat(x, height_factor: int, width_factor: int):
    """Nearest upsampling of an NHWC tensor by integer factors, as
    concatenations and one reshape (see the module docstring).

    Args:
        x: A TensorFlow tensor ``(batch, H, W, C)`` with static ``H``, ``W``
            and ``C`` (the batch may be unknown).
        height_factor: Positive integer factor along the rows.
        width_factor: Positive integer factor along the columns.

    Returns:
        The tensor ``(batch, H * height_factor, W * width_factor, C)`` whose
        values equal ``repeat(repeat(x, height_factor, 1), width_factor, 2)``.

    Raises:
        ValueError: ``x`` is not 4-D with static ``H``, ``W``, ``C``, or a
            factor is not a positive integer.
    """
    import tensorflow as tf

    shape = tuple(x.shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            "Nearest upsampling by concatenation needs a 4-D (batch, H, W, C) tensor with "
            f"static H, W and C. Received: shape={shape}"
        )
    for name, k in (("height_factor", height_factor), ("width_factor", width_factor)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={k!r}")
    if height_factor == 1 and width_factor == 1:
        return x
    h, w, c = (int(d) for d in shape[1:])
    y = _repeat_concat(x, width_factor, axis=3)  # (N, H, W, kw*C): widened rows
    y = _repeat_concat(y, height_factor, axis=2)  # (N, H, kh*W, kw*C): rows repeated
    return tf.reshape(y, [-1, h * height_factor, w * width_factor, c])


def _lowered_call(layer, inputs, original, record: UpsamplingRecord):
    interpolation = getattr(layer, "interpolation", "nearest")
    if interpolation != "nearest":
        record.kept[layer.name] = (
            f"interpolation={interpolation!r} is kept (RESIZE_BILINEAR is delegated as it is)"
            if interpolation == "bilinear"
            else f"interpolation={interpolation!r} is kept (no exact concatenation form)"
        )
        return original(layer, inputs)
    shape = tuple(inputs.shape)
    channels_first = layer.data_format == "channels_first"
    spatial = shape[2:4] if channels_first else shape[1:3]
    channels = shape[1] if channels_first else shape[3]
    if len(shape) != 4 or any(d is None for d in spatial) or channels is None:
        record.kept[layer.name] = (
            f"input shape {shape} has dimensions unknown at trace time, so the reshape "
            "target cannot be a constant; give the model a static input size"
        )
        return original(layer, inputs)
    import tensorflow as tf

    kh, kw = (int(s) for s in layer.size)
    x = tf.transpose(inputs, [0, 2, 3, 1]) if channels_first else inputs
    y = nearest_repeat(x, kh, kw)
    if channels_first:  # the same transposes as Keras' own computation
        y = tf.transpose(y, [0, 3, 1, 2])
    record.add_lowered(layer.name)
    return y


@contextlib.contextmanager
def lowered_nearest_upsampling(enabled: bool = True, cls=None):
    """Trace nearest ``UpSampling2D`` layers as concatenations and a reshape.

    Inside the block, ``keras.layers.UpSampling2D.call`` computes nearest
    upsampling with :func:`nearest_repeat` (channels_first inputs are
    transposed to NHWC and back, as Keras itself does). Other
    interpolations, and inputs whose spatial size is unknown at trace time,
    use Keras' own computation. Subclasses that override ``call`` are not
    affected. The values are identical either way, so other code that runs
    a model meanwhile gets the same results. After the block, the class is
    restored.

    Args:
        enabled: With False, nothing is changed (the record stays empty).
        cls: The upsampling class whose ``call`` is swapped (default:
            ``keras.layers.UpSampling2D``; ``tf_keras.layers.UpSampling2D``
            for a tf_keras model, whose nearest upsampling converts to
            ``RESIZE_NEAREST_NEIGHBOR``, which XNNPACK does not take in int8).

    Yields:
        An :class:`UpsamplingRecord` filled as layers are traced.
    """
    record = UpsamplingRecord()
    if not enabled:
        yield record
        return
    if cls is None:
        import keras

        cls = keras.layers.UpSampling2D
    with _lock:
        own = "call" in cls.__dict__
        original = cls.call

        def call(self, inputs):
            return _lowered_call(self, inputs, original, record)

        call.__doc__ = original.__doc__
        call._acsl_tf_lowered = True
        cls.call = call
        try:
            yield record
        finally:
            if own:
                cls.call = original
            else:
                del cls.call
