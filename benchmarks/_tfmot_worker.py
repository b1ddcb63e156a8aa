"""Unstructured magnitude pruning with tensorflow-model-optimization, in tf_keras.

tfmot refuses Keras 3 models, so benchmarks/latency.py runs this file in a
subprocess with ``TF_USE_LEGACY_KERAS=1``. It builds the same architecture as
the Keras 3 benchmark model with ``tf_keras`` (the builders below take the
Keras module as an argument and are shared with latency.py), applies
``prune_low_magnitude`` with ``ConstantSparsity``, trains a few steps on random
data, strips the wrappers, and writes float32 TFLite files:

- ``<out>``: the plain conversion;
- ``<out minus .tflite>_sparse.tflite``: the same with
  ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (sparse weight encoding).

- ``<out minus .tflite>_dense_ref.tflite`` (with ``--task``): the same
  architecture unpruned, converted the same way (the reference).

With ``--task NAME`` the architecture is the one the compression benchmark
trains for that task (``acsl_tf.workflow.make_task(NAME, size=...,
**overrides).build_model()``), built with ``tf_keras`` instead of Keras 3:
the builders of ``acsl_tf.models`` only use ``keras.Input``,
``keras.Model`` and ``keras.layers``, which ``tf_keras`` has with the same
signatures, so the worker points those modules' ``keras`` name at
``tf_keras`` before building. The random training steps then use an MSE loss
against zeros of the output's shape (only size and latency are measured).

A JSON line with the measured kernel sparsity is printed last on stdout.

Usage:
    TF_USE_LEGACY_KERAS=1 python benchmarks/_tfmot_worker.py --arch vgg --size 64 \
        --sparsity 0.8 --out /tmp/vgg_tfmot.tflite
    TF_USE_LEGACY_KERAS=1 python benchmarks/_tfmot_worker.py --task counting \
        --task-size quick --sparsity 0.9 --out /tmp/counting_tfmot.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CLASSES = 10


def conv_bn_relu(k, x, filters, strides=1, name=None):
    x = k.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = k.layers.BatchNormalization(name=f"{name}_bn")(x)
    return k.layers.ReLU(name=f"{name}_relu")(x)


def build_vgg(k, size=64, widths=(32, 64, 128)):
    """VGG-style: two Conv-BN-ReLU per stage, max-pool between stages, GAP, Dense.

    ``k`` is the Keras module (``keras`` or ``tf_keras``)."""
    inputs = k.Input((size, size, 3), name="image")
    x = inputs
    for s, w in enumerate(widths):
        if s:
            x = k.layers.MaxPooling2D(name=f"pool{s}")(x)
        x = conv_bn_relu(k, x, w, name=f"s{s}a")
        x = conv_bn_relu(k, x, w, name=f"s{s}b")
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = k.layers.Dense(CLASSES, name="logits")(x)
    return k.Model(inputs, outputs, name="vgg")


def build_resnet(k, size=64, widths=(24, 48, 96)):
    """ResNet-style: stem, then per stage a (projection) block and an identity
    block of two 3x3 Conv-BN with Add skips, GAP, Dense."""
    inputs = k.Input((size, size, 3), name="image")
    x = conv_bn_relu(k, inputs, widths[0], name="stem")
    for s, w in enumerate(widths):
        for b in range(2):
            strides = 2 if (s and b == 0) else 1
            name = f"s{s}b{b}"
            y = conv_bn_relu(k, x, w, strides=strides, name=f"{name}a")
            y = k.layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"{name}b_conv")(y)
            y = k.layers.BatchNormalization(name=f"{name}b_bn")(y)
            if strides != 1 or x.shape[-1] != w:
                x = k.layers.Conv2D(
                    w, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
                )(x)
                x = k.layers.BatchNormalization(name=f"{name}_proj_bn")(x)
            x = k.layers.Add(name=f"{name}_add")([x, y])
            x = k.layers.ReLU(name=f"{name}_out")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = k.layers.Dense(CLASSES, name="logits")(x)
    return k.Model(inputs, outputs, name="resnet")


BUILDERS = {"vgg": build_vgg, "resnet": build_resnet}


def build_task_model(k, task: str, size: str = "quick", overrides: dict | None = None):
    """The benchmark's model of ``task`` built with the Keras module ``k``.

    Returns ``(model, input_shape)``.
    """
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import acsl_tf.models._blocks as blocks
    import acsl_tf.models.classification as classification
    import acsl_tf.models.counting as counting
    import acsl_tf.models.segmentation as segmentation
    from acsl_tf import workflow as wf

    t = wf.make_task(task, size=size, seed=0, **(overrides or {}))
    saved = {m: m.keras for m in (blocks, classification, counting, segmentation)}
    try:
        for m in saved:
            m.keras = k
        model = t.build_model()
    finally:
        for m, orig in saved.items():
            m.keras = orig
    return model, tuple(int(v) for v in t.input_shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(BUILDERS))
    parser.add_argument("--task", choices=("classification", "segmentation", "counting"))
    parser.add_argument("--task-size", default="quick")
    parser.add_argument("--task-overrides", default="{}", help="JSON of make_task overrides")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if (args.arch is None) == (args.task is None):
        parser.error("give exactly one of --arch and --task")

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from acsl_tf._io import atomic_write_bytes

    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    batch = 16
    if args.task:
        model, shape = build_task_model(
            tf_keras, args.task, args.task_size, json.loads(args.task_overrides)
        )
        ref_path = args.out[: -len(".tflite")] + "_dense_ref.tflite"
        atomic_write_bytes(
            ref_path, tf.lite.TFLiteConverter.from_keras_model(model).convert(), overwrite=True
        )
        loss = "mse"
        x = rng.random((args.steps * batch,) + shape, dtype=np.float32)
        y = np.zeros((len(x),) + tuple(int(v) for v in model.output_shape[1:]), np.float32)
    else:
        model = (
            build_vgg(tf_keras, args.size)
            if args.arch == "vgg"
            else build_resnet(tf_keras, args.size)
        )
        ref_path = None
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x = rng.random((args.steps * batch, args.size, args.size, 3), dtype=np.float32)
        y = rng.integers(0, CLASSES, len(x))
    schedule = tfmot.sparsity.keras.ConstantSparsity(args.sparsity, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=loss)
    pruned.fit(
        x,
        y,
        batch_size=batch,
        epochs=1,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    kernels = [
        w.numpy()
        for layer in stripped.layers
        if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense))
        for w in [layer.kernel]
    ]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    total = sum(k.size for k in kernels)

    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    dense_bytes = converter.convert()
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    sparse_bytes = converter.convert()

    sparse_path = args.out[: -len(".tflite")] + "_sparse.tflite"
    for path, data in ((args.out, dense_bytes), (sparse_path, sparse_bytes)):
        atomic_write_bytes(path, data, overwrite=True)
    record = {
        "arch": args.arch or f"task:{args.task}",
        "ref_path": ref_path,
        "target_sparsity": args.sparsity,
        "kernel_sparsity": zeros / total,
        "params": int(stripped.count_params()),
        "path": args.out,
        "sparse_path": sparse_path,
        "tfmot_version": getattr(tfmot, "__version__", "unknown"),
        "tf_keras_version": tf_keras.__version__,
    }
    sys.stdout.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
