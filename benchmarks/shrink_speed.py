"""Speed of acsl_tf's plan + shrink, side by side with Torch-Pruning.

The same architectures (keras.applications vs torchvision, random weights,
224 px), 30% of the channels removed by L1 magnitude, a fresh process for
every run (imports and model build excluded from the timing), runs of the
two tools interleaved, medians reported. acsl_tf is timed with and without
its exactness measurement (``verify``), which Torch-Pruning does not do, and
once as ``verify=bare``: neither the measurement nor the fold of the removed
channels' constants into the next layers (``fold_removed=False``; both need
a reference run of the original model), i.e. the work Torch-Pruning does.
A fourth row times Keras' own copy of the unpruned model
(``keras.models.clone_model`` + ``set_weights``): what building a Keras model
of that architecture costs at all, the floor of any rebuild.
For acsl_tf the CPU seconds of the same span are given too (all threads of
the process): on a loaded machine they vary less than the wall time.

Torch-Pruning runs in its own venv (``benchmarks/setup_torch_venv.sh``
creates ``.venv-torch``); without it only acsl_tf is timed.

``--baseline DIR`` also times another version of acsl_tf in the same
interleaved runs: DIR holds its ``acsl_tf`` package, e.g. an export of an
older commit (``mkdir DIR && git archive COMMIT acsl_tf | tar -x -C DIR``).
The table then gives each current run's ratio to that version, measured
side by side on the same (possibly loaded) machine.

Usage:
    python benchmarks/shrink_speed.py [--repeats 5] [--only ResNet50,MobileNetV2]
        [--baseline DIR --baseline-label 9a1b054] [--out benchmarks/results/shrink_speed.md]
    python benchmarks/shrink_speed.py --worker ResNet50 224 0.3 warn   # one acsl_tf run
        (VERIFY: warn, off, bare, or clone for the Keras copy)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_PY = ROOT / ".venv-torch" / "bin" / "python"
MODELS = ["ResNet50", "ResNet152", "MobileNetV2", "DenseNet121"]
CLONE_TOOL = "keras clone_model + set_weights (no pruning)"


def worker(name, size, ratio, verify):
    """One acsl_tf run in this process; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    import keras

    import acsl_tf

    m = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    if verify == "clone":
        return _clone_worker(m, name)
    t = time.perf_counter()
    cpu = time.process_time()
    plan = acsl_tf.plan_shrink(m, ratio=ratio, criterion="l1")
    t_plan = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = acsl_tf.apply_plan(
            m,
            plan,
            verify=verify if verify not in ("off", "bare") else False,
            fold_removed=verify != "bare",
        )
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    print(
        json.dumps(
            {
                "tool": f"acsl_tf (verify={verify})",
                "model": name,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "plan_seconds": t_plan,
                "params_before": m.count_params(),
                "params_after": res.model.count_params(),
                "rel_error": res.rel_error,
                "acsl_tf": os.path.dirname(os.path.abspath(acsl_tf.__file__)),
            }
        )
    )


def _clone_worker(m, name):
    """Keras' own copy of the unpruned model (``clone_model`` + weights): the
    cost of building a Keras model of this architecture, the floor of any
    rebuild."""
    import keras

    t = time.perf_counter()
    cpu = time.process_time()
    new = keras.models.clone_model(m)
    new.set_weights(m.get_weights())
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    print(
        json.dumps(
            {
                "tool": CLONE_TOOL,
                "model": name,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "params_before": m.count_params(),
                "params_after": new.count_params(),
            }
        )
    )


