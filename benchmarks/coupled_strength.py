"""What ``acsl_tf.CoupledStrength`` does on a residual network.

The BatchNorms added into one residual stream can only lose a channel
together; ACSL gives each of them its own per-channel strengths, and
``CoupledStrength`` replaces those by the group's mean after every batch (one
adaptive weight per channel of the stream). This benchmark measures what that
changes, paired on the same baseline weights, data and budget:

- model: ``acsl_tf.models.cifar_resnet`` (ResNet-20, ``--width``) on
  Fashion-MNIST (``--n-train`` training images, the whole 10,000-image test
  set), every shortcut that changes shape a Conv1x1-BN projection, so each
  stage's stream is a coupled group of 3-4 BatchNorms;
- baseline: ``--base-epochs`` of SGD (momentum 0.9, cosine-decayed rate),
  trained once per seed and cached under ``--work-dir``;
- ACSL sparsity training (the ranked compression benchmark's settings:
  ``BudgetStrength`` rate controller, ``kept_weight=0``, ``max_step=0.5``,
  ``protect=0``) aimed at each ``--targets`` FLOPs fraction, with and without
  ``CoupledStrength``; then ``shrink`` to that target by |gamma| and
  ``--finetune-epochs`` of Adam.

Per run the record holds the accuracy of the sparsity-trained model, right
after pruning and after fine-tuning, the FLOPs fraction the training left
removable (|gamma| < 0.05), and the width kept of every residual stream
(``stage{s}`` widths, from the ``_add`` layers). ``summary.md`` gives means
with 95% t-intervals over seeds and the paired differences coupled - plain.

Usage:
    .venv/bin/python benchmarks/coupled_strength.py --seeds 0,1,2 \\
        --work-dir .bench_work/coupled [--stop-at HH:MM]
    .venv/bin/python benchmarks/coupled_strength.py --summary-only [--update-docs]

``--update-docs`` embeds the summary into docs/ACSL.md between the
``coupled-strength`` markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compression as cb  # noqa: E402

OUT = os.path.join(HERE, "results", "coupled_strength")
DOC = os.path.join(os.path.dirname(HERE), "docs", "ACSL.md")
DOCS_START = "<!-- coupled-strength:start -->"
DOCS_END = "<!-- coupled-strength:end -->"
VARIANTS = ("plain", "coupled")
#: Budget controller settings of the ranked compression benchmark.
BUDGET = dict(controller="rate", reach_at=0.6, protect=0.0, kept_weight=0.0, max_step=0.5)
STAGES = (1, 2, 3)


def _task(seed, args):
    import dataclasses

    from acsl_tf import workflow as wf
    from acsl_tf.models import cifar_resnet

    task = wf.make_task(
        "classification", size="full", seed=seed, n_train=args.n_train, width=args.width
    )

    def build(width=args.width, input_shape=task.input_shape):
        return cifar_resnet(20, 10, input_shape, width=width)

    return dataclasses.replace(task, build_model=build)


def stream_widths(model) -> dict:
    """``{stage: channels}`` of each residual stream (the last ``_add`` of the
    stage in ``cifar_resnet``'s naming)."""
    widths = {}
    for layer in model.layers:
        name = layer.name
        if name.startswith("stage") and name.endswith("_add"):
            widths[int(name[5])] = int(layer.output.shape[-1])
    return widths


def run_seed(seed, args, out_dir):
    import keras

    import acsl_tf
    from acsl_tf import workflow as wf

    task = _task(seed, args)
    base_path = os.path.join(args.work_dir, f"seed{seed}", "baseline.keras")
    base = cb._load_model(base_path)
    if base is None:
        cb._log(f"seed {seed}: training the baseline ({args.base_epochs} epochs)")
        keras.utils.set_random_seed(seed)
        base = task.build_model()
        t0 = time.time()
        wf.train(base, task, args.base_epochs, lr=0.05, schedule="cosine", verbose=0)
        cb._save_model(base, base_path)
        cb._log(f"seed {seed}: baseline {wf.evaluate(base, task):.4f} ({time.time() - t0:.0f} s)")
    base_metric = wf.evaluate(base, task)
    base_widths = stream_widths(base)
    written = []
    for target in args.targets:
        for variant in VARIANTS:
            path = os.path.join(
                out_dir, "runs", f"seed{seed}", f"{variant}_t{round(target * 100)}.json"
            )
            if os.path.exists(path):
                continue
            if cb._past_stop():
                cb._log("stop time reached; no new runs")
                return written
            cb._log(f"seed {seed}: ACSL {variant}, target {target:.0%} FLOPs")
            t0 = time.time()
            keras.utils.set_random_seed(seed)
            cbs = [acsl_tf.CoupledStrength()] if variant == "coupled" else []
            sparse = wf.sparsity_train(
                cb._copy(base),
                task,
                epochs=args.sparsity_epochs,
                method="acsl",
                target_flops=target,
                penalty=args.penalty,
                lr=0.02,
                threshold=cb.SPARSE_THRESHOLD,
                verbose=0,
                budget_options=BUDGET,
                callbacks=cbs,
                direction="redundant",
            )
            groups = len(cbs[0].groups) if cbs else None
            sp_seconds = time.time() - t0
            sparse_metric = wf.evaluate(sparse, task)
            removable = acsl_tf.plan_shrink(sparse, threshold=cb.SPARSE_THRESHOLD).flops_reduction
            keras.utils.set_random_seed(seed)
            small = wf.prune(sparse, target_flops=target, criterion="gamma", seed=seed)
            pruned_metric = wf.evaluate(small, task)
            widths = stream_widths(small)
            wf.finetune(small, task, args.finetune_epochs, lr=1e-3, verbose=0)
            metric = wf.evaluate(small, task)
            rec = dict(
                seed=seed,
                variant=variant,
                target=target,
                baseline_metric=base_metric,
                metric_sparse=sparse_metric,
                metric_pruned=pruned_metric,
                metric=metric,
                sparse_removable=removable,
                coupled_groups=groups,
                stream_widths={str(k): v for k, v in widths.items()},
                stream_widths_before={str(k): v for k, v in base_widths.items()},
                params=small.count_params(),
                params_before=base.count_params(),
                seconds_sparsity=round(sp_seconds, 1),
                config=dict(
                    n_train=args.n_train,
                    n_val=len(task.y_val),
                    width=args.width,
                    base_epochs=args.base_epochs,
                    sparsity_epochs=args.sparsity_epochs,
                    finetune_epochs=args.finetune_epochs,
                    penalty=args.penalty,
                    budget=BUDGET,
                ),
            )
            cb.write_record(path, rec)
            cb._log(
                f"seed {seed}: {variant} t{target:.0%}: sparse {sparse_metric:.4f} "
                f"(removable {removable:.1%}), pruned {pruned_metric:.4f}, "
                f"fine-tuned {metric:.4f}, streams {widths}"
            )
            written.append(path)
    return written


def _fmt(values, scale=100.0, signed=False):
    m, h = cb.mean_ci([v * scale for v in values])
    s = f"{m:+.2f}" if signed else f"{m:.2f}"
    if len(values) < 2:  # no interval from one seed
        return s
    return f"{s} [{m - h:+.2f}, {m + h:+.2f}]" if signed else f"{s} ± {h:.2f}"


def summary_markdown(records) -> str:
    """Means with 95% t-intervals per target and variant, and the paired
    differences coupled - plain (seeds that have both)."""
    if not records:
        return ""
    by = {}
    for r in records:
        by[(r["target"], r["variant"], r["seed"])] = r
    targets = sorted({r["target"] for r in records})
    lines = [
        "Accuracy in % on the 10,000 test images (sparse: the sparsity-trained model; "
        "pruned: right after shrink), mean ± 95% t half-width over seeds; removable: % of "
        "the FLOPs with |gamma| < 0.05 after the sparsity training; streams: channels kept "
        "of the three residual streams (mean over seeds).",
        "",
        "| FLOPs target | variant | seeds | sparse | removable | pruned | fine-tuned | streams kept |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in targets:
        for v in VARIANTS:
            rs = [r for (tt, vv, _), r in sorted(by.items()) if tt == t and vv == v]
            if not rs:
                continue
            widths = []
            for s in STAGES:
                kept = [r["stream_widths"].get(str(s)) for r in rs]
                before = rs[0]["stream_widths_before"].get(str(s))
                kept = [k for k in kept if k is not None]
                if kept and before:
                    widths.append(f"{sum(kept) / len(kept):.1f}/{before}")
            lines.append(
                f"| {t:.0%} | {v} | {len(rs)} | {_fmt([r['metric_sparse'] for r in rs])} | "
                f"{_fmt([r['sparse_removable'] for r in rs])} | "
                f"{_fmt([r['metric_pruned'] for r in rs])} | {_fmt([r['metric'] for r in rs])} | "
                f"{', '.join(widths)} |"
            )
    lines += [
        "",
        "Paired differences coupled - plain (points, mean [95% t interval]):",
        "",
        "| FLOPs target | seeds | sparse | pruned | fine-tuned | removable |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        seeds = sorted(
            s for (tt, v, s) in by if tt == t and v == "coupled" and (t, "plain", s) in by
        )
        if not seeds:
            continue

        def diff(key, t=t, seeds=seeds):
            return [by[(t, "coupled", s)][key] - by[(t, "plain", s)][key] for s in seeds]

        lines.append(
            f"| {t:.0%} | {len(seeds)} | {_fmt(diff('metric_sparse'), signed=True)} | "
            f"{_fmt(diff('metric_pruned'), signed=True)} | {_fmt(diff('metric'), signed=True)} | "
            f"{_fmt(diff('sparse_removable'), signed=True)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--targets", default="0.5,0.7")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--sparsity-epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--penalty", type=float, default=4e-3)
    ap.add_argument("--work-dir", default=os.path.join(HERE, "..", ".bench_work", "coupled"))
    ap.add_argument("--out-dir", default=OUT)
    ap.add_argument("--stop-at", default=None, metavar="HH:MM")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument(
        "--update-docs", action="store_true", help="embed the summary into docs/ACSL.md"
    )
    args = ap.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    if any(not 0.0 < t < 1.0 for t in args.targets):
        ap.error(f"--targets must be FLOPs fractions in (0, 1), got {args.targets}")
    if not args.summary_only:
        if args.stop_at:
            cb._STOP_AT[0] = cb._parse_stop_at(args.stop_at)
        for seed in (int(s) for s in args.seeds.split(",")):
            run_seed(seed, args, args.out_dir)
            if cb._past_stop():
                break
    text = summary_markdown(cb.load_records(args.out_dir))
    if text:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(os.path.join(args.out_dir, "summary.md"), text + "\n", overwrite=True)
        print(text)
        if args.update_docs:
            with open(DOC) as f:
                doc = cb.embed(f.read(), text, DOCS_START, DOCS_END)
            atomic_write_text(DOC, doc, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
