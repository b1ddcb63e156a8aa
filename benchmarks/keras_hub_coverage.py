"""acsl_tf on keras-hub backbones: model code written elsewhere.

Builds keras-hub vision backbones from explicit configs (random weights, no
presets; BN statistics randomised), prunes 30% of the channels (gamma where
BatchNorm gammas cover groups, with gamma = beta = 0 on the removed channels;
l1 otherwise), and records what the dependency
graph makes of them: prunable groups, layers without a handler (kept), the
plan's analytic counts against the built model, and the deviation `apply_plan`
measures against the original with the removed channels silenced.

keras-hub pulls the full `tensorflow` wheel (through tensorflow-text), so it
runs in its own venv:

    python3 -m venv .venv-hub
    .venv-hub/bin/pip install keras-hub tensorflow-cpu==2.21.0
    .venv-hub/bin/pip install --no-deps -e .
    .venv-hub/bin/python benchmarks/keras_hub_coverage.py --out benchmarks/results/keras_hub_coverage.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

# the same randomised statistics and zeroing as the keras.applications coverage
from applications_coverage import randomize_bn, zero_removed  # noqa: E402

SIZE = 64


def _resnet(block_type="basic_block", pre=False):
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64],
        stackwise_num_blocks=[2, 2, 2],
        stackwise_num_strides=[1, 2, 2],
        block_type=block_type,
        use_pre_activation=pre,
        image_shape=(SIZE, SIZE, 3),
    )


def _mobilenet_v3():
    import keras_hub

    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144, 144], [72, 72], [144, 288, 288]],
        stackwise_num_blocks=[2, 3, 2, 3],
        stackwise_num_filters=[[16, 16], [24, 24, 24], [24, 24], [48, 48, 48]],
        stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25], [0.3, 0.3], [0.3, 0.25, 0.25]],
        stackwise_activation=[
            ["relu", "relu"],
            ["hard_swish", "hard_swish", "hard_swish"],
            ["hard_swish", "hard_swish"],
            ["hard_swish", "hard_swish", "hard_swish"],
        ],
        stackwise_padding=[[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
        output_num_filters=288,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=288,
        squeeze_and_excite=0.5,
        input_activation="hard_swish",
        output_activation="hard_swish",
        input_num_filters=16,
        image_shape=(SIZE, SIZE, 3),
    )


def _densenet():
    import keras_hub

    return keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[2, 3, 2], growth_rate=8, image_shape=(SIZE, SIZE, 3)
    )


def _vgg():
    import keras_hub

    return keras_hub.models.VGGBackbone(
        stackwise_num_repeats=[2, 2, 3], stackwise_num_filters=[16, 32, 64],
        image_shape=(SIZE, SIZE, 3),
    )  # fmt: skip


def _xception():
    import keras_hub

    return keras_hub.models.XceptionBackbone(
        stackwise_conv_filters=[[32, 64], [64, 128], [256, 256]],
        stackwise_pooling=[True, True, False],
        image_shape=(SIZE, SIZE, 3),
    )


def _cspnet():
    import keras_hub

    return keras_hub.models.CSPNetBackbone(
        stem_filters=32,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 2, 2],
        stackwise_strides=[1, 2, 2],
        stackwise_num_filters=[32, 64, 128],
        block_type="dark_block",
        stage_type="dark",
        image_shape=(SIZE, SIZE, 3),
    )


def _basnet():
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32, 32, 32],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )
    return keras_hub.models.BASNetBackbone(
        image_encoder=encoder, num_classes=1, image_shape=(SIZE, SIZE, 3), projection_filters=64
    )


def _deeplab():
    import keras_hub

    encoder = _resnet()
    return keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P4",
        upsampling_size=4,
        dilation_rates=[2, 4],
        low_level_feature_key="P2",
        projection_filters=16,
        image_shape=(SIZE, SIZE, 3),
    )


MODELS = {
    "ResNet (basic)": _resnet,
    "ResNet (bottleneck)": lambda: _resnet("bottleneck_block"),
    "ResNetV2 (pre-activation)": lambda: _resnet("basic_block", True),
    "MobileNetV3": _mobilenet_v3,
    "DenseNet": _densenet,
    "VGG": _vgg,
    "Xception": _xception,
    "CSPDarkNet": _cspnet,
    "BASNet": _basnet,
    "DeepLabV3": _deeplab,
}


def run_one(name, build):
    import acsl_tf

    keras.utils.clear_session()
    model = build()
    randomize_bn(model)
    graph = acsl_tf.DependencyGraph(model)
    criterion = "gamma" if any(g.covered for g in graph.groups.values() if g.prunable) else "l1"
    plan = acsl_tf.plan_shrink(model, ratio=0.3, criterion=criterion, graph=graph)
    zero_removed(plan)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = acsl_tf.apply_plan(model, plan)
    seconds = time.perf_counter() - t
    prof = acsl_tf.profile(res.model)
    return {
        "model": name,
        "criterion": criterion,
        "groups": f"{sum(g.prunable for g in plan.groups)}/{len(plan.groups)}",
        "unknown": sorted({type(op).__name__ for op in graph.unknown}),
        "params": (plan.params_before, plan.params_after),
        "flops_red": plan.flops_reduction,
        "analytic_ok": prof.total_params == plan.params_after
        and prof.total_flops == plan.flops_after,
        "exact": res.exact,
        "rel_error": res.rel_error,
        "notes": len(res.approximations),
        "seconds": seconds,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    lines = [
        f"keras-hub backbones from explicit configs, {SIZE} px, random weights, "
        "ratio 0.3 (gamma where covered, else l1)",
        "",
        "| backbone | criterion | prunable groups | layers without a handler (kept) | "
        "params before -> after | FLOPs removed | analytic = built | exactness | s |",
        "|---|---|---|---|---|---:|---|---|---:|",
    ]
    for name, build in MODELS.items():
        if only and name not in only:
            continue
        try:
            r = run_one(name, build)
        except Exception as e:  # record and continue
            traceback.print_exc()
            lines.append(f"| {name} | FAILED: {type(e).__name__}: {str(e)[:160]} ||||||||")
            print(lines[-1], flush=True)
            continue
        kind = "exact" if r["exact"] else f"approximate, {r['notes']} places reported"
        lines.append(
            f"| {name} | {r['criterion']} | {r['groups']} | {', '.join(r['unknown']) or '-'} | "
            f"{r['params'][0]:,} -> {r['params'][1]:,} | {100 * r['flops_red']:.1f}% | "
            f"{'yes' if r['analytic_ok'] else 'NO'} | {kind} ({r['rel_error']:.1e}) | "
            f"{r['seconds']:.1f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(args.out, table + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
