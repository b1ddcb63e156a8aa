"""The ``acsl-tf`` command line: profile, shrink, export and benchmark saved models.

Run it as ``acsl-tf COMMAND ...`` or ``python -m acsl_tf COMMAND ...``:

- ``profile MODEL.keras``: parameters, FLOPs, a per-layer table and the channel
  groups (which are prunable, and why the others are fixed).
- ``shrink MODEL.keras --target-flops 0.5 -o OUT.keras``: remove channels and
  print the per-layer report; ``--save-plan`` / ``--plan`` save or apply a plan;
  ``--recalibrate DATA.npy`` re-estimates the BatchNorm statistics afterwards.
- ``export MODEL.keras --format tflite|c|onnx -o OUT``: a verified TFLite,
  TFLite Micro C source or ONNX artifact.
- ``bench MODEL.tflite [OTHER.tflite]``: interpreter latency, or the speed-up of
  one model over another.

Exit codes: 0 success, 1 error (a one-line message on stderr; ``--debug`` adds
the traceback), 2 usage error. Progress lines go to stderr (``--quiet`` drops
them); ``--json`` prints one JSON document on stdout instead of text. See
docs/CLI.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
import warnings

PROG = "acsl-tf"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
FORMATS = ("tflite", "c", "onnx")

_MAIN_EPILOG = """\
examples:
  acsl-tf profile model.keras
  acsl-tf shrink model.keras --target-flops 0.5 -o small.keras
  acsl-tf export small.keras --format tflite --quantization int8 --data calib.npy -o small.tflite
  acsl-tf bench small.tflite
  python -m acsl_tf profile model.keras --json

exit codes: 0 success, 1 error (one line on stderr; --debug for the traceback), 2 usage error.
"""

_PROFILE_EPILOG = """\
examples:
  acsl-tf profile model.keras
  acsl-tf profile model.keras --max-rows 20
  acsl-tf profile model.keras --json > profile.json
"""

_SHRINK_EPILOG = """\
Give exactly one of --target-flops, --target-params, --ratio, --threshold, or --plan.

examples:
  acsl-tf shrink model.keras --target-flops 0.5 -o small.keras
  acsl-tf shrink model.keras --ratio 0.3 --criterion l1 --round-to 8 -o small.keras
  acsl-tf shrink model.keras --threshold 0.05 --save-plan plan.json        # plan only
  acsl-tf shrink model.keras --plan plan.json -o small.keras               # apply a plan
  acsl-tf shrink model.keras --target-flops 0.5 --recalibrate x.npy -o small.keras

--recalibrate takes a .npy file (or a .npz with one array, or an array named "x") of
preprocessed model inputs, shape (N,) + input shape: the BatchNorm moving statistics of
the shrunk model are re-estimated on them (batches of 128, --recalibrate-steps of them).
"""

_EXPORT_EPILOG = """\
examples:
  acsl-tf export small.keras -o small.tflite
  acsl-tf export small.keras --quantization int8 --data calib.npy -o small_int8.tflite
  acsl-tf export small.keras --format c --quantization int8 --data calib.npy -o firmware/src
  acsl-tf export small.keras --format onnx -o small.onnx

