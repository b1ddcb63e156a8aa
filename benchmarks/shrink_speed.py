"""Speed of acsl_tf's plan + shrink, side by side with Torch-Pruning.

The same architectures (keras.applications vs torchvision, random weights,
224 px), 30% of the channels removed by L1 magnitude, a fresh process for
every run (imports and model build excluded from the timing), runs of the
two tools interleaved, medians reported. acsl_tf is timed with and without
its exactness measurement (``verify``), which Torch-Pruning does not do.

Torch-Pruning runs in its own venv (``benchmarks/setup_torch_venv.sh``
creates ``.venv-torch``); without it only acsl_tf is timed.

Usage:
    python benchmarks/shrink_speed.py [--repeats 5] [--only ResNet50,MobileNetV2]
        [--out benchmarks/results/shrink_speed.md]
    python benchmarks/shrink_speed.py --worker ResNet50 224 0.3 warn   # one acsl_tf run
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


def worker(name, size, ratio, verify):
    """One acsl_tf run in this process; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    import keras

    import acsl_tf

    m = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    t = time.perf_counter()
    plan = acsl_tf.plan_shrink(m, ratio=ratio, criterion="l1")
    t_plan = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = acsl_tf.apply_plan(m, plan, verify=verify if verify != "off" else False)
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {
                "tool": f"acsl_tf (verify={verify})",
                "model": name,
                "seconds": seconds,
                "plan_seconds": t_plan,
                "params_before": m.count_params(),
                "params_after": res.model.count_params(),
                "rel_error": res.rel_error,
            }
        )
    )


def _run(cmd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
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
    ap.add_argument("--worker", nargs=4, metavar=("MODEL", "SIZE", "RATIO", "VERIFY"))
    args = ap.parse_args(argv)
    if args.worker:
        name, size, ratio, verify = args.worker
        worker(name, int(size), float(ratio), verify)
        return 0
    has_tp = TORCH_PY.exists()
    results: dict = {}
    for name in args.only.split(","):
        for r in range(args.repeats):
            cmds = {
                "acsl_tf (verify=off)": [sys.executable, __file__, "--worker", name,
                                         str(args.size), str(args.ratio), "off"],
                "acsl_tf (verify=warn)": [sys.executable, __file__, "--worker", name,
                                          str(args.size), str(args.ratio), "warn"],
            }  # fmt: skip
            if has_tp:
                cmds["Torch-Pruning"] = [
                    str(TORCH_PY), str(ROOT / "benchmarks" / "_tp_worker.py"), name,
                    str(args.size), str(args.ratio),
                ]  # fmt: skip
            for tool, cmd in cmds.items():
                row = _run(cmd)
                results.setdefault((name, tool), []).append(row)
                print(f"[{name} {r + 1}/{args.repeats}] {tool}: {row['seconds']:.2f} s", flush=True)
    lines = [
        f"{args.size} px, {int(args.ratio * 100)}% of the channels by L1 magnitude, "
        f"median of {args.repeats} fresh processes (min-max)",
        "",
        "| model | tool | seconds | params before -> after | ratio to Torch-Pruning |",
        "|---|---|---:|---|---:|",
    ]
    for name in args.only.split(","):
        tp = results.get((name, "Torch-Pruning"))
        tp_med = statistics.median(r["seconds"] for r in tp) if tp else None
        for (n, tool), rows in results.items():
            if n != name:
                continue
            secs = [r["seconds"] for r in rows]
            med = statistics.median(secs)
            ratio = f"{med / tp_med:.2f}x" if tp_med and tool != "Torch-Pruning" else ""
            lines.append(
                f"| {name} | {tool} | {med:.2f} ({min(secs):.2f}-{max(secs):.2f}) | "
                f"{rows[0]['params_before']:,} -> {rows[0]['params_after']:,} | {ratio} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from acsl_tf._io import atomic_write_text

        atomic_write_text(args.out, table + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
