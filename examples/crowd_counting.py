"""Crowd-counting example: prune a VGG16-Decoder density regressor end to end.

Model: vgg16_decoder (CSRNet-style, 1/8-resolution density map) on dense composite
scenes of many small Fashion-MNIST items (the crowd), trained with MSE on the
sum-pooled density maps.
Metric: count MAE on the validation scenes (built from the Fashion-MNIST test images).

1. train the baseline (Adam);
2. ACSL sparsity training with a FLOPs budget (SGD with momentum;
   BudgetStrength adapts the penalty strength until enough BatchNorm
   gammas are ~0);
3. shrink: physically remove the channels to meet the budget;
4. fine-tune the shrunk model (optionally distilled from the baseline, --distill);
5. export float32 and int8 TFLite files and measure their latency;
then print a table (count MAE, params, FLOPs, TFLite sizes, latency) and save
results.json and PNG plots (channels kept per layer, gamma histograms,
count MAE vs FLOPs) in --out.

Run:  python examples/crowd_counting.py --quick
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Defaults, run  # noqa: E402

DEFAULTS = Defaults(
    task="counting",
    epochs=12,
    quick_epochs=4,
    sparsity_epochs=12,
    quick_sparsity_epochs=5,
    finetune_epochs=6,
    quick_finetune_epochs=2,
    lr=0.001,
    optimizer="adam",
    sparsity_lr=0.01,
    penalty=0.001,
    quick_penalty=0.02,
    finetune_lr=0.001,
)


def main(argv=None):
    return run(__doc__, DEFAULTS, argv)


if __name__ == "__main__":
    main()
