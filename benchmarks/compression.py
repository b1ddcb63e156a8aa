"""Compression benchmark: ACSL vs Network Slimming, L1-norm, random, CAP
(plus distillation and tfmot) on the three tasks of acsl_tf.workflow.

For each task and seed, one unpruned baseline is trained; every method starts
from its weights and gets the same epoch budgets (see
benchmarks/compression_configs.py):

- ``acsl`` (and the variants ``acsl_informative``, ``acsl_attention``,
  ``acsl_t2``), ``ns`` (Network Slimming) and ``cap``: sparsity training from
  the baseline under the budget-driven strength (aimed at the mode's most
  aggressive FLOPs target), then ``shrink`` with the ``gamma`` (``cap``:
  ``cap``) criterion to each target;
- ``l1``, ``l1_layer`` (L1 norms normalised per layer) and ``random``: the
  baseline pruned directly with that criterion;
- ``dcp`` (discrimination-aware channel pruning, acsl_tf.dcp): the baseline
  fine-tuned with auxiliary heads at its stage boundaries (once per task and
  seed, cached), then ``select_channels(target_flops=t)`` on calibration
  samples of the training pipeline and the thin model with the re-fitted
  kernels, for each target; ``dkp`` (kernel pruning, run on request): the
  same fine-tuned model, ``select_kernels`` keeping ``1 - t`` of the kernels
  of every conv (same architecture, so params and FLOPs are unchanged as
  counted; the zeros are kept through fine-tuning and reported as
  ``kernel_sparsity``);

then every pruned model is fine-tuned (same epochs for all) and evaluated. At
the mode's ``export_target`` (one target per method, to save time) the
pruned model is exported to float32 and int8 TFLite and its single-sample
latency measured. At the most aggressive target the ``distill_methods`` are
also fine-tuned with distillation from the baseline (``finetune="distill"``).
``tfmot`` runs tensorflow-model-optimization ``prune_low_magnitude`` at the
params reduction that ACSL reached at the export target, on the task's own
architecture rebuilt in tf_keras by benchmarks/_tfmot_worker.py (size and
latency only, against the same architecture unpruned).

Each run writes one JSON record under ``<out>/runs/<mode>/...`` (atomically);
a run whose record exists is skipped, so an interrupted benchmark continues
where it stopped. Trained baselines and sparsity-trained models are cached as
``.keras`` files under ``--work-dir``. ``summary.md`` and the PNG plots are
regenerated from all records present.

Usage:
    .venv/bin/python benchmarks/compression.py --mode smoke
    .venv/bin/python benchmarks/compression.py --mode full --tasks classification \
        --methods baseline,acsl,ns --seeds 0 --targets 0.5,0.85
    .venv/bin/python benchmarks/compression.py --mode full --summary-only --update-docs
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from compression_configs import METHODS, MODES, SPECIAL  # noqa: E402

RESULTS = os.path.join(HERE, "results", "compression")
FINETUNES = ("plain", "distill")
TASK_NAMES = ("classification", "segmentation", "counting")

# --------------------------------------------------------------------------- records


def record_path(
    out_dir: str, mode: str, task: str, seed: int, method: str, target=None, finetune: str = "plain"
) -> str:
    """Path of the JSON record of one run.

    ``target`` is None for the baseline; ``finetune`` is ``"plain"`` or
    ``"distill"``.
    """
    d = os.path.join(out_dir, "runs", mode, task, f"seed{seed}")
    if target is None:
        return os.path.join(d, f"{method}.json")
    return os.path.join(d, f"{method}_t{round(float(target) * 100):02d}_{finetune}.json")


def write_record(path: str, rec: dict) -> str:
    from acsl_tf import _io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _io.atomic_write_text(
        path, json.dumps(rec, indent=2, sort_keys=True) + "\n", overwrite=True
    )


def load_records(out_dir: str, mode: str | None = None) -> list[dict]:
    """All JSON records under ``<out_dir>/runs`` (of one ``mode`` if given)."""
    root = os.path.join(out_dir, "runs")
    if mode is not None:
        root = os.path.join(root, mode)
    recs = []
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".json") and not f.startswith("."):
                with open(os.path.join(dirpath, f)) as fh:
                    recs.append(json.load(fh))
    return recs


# --------------------------------------------------------------------------- aggregation


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


#: Two-sided 95% quantiles of Student's t by degrees of freedom.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000,
}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom
    (tabulated; between table entries the next smaller df is used, which
    errs wide; 1.96 beyond 60)."""
    if df < 1:
        raise ValueError(f"`df` must be >= 1. Received: df={df}")
    if df > 60:
        return 1.96
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for a single value).

    For paired differences this is the paired t interval."""
    m, sd = _mean_spread(values)
    n = len(values)
    return m, (t975(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0)


def aggregate(records: Iterable[dict]) -> list[dict]:
    """Group records by (task, method, target, finetune) over seeds.

    Returns one row per group with ``metric_mean``, ``metric_std``, ``n``
    (seeds), ``seeds``, ``params_reduction`` / ``flops_reduction`` (means,
    against each seed's baseline), ``params`` / ``flops`` (means), the
    pre-fine-tuning metric mean and, where present, the export fields (means).
    Records of method ``tfmot`` are left out (see :func:`tfmot_rows`).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["method"] == "tfmot":
            continue
        groups[r["task"], r["method"], r.get("target"), r.get("finetune", "plain")].append(r)
    rows = []
    for (task, method, target, ft), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        m, s = _mean_spread([r["metric"] for r in rs])
        row = dict(
            task=task,
            method=method,
            target=target,
            finetune=ft,
            metric_name=rs[0]["metric_name"],
            higher_is_better=rs[0].get("higher_is_better", True),
            metric_mean=m,
            metric_std=s,
            metric_ci=mean_ci([r["metric"] for r in rs])[1],
            n=len(rs),
            seeds=[r["seed"] for r in rs],
            params=_mean_spread([r["params"] for r in rs])[0],
            flops=_mean_spread([r["flops"] for r in rs])[0],
            params_reduction=_mean_spread([r.get("params_reduction", 0.0) for r in rs])[0],
            flops_reduction=_mean_spread([r.get("flops_reduction", 0.0) for r in rs])[0],
        )
        pre = [r["metric_pruned"] for r in rs if r.get("metric_pruned") is not None]
        row["metric_pruned_mean"] = _mean_spread(pre)[0] if pre else None
        sparse = [r["metric_sparse"] for r in rs if r.get("metric_sparse") is not None]
        row["metric_sparse_worst"] = (
            (min(sparse) if row["higher_is_better"] else max(sparse)) if sparse else None
        )
        for k in ("tflite_bytes", "int8_bytes", "latency_ms_float32", "latency_ms_int8"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = _mean_spread(vals)[0] if vals else None
        removable = [r["sparse_removable"] for r in rs if r.get("sparse_removable") is not None]
        row["sparse_removable_min"] = min(removable) if removable else None
        rows.append(row)
    order = {m: i for i, m in enumerate(("baseline", "baseline_long") + tuple(METHODS))}
    task_order = {"classification": 0, "segmentation": 1, "counting": 2}
    rows.sort(
        key=lambda r: (
            task_order.get(r["task"], 9),
            -1.0 if r["target"] is None else r["target"],
            r["finetune"],
            order.get(r["method"], 99),
            r["method"],
        )
    )
    return rows


def tfmot_rows(records: Iterable[dict]) -> list[dict]:
    """The ``tfmot`` records, sorted by task and seed."""
    return sorted(
        (r for r in records if r["method"] == "tfmot"), key=lambda r: (r["task"], r["seed"])
    )


def _fmt_metric(row: dict) -> str:
    """Mean ± half-width of the 95% t interval over seeds (no ± for one seed)."""
    name = row["metric_name"]
    if name == "mae":
        txt = f"{row['metric_mean']:.2f}"
        if row["n"] > 1:
            txt += f" ± {row['metric_ci']:.2f}"
    else:
        txt = f"{100 * row['metric_mean']:.1f}"
        if row["n"] > 1:
            txt += f" ± {100 * row['metric_ci']:.1f}"
    return txt


def _fmt_value(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    return f"{v:.2f}" if row["metric_name"] == "mae" else f"{100 * v:.1f}"


def _fmt_removable(row: dict) -> str:
    """The smallest FLOPs fraction the sparsity training left removable."""
    v = row.get("sparse_removable_min")
    return "" if v is None else f"{100 * v:.1f}%"


def _fmt_pre(row: dict) -> str:
    v = row.get("metric_pruned_mean")
    if v is None:
        return ""
    return f"{v:.2f}" if row["metric_name"] == "mae" else f"{100 * v:.1f}"


def _unit(metric_name: str) -> str:
    return (
        "count MAE (lower is better)"
        if metric_name == "mae"
        else (f"{metric_name} % (higher is better)")
    )


def headline_markdown(records: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """The compact comparison: one row per task and target, one column per
    method (plain fine-tuning; mean ± the half-width of the 95% t interval
    over seeds), the unpruned baseline first. The last column gives the
    row's largest seed count; a cell over fewer seeds says ``(n=...)``.

    Args:
        records: Run records.
        methods: Columns (default: the main methods present, in
            ``compression_configs.MAIN_METHODS`` order).

    Returns:
        Markdown text (a table), or "" when there are no records.
    """
    from compression_configs import MAIN_METHODS

    rows = [r for r in aggregate(records) if r["finetune"] == "plain"]
    if not rows:
        return ""
    present = {r["method"] for r in rows}
    cols = [m for m in (methods or MAIN_METHODS) if m in present]
    has_long = "baseline_long" in present
    head = (
        "| task (metric) | target FLOPs red. | unpruned | "
        + ("unpruned, same epochs | " if has_long else "")
        + " | ".join(cols)
        + " | seeds |"
    )
    out = [head, "|---|---:|---:|" + ("---:|" if has_long else "") + "---:|" * len(cols) + "---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task]
        base = next((r for r in trows if r["method"] == "baseline"), None)
        long = next((r for r in trows if r["method"] == "baseline_long"), None)
        long_cell = ((_fmt_metric(long) if long else "") + " | ") if has_long else ""
        name = trows[0]["metric_name"]
        label = f"{task} ({'MAE, lower is better' if name == 'mae' else name + ' %'})"
        for t in sorted({r["target"] for r in trows if r["target"] is not None}):
            found = [
                next((x for x in trows if x["method"] == m and x["target"] == t), None)
                for m in cols
            ]
            most = max(r["n"] for r in found if r)
            # a cell over fewer seeds than the row's most says how many
            cells = [
                "" if r is None else _fmt_metric(r) + (f" (n={r['n']})" if r["n"] < most else "")
                for r in found
            ]
            n = str(most)
            out.append(
                f"| {label} | {100 * t:.0f}% | {_fmt_metric(base) if base else ''} | "
                + long_cell
                + " | ".join(cells)
                + f" | {n} |"
            )
    return "\n".join(out) + "\n"


def paired_markdown(
    records: Sequence[dict], a: str = "acsl", b: str = "ns", key: str = "metric"
) -> str:
    """Method ``a`` against method ``b`` seed by seed (same baseline weights,
    same data): per task and target, the per-seed differences of the metric
    (``a`` better is positive, for MAE too), their mean with its paired 95%
    t interval, in how many seeds ``a`` was better, and the verdict: a method
    is called better only where the interval excludes zero.

    Args:
        records: Run records.
        a, b: The two methods.
        key: The record field compared: ``"metric"`` (after fine-tuning),
            ``"metric_sparse"`` (the sparsity-trained model before shrinking)
            or ``"metric_pruned"`` (right after shrinking). Seeds without the
            field in either record are left out.

    Returns:
        Markdown text (a table), or "" when no seed has both methods.
    """
    by: dict = {}
    for r in records:
        if r["method"] in (a, b) and r.get("finetune", "plain") == "plain" and r.get("target"):
            by.setdefault((r["task"], r["target"], r["seed"]), {})[r["method"]] = r
    groups: dict = defaultdict(list)
    for (task, t, seed), d in sorted(by.items()):
        if a in d and b in d and d[a].get(key) is not None and d[b].get(key) is not None:
            sign = 1.0 if d[a].get("higher_is_better", True) else -1.0
            scale = 1.0 if d[a]["metric_name"] == "mae" else 100.0
            mark = "" if same_baseline(d[a], d[b]) else "\u2020"
            groups[task, t].append((f"{seed}{mark}", sign * scale * (d[a][key] - d[b][key])))
    if not groups:
        return ""
    out = [
        f"| task | target FLOPs red. | {a} - {b} per seed (positive: {a} better) | mean "
        f"[95% CI] | {a} better in | verdict |",
        "|---|---:|---|---:|---:|---|",
    ]
    order = {"classification": 0, "segmentation": 1, "counting": 2}
    for (task, t), diffs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        fmt = "{:+.2f}" if task == "counting" else "{:+.1f}"
        per = ", ".join(f"{fmt.format(d)} (s{seed})" for seed, d in diffs)
        mean, half = mean_ci([d for _, d in diffs])
        wins = sum(d > 0 for _, d in diffs)
        if len(diffs) < 2:
            cell, verdict = fmt.format(mean), "one seed"
        else:
            lo, hi = mean - half, mean + half
            cell = f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"
            verdict = f"{a} better" if lo > 0 else f"{b} better" if hi < 0 else "no difference shown"
        out.append(
            f"| {task} | {100 * t:.0f}% | {per} | {cell} | {wins}/{len(diffs)} | {verdict} |"
        )
    if any(seed.endswith("\u2020") for diffs in groups.values() for seed, _ in diffs):
        out += [
            "",
            "\u2020 the two runs of this seed started from baselines trained separately "
            "(same seed, data and recipe, retrained after a lost cache; see "
            "*Baselines retrained*): the pair is not weight-identical.",
        ]
    return "\n".join(out) + "\n"


def collapse_line(records: Sequence[dict], task: str) -> str:
    """One sentence listing the runs of ``task`` whose plan cut channel groups
    down to ``min_channels`` (``collapsed_groups`` > 0), per method and
    target with the group counts per seed; "" when none (or when no record
    of the task carries the field)."""
    hits: dict = defaultdict(list)
    for r in records:
        if r["task"] == task and r.get("collapsed_groups") and r.get("finetune") == "plain":
            hits[r["method"], r["target"]].append((r["seed"], r["collapsed_groups"]))
    if not hits:
        return ""
    parts = [
        f"`{m}` {100 * t:.0f}%: "
        + ", ".join(f"{n} (s{seed})" for seed, n in sorted(v))
        for (m, t), v in sorted(hits.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    return (
        "Plans that cut channel groups of 4 or more channels down to one "
        "(`LayerCollapseWarning`; groups per seed, runs recorded since the field "
        "exists): " + "; ".join(parts) + "."
    )


def baseline_key(rec: dict):
    """What identifies the unpruned weights a run started from: the weights'
    fingerprint (``baseline_id``, recorded since runs carry it), else the
    baseline's metric to 6 decimals (older records), else None."""
    if rec.get("baseline_id"):
        return ("id", rec["baseline_id"])
    if rec.get("baseline_metric") is not None:
        return ("metric", round(float(rec["baseline_metric"]), 6))
    return None


def same_baseline(r1: dict, r2: dict) -> bool:
    """Whether two runs of a seed started from the same baseline weights (as far
    as the records tell: fingerprints when both have one, else the baseline
    metric; records that tell nothing are taken as paired)."""
    if not (r1.get("baseline_id") and r2.get("baseline_id")):
        r1, r2 = ({k: v for k, v in r.items() if k != "baseline_id"} for r in (r1, r2))
    k1, k2 = baseline_key(r1), baseline_key(r2)
    return k1 is None or k2 is None or k1 == k2


def baseline_drift_markdown(records: Sequence[dict]) -> str:
    """Per task and seed, how many distinct baselines the records started from
    and the spread of their unpruned metrics (a lost cache retrains the
    baseline, and the code had changed in between).

    Returns:
        Markdown text (a table), or "" when every seed has one baseline.
    """
    seen: dict = defaultdict(dict)
    for r in records:
        if r.get("target") is None or r.get("baseline_metric") is None:
            continue
        k = baseline_key(r)
        seen[r["task"], r["seed"]].setdefault(k, [float(r["baseline_metric"]), 0])
        seen[r["task"], r["seed"]][k][1] += 1
    rows = []
    for (task, seed), ks in sorted(seen.items()):
        if len(ks) < 2:
            continue
        vals = [v for v, _ in ks.values()]
        fmt = "{:.3f}" if task == "counting" else "{:.4f}"
        per = ", ".join(f"{fmt.format(v)} ({n} runs)" for v, n in ks.values())
        rows.append(f"| {task} | {seed} | {len(ks)} | {per} | {fmt.format(max(vals) - min(vals))} |")
    if not rows:
        return ""
    return "\n".join(
        [
            "| task | seed | baselines | unpruned metric (runs) | spread |",
            "|---|---:|---:|---|---:|",
            *rows,
        ]
    ) + "\n"


def controller_markdown(
    records: Sequence[dict], earlier: Sequence[dict], methods: Sequence[str] = ("acsl", "ns", "cap")
) -> str:
    """The sparsity-trained methods under the current budget controller
    (``records``) against the same methods, seeds and budgets under the
    earlier controller (``earlier``, e.g. results/compression/epoch_controller):
    seed-by-seed differences (positive: current better), as
    :func:`paired_markdown`.

    Returns:
        Markdown text, or "" when no seed has both.
    """
    rows = []
    for m in methods:
        old = [dict(r, method=f"{m}@epoch") for r in earlier if r["method"] == m]
        new = [r for r in records if r["method"] == m]
        t = paired_markdown(new + old, a=m, b=f"{m}@epoch")
        rows += [f"| {m} {line}" for line in t.splitlines()[2:]]
    if not rows:
        return ""
    head = [
        "| method | task | target FLOPs red. | rate - epoch controller per seed (positive: "
        "rate better) | mean [95% CI] | rate better in | verdict |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    return "\n".join(head + rows) + "\n"


#: Paired comparisons shown next to ACSL against NS when both methods of a
#: pair have records: DCP and L1 against the sparsity-trained methods, the
#: selection loss of DCP, the beta penalty, ACSL with Network Slimming's
#: per-layer allocation, and the ACSL options against the default.
OTHER_PAIRS = (
    ("acsl_galloc", "ns"),
    ("acsl_galloc", "acsl"),
    ("acsl_clip", "acsl"),
    ("acsl_t2", "acsl"),
    ("acsl_t05", "acsl"),
    ("acsl_t05", "ns"),
    ("acsl_center", "acsl"),
    ("acsl_informative", "acsl"),
    ("acsl_attention", "acsl"),
    ("acsl_every1", "acsl"),
    ("acsl_every32", "acsl"),
    ("dcp", "ns"),
    ("dcp", "acsl"),
    ("dcp", "dcp_recon"),
    ("l1", "ns"),
    ("cap", "ns"),
    ("cap", "acsl"),
    ("l1_layer", "ns"),
    ("fpgm", "ns"),
    ("fpgm_layer", "ns"),
    ("taylor", "ns"),
    ("random", "ns"),
    ("acsl_beta", "acsl"),
    ("ns_beta", "ns"),
)


def summary_markdown(records: Sequence[dict], *, title: str = "Compression benchmark") -> str:
    """The markdown summary: per task, per target, per method, metric mean ±
    sample standard deviation over seeds, the number of seeds, params and
    FLOPs reduction; then the distillation comparison, the export/latency
    table and the tfmot rows.

    Args:
        records: Run records (see :func:`load_records`).
        title: First heading.

    Returns:
        Markdown text.
    """
    rows = aggregate(records)
    out = [f"# {title}", ""]
    if not rows:
        return "\n".join(out + ["No records.", ""])
    out += [
        "Metric: mean ± half-width of the 95% t interval over the seeds listed (no ± "
        "with one seed). Reductions are against each seed's unpruned baseline. `after "
        "prune` is the metric right after shrinking, before fine-tuning; `sparse, worst "
        "seed` the metric of the sparsity-trained model before shrinking, in its worst "
        "seed (a collapse shows there); `removable, worst seed` the smallest FLOPs "
        "fraction that model had below the controller's threshold (short of the target: "
        "shrink also cut channels the penalty had not emptied).",
        "",
        "## Overview (plain fine-tuning)",
        "",
        headline_markdown(records),
    ]
    present = {r["method"] for r in rows}
    if present & {"dcp", "dkp"}:
        out += [
            "For `dcp` and `dkp` the `sparse` column is the model fine-tuned with DCP's "
            "auxiliary heads, the model the selection starts from. `dkp` zeroes kernels "
            "without changing the architecture: its target is the fraction of kernels "
            "zeroed in every conv, and its params and FLOPs (counted dense) are the "
            "baseline's (see the DKP table).",
            "",
        ]
    paired = paired_markdown(records)
    if paired:
        out += [
            "ACSL against Network Slimming, seed by seed (same baseline weights, data and "
            "budgets; accuracy/mIoU in points, MAE in counts; paired t interval):",
            "",
            paired,
        ]
    others = [
        (a, b, paired_markdown(records, a=a, b=b))
        for a, b in OTHER_PAIRS
        if a in present and b in present
    ]
    others = [(a, b, t) for a, b, t in others if t]
    stages = [
        (label, paired_markdown(records, key=key))
        for key, label in (
            ("metric_sparse", "the sparsity-trained models before shrinking (`metric_sparse`)"),
            ("metric_pruned", "right after `shrink`, before fine-tuning (`metric_pruned`)"),
        )
    ]
    stages = [(label, t) for label, t in stages if t]
    if others or stages:
        out += ["## Other pairs, seed by seed", ""]
        for label, t in stages:
            out += [f"`acsl` against `ns`, {label}:", "", t]
        for a, b, t in others:
            out += [f"`{a}` against `{b}`:", "", t]
    drift = baseline_drift_markdown(records)
    if drift:
        out += [
            "## Baselines retrained",
            "",
            "Seeds whose runs started from more than one baseline: the cache of trained "
            "baselines was lost between sessions and the baseline retrained (same seed, "
            "data and recipe, but the code and its numerics had changed in between; "
            "retrained with unchanged code a baseline comes out identical, e.g. counting "
            "seed 3 at MAE 2.9399 in two sessions). "
            "Pairs across two baselines are marked \u2020 above. Every record now "
            "carries the baseline weights' fingerprint (`baseline_id`), and "
            "`--baseline-store` keeps baselines beyond the work dir.",
            "",
            drift,
        ]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        trows = [r for r in rows if r["task"] == task]
        out += [f"## {task}: {_unit(trows[0]['metric_name'])}", ""]
        out += [
            "| target FLOPs red. | method | metric | seeds | sparse, worst seed | removable, "
            "worst seed | after prune | params red. | FLOPs red. | params | MFLOPs |",
            "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in trows:
            if r["finetune"] != "plain":
                continue
            tgt = "unpruned" if r["target"] is None else f"{100 * r['target']:.0f}%"
            out.append(
                f"| {tgt} | {r['method']} | {_fmt_metric(r)} | "
                f"{','.join(map(str, r['seeds']))} | {_fmt_value(r, 'metric_sparse_worst')} | "
                f"{_fmt_removable(r)} | {_fmt_pre(r)} | "
                f"{100 * r['params_reduction']:.1f}% | {100 * r['flops_reduction']:.1f}% | "
                f"{r['params']:,.0f} | {r['flops'] / 1e6:.2f} |"
            )
        out.append("")
        collapsed = collapse_line(records, task)
        if collapsed:
            out += [collapsed, ""]
        dist = [r for r in trows if r["finetune"] == "distill"]
        if dist:
            out += [
                f"Distillation ({task}): fine-tune vs fine-tune with distillation from the "
                "unpruned model, same epochs.",
                "",
                "| target | method | fine-tune | with distillation | seeds (plain / distill) |",
                "|---:|---|---:|---:|---|",
            ]
            for d in dist:
                plain = [
                    r
                    for r in trows
                    if r["finetune"] == "plain"
                    and r["method"] == d["method"]
                    and r["target"] == d["target"]
                ]
                p = plain[0] if plain else None
                out.append(
                    f"| {100 * d['target']:.0f}% | {d['method']} | "
                    f"{_fmt_metric(p) if p else 'n/a'} | {_fmt_metric(d)} | "
                    f"{','.join(map(str, p['seeds'])) if p else '-'} / "
                    f"{','.join(map(str, d['seeds']))} |"
                )
            out.append("")
        exp = [r for r in trows if r["finetune"] == "plain" and r.get("tflite_bytes")]
        if exp:
            out += [
                f"TFLite ({task}; one target per method; single-sample invoke, 1 thread, "
                "median; the machine was shared, so latencies are noisy):",
                "",
                "| target | method | float32 KiB | int8 KiB | float32 ms | int8 ms |",
                "|---:|---|---:|---:|---:|---:|",
            ]
            for r in exp:
                tgt = "unpruned" if r["target"] is None else f"{100 * r['target']:.0f}%"
                i8 = "" if r.get("int8_bytes") is None else f"{r['int8_bytes'] / 1024:.0f}"
                l8 = "" if r.get("latency_ms_int8") is None else f"{r['latency_ms_int8']:.3f}"
                out.append(
                    f"| {tgt} | {r['method']} | {r['tflite_bytes'] / 1024:.0f} | {i8} | "
                    f"{r['latency_ms_float32']:.3f} | {l8} |"
                )
            out.append("")
    dkp = dkp_markdown(records)
    if dkp:
        out += [
            "## DKP: kernels zeroed (architecture unchanged)",
            "",
            "Per task and target (the fraction of kernels zeroed in every conv): the "
            "metric after fine-tuning (the zeros kept), the zero fraction of the pruned "
            "convs' kernels and of all trainable weights, and the float32 size dense and "
            "with the pruned kernels stored sparsely (a bitmap plus the kept kernels). "
            "FLOPs and run time on dense runtimes are the baseline's.",
            "",
            dkp,
        ]
    tf_rows = tfmot_rows(records)
    if tf_rows:
        acsl = {
            (r["task"], r["seed"]): r
            for r in records
            if r["method"] == "acsl"
            and r.get("finetune", "plain") == "plain"
            and r.get("tflite_bytes")
            and r.get("target") is not None
        }
        out += [
            "## tfmot prune_low_magnitude (unstructured) at matched sparsity",
            "",
            "tensorflow-model-optimization on each task's own architecture (rebuilt in "
            "tf_keras by benchmarks/_tfmot_worker.py), kernel sparsity = the params "
            "reduction ACSL reached in the same seed; float32 TFLite, plain and with "
            "sparse weight encoding (`EXPERIMENTAL_SPARSITY`), against the same "
            "architecture unpruned converted the same way. The ACSL columns are that "
            "seed's ACSL model (float32). Size and latency only; single-sample invoke, "
            "1 thread, median.",
            "",
            "| task | seed | kernel sparsity | unpruned KiB | tfmot KiB | tfmot sparse-encoded "
            "KiB | ACSL KiB | unpruned ms | tfmot ms | tfmot sparse ms | ACSL ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in tf_rows:
            a = acsl.get((r["task"], r["seed"]))
            a_kib = f"{a['tflite_bytes'] / 1024:.0f}" if a else ""
            a_ms = f"{a['latency_ms_float32']:.3f}" if a else ""
            out.append(
                f"| {r['task']} | {r['seed']} | {100 * r['kernel_sparsity']:.1f}% | "
                f"{r['unpruned_bytes'] / 1024:.0f} | {r['tflite_bytes'] / 1024:.0f} | "
                f"{r['sparse_bytes'] / 1024:.0f} | {a_kib} | {r['unpruned_latency_ms']:.3f} | "
                f"{r['latency_ms_float32']:.3f} | {r['sparse_latency_ms']:.3f} | {a_ms} |"
            )
        out.append("")
    return "\n".join(out)


def dkp_markdown(records: Sequence[dict]) -> str:
    """The ``dkp`` records (plain fine-tuning) per task and target: metric
    mean over seeds, kernel and model sparsity, dense and sparse KiB.

    Returns:
        Markdown text (a table), or "" when there are no ``dkp`` records.
    """
    rows = [
        r
        for r in aggregate(records)
        if r["method"] == "dkp" and r["finetune"] == "plain" and r["target"] is not None
    ]
    if not rows:
        return ""
    out = [
        "| task | target (kernels zeroed) | metric | seeds | conv kernels zero | all weights "
        "zero | dense KiB | sparse KiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        rs = [
            r
            for r in records
            if r["method"] == "dkp"
            and r["task"] == row["task"]
            and r.get("target") == row["target"]
            and r.get("finetune", "plain") == "plain"
        ]

        def mean(key, rs=rs):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else float("nan")

        out.append(
            f"| {row['task']} | {100 * row['target']:.0f}% | {_fmt_metric(row)} | "
            f"{','.join(map(str, row['seeds']))} | "
            f"{100 * mean('kernel_sparsity_finetuned'):.1f}% | "
            f"{100 * mean('model_sparsity'):.1f}% | {mean('dense_bytes') / 1024:.0f} | "
            f"{mean('sparse_bytes') / 1024:.0f} |"
        )
    return "\n".join(out) + "\n"


#: Seeds a method needs before its line gets an interval band: with two the
#: 95% t interval is 12.7 standard errors wide and says nothing.
BAND_MIN_SEEDS = 3


def plot_series(trows: Sequence[dict], key: str, scale: float) -> tuple[list[dict], tuple]:
    """The lines of one panel of :func:`plot` and its y range.

    Args:
        trows: Aggregated rows of one task (plain fine-tuning).
        key: ``"flops_reduction"`` or ``"params_reduction"``.
        scale: 100 for fractions shown in %, 1 for MAE.

    Returns:
        ``(series, (y_lo, y_hi))``: one dict per method (``method``, ``n``,
        ``xs``, ``ys``, ``band`` (``(lows, highs)`` or None: only for the main
        methods, with at least ``BAND_MIN_SEEDS`` seeds at every point; the
        variants' paired comparisons are in the tables), ``main``: one of
        ``MAIN_METHODS``), and a y range that holds every mean, the
        unpruned lines and the bands, padded by 8%.
    """
    from compression_configs import MAIN_METHODS

    # dkp removes no FLOPs or params as counted (kernels are zeroed): no line
    methods = [
        m
        for m in dict.fromkeys(r["method"] for r in trows)
        if m not in ("baseline", "baseline_long", "dkp")
    ]
    series, ys_all = [], []
    for m in methods:
        pts = sorted((r for r in trows if r["method"] == m), key=lambda r: r[key])
        ys = [scale * r["metric_mean"] for r in pts]
        band = None
        if m in MAIN_METHODS and all(r["n"] >= BAND_MIN_SEEDS for r in pts):
            band = (
                [y - scale * r["metric_ci"] for y, r in zip(ys, pts)],
                [y + scale * r["metric_ci"] for y, r in zip(ys, pts)],
            )
            ys_all += band[0] + band[1]
        ys_all += ys
        series.append(
            dict(
                method=m,
                n=max(r["n"] for r in pts),
                xs=[100 * r[key] for r in pts],
                ys=ys,
                band=band,
                main=m in MAIN_METHODS,
            )
        )
    ys_all += [
        scale * r["metric_mean"] for r in trows if r["method"] in ("baseline", "baseline_long")
    ]
    ys_all = [y for y in ys_all if math.isfinite(y)]
    if not ys_all:
        return series, (0.0, 1.0)
    lo, hi = min(ys_all), max(ys_all)
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 1.0
    return series, (lo - pad, hi + pad)


def plot(records: Sequence[dict], out_dir: str, suffix: str = "") -> list[str]:
    """One PNG per task: metric vs FLOPs reduction and metric vs params
    reduction, one line per method (plain fine-tuning; the main methods
    solid with bands of 95% t intervals over seeds where they have at least
    ``BAND_MIN_SEEDS``, the variants dashed without), the unpruned baseline as a
    dashed line, the legend beside the panels.

    Returns:
        The written paths (``<out_dir>/<task><suffix>.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acsl_tf import _io

    rows = aggregate(records)
    paths = []
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task and r["finetune"] == "plain"]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
        base = [r for r in trows if r["method"] == "baseline"]
        long = [r for r in trows if r["method"] == "baseline_long"]
        scale = 1.0 if trows[0]["metric_name"] == "mae" else 100.0
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, key, label in (
            (axes[0], "flops_reduction", "FLOPs reduction (%)"),
            (axes[1], "params_reduction", "params reduction (%)"),
        ):
            series, ylim = plot_series(trows, key, scale)
            for i, sr in enumerate(series):
                color = colors[i % len(colors)]
                ax.plot(
                    sr["xs"],
                    sr["ys"],
                    marker="o" if sr["main"] else "s",
                    ls="-" if sr["main"] else "--",
                    lw=1.6 if sr["main"] else 1.0,
                    ms=5 if sr["main"] else 4,
                    color=color,
                    label=f"{sr['method']} (n={sr['n']})",
                )
                if sr["band"] is not None and len(sr["xs"]) > 1:
                    ax.fill_between(sr["xs"], *sr["band"], color=color, alpha=0.15, lw=0)
                elif sr["band"] is not None:  # one target: an error bar
                    lo_, hi_ = sr["band"]
                    ax.errorbar(
                        sr["xs"],
                        sr["ys"],
                        yerr=[
                            [y - v for y, v in zip(sr["ys"], lo_)],
                            [v - y for y, v in zip(sr["ys"], hi_)],
                        ],
                        fmt="none",
                        ecolor=color,
                        alpha=0.5,
                        capsize=3,
                    )
            if base:
                ax.axhline(
                    scale * base[0]["metric_mean"], color="k", ls="--", lw=1, label="unpruned"
                )
            if long:
                ax.axhline(
                    scale * long[0]["metric_mean"],
                    color="0.4",
                    ls=":",
                    lw=1,
                    label="unpruned, same epochs",
                )
            ax.set_ylim(*ylim)
            ax.set_xlabel(label)
            ax.set_ylabel(_unit(trows[0]["metric_name"]))
            ax.grid(alpha=0.3)
        handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.suptitle(
            f"{task}: metric vs reduction (bands: 95% t intervals over seeds, "
            f"main methods with >= {BAND_MIN_SEEDS} seeds; dashed: variants)"
        )
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        path = os.path.join(out_dir, f"{task}{suffix}.png")
        with _io.atomic_path(path, overwrite=True, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write_summary(out_dir: str, mode: str) -> str:
    """Regenerate ``summary.md`` and the plots from the records of ``mode``."""
    from acsl_tf import _io

    recs = load_records(out_dir, mode)
    md = summary_markdown(recs, title=f"Compression benchmark ({mode} mode)")
    earlier = load_records(os.path.join(out_dir, "epoch_controller"), mode)
    ctl = controller_markdown(recs, earlier) if earlier else ""
    if ctl:
        md += (
            "\n## Budget controller: rate (current) vs epoch (earlier)\n\n"
            "The same methods, seeds and budgets under the earlier per-epoch controller "
            "(records in `epoch_controller/`):\n\n" + ctl
        )
    os.makedirs(out_dir, exist_ok=True)
    name = "summary.md" if mode == "full" else f"summary_{mode}.md"
    path = _io.atomic_write_text(os.path.join(out_dir, name), md, overwrite=True)
    if recs and mode != "smoke":
        plot(recs, out_dir, suffix="" if mode == "full" else f"_{mode}")
    return path


# --------------------------------------------------------------------------- runs


#: ``|gamma|`` below which the budget controller counts a channel as
#: removable (``workflow.sparsity_train``'s default); records report the
#: FLOPs fraction below it as ``sparse_removable``.
SPARSE_THRESHOLD = 0.05

#: Wall-clock time (``time.time()``) after which no new run starts (``--stop-at``).
_STOP_AT: list[float | None] = [None]


def _past_stop() -> bool:
    return _STOP_AT[0] is not None and time.time() >= _STOP_AT[0]


def _parse_stop_at(text: str, now: float | None = None) -> float:
    """``HH:MM`` (UTC) -> epoch seconds of its next occurrence (today, or
    tomorrow when that time of day has passed)."""
    try:
        hh, mm = (int(v) for v in text.split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"`--stop-at` must be HH:MM (UTC). Received: stop_at={text!r}") from None
    now = time.time() if now is None else float(now)
    day = time.gmtime(now)
    stop = float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, hh, mm, 0)))
    return stop if stop > now else stop + 86400.0


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _save_model(model, path: str) -> None:
    from acsl_tf import _io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _io.atomic_path(path, overwrite=True, suffix=".keras") as tmp:
        model.save(tmp)


def _load_model(path: str):
    import keras

    import acsl_tf  # noqa: F401  (registers the wrapper classes)

    if not os.path.exists(path):
        return None
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # a stale or unreadable cache is retrained
        _log(f"cache {path} unreadable ({type(e).__name__}: {e}); retraining")
        return None


def _check_recorded_baseline(out_dir, mode, task_name, seed, baseline_id, metric) -> bool:
    """Whether the baseline in use is the one the seed's baseline record was
    made with (by fingerprint, or by metric for records without one); logs a
    warning when not: the new runs will not be weight-identical to the
    recorded ones (the summary marks such pairs)."""
    path = record_path(out_dir, mode, task_name, seed, "baseline")
    if not os.path.exists(path):
        return True
    with open(path) as f:
        rec = json.load(f)
    recorded = dict(baseline_id=rec.get("baseline_id"), baseline_metric=rec["metric"])
    same = same_baseline(recorded, dict(baseline_id=baseline_id, baseline_metric=metric))
    if not same:
        _log(
            f"WARNING {task_name} seed {seed}: this baseline ({metric:.6f}, {baseline_id}) is "
            f"not the one recorded in {path} ({float(rec['metric']):.6f}, "
            f"{rec.get('baseline_id') or 'no fingerprint'}): the new runs will not be "
            "weight-identical to the recorded ones of this seed. Keep baselines with "
            "--baseline-store to avoid retraining them."
        )
    return same


def weights_fingerprint(model) -> str:
    """The first 16 hex digits of the SHA-256 of a model's weights (names,
    shapes and bytes, in order): identical weights, identical fingerprint."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.weights:
        v = np.ascontiguousarray(w.numpy())
        h.update(f"{w.path}:{v.dtype}:{v.shape};".encode())
        h.update(v.tobytes())
    return h.hexdigest()[:16]


def _copy(model):
    import keras

    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    return m


def dcp_settings(mode: str, task_name: str) -> dict:
    """The ``dcp``/``dkp`` settings of one task in one mode:
    ``compression_configs.DCP_DEFAULTS`` updated by the mode's ``dcp`` dict,
    then by its entry named after the task, then by the task's ``dcp`` dict;
    ``aux_epochs`` / ``aux_lr`` of None become the task's
    ``sparsity_epochs`` / ``sparsity_lr``.

    Raises:
        ValueError: For an unknown setting or a value out of range.
    """
    from compression_configs import DCP_DEFAULTS

    mcfg = MODES[mode]
    cfg = mcfg["tasks"][task_name]
    out = dict(DCP_DEFAULTS)
    mode_d = dict(mcfg.get("dcp") or {})
    per_task = {k: mode_d.pop(k) for k in list(mode_d) if k in TASK_NAMES}
    layers = (
        ("mode", mode_d),
        (f"mode's {task_name!r}", per_task.get(task_name) or {}),
        ("task", cfg.get("dcp") or {}),
    )
    for where, d in layers:
        unknown = sorted(set(d) - set(DCP_DEFAULTS))
        if unknown:
            raise ValueError(
                f"Unknown DCP settings {unknown} in the {where} configuration of "
                f"{mode}/{task_name}; valid keys are {sorted(DCP_DEFAULTS)}. Received: {d!r}"
            )
        out.update(d)
    if out["aux_epochs"] is None:
        out["aux_epochs"] = cfg["sparsity_epochs"]
    if out["aux_lr"] is None:
        out["aux_lr"] = cfg["sparsity_lr"]
    ints = (("aux_epochs", 0), ("max_heads", 1), ("n_samples", 1), ("steps", 0))
    for key, low in ints + (("stage_epochs", 0),):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(
                f"DCP setting {key!r} of {mode}/{task_name} must be an int >= {low}. "
                f"Received: {key}={v!r}"
            )
    p = out["per_step"]
    if isinstance(p, bool) or not (
        (isinstance(p, int) and p >= 1) or (isinstance(p, float) and 0.0 < p <= 1.0)
    ):
        raise ValueError(
            f"DCP setting 'per_step' of {mode}/{task_name} must be an int >= 1 or a "
            f"fraction in (0, 1] of each group. Received: per_step={p!r}"
        )
    e = out["epsilon"]
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e < 1.0:
        raise ValueError(
            f"DCP setting 'epsilon' of {mode}/{task_name} must be a number in [0, 1). "
            f"Received: epsilon={e!r}"
        )
    return out


def dcp_cache_stem(settings: dict) -> str:
    """File stem of the cached model fine-tuned with the auxiliary heads:
    it names the settings the fine-tuning depends on."""
    return (
        f"dcp_heads{settings['max_heads']}_e{settings['aux_epochs']}_"
        f"lr{settings['aux_lr']:g}_w{settings['aux_weight']:g}"
    )


def collapsed_groups(caught) -> int:
    """How many channel groups a plan cut down to ``min_channels``: the
    ``groups`` of the :class:`acsl_tf.LayerCollapseWarning` among ``caught``
    warnings (0 without one)."""
    from acsl_tf import LayerCollapseWarning

    return sum(
        len(w.message.groups) for w in caught if isinstance(w.message, LayerCollapseWarning)
    )


def method_criterion(spec: dict, task):
    """The ``criterion`` argument of ``shrink`` for a method: its name, or for
    ``"taylor"`` a :class:`acsl_tf.criteria.TaylorCriterion` on the first
    ``TAYLOR_SAMPLES`` training samples with the task's loss."""
    from compression_configs import TAYLOR_SAMPLES

    if spec["criterion"] != "taylor":
        return spec["criterion"]
    from acsl_tf.pruning.criteria import TaylorCriterion

    return TaylorCriterion(calibration_batch(task, TAYLOR_SAMPLES), task.loss())


def calibration_batch(task, n: int):
    """DCP's calibration data: the first ``n`` samples of the task's training
    pipeline (at most one epoch's worth, so no sample repeats), as arrays
    ``(x, y)`` with the targets the model is trained on."""
    import numpy as np

    n = min(int(n), task.steps_per_epoch * task.batch_size)
    xs, ys, got = [], [], 0
    for xb, yb in task.train_ds():
        xs.append(np.asarray(xb))
        ys.append(np.asarray(yb))
        got += len(xs[-1])
        if got >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def dkp_layers(model) -> list[str]:
    """The layers DKP prunes in the benchmark: every top-level convolution
    whose kernel it can re-fit (groups 1, not transposed), not Dense."""
    import keras

    from acsl_tf.dcp._engine import is_consumer_layer

    return [
        layer.name
        for layer in model.layers
        if is_consumer_layer(layer) and not isinstance(layer, keras.layers.Dense)
    ]


def kernel_zero_fraction(model, names) -> float:
    """Zero entries over all entries of the kernels of the layers ``names``."""
    import numpy as np

    zero = total = 0
    for name in names:
        k = np.asarray(model.get_layer(name).kernel)
        zero += int((k == 0).sum())
        total += k.size
    return zero / max(total, 1)


def prune_dcp(
    kind: str, model, heads, x, y, target: float, settings: dict, options=None, task=None
):
    """DCP or DKP of ``model`` (fine-tuned with ``heads``) to ``target``.

    ``"dcp"``: ``select_channels(target_flops=target)``, the thin model with
    the re-fitted kernels; with ``options`` ``schedule="stagewise"``,
    ``select_channels_stagewise`` (``settings["stage_epochs"]`` per stage on
    ``task``'s training pipeline, SGD at ``aux_lr``, BatchNorm statistics
    re-estimated after each stage's fine-tuning); with ``stopping="epsilon"``
    the adaptive rule (``settings["epsilon"]``) instead of the target.
    ``options["aux_weight"]`` replaces the selection's lambda (``dcp_recon``:
    0, the reconstruction loss alone).
    ``"dkp"``: ``select_kernels`` keeping ``1 - target`` of the kernels of
    every conv (:func:`dkp_layers`); a copy of the model with the others zero.

    Returns:
        ``(pruned model, record fields, fine-tuning callbacks)``; for DKP the
        callback keeps the pruned kernels at zero.
    """
    import keras

    from acsl_tf import dcp

    kw = dict(
        aux_weight=settings["aux_weight"],
        steps=settings["steps"],
        learning_rate=settings["learning_rate"],
        momentum=settings["momentum"],
        n_samples=settings["n_samples"],
        verbose=0,
    )
    t0 = time.time()
    options = dict(options or {})
    if "aux_weight" in options:  # the selection's lambda (the heads keep their training)
        kw["aux_weight"] = float(options["aux_weight"])
    if kind == "dcp":
        stop = dict(target_flops=float(target))
        if options.get("stopping") == "epsilon":
            stop = dict(epsilon=float(settings["epsilon"]))
        if options.get("schedule") == "stagewise":
            res = dcp.select_channels_stagewise(
                model,
                x,
                y,
                heads=heads,
                stage_epochs=settings["stage_epochs"],
                train_data=task.train_ds(),
                steps_per_epoch=task.steps_per_epoch,
                optimizer=lambda: keras.optimizers.SGD(settings["aux_lr"], momentum=0.9),
                callbacks=[_recalibrate_bn_callback(task)],
                run_eagerly=task.eager,
                per_step=settings["per_step"],
                **stop,
                **kw,
            )
        else:
            res = dcp.select_channels(
                model, x, y, heads=heads, per_step=settings["per_step"], **stop, **kw
            )
        small = res.apply()
        fields = dict(
            widths=[[s.name, s.size, len(s.kept)] for s in res.layers],
            not_selected=dict(res.skipped),
            schedule=res.schedule,
            stopping=options.get("stopping", "target"),
        )
        if res.stages:
            fields["stages"] = [
                dict(
                    head=st.head,
                    groups=list(st.groups),
                    epochs=st.epochs,
                    seconds_finetune=round(st.fit_seconds, 1),
                    seconds_select=round(st.select_seconds, 1),
                    flops_reduction=st.flops_reduction,
                )
                for st in res.stages
            ]
            fields["seconds_stage_finetune"] = round(sum(st.fit_seconds for st in res.stages), 1)
        if "epsilon" in stop:
            fields["epsilon"] = stop["epsilon"]
            fields["target_met"] = res.plan.flops_reduction >= float(target) - 1e-9
        callbacks = []
    elif kind == "dkp":
        layers = dkp_layers(model)
        res = dcp.select_kernels(
            model, x, y, heads=heads, kernels=1.0 - float(target), layers=layers, **kw
        )
        small = res.model
        fields = dict(
            dkp_layers=layers,
            kernel_sparsity=res.sparsity,
            model_sparsity=res.model_sparsity,
            dense_bytes=res.dense_bytes,
            sparse_bytes=res.sparse_bytes,
        )
        callbacks = [res.keep_zeros()]
    else:
        raise ValueError(f'`kind` must be "dcp" or "dkp". Received: kind={kind!r}')
    fields.update(
        dcp=dict(settings),
        aux_points=list(heads.points),
        selection_aux_weight=kw["aux_weight"],
        refits_rejected=sum(s.rejected for s in res.layers),
        seconds_select=round(time.time() - t0, 1),
    )
    return small, fields, callbacks


def _recalibrate_bn_callback(task):
    """A ``fit`` callback re-estimating the BatchNorm statistics at the end of
    each stage-wise fine-tuning, as after every training step of the
    benchmark."""
    import keras

    from acsl_tf import workflow as wf
    from acsl_tf.dcp import AuxiliaryHeads

    class Recalibrate(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            net = self.model
            wf.recalibrate_bn(net.model if isinstance(net, AuxiliaryHeads) else net, task)

    return Recalibrate()


def _export(model, task, work, name, runs):
    """Float32 and int8 TFLite sizes and latencies; an int8 artifact that
    fails its parity check is recorded as such (``int8_parity_error``) with
    the float32 numbers, instead of ending the benchmark."""
    from acsl_tf import workflow as wf
    from acsl_tf.export import ParityError

    try:
        return wf.export_and_measure(model, task, work, name=name, runs=runs, progress=False)
    except ParityError as e:
        _log(f"{name}: int8 export failed its parity check; float32 only ({e})"[:300])
        out = wf.export_and_measure(
            model, task, work, name=name, runs=runs, progress=False, int8=False
        )
        out["int8_parity_error"] = str(e).split(" Nothing was written")[0]
        return out


def task_budget_options(mode: str, task_name: str) -> dict:
    """The BudgetStrength options of a mode, with the task's overrides."""
    options = dict(MODES[mode].get("budget_options") or {})
    options.update(MODES[mode]["tasks"][task_name].get("budget_options") or {})
    return options


def controller_tag(budget_options: dict) -> str:
    """The part of a cached sparse model's name that tells controller
    settings apart (``rate_p0_k0_s0.5``)."""
    ctl = budget_options.get("controller", "rate")
    for key, tag in (("protect", "p"), ("kept_weight", "k"), ("max_step", "s")):
        if key in budget_options:
            value = budget_options[key]
            ctl += f"_{tag}{'none' if value is None else format(value, 'g')}"
    return ctl


def sparse_cache_path(work: str, method: str, ctl: str, target: float | None) -> str:
    """The cached sparsity-trained model of ``method`` (aimed at ``target``
    with per-target sparsity training, else None)."""
    tag = "" if target is None else f"_t{round(target * 100)}"
    return os.path.join(work, f"{method}_sparse_{ctl}{tag}.keras")


def backfill_removable(out_dir: str, work_dir: str, mode: str) -> int:
    """Add ``sparse_removable`` to records written before it existed, from
    the cached sparsity-trained models; returns the number of records
    updated (records whose cached model is missing are left as they are)."""
    from acsl_tf import plan_shrink

    updated = 0
    per_target = bool(MODES[mode].get("per_target_sparsity", False))
    for rec in load_records(out_dir, mode):
        spec = METHODS.get(rec["method"])
        if spec is None or spec["sparsity"] is None or "sparse_removable" in rec:
            continue
        work = os.path.join(work_dir, mode, rec["task"], f"seed{rec['seed']}")
        ctl = controller_tag(rec.get("budget_options") or task_budget_options(mode, rec["task"]))
        target = rec.get("sparsity_target") if per_target else None
        model = _load_model(sparse_cache_path(work, rec["method"], ctl, target))
        if model is None:
            continue
        rec["sparse_removable"] = plan_shrink(model, threshold=SPARSE_THRESHOLD).flops_reduction
        path = record_path(
            out_dir, mode, rec["task"], rec["seed"], rec["method"], rec["target"], rec["finetune"]
        )
        write_record(path, rec)
        updated += 1
    return updated


def run_task_seed(
    task_name: str,
    seed: int,
    *,
    mode: str,
    methods: Sequence[str],
    targets: Sequence[float],
    out_dir: str,
    work_dir: str,
    distill: bool = True,
    export: bool = True,
    baseline_store: str | None = None,
) -> int:
    """Run every missing record of one task and seed; returns how many were written.

    ``baseline_store``: a folder where the trained baseline is kept as
    ``<mode>/<task>/seed<N>.keras`` and taken from when present (None: the
    work dir only)."""
    import keras

    from acsl_tf import workflow as wf

    mcfg = MODES[mode]
    cfg = mcfg["tasks"][task_name]
    sparsity_target = max(mcfg["targets"])
    # Sparsity training aimed at each target separately (a model per target)
    # or once at the most aggressive target, pruned to every target.
    per_target = bool(mcfg.get("per_target_sparsity", False))
    distill_target = max(mcfg["targets"])
    distill_methods = mcfg.get("distill_methods", ("acsl", "ns"))
    export_target = mcfg["export_target"]
    export_methods = mcfg.get("export_methods", tuple(METHODS) + ("baseline",))
    runs = mcfg["export_runs"]
    work = os.path.join(work_dir, mode, task_name, f"seed{seed}")
    os.makedirs(work, exist_ok=True)

    # Which records are missing?
    todo: dict[str, list[tuple[float | None, str]]] = {}
    for m in methods:
        if m == "tfmot":
            continue
        if m in ("baseline", "baseline_long"):
            if not os.path.exists(record_path(out_dir, mode, task_name, seed, m)):
                todo[m] = [(None, "plain")]
            continue
        items = []
        # an adaptive method ignores the target: one run, under the first target
        adaptive = (METHODS[m].get("options") or {}).get("stopping") == "epsilon"
        for t in targets[:1] if adaptive else targets:
            fts = ["plain"]
            if distill and t == distill_target and m in distill_methods:
                fts.append("distill")
            for ft in fts:
                if not os.path.exists(record_path(out_dir, mode, task_name, seed, m, t, ft)):
                    items.append((t, ft))
        if items:
            todo[m] = items
    if not todo:
        _log(f"{task_name} seed {seed}: all records present")
        return 0

    task = wf.make_task(task_name, size=cfg["size"], seed=seed, **cfg["overrides"])
    common = dict(
        mode=mode,
        seed=seed,
        size=cfg["size"],
        task_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in task.config.items()},
        budget={k: cfg[k] for k in cfg if k not in ("size", "overrides")},
        metric_name=task.metric_name,
        higher_is_better=task.higher_is_better,
    )

    # Baseline (trained once per task and seed, cached in the work dir and, when
    # a baseline store is given, kept next to the records so that a later
    # session pairs its runs with the same weights instead of a retrained
    # baseline).
    base_path = os.path.join(work, "baseline.keras")
    store_path = (
        os.path.join(baseline_store, mode, task_name, f"seed{seed}.keras")
        if baseline_store
        else None
    )
    base = _load_model(store_path) if store_path else None
    if base is not None and not os.path.exists(base_path):
        _save_model(base, base_path)
    if base is None:
        base = _load_model(base_path)
    t0 = time.time()
    if base is None:
        _log(f"{task_name} seed {seed}: training the baseline ({cfg['base_epochs']} epochs)")
        keras.utils.set_random_seed(seed)
        base = task.build_model()
        wf.train(
            base,
            task,
            cfg["base_epochs"],
            lr=cfg["base_lr"],
            schedule=cfg.get("base_schedule", "constant"),
            verbose=0,
        )
        _save_model(base, base_path)
    if store_path and not os.path.exists(store_path):
        _save_model(base, store_path)
    base_seconds = time.time() - t0
    common["baseline_id"] = weights_fingerprint(base)
    base_metric = wf.evaluate(base, task)
    _check_recorded_baseline(out_dir, mode, task_name, seed, common["baseline_id"], base_metric)
    base_row = wf.record(base, task, metric=base_metric)
    base_params, base_flops = base_row["params"], base_row["flops"]
    _log(
        f"{task_name} seed {seed}: baseline {task.metric_name}={base_metric:.4f} "
        f"params={base_params} flops={base_flops}"
    )
    written = 0

    def unpruned(model, method, metric, seconds, **extra):
        rec = wf.record(
            model,
            task,
            metric=metric,
            **common,
            method=method,
            target=None,
            finetune="plain",
            params_reduction=0.0,
            flops_reduction=0.0,
            seconds_train=round(seconds, 1),
            **extra,
        )
        write_record(record_path(out_dir, mode, task_name, seed, method), rec)

    if "baseline" in todo:
        do_export = export and "baseline" in export_methods
        exp = _export(base, task, work, "baseline", runs) if do_export else {}
        unpruned(base, "baseline", base_metric, base_seconds, export=exp)
        written += 1

    if "baseline_long" in todo and not _past_stop():
        # The unpruned model trained as long as the pruned ones: the baseline
        # plus the sparsity epochs (SGD, no penalty) plus the fine-tuning
        # epochs (Adam), i.e. the whole pipeline without penalty and pruning.
        t0 = time.time()
        keras.utils.set_random_seed(seed)
        long = _copy(base)
        wf.train(long, task, cfg["sparsity_epochs"], lr=cfg["sparsity_lr"], verbose=0)
        wf.finetune(long, task, cfg["finetune_epochs"], lr=cfg["finetune_lr"], verbose=0)
        metric = wf.evaluate(long, task)
        unpruned(long, "baseline_long", metric, time.time() - t0, baseline_metric=base_metric)
        written += 1
        _log(f"{task_name} seed {seed}: baseline_long {task.metric_name} {metric:.4f}")

    budget_options = task_budget_options(mode, task_name)
    ctl = controller_tag(budget_options)
    dcp_cache: dict = {}

    def dcp_source():
        """The baseline fine-tuned with DCP's auxiliary heads (cached on disk,
        shared by every target and by ``dcp`` and ``dkp``), the heads, the
        calibration data, its metric, the seconds and the settings."""
        if dcp_cache:
            return dcp_cache["source"]
        from acsl_tf import dcp

        s = dcp_settings(mode, task_name)
        stem = os.path.join(work, dcp_cache_stem(s))
        t0 = time.time()
        model = _load_model(stem + ".keras")
        if model is not None:
            points = dcp.auxiliary_head_points(model, max_heads=s["max_heads"])
            heads = [_load_model(f"{stem}_head{i + 1}.keras") for i in range(len(points))]
            if any(h is None for h in heads):
                model = None
        if model is None:
            _log(
                f"{task_name} seed {seed}: fine-tuning with DCP's auxiliary heads "
                f"({s['aux_epochs']} epochs)"
            )
            keras.utils.set_random_seed(seed)
            model = _copy(base)
            aux = dcp.with_auxiliary_heads(
                model, max_heads=s["max_heads"], aux_weight=s["aux_weight"]
            )
            if s["aux_epochs"]:
                aux.compile(
                    keras.optimizers.SGD(s["aux_lr"], momentum=0.9), run_eagerly=task.eager
                )
                aux.fit(
                    task.train_ds(),
                    epochs=s["aux_epochs"],
                    steps_per_epoch=task.steps_per_epoch,
                    shuffle=False,  # the dataset shuffles itself
                    verbose=0,
                )
                wf.recalibrate_bn(model, task)
            for i, h in enumerate(aux.heads):
                _save_model(h, f"{stem}_head{i + 1}.keras")
            _save_model(model, stem + ".keras")  # written last: marks a complete cache
        else:
            by_name = {h.name: h for h in heads}
            aux = dcp.with_auxiliary_heads(
                model,
                at=points,
                aux_weight=s["aux_weight"],
                head=lambda shape, name: by_name[name],
            )
        x, y = calibration_batch(task, s["n_samples"])
        dcp_cache["source"] = (model, aux, (x, y), wf.evaluate(model, task), time.time() - t0, s)
        return dcp_cache["source"]

    for m, items in todo.items():
        if m in ("baseline", "baseline_long"):
            continue
        if _past_stop():
            _log("stop time reached; no new runs")
            return written
        spec = METHODS[m]
        # The method's own BudgetStrength settings (e.g. ``allocation``) over the mode's.
        m_budget = {**budget_options, **(spec.get("budget") or {})}
        sources: dict = {}

        def sparse_source(t_sp, spec=spec, m=m, sources=sources, m_budget=m_budget):
            """The sparsity-trained model aimed at ``t_sp`` (cached on disk)."""
            if t_sp in sources:
                return sources[t_sp]
            sp_path = sparse_cache_path(work, m, ctl, t_sp if per_target else None)
            source = _load_model(sp_path)
            t0 = time.time()
            if source is None:
                _log(
                    f"{task_name} seed {seed}: {m} sparsity training "
                    f"({cfg['sparsity_epochs']} epochs, budget {t_sp:.0%} FLOPs)"
                )
                keras.utils.set_random_seed(seed)
                source = wf.sparsity_train(
                    _copy(base),
                    task,
                    epochs=cfg["sparsity_epochs"],
                    method=spec["sparsity"],
                    target_flops=t_sp,
                    penalty=cfg["penalty"],
                    lr=cfg["sparsity_lr"],
                    threshold=SPARSE_THRESHOLD,
                    verbose=0,
                    budget_options=m_budget,
                    **spec["options"],
                )
                _save_model(source, sp_path)
            sources[t_sp] = (source, wf.evaluate(source, task), time.time() - t0)
            return sources[t_sp]

        for t, ft in items:
            if _past_stop():
                _log("stop time reached; no new runs")
                return written
            t_sp = t if per_target else sparsity_target
            kind = spec.get("prune", "shrink")
            source, sparse_metric, sp_seconds = base, None, 0.0
            if spec["sparsity"] is not None:
                source, sparse_metric, sp_seconds = sparse_source(t_sp)
            if kind != "shrink":
                source, aux, (xc, yc), sparse_metric, sp_seconds, dset = dcp_source()
            t0 = time.time()
            keras.utils.set_random_seed(seed)
            fields, keep = {}, []
            if kind == "shrink":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    small = wf.prune(
                        source, target_flops=t, criterion=method_criterion(spec, task), seed=seed
                    )
                fields["collapsed_groups"] = collapsed_groups(caught)
                for w in caught:  # re-issued through the filters in force
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            else:
                small, fields, keep = prune_dcp(
                    kind, source, aux, xc, yc, t, dset, options=spec["options"], task=task
                )
            if keep and ft == "distill":
                raise ValueError(
                    f"{m} keeps its pruned kernels at zero with a callback on the model's "
                    "layers, which distillation does not train directly; remove it from "
                    f"distill_methods. Received: method={m!r}, finetune={ft!r}"
                )
            pruned_metric = wf.evaluate(small, task)
            if spec["sparsity"] is not None:
                # What the sparsity training left removable (|gamma| below
                # the controller's threshold): short of the target means
                # shrink also cut live channels.
                from acsl_tf import plan_shrink

                fields["sparse_removable"] = plan_shrink(
                    source, threshold=SPARSE_THRESHOLD
                ).flops_reduction
            teacher = _copy(base) if ft == "distill" else None
            wf.finetune(
                small,
                task,
                cfg["finetune_epochs"],
                teacher=teacher,
                lr=cfg["finetune_lr"],
                callbacks=keep,
                verbose=0,
            )
            if kind == "dkp":
                fields["kernel_sparsity_finetuned"] = kernel_zero_fraction(
                    small, fields["dkp_layers"]
                )
            metric = wf.evaluate(small, task)
            exp = {}
            if export and m in export_methods and ft == "plain" and abs(t - export_target) < 1e-9:
                exp = _export(small, task, work, f"{m}_t{round(t * 100)}", runs)
            rec = wf.record(
                small,
                task,
                metric=metric,
                export=exp,
                **common,
                method=m,
                target=t,
                finetune=ft,
                criterion=spec["criterion"],
                sparsity=spec["sparsity"],
                options=spec["options"],
                sparsity_target=(t_sp if spec["sparsity"] else None),
                budget_options=(m_budget if spec["sparsity"] else None),
                baseline_metric=base_metric,
                metric_sparse=sparse_metric,
                metric_pruned=pruned_metric,
                seconds_sparsity=round(sp_seconds, 1),
                seconds_prune_finetune=round(time.time() - t0, 1),
                **fields,
            )
            rec["params_reduction"] = 1.0 - rec["params"] / base_params
            rec["flops_reduction"] = 1.0 - rec["flops"] / base_flops
            write_record(record_path(out_dir, mode, task_name, seed, m, t, ft), rec)
            written += 1
            _log(
                f"{task_name} seed {seed}: {m} target {t:.0%} {ft}: {task.metric_name} "
                f"{pruned_metric:.4f} -> {metric:.4f} (params -{rec['params_reduction']:.1%}, "
                f"FLOPs -{rec['flops_reduction']:.1%})"
            )
    return written


def run_tfmot(task_name: str, seed: int, *, mode: str, out_dir: str, work_dir: str) -> bool:
    """The tfmot row of one task and seed: ``prune_low_magnitude`` on the
    task's own architecture (rebuilt in tf_keras by benchmarks/_tfmot_worker.py)
    at the params reduction ACSL reached at the export target (the target
    itself if that record is missing); size and latency against the same
    architecture unpruned, converted the same way."""
    from acsl_tf.export import benchmark_tflite

    mcfg = MODES[mode]
    t = mcfg["export_target"]
    path = record_path(out_dir, mode, task_name, seed, "tfmot", t)
    if os.path.exists(path):
        return False
    acsl_path = record_path(out_dir, mode, task_name, seed, "acsl", t, "plain")
    sparsity = t
    if os.path.exists(acsl_path):
        with open(acsl_path) as f:
            sparsity = round(json.load(f)["params_reduction"], 3)
    cfg = mcfg["tasks"][task_name]
    work = os.path.join(work_dir, mode, task_name, f"seed{seed}")
    os.makedirs(work, exist_ok=True)
    out = os.path.join(work, "tfmot.tflite")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    cmd = [
        sys.executable,
        os.path.join(HERE, "_tfmot_worker.py"),
        "--task",
        task_name,
        "--task-size",
        cfg["size"],
        "--task-overrides",
        json.dumps(cfg["overrides"]),
        "--sparsity",
        str(sparsity),
        "--out",
        out,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        _log(f"tfmot worker failed: {(proc.stderr or '').strip().splitlines()[-3:]}")
        return False
    w = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = mcfg["export_runs"]
    ref_path = w["ref_path"]
    rec = dict(
        mode=mode,
        task=task_name,
        seed=seed,
        method="tfmot",
        target=t,
        finetune="plain",
        metric_name=None,
        metric=None,
        arch=w["arch"],
        target_sparsity=sparsity,
        kernel_sparsity=w["kernel_sparsity"],
        params=w["params"],
        unpruned_bytes=os.path.getsize(ref_path),
        tflite_bytes=os.path.getsize(w["path"]),
        sparse_bytes=os.path.getsize(w["sparse_path"]),
        unpruned_latency_ms=benchmark_tflite(ref_path, threads=1, runs=runs).median_ms,
        latency_ms_float32=benchmark_tflite(w["path"], threads=1, runs=runs).median_ms,
        sparse_latency_ms=benchmark_tflite(w["sparse_path"], threads=1, runs=runs).median_ms,
        tfmot_version=w.get("tfmot_version"),
    )
    write_record(path, rec)
    _log(
        f"{task_name} seed {seed}: tfmot at {sparsity:.1%} sparsity: "
        f"{rec['tflite_bytes']} B ({rec['sparse_bytes']} B sparse-encoded)"
    )
    return True


DOCS_START = "<!-- compression:start -->"
DOCS_END = "<!-- compression:end -->"


def embed(text: str, block: str, start: str = DOCS_START, end: str = DOCS_END) -> str:
    """``text`` with the part between the ``start`` and ``end`` marker lines
    replaced by ``block``.

    Raises:
        ValueError: if the markers are missing or out of order.
    """
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ValueError(
            f"The markers {start!r} and {end!r} must both be present, in this order, "
            "to embed the benchmark summary."
        )
    return text[: i + len(start)] + "\n\n" + block.strip() + "\n\n" + text[j:]


def docs_blocks(summary: str) -> tuple[str, str]:
    """From ``summary.md``: (the README block: the overview and the ACSL vs NS
    tables; the docs/BENCHMARKS.md block: the whole summary with its headings
    one level deeper and without its title)."""
    lines = summary.splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    deeper = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body)
    sections = summary.split("\n## ")
    overview = next((s for s in sections if s.startswith("Overview")), "")
    readme = "\n".join(overview.splitlines()[1:]).strip()
    return readme, "## Results\n" + deeper


def doc_markers(mode: str = "full") -> tuple[str, str]:
    """The start/end marker lines of ``mode``'s block in the docs
    (``<!-- compression:start -->`` for full mode,
    ``<!-- compression-<mode>:start -->`` otherwise)."""
    tag = "compression" if mode == "full" else f"compression-{mode}"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def update_docs(out_dir: str, readme: str, benchmarks_md: str, mode: str = "full") -> list[str]:
    """Embed ``mode``'s summary (``summary.md`` for full mode,
    ``summary_<mode>.md`` otherwise) into the README and docs/BENCHMARKS.md,
    between the markers of :func:`doc_markers`; atomic writes.

    Returns:
        The written paths.
    """
    from acsl_tf import _io

    name = "summary.md" if mode == "full" else f"summary_{mode}.md"
    with open(os.path.join(out_dir, name)) as f:
        summary = f.read()
    r_block, b_block = docs_blocks(summary)
    start, end = doc_markers(mode)
    written = []
    for path, block in ((readme, r_block), (benchmarks_md, b_block)):
        with open(path) as f:
            text = f.read()
        _io.atomic_write_text(path, embed(text, block, start, end), overwrite=True)
        written.append(path)
    return written


def _csv(text, cast=str):
    return [cast(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="smoke")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all three)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: the mode's)")
    parser.add_argument("--seeds", default=None, help="comma-separated ints")
    parser.add_argument("--targets", default=None, help="comma-separated FLOPs fractions")
    parser.add_argument("--no-distill", action="store_true")
    parser.add_argument("--no-export", action="store_true", help="skip TFLite export/latency")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument(
        "--backfill-removable",
        action="store_true",
        help="add sparse_removable to older records from the cached sparse models (--work-dir)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="also embed the mode's summary into README.md and docs/BENCHMARKS.md",
    )
    parser.add_argument(
        "--stop-at", default=None, help="HH:MM UTC: start no new run after this time"
    )
    parser.add_argument("--out-dir", default=RESULTS)
    parser.add_argument(
        "--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "acsl_tf_compression")
    )
    parser.add_argument(
        "--baseline-store",
        default=None,
        help="a folder, e.g. on a disk that outlives --work-dir, that keeps the trained "
        "baselines (<mode>/<task>/seed<N>.keras) and is read first, so that later runs "
        "start from the same weights (default: --work-dir only)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    mcfg = MODES[args.mode]
    tasks = _csv(args.tasks) if args.tasks else list(mcfg["tasks"])
    methods = _csv(args.methods) if args.methods else list(mcfg["methods"])
    seeds = _csv(args.seeds, int) if args.seeds else list(mcfg["seeds"])
    targets = _csv(args.targets, float) if args.targets else list(mcfg["targets"])
    for name in tasks:
        if name not in mcfg["tasks"]:
            raise ValueError(
                f"Unknown task. Choose from {sorted(mcfg['tasks'])}. Received: tasks={args.tasks!r}"
            )
    for m in methods:
        if m not in METHODS and m not in SPECIAL:
            raise ValueError(
                f"Unknown method. Choose from {sorted(METHODS) + list(SPECIAL)}. "
                f"Received: methods={args.methods!r}"
            )
    for t in targets:
        if not 0.0 < t < 1.0:
            raise ValueError(f"Targets must be in (0, 1). Received: targets={args.targets!r}")
    _STOP_AT[0] = _parse_stop_at(args.stop_at) if args.stop_at else None
    if args.backfill_removable:
        _log(f"sparse_removable added to {backfill_removable(args.out_dir, args.work_dir, args.mode)} records")
    if not args.summary_only and not args.backfill_removable:
        for name in tasks:
            task_targets = list(targets)
            if not args.targets:  # the task's extra targets (pruned from the same models)
                extra = mcfg["tasks"][name].get("extra_targets", ())
                task_targets += [t for t in extra if t not in task_targets]
            for seed in seeds:
                if _past_stop():
                    break
                run_task_seed(
                    name,
                    seed,
                    mode=args.mode,
                    methods=methods,
                    targets=task_targets,
                    out_dir=args.out_dir,
                    work_dir=args.work_dir,
                    distill=mcfg["distill"] and not args.no_distill,
                    export=not args.no_export,
                    baseline_store=args.baseline_store,
                )
                if "tfmot" in methods and mcfg["tfmot"]:
                    run_tfmot(
                        name, seed, mode=args.mode, out_dir=args.out_dir, work_dir=args.work_dir
                    )
                write_summary(args.out_dir, args.mode)
    path = write_summary(args.out_dir, args.mode)
    _log(f"summary: {path}")
    if args.update_docs:
        root = os.path.dirname(HERE)
        for p in update_docs(
            args.out_dir,
            os.path.join(root, "README.md"),
            os.path.join(root, "docs", "BENCHMARKS.md"),
            mode=args.mode,
        ):
            _log(f"updated {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
