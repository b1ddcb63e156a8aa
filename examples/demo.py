"""End-to-end demo: ACSL sparsity training of a small CNN on Fashion-MNIST.

1. wrap a VGG-style CNN with ``acsl_tf.prune_low_correlation``;
2. train it with ``model.fit`` under a FLOPs budget (``BudgetStrength`` adapts
   the penalty strength until enough channels are sparse);
3. report the sparsity reached per layer;
4. shrink the model physically with ``acsl_tf.shrink``, fine-tune briefly, and
   compare accuracy, parameters and FLOPs.

Run: ``make demo`` (or ``.venv/bin/python examples/demo.py --help``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (default: search)")
    p.add_argument("--train-size", type=int, default=12000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--width", type=float, default=0.5, help="channel multiplier of the CNN")
    p.add_argument("--epochs", type=int, default=6, help="ACSL sparsity-training epochs")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--target-flops", type=float, default=0.5, help="FLOPs fraction to remove")
    p.add_argument("--penalty", type=float, default=1e-3)
    p.add_argument(
        "--direction", default="redundant", choices=["redundant", "informative", "uniform"]
    )
    p.add_argument("--threshold", type=float, default=0.05, help="|gamma| counted as sparse")
    p.add_argument(
        "--controller",
        default="rate",
        choices=["rate", "epoch"],
        help="BudgetStrength controller (docs/ACSL.md)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate of sparsity training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="optional path for the shrunk .keras model")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf

    keras.utils.set_random_seed(args.seed)
    t0 = time.time()
    (x_train, y_train), (x_test, y_test) = acsl_tf.datasets.load_fashion_mnist(
        args.data, normalize=True
    )
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(x_train))[: args.train_size]
    x_train, y_train = x_train[idx], y_train[idx].astype("int64")
    x_test, y_test = x_test[: args.test_size], y_test[: args.test_size].astype("int64")
    print(f"Fashion-MNIST: {len(x_train)} training and {len(x_test)} test images")

    steps = max(len(x_train) // args.batch_size, 1)
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=args.seed)
        .batch(args.batch_size, drop_remainder=True)
        .repeat()
        .prefetch(2)
    )

    model = acsl_tf.models.vgg_small((28, 28, 1), 10, width=args.width)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    wrapped = acsl_tf.prune_low_correlation(
        model,
        penalty=args.penalty,
        direction=args.direction,
        target={"flops": args.target_flops},
    )
    # SGD, as in Network Slimming: with Adam the per-parameter normalisation
    # cancels most of the penalty's strength.
    wrapped.compile(keras.optimizers.SGD(args.lr, momentum=0.9), loss, metrics=["accuracy"])
    print(
        f"\nACSL sparsity training ({args.direction}), {args.epochs} epochs, "
        f"budget: remove {args.target_flops:.0%} of the FLOPs"
    )
    # `train` is a tf.data pipeline that shuffles itself; shuffle=False tells
    # Keras so (with the default shuffle=True it warns that the flag is ignored).
    wrapped.fit(
        train,
        epochs=args.epochs,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=2,
        callbacks=[acsl_tf.BudgetStrength(threshold=args.threshold, controller=args.controller)],
    )
    # A strong penalty shrinks activations faster than the BatchNorm moving
    # statistics follow; re-estimate them before evaluating in inference mode.
    calib = x_train[: 20 * args.batch_size]
    acsl_tf.recalibrate_batchnorm(wrapped, calib, batch_size=args.batch_size)
    _, acc_sparse = wrapped.evaluate(x_test, y_test, verbose=0)
    print()
    print(acsl_tf.sparsity_report(wrapped, threshold=args.threshold))

    small = acsl_tf.shrink(wrapped, target_flops=args.target_flops)
    print()
    print(acsl_tf.shrink_report(acsl_tf.strip_pruning(wrapped), small))
    acsl_tf.recalibrate_batchnorm(small, calib, batch_size=args.batch_size)
    small.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    _, acc_shrunk = small.evaluate(x_test, y_test, verbose=0)
    if args.finetune_epochs:
        print(f"\nFine-tuning the shrunk model, {args.finetune_epochs} epochs")
        small.fit(
            train, epochs=args.finetune_epochs, steps_per_epoch=steps, shuffle=False, verbose=2
        )
        acsl_tf.recalibrate_batchnorm(small, calib, batch_size=args.batch_size)
    _, acc_final = small.evaluate(x_test, y_test, verbose=0)

    before = acsl_tf.profile(acsl_tf.strip_pruning(wrapped))
    after = acsl_tf.profile(small)
    print("\nSummary")
    print(f"  accuracy after sparsity training : {acc_sparse:.4f}")
    print(f"  accuracy right after shrink      : {acc_shrunk:.4f}")
    print(f"  accuracy after fine-tuning       : {acc_final:.4f}")
    print(
        f"  params {before.total_params:,} -> {after.total_params:,} "
        f"({1 - after.total_params / before.total_params:.1%} fewer)"
    )
    print(
        f"  FLOPs  {before.total_flops:,} -> {after.total_flops:,} "
        f"({1 - after.total_flops / before.total_flops:.1%} fewer)"
    )
    if args.save:
        small.save(args.save)
        print(f"  saved the shrunk model to {args.save}")
    print(f"  total time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
