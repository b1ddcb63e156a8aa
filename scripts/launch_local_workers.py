"""Start N local workers of a MultiWorkerMirroredStrategy job on this machine.

    python scripts/launch_local_workers.py [--timeout S] [--quiet] 2 train.py -- --epochs 3

Every worker runs ``python <script> <args>`` with its own ``TF_CONFIG`` (a
cluster on 127.0.0.1, free ports chosen now; worker 0 is the chief). The
launcher waits for all of them; when one fails, or at ``--timeout``, it kills
every worker's process group. Each worker's output is printed afterwards,
prefixed by its index (``--quiet``: only the failing ones'). Exit status: 0
when every worker succeeded, 1 when one failed or the job timed out, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys


def _load_distributed():
    """``acsl_tf.distributed`` without ``import acsl_tf`` (which imports
    TensorFlow: the launcher itself needs no TensorFlow and stays light)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "acsl_tf", "distributed.py")
    if not os.path.isfile(path):  # an installed acsl_tf
        import acsl_tf.distributed as module

        return module
    spec = importlib.util.spec_from_file_location("_acsl_tf_distributed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _print_outputs(results, only_failed: bool) -> None:
    for r in results:
        if only_failed and r.returncode == 0:
            continue
        for stream, text in (("out", r.stdout), ("err", r.stderr)):
            for line in text.splitlines():
                print(
                    f"[worker {r.index} {stream}] {line}",
                    file=sys.stderr if stream == "err" else sys.stdout,
                )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Run a training script as N local MultiWorkerMirroredStrategy workers "
        "(TF_CONFIG on 127.0.0.1, free ports)."
    )
    p.add_argument("num_workers", type=int, help="number of worker processes (>= 1)")
    p.add_argument("script", help="the training script each worker runs")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--quiet", action="store_true", help="print only failing workers' output")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the script, untouched.
    split = argv.index("--") if "--" in argv else len(argv)
    ns = p.parse_args(argv[:split])
    args = argv[split + 1 :]
    if ns.num_workers < 1:
        p.error(f"num_workers must be >= 1, got {ns.num_workers}")
    if not os.path.isfile(ns.script):
        p.error(f"the script {ns.script!r} does not exist")
    distributed = _load_distributed()
    try:
        results = distributed.launch_local_workers(
            ns.script, ns.num_workers, args, timeout=ns.timeout
        )
    except distributed.WorkerJobError as e:
        _print_outputs(e.results, only_failed=False)
        print(f"launch_local_workers: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    _print_outputs(results, only_failed=ns.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