def _run(cmd, pythonpath=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if pythonpath:  # found before the installed acsl_tf
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{cmd[1:]} failed:\n{out.stderr[-2000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--out", default="")
    ap.add_argument("--baseline", default="", metavar="DIR", help="another acsl_tf to time")
    ap.add_argument("--baseline-label", default="baseline", metavar="NAME")
    ap.add_argument("--worker", nargs=4, metavar=("MODEL", "SIZE", "RATIO", "VERIFY"))
    args = ap.parse_args(argv)
    if args.worker:
        name, size, ratio, verify = args.worker
        worker(name, int(size), float(ratio), verify)
        return 0
    has_tp = TORCH_PY.exists()
    baseline = os.path.abspath(args.baseline) if args.baseline else ""
    if baseline and not os.path.isdir(os.path.join(baseline, "acsl_tf")):
        ap.error(f"--baseline needs a directory holding an acsl_tf package, got {baseline!r}")
    results: dict = {}
    for name in args.only.split(","):
        for r in range(args.repeats):
            cmds = {}
            for verify in ("bare", "off", "warn", "clone"):
                worker_cmd = [sys.executable, __file__, "--worker", name, str(args.size),
                              str(args.ratio), verify]  # fmt: skip
                tool = CLONE_TOOL if verify == "clone" else f"acsl_tf (verify={verify})"
                cmds[tool] = (worker_cmd, None)
                if verify == "clone":
                    continue
                if baseline:
                    cmds[f"acsl_tf {args.baseline_label} (verify={verify})"] = (
                        worker_cmd,
                        baseline,
                    )
            if has_tp:
                cmds["Torch-Pruning"] = ([
                    str(TORCH_PY), str(ROOT / "benchmarks" / "_tp_worker.py"), name,
                    str(args.size), str(args.ratio),
                ], None)  # fmt: skip
            for tool, (cmd, path) in cmds.items():
                row = _run(cmd, path)
                if path and not row["acsl_tf"].startswith(path):
                    raise RuntimeError(f"{tool} imported acsl_tf from {row['acsl_tf']}, not {path}")
                results.setdefault((name, tool), []).append(row)
                print(f"[{name} {r + 1}/{args.repeats}] {tool}: {row['seconds']:.2f} s", flush=True)
    lines = [
        f"{args.size} px, {int(args.ratio * 100)}% of the channels by L1 magnitude, "
        f"median of {args.repeats} fresh processes (min-max)",
        "",
        "| model | tool | seconds | CPU seconds | params before -> after | ratio to Torch-Pruning "
        "| ratio to Keras' copy |" + (f" ratio to {args.baseline_label} |" if baseline else ""),
        "|---|---|---:|---:|---|---:|---:|" + ("---:|" if baseline else ""),
    ]

    def median_of(name, tool):
        rows = results.get((name, tool))
        return statistics.median(r["seconds"] for r in rows) if rows else None

    for name in args.only.split(","):
        tp_med = median_of(name, "Torch-Pruning")
        clone_med = median_of(name, CLONE_TOOL)
        for (n, tool), rows in results.items():
            if n != name:
                continue
            secs = [r["seconds"] for r in rows]
            med = statistics.median(secs)
            ratio = f"{med / tp_med:.2f}x" if tp_med and tool != "Torch-Pruning" else ""
            to_clone = f"{med / clone_med:.2f}x" if clone_med and tool.startswith("acsl_tf") else ""
            cpus = [r["cpu_seconds"] for r in rows if "cpu_seconds" in r]
            cpu = f"{statistics.median(cpus):.2f}" if cpus else ""
            line = (
                f"| {name} | {tool} | {med:.2f} ({min(secs):.2f}-{max(secs):.2f}) | {cpu} | "
                f"{rows[0]['params_before']:,} -> {rows[0]['params_after']:,} | {ratio} | "
                f"{to_clone} |"
            )
            if baseline:
                base = None
                if tool.startswith("acsl_tf (verify="):
                    base = median_of(
                        name, tool.replace("acsl_tf", f"acsl_tf {args.baseline_label}")
                    )
                line += f" {med / base:.2f}x |" if base else " |"
            lines.append(line)
    table = "\n".join(lines)
    print(table)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from acsl_tf._io import atomic_write_text

        atomic_write_text(args.out, table + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
