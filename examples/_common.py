"""Shared pipeline of the three task examples (classification, segmentation,
crowd counting): baseline -> ACSL sparsity training -> shrink -> fine-tune ->
TFLite export -> table, JSON and PNG plots.

Each example only supplies its defaults (:class:`Defaults`); the code path is
the same for ``--quick`` and the full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass
class Defaults:
    """Per-task hyper-parameters of an example (full run / ``--quick``)."""

    task: str
    epochs: int
    quick_epochs: int
    sparsity_epochs: int
    quick_sparsity_epochs: int
    finetune_epochs: int
    quick_finetune_epochs: int
    target_flops: float = 0.5
    lr: float = 0.05
    optimizer: str = "sgd"
    sparsity_lr: float = 0.05
    penalty: float = 1e-3
    quick_penalty: float = 1e-3
    finetune_lr: float = 1e-3
    curve: tuple = (0.2, 0.4, 0.6, 0.8)


def parse_args(doc: str, d: Defaults, argv=None, reference: bool = False):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small data, few epochs (a few minutes on 2 CPU cores); same code path",
    )
    p.add_argument("--out", default=None, help=f"output directory (default: runs/{d.task})")
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (default: search)")
    p.add_argument("--width", type=float, default=None, help="channel multiplier of the model")
    p.add_argument(
        "--n-train", type=int, default=None, help="training samples (default: from the size)"
    )
    p.add_argument("--epochs", type=int, default=None, help="baseline training epochs")
    p.add_argument("--sparsity-epochs", type=int, default=None, help="ACSL sparsity epochs")
    p.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs")
    p.add_argument(
        "--target-flops", type=float, default=d.target_flops, help="fraction of FLOPs to remove"
    )
    p.add_argument(
        "--penalty",
        type=float,
        default=None,
        help=f"base L1 strength lambda (default {d.penalty:g}; --quick: {d.quick_penalty:g})",
    )
    p.add_argument(
        "--method", default="acsl", choices=["acsl", "ns", "cap"], help="sparsity method"
    )
    p.add_argument(
        "--controller",
        default="rate",
        choices=["rate", "epoch"],
        help="BudgetStrength controller (docs/ACSL.md); the figures in docs/EXAMPLES.md "
        "were measured with 'epoch'",
    )
    p.add_argument("--distill", action="store_true", help="fine-tune with the baseline as teacher")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 TFLite export")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--runs", type=int, default=100, help="timed TFLite invokes per model")
    p.add_argument("--seed", type=int, default=0)
    if reference:
        p.add_argument(
            "--save-reference",
            default=None,
            metavar="DIR",
            help="also write the pruned reference model (.keras, int8 .tflite, .h/.cc) to DIR",
        )
    args = p.parse_args(argv)
    q = args.quick
    if args.epochs is None:
        args.epochs = d.quick_epochs if q else d.epochs
    if args.sparsity_epochs is None:
        args.sparsity_epochs = d.quick_sparsity_epochs if q else d.sparsity_epochs
    if args.finetune_epochs is None:
        args.finetune_epochs = d.quick_finetune_epochs if q else d.finetune_epochs
    if args.penalty is None:
        args.penalty = d.quick_penalty if q else d.penalty
    if args.out is None:
        args.out = os.path.join("runs", d.task)
    if not 0.0 < args.target_flops < 1.0:
        p.error(f"--target-flops must be in (0, 1), got {args.target_flops}")
    return args


def _bn_gammas(model):
    import keras
    import numpy as np

    from acsl_tf import get_wrappers, strip_pruning

    plain = strip_pruning(model) if get_wrappers(model) else model
    vals = [
        np.abs(keras.ops.convert_to_numpy(layer.gamma))
        for layer in plain.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale
    ]
    return np.concatenate(vals) if vals else np.zeros((0,))


def _fmt_int(n):
    return f"{n:,}"


def format_table(rows, metric_name) -> str:
    """Markdown table of result rows."""
    head = (
        f"| model | {metric_name} | params | FLOPs | TFLite f32 KB | TFLite int8 KB "
        "| latency f32 ms | latency int8 ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:

        def g(k, f, r=r):
            return f(r[k]) if r.get(k) is not None else "-"

        lines.append(
            f"| {r['stage']} | {r['metric']:.4f} | {_fmt_int(r['params'])} | "
            f"{_fmt_int(r['flops'])} | {g('tflite_bytes', lambda v: f'{v / 1024:.1f}')} | "
            f"{g('int8_bytes', lambda v: f'{v / 1024:.1f}')} | "
            f"{g('latency_ms_float32', lambda v: f'{v:.3f}')} | "
            f"{g('latency_ms_int8', lambda v: f'{v:.3f}')} |"
        )
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "The plots need matplotlib: `pip install matplotlib` (or `pip install "
            "'acsl_tf[plots]'`), or pass --no-plots."
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path):
    from acsl_tf._io import atomic_path

    with atomic_path(path, overwrite=True, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def plot_channels(report, path, title):
    plt = _pyplot()
    rows = [
        r for r in report.rows if r.channels_before is not None and r.cls != "BatchNormalization"
    ]
    rows = [r for r in rows if r.cls in ("Conv2D", "Dense", "DepthwiseConv2D", "SeparableConv2D")]
    names = [r.name[: -len("_conv")] if r.name.endswith("_conv") else r.name for r in rows]
    before = [r.channels_before for r in rows]
    after = [r.channels_after or 0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
    x = range(len(rows))
    ax.bar(x, before, color="#cccccc", label="baseline")
    ax.bar(x, after, color="#1f77b4", label="kept after shrink")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("output channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_gammas(before, after, threshold, path, title):
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    hi = float(max(before.max(initial=0), after.max(initial=0), threshold * 2))
    bins = np.linspace(0, hi, 50)
    ax.hist(before, bins=bins, alpha=0.6, label="after baseline training")
    ax.hist(after, bins=bins, alpha=0.6, label="after ACSL sparsity training")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("|gamma| of BatchNorm channels")
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_metric_vs_flops(curve, points, metric_name, path, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        ax.plot(
            [c["flops"] / 1e6 for c in curve],
            [c["metric"] for c in curve],
            "o-",
            color="#999999",
            label="shrunk + BN recalibration, not fine-tuned",
        )
    for p in points:
        ax.plot(p["flops"] / 1e6, p["metric"], p.get("marker", "s"), ms=9, label=p["stage"])
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel(metric_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def run(doc: str, d: Defaults, argv=None, reference: bool = False) -> dict:
    """Run an example; returns the results dict (also written to ``<out>/results.json``)."""
    args = parse_args(doc, d, argv, reference=reference)
    import keras

    import acsl_tf
    from acsl_tf import workflow as wf
    from acsl_tf._io import atomic_write_text

    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plots:
        _pyplot()  # fail early with the install hint
    keras.utils.set_random_seed(args.seed)
    overrides = {} if args.width is None else {"width": args.width}
    if args.n_train is not None:
        overrides["n_train"] = args.n_train
    size = "quick" if args.quick else "full"
    task = wf.make_task(d.task, size=size, seed=args.seed, data_dir=args.data, **overrides)
    cfg = task.config
    print(
        f"{d.task} ({size}): {cfg['n_train']} training / {cfg['n_val']} validation samples, "
        f"input {task.input_shape}, width {task.width}, metric {task.metric_name}"
    )

    def step(msg):
        print(f"\n[{time.time() - t0:6.0f} s] {msg}", flush=True)

    step(f"1/5 baseline training, {args.epochs} epochs")
    base = task.build_model()
    wf.train(base, task, args.epochs, lr=d.lr, optimizer=d.optimizer)
    m_base = wf.evaluate(base, task)
    print(f"baseline {task.metric_name}: {m_base:.4f}")
    gammas_before = _bn_gammas(base)

    step(
        f"2/5 {args.method.upper()} sparsity training, {args.sparsity_epochs} epochs, "
        f"budget: remove {args.target_flops:.0%} of the FLOPs"
    )
    threshold = 0.05
    wrapped = wf.sparsity_train(
        base,
        task,
        epochs=args.sparsity_epochs,
        method=args.method,
        target_flops=args.target_flops,
        penalty=args.penalty,
        lr=d.sparsity_lr,
        threshold=threshold,
        budget_options={"controller": args.controller},
    )
    m_sparse = wf.evaluate(wrapped, task)
    gammas_after = _bn_gammas(wrapped)
    print(acsl_tf.sparsity_report(wrapped, threshold=threshold))

    step(f"3/5 shrink to the budget (remove {args.target_flops:.0%} of the FLOPs)")
    criterion = "cap" if args.method == "cap" else "gamma"
    small = wf.prune(wrapped, target_flops=args.target_flops, criterion=criterion)
    report = acsl_tf.shrink_report(acsl_tf.strip_pruning(wrapped), small)
    print(report.summary())
    # Adaptive BN: re-estimate the moving statistics of the shrunk network so
    # that the accuracy before fine-tuning reflects the kept channels.
    wf.recalibrate_bn(small, task)
    m_shrunk = wf.evaluate(small, task)
    curve = []
    for f in d.curve:
        s = wf.recalibrate_bn(wf.prune(wrapped, target_flops=f, criterion=criterion), task)
        curve.append(dict(target=f, **wf.record(s, task)))
    curve.sort(key=lambda c: c["flops"])

    step(
        f"4/5 fine-tuning the shrunk model, {args.finetune_epochs} epochs"
        + (" (distilled from the baseline)" if args.distill else "")
    )
    wf.finetune(
        small,
        task,
        args.finetune_epochs,
        teacher=base if args.distill else None,
        lr=d.finetune_lr,
    )
    m_final = wf.evaluate(small, task)

    step("5/5 TFLite export (float32" + ("" if args.no_int8 else " and int8") + ") and latency")
    int8 = not args.no_int8
    exp_base = wf.export_and_measure(
        base, task, args.out, int8=int8, name="baseline", runs=args.runs
    )
    exp_small = wf.export_and_measure(
        small, task, args.out, int8=int8, name="pruned", runs=args.runs
    )
    rows = [
        wf.record(base, task, metric=m_base, export=exp_base, stage="baseline"),
        wf.record(wrapped, task, metric=m_sparse, stage="after sparsity training"),
        wf.record(small, task, metric=m_shrunk, stage="shrunk (BN recalibrated, no fine-tuning)"),
        wf.record(small, task, metric=m_final, export=exp_small, stage="pruned + fine-tuned"),
    ]
    from acsl_tf._io import atomic_path

    with atomic_path(os.path.join(args.out, "pruned.keras"), overwrite=True, suffix=".keras") as p:
        small.save(p)

    table = format_table(rows, task.metric_name)
    results = {
        "task": d.task,
        "size": size,
        "args": vars(args),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "rows": rows,
        "curve": curve,
        "table": table,
        "seconds": round(time.time() - t0, 1),
    }
    if not args.no_plots:
        title = f"{d.task}: {args.method.upper()}, -{args.target_flops:.0%} FLOPs"
        plot_channels(report, os.path.join(args.out, "channels.png"), title)
        plot_gammas(
            gammas_before, gammas_after, threshold, os.path.join(args.out, "gammas.png"), title
        )
        plot_metric_vs_flops(
            curve,
            [
                dict(rows[0], marker="*"),
                dict(rows[2], marker="v"),
                dict(rows[3], marker="s"),
            ],
            task.metric_name,
            os.path.join(args.out, "metric_vs_flops.png"),
            title,
        )
        results["plots"] = ["channels.png", "gammas.png", "metric_vs_flops.png"]

    if reference and args.save_reference:
        results["reference"] = save_reference(small, task, args.save_reference, m_final)

    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(
        os.path.join(args.out, "results.json"),
        json.dumps(results, indent=2, default=str),
        overwrite=True,
    )
    print(
        f"\nResults ({task.metric_name} on {cfg['n_val']} validation samples; latency: "
        "median single-sample invoke, 1 thread)"
    )
    print(table)
    print(
        f"\nwrote {args.out}/results.json, pruned.keras, *.tflite"
        + ("" if args.no_plots else ", channels.png, gammas.png, metric_vs_flops.png")
    )
    print(f"total time {results['seconds']:.0f} s")
    sys.stdout.flush()
    return results


def save_reference(model, task, out_dir, metric) -> dict:
    """Write ``<prefix>.keras``, ``<prefix>_int8.tflite`` and ``<prefix>.h/.cc``."""
    import acsl_tf
    from acsl_tf import workflow as wf
    from acsl_tf._io import atomic_path, atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    prefix = f"{task.name}_pruned"
    keras_path = os.path.join(out_dir, prefix + ".keras")
    with atomic_path(keras_path, overwrite=True, suffix=".keras") as p:
        model.save(p)
    tfl = os.path.join(out_dir, prefix + "_int8.tflite")
    acsl_tf.export.to_tflite(
        model,
        tfl,
        quantization="int8",
        representative_data=task.representative_data,
        overwrite=True,
    )
    h, cc = acsl_tf.export.to_c_source(tfl, out_dir, name=prefix, overwrite=True)
    row = wf.record(model, task, metric=metric)
    info = {
        "metric_name": task.metric_name,
        "metric_validation": metric,
        "params": row["params"],
        "flops": row["flops"],
        "files": {os.path.basename(f): os.path.getsize(f) for f in (keras_path, tfl, h, cc)},
    }
    atomic_write_text(
        os.path.join(out_dir, prefix + ".json"), json.dumps(info, indent=2), overwrite=True
    )
    print(f"saved the reference model to {out_dir}: {sorted(info['files'])}")
    return info