--data is a .npy file (or a .npz with one array, or an array named "x") of
preprocessed model inputs, shape (N,) + input shape. int8 needs it for
calibration; every format uses it for the parity check (random inputs without it).
"""

_BENCH_EPILOG = """\
examples:
  acsl-tf bench small.tflite
  acsl-tf bench small.tflite --threads 4 --runs 500
  acsl-tf bench model.tflite small.tflite      # speed-up of the second over the first
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks."""


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer>={minimum}"
    return parse


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """``--quiet``, ``--json`` and ``--debug``, accepted before and after the command.

    On the subcommands the defaults are suppressed, so an option given before the
    command is not reset by the subcommand's default.
    """
    default = argparse.SUPPRESS if suppress else False
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="no progress lines on stderr"
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="print one JSON document on stdout instead of text",
    )
    g.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of an error"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``acsl-tf`` argument parser (no TensorFlow work happens while parsing).

    Returns:
        An ``argparse.ArgumentParser`` whose parsed namespace has ``command`` and
        ``func`` (the handler) set for every subcommand.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Profile, shrink, export and benchmark Keras models with acsl_tf.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options(suppress=True)

    p = sub.add_parser(
        "profile",
        help="parameters, FLOPs, per-layer table and prunable channel groups",
        description="Count parameters, MACs and FLOPs (batch size 1) layer by layer, and list "
        "the channel groups: which can be pruned, and why the others are fixed.",
        epilog=_PROFILE_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    _add_model_argument(p)
    p.add_argument(
        "--max-rows",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="show at most N layers in the table (default: all)",
    )
    p.set_defaults(func=_cmd_profile, subparser=p)

    p = sub.add_parser(
        "shrink",
        help="remove channels and save a smaller model",
        description="Remove the lowest-scoring channels of a saved model (plain or wrapped with "
        "acsl_tf.prune_low_correlation) and save the smaller model.",
        epilog=_SHRINK_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    _add_model_argument(p)
    sel = p.add_argument_group("selection (exactly one, or --plan)")
    sel.add_argument(
        "--target-flops",
        type=_fraction,
        metavar="F",
        help="fraction of the FLOPs to remove, e.g. 0.5",
    )
    sel.add_argument(
        "--target-params",
        type=_fraction,
        metavar="F",
        help="fraction of the parameters to remove",
    )
    sel.add_argument(
        "--ratio", type=_fraction, metavar="F", help="fraction of the prunable channels to remove"
    )
    sel.add_argument(
        "--threshold",
        type=_non_negative,
        metavar="T",
        help="remove channels whose score (|gamma| for the gamma criterion) is below T",
    )
    sel.add_argument("--plan", metavar="PLAN.json", help="apply a plan saved with --save-plan")
    opt = p.add_argument_group("planning")
    opt.add_argument(
        "--criterion",
        default="gamma",
        metavar="NAME",
        help="channel score: gamma, l1, l2, fpgm, l1_layer, fpgm_layer, random, cap, or a "
        "registered criterion (default: gamma; models without BatchNorm need a weight "
        "criterion such as l1_layer)",
    )
    opt.add_argument(
        "--min-channels",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="channels every group keeps (default: 1)",
    )
    opt.add_argument(
        "--max-fraction",
        type=float,
        default=None,
        metavar="F",
        help="remove at most this fraction (0..1] of any layer's channels, e.g. 0.9 keeps "
        "10%% of every layer (default: no cap beyond --min-channels)",
    )
    opt.add_argument(
        "--round-to",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="round kept channel counts up to a multiple of N (default: 1; 8 suits most "
        "accelerators)",
    )
    opt.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="LAYER",
        help="keep all channels of this layer (repeatable; with --plan, repeat the ones the "
        "plan was made with)",
    )
    opt.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the random criterion (default: 0)"
    )
    opt.add_argument(
        "--no-fold",
        action="store_true",
        help="do not fold the constant output of removed channels into the next bias",
    )
    rec = p.add_argument_group("BatchNorm statistics")
    rec.add_argument(
        "--recalibrate",
        metavar="DATA.npy",
        help="re-estimate the BatchNorm moving statistics of the shrunk model on these "
        "preprocessed inputs (after the exactness check)",
    )
    rec.add_argument(
        "--recalibrate-steps",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="batches of 128 inputs used by --recalibrate (default: 20)",
    )
    out = p.add_argument_group("files")
    out.add_argument("-o", "--output", metavar="OUT.keras", help="where to save the small model")
    out.add_argument("--save-plan", metavar="PLAN.json", help="also save the plan as JSON")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_shrink, subparser=p)

    p = sub.add_parser(
        "export",
        help="write a verified TFLite, TFLite Micro C source or ONNX file",
        description="Convert a saved model, run the artifact on sample inputs and compare it "
        "with Keras; nothing is written when the outputs differ beyond the tolerance.",
        epilog=_EXPORT_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    _add_model_argument(p)
    p.add_argument(
        "--format", choices=FORMATS, default="tflite", help="artifact format (default: tflite)"
    )
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="TFLite quantization, for the tflite and c formats (default: none)",
    )
    p.add_argument("--data", metavar="DATA.npy", help="sample inputs: calibration and parity check")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (.tflite, .onnx), or the output directory for --format c",
    )
    p.add_argument(
        "--name",
        default=None,
        help="C identifier of the arrays and file names for --format c "
        "(default: from the model's file name)",
    )
    p.add_argument(
        "--float-io",
        action="store_true",
        help="int8: keep float32 inputs and outputs (quantize/dequantize at the edges)",
    )
    p.add_argument(
        "--opset", type=_int_at_least(7), default=17, metavar="N", help="ONNX opset (default: 17)"
    )
    p.add_argument(
        "--tolerance",
        type=_non_negative,
        default=None,
        metavar="TOL",
        help="relative parity tolerance (default: the mode's, see docs/EXPORT.md)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_export, subparser=p)

    p = sub.add_parser(
        "bench",
        help="TFLite interpreter latency (or the speed-up of a second model)",
        description="Time single-sample invoke() calls with the LiteRT interpreter (XNNPACK) on "
        "random inputs. With two models, time them interleaved and report how many times "
        "faster the second is.",
        epilog=_BENCH_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    p.add_argument("tflite", nargs="+", metavar="MODEL.tflite", help="one or two .tflite files")
    p.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="interpreter threads (default: 1)",
    )
    p.add_argument(
        "--runs",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="timed invokes (default: 100; with two models 50 per round)",
    )
    p.add_argument(
        "--warmup",
        type=_int_at_least(0),
        default=10,
        metavar="N",
        help="untimed invokes first (default: 10)",
    )
    p.add_argument(
        "--rounds",
        type=_int_at_least(1),
        default=10,
        metavar="N",
        help="interleaved rounds with two models (default: 10)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: latency as a user sees it (default); cpu: CPU time of the calling "
        "thread, steadier on a loaded machine (--threads 1 only)",
    )
    p.set_defaults(func=_cmd_bench, subparser=p)
    return parser


def _add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a saved Keras model (.keras)")
    p.add_argument(
        "--unsafe-deserialization",
        action="store_true",
        help="allow Python lambdas in the model file (Keras safe_mode=False); only for files "
        "you trust",
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("acsl_tf")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "unknown"


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the combinations argparse cannot express; usage errors exit with 2.

    Args:
        parser: The parser from :func:`build_parser` (for its ``error``).
        args: The parsed namespace.
    """
    sub = getattr(args, "subparser", parser)
    if args.command == "shrink":
        chosen = [
            f"--{k.replace('_', '-')}"
            for k in ("target_flops", "target_params", "ratio", "threshold", "plan")
            if getattr(args, k) is not None
        ]
        if len(chosen) != 1:
            sub.error(
                "give exactly one of --target-flops, --target-params, --ratio, --threshold, "
                f"--plan (got {', '.join(chosen) or 'none'})"
            )
        if args.plan is not None:
            planning = {
                "--criterion": args.criterion != "gamma",
                "--min-channels": args.min_channels != 1,
                "--max-fraction": args.max_fraction is not None,
                "--round-to": args.round_to != 1,
                "--seed": args.seed != 0,
                "--save-plan": args.save_plan is not None,
            }
            bad = [k for k, v in planning.items() if v]
            if bad:
                sub.error(f"--plan already fixes the channels; drop {', '.join(bad)}")
        if args.output is None and args.save_plan is None:
            sub.error("give -o OUT.keras (or --save-plan PLAN.json to only plan)")
        if args.recalibrate_steps is not None and args.recalibrate is None:
            sub.error("--recalibrate-steps needs --recalibrate DATA.npy")
        if args.recalibrate is not None and args.output is None:
            sub.error("--recalibrate applies to the shrunk model: give -o OUT.keras")
        if args.output is not None and not args.output.endswith(".keras"):
            sub.error(f"the output must end in .keras, got {args.output!r}")
    elif args.command == "export":
        if args.format == "onnx" and args.quantization != "none":
            sub.error("--quantization applies to --format tflite and c, not onnx")
        if args.float_io and args.quantization != "int8":
            sub.error("--float-io applies to --quantization int8 only")
        if args.quantization == "int8" and args.data is None:
            sub.error("--quantization int8 needs --data (about 100-500 preprocessed inputs)")
        if args.format != "c" and args.name is not None:
            sub.error("--name applies to --format c only")
        if args.format == "onnx" and args.float_io:
            sub.error("--float-io applies to TFLite formats only")
    elif args.command == "bench":
        if len(args.tflite) > 2:
            sub.error(f"give one or two .tflite files, got {len(args.tflite)}")
        if args.clock == "cpu" and args.threads != 1:
            sub.error("--clock cpu times the calling thread: use it with --threads 1")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


