"""Torch-Pruning side of benchmarks/shrink_speed.py (runs in its own venv).

Builds a torchvision model with random weights, prunes 30% of the channels
of every prunable layer with magnitude (L1) importance and prints one JSON
line with the wall seconds of the dependency analysis + pruning (the model
build is excluded), and the parameter counts.

Usage (from benchmarks/shrink_speed.py):
    .venv-torch/bin/python benchmarks/_tp_worker.py ResNet50 224 0.3
"""

from __future__ import annotations

import json
import os
import sys
import time


def _import_torchvision():
    import torch

    # PyPI's torchvision is built against another torch; the classification
    # models never call its compiled ops, so the two op schemas it checks for
    # at import are declared here.
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError):
        lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - keep alive
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_torchvision.lib = lib
        import torchvision  # noqa: F401
    import torchvision.models as tvm

    return tvm


NAMES = {
    "ResNet50": "resnet50",
    "ResNet152": "resnet152",
    "MobileNetV2": "mobilenet_v2",
    "DenseNet121": "densenet121",
}


def main(argv):
    name, size, ratio = argv[0], int(argv[1]), float(argv[2])
    import torch
    import torch_pruning as tp

    torch.set_num_threads(int(os.environ.get("TP_THREADS", "1")))
    tvm = _import_torchvision()
    model = getattr(tvm, NAMES[name])(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    before = sum(p.numel() for p in model.parameters())
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    seconds = time.perf_counter() - t
    after = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        shape = tuple(model(x).shape)
    print(
        json.dumps(
            {
                "tool": "torch_pruning",
                "model": name,
                "seconds": seconds,
                "params_before": before,
                "params_after": after,
                "output_shape": shape,
                "version": tp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
