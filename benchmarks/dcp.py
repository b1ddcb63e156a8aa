"""DCP vs the L1-norm criterion at the same FLOPs target, and DKP, on a small
Fashion-MNIST experiment (acsl_tf.models.vgg_small).

Steps (one seed): train the baseline; prune it to ``--target`` of the FLOPs
removed with

- ``l1``: ``acsl_tf.shrink(criterion="l1", target_flops=...)``;
- ``dcp``: auxiliary heads at the stage boundaries, ``--aux-epochs`` of
  fine-tuning with the task + auxiliary losses, then
  ``acsl_tf.dcp.select_channels(target_flops=...)`` and the thin model with
  the re-optimised kernels;
- ``dcp_noaux``: the same selection without heads and with lambda = 0
  (reconstruction only), from the same fine-tuned weights;
- ``dcp_eps``: adaptive stopping (``--epsilon``), whatever FLOPs it reaches;

then fine-tune each for ``--finetune`` epochs (``--ft-seeds`` times from the
same pruned weights, with the same data orders for every method) and report
test accuracy before and after (mean and standard deviation). ``dkp`` keeps ``--dkp-kernels`` of the kernels of every conv and
reports the accuracy (no fine-tuning: it would refill the zeros), the
sparsity and the size with sparse kernels. Wall times are reported for
every selection. Each step is kept short (the development machine has two
shared CPU cores).

``--task segmentation`` runs the channel methods on a U-Net (width 0.25,
depth 2) with composite Fashion-MNIST scenes (``make_segmentation_set``,
32x32 canvas) and reports mean IoU; DCP then uses per-pixel auxiliary heads
(our extension), ``dcp_taskloss`` the model's own loss without heads.

Usage:
    .venv/bin/python benchmarks/dcp.py --train 4000 --test 2000 --out /tmp/dcp.json
    .venv/bin/python benchmarks/dcp.py --task segmentation --train 800 --test 200 \
        --methods l1,dcp,dcp_taskloss,dcp_noaux
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf import dcp  # noqa: E402

TASK = {"name": "classification"}


def _compile(model, lr):
    if TASK["name"] == "segmentation":
        metrics = [acsl_tf.metrics.MeanIoU(num_classes=TASK["classes"])]
    else:
        metrics = ["accuracy"]
    # the small U-Net learns too slowly with SGD in a few epochs: Adam there
    opt = (
        keras.optimizers.Adam(lr * 0.1)
        if TASK["name"] == "segmentation"
        else keras.optimizers.SGD(lr, momentum=0.9)
    )
    model.compile(
        opt,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
    )


def _acc(model, x, y):
    """Test accuracy (classification) or mean IoU (segmentation)."""
    _compile(model, 0.01)
    return float(model.evaluate(x, y, verbose=0, batch_size=256)[1])


def _finetune(model, x, y, epochs, lr):
    _compile(model, lr)
    if epochs:
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4, help="baseline epochs")
    p.add_argument("--aux-epochs", type=int, default=1)
    p.add_argument("--finetune", type=int, default=2)
    p.add_argument("--ft-seeds", type=int, default=3, help="fine-tunings per pruned model")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--epsilon", default="0.05", help="comma-separated epsilons for dcp_eps")
    p.add_argument("--dkp-kernels", type=float, default=0.5)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="l1,dcp,dcp_noaux,dcp_eps,dkp")
    p.add_argument("--task", default="classification", choices=["classification", "segmentation"])
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    keras.utils.set_random_seed(a.seed)
    TASK["name"] = a.task
    if a.task == "segmentation":
        ds = acsl_tf.datasets
        kw_set = dict(canvas=32, items=(1, 3), item_size=(14, 24))
        x, y = ds.make_segmentation_set(a.train, seed=a.seed, **kw_set)
        xt, yt = ds.make_segmentation_set(a.test, seed=a.seed + 1000, **kw_set)
        TASK["classes"] = ds.SEGMENTATION_NUM_CLASSES

        def build():
            return acsl_tf.models.unet((32, 32, 1), TASK["classes"], width=a.width, depth=2)
    else:
        (x, y), (xt, yt) = acsl_tf.datasets.load_fashion_mnist(normalize=True)
        rng = np.random.default_rng(a.seed)
        tr = rng.permutation(len(x))[: a.train]
        te = rng.permutation(len(xt))[: a.test]
        x, y, xt, yt = x[tr], y[tr], xt[te], yt[te]

        def build():
            return acsl_tf.models.vgg_small((28, 28, 1), 10, width=a.width)

    methods = a.methods.split(",")
    out = {"config": vars(a), "results": {}}

    t = time.perf_counter()
    base = build()
    _finetune(base, x, y, a.epochs, a.lr)
    out["baseline"] = {
        "acc": _acc(base, xt, yt),
        "params": base.count_params(),
        "flops": acsl_tf.profile(base).total_flops,
        "train_s": time.perf_counter() - t,
    }
    print("baseline", out["baseline"], flush=True)
    weights = base.get_weights()

    def fresh():
        m = build()
        m.set_weights(weights)
        return m

    def record(name, small, sel_s, extra=None):
        before = _acc(small, xt, yt)
        start = small.get_weights()
        after = []
        for i in range(a.ft_seeds):  # the same data orders for every method
            small.set_weights(start)
            keras.utils.set_random_seed(a.seed + 2 + i)
            _finetune(small, x, y, a.finetune, a.lr * 0.5)
            after.append(_acc(small, xt, yt))
        r = {
            "acc_before_ft": before,
            "acc_after_ft": float(np.mean(after)),
            "acc_after_ft_std": float(np.std(after)),
            "acc_after_ft_runs": after,
            "params": small.count_params(),
            "flops": acsl_tf.profile(small).total_flops,
            "select_s": sel_s,
            **(extra or {}),
        }
        out["results"][name] = r
        print(name, r, flush=True)

    if "l1" in methods:
        t = time.perf_counter()
        small = acsl_tf.shrink(fresh(), target_flops=a.target, criterion="l1")
        record("l1", small, time.perf_counter() - t)

    aux_model = None
    tuned = None  # the selections read this model and leave it unchanged
    if any(m.startswith("dcp") for m in methods):
        keras.utils.set_random_seed(a.seed + 1)  # independent of the methods run before
        tuned = m = fresh()
        aux_model = dcp.with_auxiliary_heads(m)
        t = time.perf_counter()
        if a.aux_epochs:
            seg = TASK["name"] == "segmentation"
            aux_model.compile(
                keras.optimizers.Adam(a.lr * 0.05)
                if seg
                else keras.optimizers.SGD(a.lr * 0.5, momentum=0.9)
            )
            aux_model.fit(x, y, epochs=a.aux_epochs, batch_size=64, verbose=0)
        out["aux_finetune_s"] = time.perf_counter() - t
        out["aux_points"] = aux_model.points
        out["acc_after_aux_finetune"] = _acc(m, xt, yt)
    kw = dict(n_samples=a.n_samples, steps=a.steps, verbose=0)
    if "dcp" in methods:
        m = tuned
        t = time.perf_counter()
        res = dcp.select_channels(m, x, y, heads=aux_model, target_flops=a.target, **kw)
        sel_s = time.perf_counter() - t
        print(res.summary(), flush=True)
        widths = [(s.name, s.size, len(s.kept)) for s in res.layers]
        record("dcp", res.apply(), sel_s, {"widths": widths})
        if a.out:
            try:
                dcp.plot_widths(res, os.path.splitext(a.out)[0] + "_widths.png")
            except ImportError:
                pass
    if "dcp_noaux" in methods:
        m = tuned
        t = time.perf_counter()
        res = dcp.select_channels(m, x, None, target_flops=a.target, **kw)
        record("dcp_noaux", res.apply(), time.perf_counter() - t)
    if "dcp_taskloss" in methods:
        t = time.perf_counter()
        res = dcp.select_channels(tuned, x, y, target_flops=a.target, **kw)
        record("dcp_taskloss", res.apply(), time.perf_counter() - t)
    if "dcp_eps" in methods:
        for eps in (float(e) for e in a.epsilon.split(",")):
            t = time.perf_counter()
            res = dcp.select_channels(tuned, x, y, heads=aux_model, epsilon=eps, **kw)
            widths = [(s.name, s.size, len(s.kept)) for s in res.layers]
            record(f"dcp_eps={eps:g}", res.apply(), time.perf_counter() - t, {"widths": widths})
    if "dkp" in methods:
        m = fresh()
        t = time.perf_counter()
        conv_names = [layer.name for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
        res = dcp.select_kernels(m, x, y, kernels=a.dkp_kernels, layers=conv_names, **kw)
        r = {
            "acc": _acc(res.model, xt, yt),
            "sparsity": res.sparsity,
            "model_sparsity": res.model_sparsity,
            "dense_bytes": res.dense_bytes,
            "sparse_bytes": res.sparse_bytes,
            "select_s": time.perf_counter() - t,
        }
        out["results"]["dkp"] = r
        print("dkp", r, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