class _Progress:
    """Progress lines on stderr, prefixed with the elapsed time."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def _emit(args, text: str, data: dict) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=_json_default))
    else:
        print(text)


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split()) or repr(err)
    return f"{type(err).__name__}: {message}"


def _check_output(path: str, overwrite: bool, option: str = "output") -> None:
    """Fail before any slow work when an output file cannot be written."""
    from acsl_tf import _io

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"The {option} file already exists. Pass --overwrite to replace it. "
            f"Received: {option}={path!r}"
        )
    _io.check_writable(path, overwrite=True)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, without the source location (``--debug`` keeps it)."""
    return f"{PROG}: {category.__name__}: {' '.join(str(message).split())}\n"


def _quiet_tensorflow() -> None:
    """Lower TensorFlow's and absl's Python loggers to errors."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _load_model(args, progress):
    import keras

    path = args.model
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "missing"
        raise FileNotFoundError(
            f"The model file is {kind}. Pass the path of a model saved with "
            f"model.save('model.keras'). Received: model={path!r}"
        )
    progress(f"loading {path}")
    try:
        return keras.models.load_model(
            path, compile=False, safe_mode=not args.unsafe_deserialization
        )
    except ValueError as err:
        if "safe_mode" not in str(err):
            raise
        raise ValueError(
            f"{err} On the command line, pass --unsafe-deserialization if you trust the file. "
            f"Received: model={path!r}"
        ) from err


def _group_rows(groups) -> list[dict]:
    rows = []
    for g in groups:
        rows.append(
            {
                "id": int(g.id),
                "size": int(g.size),
                "prunable": bool(g.prunable),
                "reason": g.reason,
                "units": list(g.units),
                "members": [[str(m[0]), str(m[1])] for m in g.members],
            }
        )
    return rows


def _groups_text(rows: list[dict]) -> str:
    prunable = [r for r in rows if r["prunable"]]
    fixed = [r for r in rows if not r["prunable"]]
    lines = [
        f"channel groups: {len(rows)} ({len(prunable)} prunable with "
        f"{sum(r['size'] for r in prunable):,} channels; {len(fixed)} fixed with "
        f"{sum(r['size'] for r in fixed):,} channels)"
    ]
    if not rows:
        return lines[0]
    head = f"{'group':>5}  {'channels':>8}  {'prunable':<8}  layers"
    lines += [head, "-" * len(head)]
    for r in rows:
        names = list(dict.fromkeys(m[0] for m in r["members"]))
        shown = ", ".join(names[:5]) + (f", +{len(names) - 5} more" if len(names) > 5 else "")
        flag = "yes" if r["prunable"] else "no"
        lines.append(f"{r['id']:>5}  {r['size']:>8,}  {flag:<8}  {shown}")
        if not r["prunable"] and r["reason"]:
            lines.append(f"{'':>5}  {'':>8}  {'':<8}  fixed: {r['reason']}")
    return "\n".join(lines)


def _cmd_profile(args, progress) -> int:
    import acsl_tf

    model = _load_model(args, progress)
    progress("counting parameters and FLOPs")
    prof = acsl_tf.profile(model)
    progress("analysing channel groups")
    groups_error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = acsl_tf.plan_shrink(model, ratio=0.0)
        rows = _group_rows(plan.groups)
    except ValueError as err:  # e.g. a layer the graph rewriter does not support
        rows, groups_error = [], " ".join(str(err).split())
    layers = [
        {
            "name": r.name,
            "class": r.cls,
            "output_shape": [None if d is None else int(d) for d in r.output_shape],
            "params": int(r.params),
            "macs": int(r.macs),
            "flops": int(r.flops),
        }
        for r in prof.layers
    ]
    data = {
        "model": args.model,
        "params": int(prof.total_params),
        "macs": int(prof.total_macs),
        "flops": int(prof.total_flops),
        "layers": layers,
        "groups": rows,
        "groups_error": groups_error,
    }
    text = [
        f"model:  {args.model}",
        f"params: {prof.total_params:,}",
        f"MACs:   {prof.total_macs:,}",
        f"FLOPs:  {prof.total_flops:,}",
        "",
        prof.summary(max_rows=args.max_rows),
    ]
    if args.max_rows is not None and len(prof.layers) > args.max_rows:
        text.append(f"({len(prof.layers) - args.max_rows} more layers; drop --max-rows)")
    text.append("")
    if groups_error is None:
        text.append(_groups_text(rows))
    else:
        text.append(f"channel groups: not available ({groups_error})")
    _emit(args, "\n".join(text), data)
    return EXIT_OK


def _cmd_shrink(args, progress) -> int:
    import acsl_tf
    from acsl_tf import _io

    if args.output is not None:
        _check_output(args.output, args.overwrite)
    if args.save_plan is not None:
        _check_output(args.save_plan, args.overwrite, option="save_plan")
    if args.plan is not None and not os.path.isfile(args.plan):
        raise FileNotFoundError(
            f"The plan file does not exist. Save one with --save-plan. Received: plan={args.plan!r}"
        )
    recal = None
    steps = 20 if args.recalibrate_steps is None else args.recalibrate_steps
    if args.recalibrate is not None:
        if not os.path.isfile(args.recalibrate):
            raise FileNotFoundError(
                "The recalibration data file does not exist. Save preprocessed inputs with "
                f"numpy.save('x.npy', x). Received: recalibrate={args.recalibrate!r}"
            )
        recal = _load_data(args.recalibrate, option="recalibrate")
    model = _load_model(args, progress)
    if recal is not None:
        from acsl_tf.pruning.apply import _check_recalibration

        _check_recalibration(model, recal, steps, 128)  # before any slow work
    if args.plan is not None:
        progress(f"loading the plan {args.plan}")
        plan = acsl_tf.ShrinkPlan.load(args.plan)
    else:
        selection = {
            k: getattr(args, k)
            for k in ("target_flops", "target_params", "ratio", "threshold")
            if getattr(args, k) is not None
        }
        progress(f"planning ({', '.join(f'{k}={v}' for k, v in selection.items())})")
        plan = acsl_tf.plan_shrink(
            model,
            criterion=args.criterion,
            min_channels=args.min_channels,
            max_fraction=args.max_fraction,
            round_to=args.round_to,
            ignored_layers=tuple(args.ignore),
            seed=args.seed,
            **selection,
        )
        if args.save_plan is not None:
            progress(f"saving the plan to {args.save_plan}")
            _save_plan(plan, args.save_plan, args.overwrite)
    data = {
        "model": args.model,
        "output": None,
        "plan": args.save_plan or args.plan,
        "criterion": getattr(plan, "criterion", None),
        "channels_before": _int_or_none(getattr(plan, "channels_before", None)),
        "channels_removed": _int_or_none(getattr(plan, "channels_removed", None)),
        "params_before": _int_or_none(getattr(plan, "params_before", None)),
        "params_after": _int_or_none(getattr(plan, "params_after", None)),
        "flops_before": _int_or_none(getattr(plan, "flops_before", None)),
        "flops_after": _int_or_none(getattr(plan, "flops_after", None)),
        "params_reduction": None,
        "flops_reduction": None,
        "recalibrate": args.recalibrate,
        "recalibrated_batches": 0,
        "layers": [],
    }
    if data["params_before"] is not None:
        data["params_reduction"] = float(plan.params_reduction)
        data["flops_reduction"] = float(plan.flops_reduction)
    if args.output is None:
        _emit(args, plan.summary(), data)
        return EXIT_OK
    progress(
        "shrinking" if recal is None else "shrinking, then re-estimating the BatchNorm statistics"
    )
    res = acsl_tf.apply_plan(
        model,
        plan,
        fold_removed=not args.no_fold,
        ignored_layers=tuple(args.ignore),
        recalibrate=recal,
        recalibrate_steps=steps,
    )
    small = res.model
    progress(f"saving {args.output}")
    with _io.atomic_path(args.output, overwrite=args.overwrite, suffix=".keras") as tmp:
        small.save(tmp)
    report = acsl_tf.shrink_report(model, small)
    data.update(
        output=args.output,
        recalibrated_batches=int(res.recalibrated_batches),
        params_before=int(report.params_before),
        params_after=int(report.params_after),
        flops_before=int(report.flops_before),
        flops_after=int(report.flops_after),
        params_reduction=1.0 - report.params_after / max(report.params_before, 1),
        flops_reduction=1.0 - report.flops_after / max(report.flops_before, 1),
        layers=[
            {
                "name": r.name,
                "class": r.cls,
                "channels_before": r.channels_before,
                "channels_after": r.channels_after,
                "params_before": int(r.params_before),
                "params_after": int(r.params_after),
                "flops_before": int(r.flops_before),
                "flops_after": int(r.flops_after),
            }
            for r in report.rows
        ],
    )
    if args.plan is None:
        done = (
            f"{plan.channels_removed}/{plan.channels_before} prunable channels removed "
            f"(criterion {plan.criterion!r}); "
        )
    else:
        done = f"applied the plan {args.plan}; "
    if recal is not None:
        done += (
            f"BatchNorm statistics re-estimated on {res.recalibrated_batches} batch(es) of "
            f"{args.recalibrate}; "
        )
    text = f"{report.summary()}\n{done}saved {args.output}"
    _emit(args, text, data)
    return EXIT_OK


def _int_or_none(value):
    return None if value is None else int(value)


def _save_plan(plan, path: str, overwrite: bool) -> None:
    """``plan.save(path)``, replacing an existing file when ``overwrite`` (atomically:
    saved next to it, then renamed over it)."""
    if not (overwrite and os.path.exists(path)):
        plan.save(path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix=".acsl_tf-plan-", dir=parent) as tmp:
        staged = os.path.join(tmp, os.path.basename(path))
        plan.save(staged)
        os.replace(staged, path)


def _load_data(path: str, option: str = "data"):
    """Inputs from a .npy file or a .npz holding one array (or one named
    ``x``); ``option`` names the command-line option in error messages."""
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The data file does not exist. Save inputs with numpy.save('calib.npy', x). "
            f"Received: {option}={path!r}"
        )
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            if len(keys) == 1:
                return loaded[keys[0]]
            if "x" in keys:
                return loaded["x"]
        raise ValueError(
            "A .npz data file must hold one array or an array named 'x'. "
            f"Received: {option}={path!r} with arrays {keys}"
        )
    return loaded


def _c_name(args) -> str:
    if args.name is not None:
        return args.name
    stem = os.path.splitext(os.path.basename(args.model))[0]
    name = re.sub(r"\W", "_", stem) or "model"
    return name if not name[0].isdigit() else f"model_{name}"


def _cmd_export(args, progress) -> int:
    import acsl_tf

    if args.format == "c":
        name = _c_name(args)
        if not os.path.isdir(args.output) and os.path.exists(args.output):
            raise NotADirectoryError(
                "--format c writes <name>.h and <name>.cc into a directory, and the output is a "
                f"file. Pass a directory. Received: output={args.output!r}"
            )
        for ext in (".h", ".cc"):
            target = os.path.join(args.output, name + ext)
            if os.path.exists(target) and not args.overwrite:
                raise FileExistsError(
                    f"{target!r} already exists. Pass --overwrite to replace it, or choose "
                    f"another --name. Received: output={args.output!r}, name={name!r}"
                )
    else:
        _check_output(args.output, args.overwrite)
    data = _load_data(args.data) if args.data is not None else None
    model = _load_model(args, progress)
    if args.format == "onnx":
        progress("converting to ONNX" + ("" if args.no_verify else " and checking it"))
        report = acsl_tf.export.to_onnx(
            model,
            args.output,
            opset=args.opset,
            verify=not args.no_verify,
            overwrite=args.overwrite,
            sample_data=data,
            tolerance=args.tolerance,
        )
        _emit(args, f"{report.summary()}\nsaved {args.output}", report.to_dict())
        return EXIT_OK
    kwargs = dict(
        quantization=args.quantization,
        representative_data=data,
        int8_io=not args.float_io,
        verify=not args.no_verify,
        tolerance=args.tolerance,
    )
    progress(
        f"converting to TFLite (quantization={args.quantization})"
        + ("" if args.no_verify else " and checking it")
    )
    if args.format == "tflite":
        report = acsl_tf.export.to_tflite(model, args.output, overwrite=args.overwrite, **kwargs)
        _emit(args, f"{report.summary()}\nsaved {args.output}", report.to_dict())
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="acsl_tf-cli-") as tmp:
        tflite_path = os.path.join(tmp, f"{name}.tflite")
        report = acsl_tf.export.to_tflite(model, tflite_path, **kwargs)
        progress(f"writing C source {name}.h / {name}.cc to {args.output}")
        os.makedirs(args.output, exist_ok=True)
        paths = acsl_tf.export.to_c_source(
            tflite_path, args.output, name=name, overwrite=args.overwrite
        )
    header, source = (str(p) for p in paths)
    result = report.to_dict()
    result.update(path=None, format="c", header=header, source=source, name=name)
    _emit(args, f"{report.summary()}\nsaved {header}\nsaved {source}", result)
    return EXIT_OK


def _cmd_bench(args, progress) -> int:
    import acsl_tf

    for path in args.tflite:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"The TFLite file does not exist. Received: tflite={path!r}")
    if len(args.tflite) == 1:
        runs = 100 if args.runs is None else args.runs
        progress(f"timing {runs} invokes of {args.tflite[0]} ({args.threads} thread(s))")
        stats = acsl_tf.benchmark_tflite(
            args.tflite[0], threads=args.threads, runs=runs, warmup=args.warmup, clock=args.clock
        )
        data = {"model": args.tflite[0], **stats.to_dict()}
        _emit(args, f"{args.tflite[0]}: {stats}", data)
        return EXIT_OK
    runs = 50 if args.runs is None else args.runs
    a, b = args.tflite
    progress(f"timing {a} against {b}: {args.rounds} rounds of {runs} invokes")
    cmp = acsl_tf.compare_tflite(
        a,
        b,
        threads=args.threads,
        runs=runs,
        rounds=args.rounds,
        warmup=args.warmup,
        clock=args.clock,
    )
    data = {"model_a": a, "model_b": b, **cmp.to_dict()}
    _emit(args, f"A = {a}\nB = {b}\n{cmp}", data)
    return EXIT_OK


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 error, 2 usage error (argparse exits with 2
        itself on a malformed command line).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    validate(parser, args)
    progress = _Progress(quiet=args.quiet)
    if args.quiet:
        _quiet_tensorflow()
    formatwarning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _format_warning
    try:
        return args.func(args, progress)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early, e.g. piped into `head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - the CLI reports every error in one line
        if args.debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        warnings.formatwarning = formatwarning
