"""Classification example: prune a small VGG on Fashion-MNIST end to end.

1. train the baseline (vgg_small, SGD);
2. ACSL sparsity training with a FLOPs budget (BudgetStrength adapts the
   penalty strength until enough BatchNorm gammas are ~0);
3. shrink: physically remove the channels to meet the budget;
4. fine-tune the shrunk model (optionally distilled from the baseline);
5. export float32 and int8 TFLite files and measure their latency;
then print a table (accuracy, params, FLOPs, TFLite sizes, latency) and save
results.json and PNG plots (channels kept per layer, gamma histograms,
accuracy vs FLOPs) in --out.

Run:  python examples/classification.py --quick
Reference model:  python examples/classification.py --width 0.25 --save-reference saved_models/
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Defaults, run  # noqa: E402

DEFAULTS = Defaults(
    task="classification",
    epochs=8,
    quick_epochs=3,
    sparsity_epochs=8,
    quick_sparsity_epochs=4,
    finetune_epochs=4,
    quick_finetune_epochs=2,
    target_flops=0.5,
    lr=0.05,
    optimizer="sgd",
    sparsity_lr=0.05,
    penalty=1e-3,
    quick_penalty=1e-2,
    finetune_lr=1e-3,
)


def main(argv=None):
    return run(__doc__, DEFAULTS, argv, reference=True)


if __name__ == "__main__":
    main()
