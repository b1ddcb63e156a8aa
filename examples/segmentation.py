"""Semantic segmentation example: prune a U-Net on composite Fashion-MNIST scenes end to end.

Model: unet (Conv-BN-ReLU encoder/decoder with skip concatenations), 11 classes
(background + the 10 Fashion-MNIST classes), per-pixel labels.
Metric: mean IoU on the validation scenes (built from the Fashion-MNIST test images).

1. train the baseline (Adam);
2. ACSL sparsity training with a FLOPs budget (SGD with momentum;
   BudgetStrength adapts the penalty strength until enough BatchNorm
   gammas are ~0);
3. shrink: physically remove the channels to meet the budget;
4. fine-tune the shrunk model (optionally distilled from the baseline, --distill);
5. export float32 and int8 TFLite files and measure their latency;
then print a table (mean IoU, params, FLOPs, TFLite sizes, latency) and save
results.json and PNG plots (channels kept per layer, gamma histograms,
mean IoU vs FLOPs) in --out.

Run:  python examples/segmentation.py --quick
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Defaults, run  # noqa: E402

DEFAULTS = Defaults(
    task="segmentation",
    epochs=12,
    quick_epochs=4,
    sparsity_epochs=12,
    quick_sparsity_epochs=4,
    finetune_epochs=6,
    quick_finetune_epochs=2,
    lr=0.002,
    optimizer="adam",
    sparsity_lr=0.02,
    penalty=0.001,
    quick_penalty=0.01,
    finetune_lr=0.001,
)


def main(argv=None):
    return run(__doc__, DEFAULTS, argv)


if __name__ == "__main__":
    main()
