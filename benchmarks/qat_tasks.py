"""Int8 after aggressive pruning on the three tasks: post-training
quantization against quantization-aware training (tfmot).

Starts from the ranked compression benchmark (``benchmarks/compression.py
--mode ranked``): for each task, seed and method (ACSL, Network Slimming) the
cached sparsity-trained model aimed at the most aggressive target (85% FLOPs)
is pruned and fine-tuned exactly as the compression benchmark does (same
seed, epochs and rate; the float metric is compared with the compression
record, which it should reproduce), then:

1. **PTQ**: ``acsl_tf.export.to_tflite(..., quantization="int8")``
   calibrated on the task's representative data (100-200 training samples);
2. **float + PTQ**: ``--qat-epochs`` more float epochs at ``--qat-lr``, then
   the same PTQ (the fair control: QAT also trains longer);
3. **QAT**: ``acsl_tf.interop.quantize_aware`` for ``--qat-epochs`` epochs
   at ``--qat-lr`` (tfmot's default 8-bit scheme, activation ranges
   initialized from the representative data), written as a full-int8 file
   through the verified writer.

Every int8 file is full-integer (int8 I/O and ops); its metric is measured
with the LiteRT interpreter on the task's whole validation set (10,000
images or 5,000 scenes), its latency as the thread CPU time of one
single-sample ``invoke()`` with 1 thread (median of ``--runs``).

One JSON record per task, seed and method under ``--out-dir`` (resumable:
existing records are skipped); ``summary.md`` there gives means with 95%
t-intervals over seeds and the paired differences QAT - PTQ and QAT -
(float + PTQ).

Usage:
    .venv/bin/python benchmarks/qat_tasks.py --tasks classification,segmentation,counting \\
        --seeds 0,1,2 --work-dir .bench_work [--stop-at HH:MM]
    .venv/bin/python benchmarks/qat_tasks.py --summary-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compression as cb  # noqa: E402
from compression_configs import METHODS, MODES  # noqa: E402

OUT = os.path.join(HERE, "results", "qat_tasks")
STAGES = (
    ("float", "float32, fine-tuned"),
    ("ptq", "PTQ int8"),
    ("longer_float", "+QAT's epochs in float32"),
    ("longer_ptq", "+QAT's epochs in float32, then PTQ int8"),
    ("qat_float", "QAT model (int8 simulated)"),
    ("qat", "QAT int8"),
)


def record_path(out_dir, mode, task, seed, method, target):
    return os.path.join(out_dir, mode, task, f"seed{seed}", f"{method}_t{round(target * 100)}.json")


def _tflite_metric(path, task):
    from acsl_tf import export

    pred = export.run_tflite(path, task.x_val)[0]
    return float(task.score(task.y_val, pred))


def _keras_metric(model, task, batch_size):
    import numpy as np

    pred = model.predict(task.x_val, batch_size=batch_size, verbose=0)
    return float(task.score(task.y_val, np.asarray(pred)))


def _int8_row(path, task, runs):
    from acsl_tf import benchmark_tflite

    return dict(
        metric=_tflite_metric(path, task),
        bytes=os.path.getsize(path),
        latency_ms=benchmark_tflite(path, threads=1, runs=runs, clock="cpu").median_ms,
    )


COMPRESSION = os.path.join(HERE, "results", "compression")


def compression_metric(rec, compression_dir=COMPRESSION):
    """The compression benchmark's metric of the same prune + fine-tune
    (its plain record), or None when that record is not there."""
    ref = cb.record_path(
        compression_dir,
        rec.get("mode", "ranked"),
        rec["task"],
        rec["seed"],
        rec["method"],
        rec["target"],
        "plain",
    )
    if not os.path.exists(ref):
        return None
    with open(ref) as f:
        return json.load(f)["metric"]


def _ptq_row(model, path, task, runs):
    """Post-training full-int8 export calibrated on the task's representative
    data, and its row."""
    from acsl_tf import export

    export.to_tflite(
        model,
        path,
        quantization="int8",
        representative_data=task.representative_data,
        overwrite=True,
    )
    return _int8_row(path, task, runs)


def run_one(
    task_name, seed, method, *, target, work_dir, out_dir, qat_epochs, qat_lr, runs, mode="ranked"
):
    """One record (the compression benchmark's ``mode`` settings); returns
    False when its sparsity-trained model is missing."""
    import keras

    from acsl_tf import interop
    from acsl_tf import workflow as wf

    cfg = MODES[mode]["tasks"][task_name]
    work = os.path.join(work_dir, mode, task_name, f"seed{seed}")
    ctl = cb.controller_tag(cb.task_budget_options(mode, task_name))
    # one sparsity-trained model per target, or one aimed at the mode's largest
    per_target = bool(MODES[mode].get("per_target_sparsity", False))
    src_path = cb.sparse_cache_path(work, method, ctl, target if per_target else None)
    source = cb._load_model(src_path)
    if source is None:
        cb._log(
            f"{task_name} seed {seed} {method}: no sparsity-trained model at {src_path}; run "
            f"benchmarks/compression.py --mode {mode} --tasks {task_name} --seeds {seed} "
            f"--methods {method} --work-dir {work_dir} first"
        )
        return False
    spec = METHODS[method]
    task = wf.make_task(task_name, size=cfg["size"], seed=seed, **cfg["overrides"])
    rec = dict(
        mode=mode,
        task=task_name,
        seed=seed,
        method=method,
        target=target,
        metric_name=task.metric_name,
        higher_is_better=task.higher_is_better,
        qat_epochs=qat_epochs,
        qat_lr=qat_lr,
        finetune_epochs=cfg["finetune_epochs"],
        finetune_lr=cfg["finetune_lr"],
        calibration_samples=int(len(task.representative_data)),
        validation_samples=int(len(task.x_val)),
    )
    t0 = time.time()
    # The compression benchmark's prune + fine-tune, with its seeding.
    keras.utils.set_random_seed(seed)
    small = wf.prune(source, target_flops=target, criterion=spec["criterion"], seed=seed)
    wf.finetune(small, task, cfg["finetune_epochs"], lr=cfg["finetune_lr"], verbose=0)
    rec["params"] = int(small.count_params())
    rec["float"] = dict(metric=wf.evaluate(small, task))
    rec["compression_record_metric"] = compression_metric(rec)
    with tempfile.TemporaryDirectory() as tmp:
        rec["ptq"] = _ptq_row(small, os.path.join(tmp, "ptq.tflite"), task, runs)
        cb._log(
            f"{task_name} seed {seed} {method}: float {rec['float']['metric']:.4f} "
            f"(record {rec.get('compression_record_metric')}), PTQ {rec['ptq']['metric']:.4f}"
        )

        longer = cb._copy(small)
        keras.utils.set_random_seed(seed)
        t1 = time.time()
        wf.finetune(longer, task, qat_epochs, lr=qat_lr, verbose=0)
        rec["seconds_longer_float"] = round(time.time() - t1, 1)
        rec["longer_float"] = dict(metric=wf.evaluate(longer, task))
        rec["longer_ptq"] = _ptq_row(longer, os.path.join(tmp, "longer_ptq.tflite"), task, runs)

        qat = os.path.join(tmp, "qat.tflite")
        keras.utils.set_random_seed(seed)
        t1 = time.time()
        result = interop.quantize_aware(
            small,
            qat,
            task.train_ds(),
            loss=task.loss(),
            optimizer=keras.optimizers.Adam(qat_lr),
            epochs=qat_epochs,
            fit_kwargs=dict(steps_per_epoch=task.steps_per_epoch),
            representative_data=task.representative_data,
            verbose=0,
            overwrite=True,
        )
        rec["seconds_qat"] = round(time.time() - t1, 1)
        rec["qat_float"] = dict(metric=_keras_metric(result.model, task, task.batch_size))
        rec["qat"] = _int8_row(qat, task, runs)
        rec["qat"]["parity_relative_error"] = float(result.report.relative_error)
    rec["seconds"] = round(time.time() - t0, 1)
    cb.write_record(record_path(out_dir, mode, task_name, seed, method, target), rec)
    cb._log(
        f"{task_name} seed {seed} {method}: +float {rec['longer_float']['metric']:.4f} / "
        f"PTQ {rec['longer_ptq']['metric']:.4f}; QAT {rec['qat_float']['metric']:.4f} / "
        f"int8 {rec['qat']['metric']:.4f} ({rec['seconds']:.0f} s)"
    )
    return True


def load(out_dir, mode="ranked"):
    recs = []
    for root, _, files in os.walk(os.path.join(out_dir, mode)):
        for f in sorted(files):
            if f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    recs.append(json.load(fh))
    return recs


def _scale(rec):
    # accuracy and mIoU in %, MAE as is
    return 100.0 if rec["metric_name"] in ("accuracy", "mean_iou") else 1.0


def summary_markdown(recs, compression_dir=COMPRESSION) -> str:
    from collections import defaultdict

    groups = defaultdict(list)
    for r in recs:
        groups[(r["task"], r["method"], r["target"])].append(r)
    lines = [
        "# Int8 after pruning to 85% fewer FLOPs: PTQ vs QAT",
        "",
        "`benchmarks/qat_tasks.py` on the ranked compression benchmark's sparsity-trained "
        "models (see its docstring). Metric on the whole validation set; mean ± 95% "
        "t-interval half-width over seeds (accuracy and mIoU in %, counting MAE lower is "
        "better). Int8 latency: thread CPU time of one single-sample invoke, 1 thread, "
        "median.",
        "",
    ]
    order = {t: i for i, t in enumerate(cb.TASK_NAMES)}
    for (task, method, target), rs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
    ):
        rs = sorted(rs, key=lambda r: r["seed"])
        s = _scale(rs[0])
        name = rs[0]["metric_name"]
        lines += [
            f"## {task}, {method.upper() if method != 'acsl' else 'ACSL'}, "
            f"{target:.0%} FLOPs target ({name}, seeds {', '.join(str(r['seed']) for r in rs)};"
            f" QAT {rs[0]['qat_epochs']} epoch(s) at Adam({rs[0]['qat_lr']:g}))",
            "",
            "| stage | metric | int8 KiB | int8 ms |",
            "|---|---:|---:|---:|",
        ]
        for key, label in STAGES:
            vals = [r[key]["metric"] * s for r in rs]
            m, h = cb.mean_ci(vals)
            kib = ms = ""
            if "bytes" in rs[0][key]:
                kib = f"{sum(r[key]['bytes'] for r in rs) / len(rs) / 1024:.0f}"
                ms = f"{sorted(r[key]['latency_ms'] for r in rs)[len(rs) // 2]:.3f}"
            cell = f"{m:.2f} ± {h:.2f}" if len(rs) > 1 else f"{m:.2f}"
            lines.append(f"| {label} | {cell} | {kib} | {ms} |")
        better = "positive" if rs[0]["higher_is_better"] else "negative"
        lines += ["", f"Paired differences ({better} is better), mean [95% CI]:", ""]
        for a, b, label in (
            ("ptq", "float", "PTQ int8 - float32"),
            ("qat", "ptq", "QAT int8 - PTQ int8"),
            ("qat", "longer_ptq", "QAT int8 - (same epochs in float, then PTQ)"),
        ):
            d = [(r[a]["metric"] - r[b]["metric"]) * s for r in rs]
            m, h = cb.mean_ci(d)
            rng = f"[{m - h:+.2f}, {m + h:+.2f}]" if len(rs) > 1 else ""
            lines.append(
                f"- {label}: {m:+.2f} {rng} (per seed: {', '.join(f'{v:+.2f}' for v in d)})"
            )
        refs = [
            (r, r.get("compression_record_metric") or compression_metric(r, compression_dir))
            for r in rs
        ]
        repro = [abs(r["float"]["metric"] - ref) * s for r, ref in refs if ref is not None]
        if repro:
            lines.append(
                f"- float32 vs the compression benchmark's record of the same run: at most "
                f"{max(repro):.2f} apart"
            )
        lines.append("")
    return "\n".join(lines)


def write_summary(out_dir, mode="ranked"):
    """Write ``summary.md`` (``summary_<mode>.md`` for other modes) from the
    records present; returns its path."""
    from acsl_tf import _io

    text = summary_markdown(load(out_dir, mode))
    name = "summary.md" if mode == "ranked" else f"summary_{mode}.md"
    path = os.path.join(out_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    with _io.atomic_path(path, overwrite=True, suffix=".md") as tmp:
        with open(tmp, "w") as f:
            f.write(text + "\n")
    return path


DOCS_START = "<!-- qat-tasks:start -->"
DOCS_END = "<!-- qat-tasks:end -->"


def update_docs(summary_path: str, doc: str) -> None:
    """Embed the summary (without its title, headings one level deeper)
    between the qat-tasks markers of ``doc`` (docs/QAT.md), atomically."""
    from acsl_tf import _io

    with open(summary_path) as f:
        lines = f.read().splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    block = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body)
    with open(doc) as f:
        text = cb.embed(f.read(), block, DOCS_START, DOCS_END)
    with _io.atomic_path(doc, overwrite=True, suffix=".md") as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(cb.TASK_NAMES))
    p.add_argument("--methods", default="acsl,ns")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mode", default="ranked", choices=sorted(MODES))
    p.add_argument("--target", type=float, default=None, help="default: the mode's largest")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--runs", type=int, default=50, help="timed invokes per int8 file")
    p.add_argument("--work-dir", default=".bench_work")
    p.add_argument("--out-dir", default=OUT)
    p.add_argument("--stop-at", default=None, help="HH:MM UTC: start no new run after this")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--update-docs", action="store_true", help="embed the summary into docs/QAT.md")
    a = p.parse_args(argv)
    tasks = cb._csv(a.tasks)
    for t in tasks:
        if t not in cb.TASK_NAMES:
            p.error(f"--tasks: unknown task {t!r}; choose from {', '.join(cb.TASK_NAMES)}")
    methods = cb._csv(a.methods)
    for m in methods:
        if m not in METHODS or METHODS[m]["sparsity"] is None:
            p.error(f"--methods: {m!r} is not a sparsity-trained method of the benchmark")
    if a.target is None:
        a.target = max(MODES[a.mode]["targets"])
    if a.qat_epochs < 1:
        p.error("--qat-epochs must be >= 1")
    if not a.summary_only:
        if a.stop_at:
            cb._STOP_AT[0] = cb._parse_stop_at(a.stop_at)
        todo = [
            (task_name, seed, m)
            for task_name in tasks
            for seed in cb._csv(a.seeds, int)
            for m in methods
            if not os.path.exists(record_path(a.out_dir, a.mode, task_name, seed, m, a.target))
        ]
        for task_name, seed, m in todo:
            if cb._past_stop():
                cb._log("stop time reached; no new runs")
                break
            run_one(
                task_name,
                seed,
                m,
                target=a.target,
                work_dir=a.work_dir,
                out_dir=a.out_dir,
                qat_epochs=a.qat_epochs,
                qat_lr=a.qat_lr,
                runs=a.runs,
                mode=a.mode,
            )
    if load(a.out_dir, a.mode):
        path = write_summary(a.out_dir, a.mode)
        with open(path) as f:
            print(f.read())
        if a.update_docs:
            update_docs(path, os.path.join(os.path.dirname(HERE), "docs", "QAT.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
