#!/usr/bin/env bash
# Create .venv-torch with CPU PyTorch, Torch-Pruning and torchvision, for the
# side-by-side comparison in benchmarks/shrink_speed.py. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-torch/bin/python ] || "$PY" -m venv .venv-torch
.venv-torch/bin/pip install -q torch==2.13.0 torch-pruning pillow numpy
# torchvision from PyPI is built against another torch; its classification
# models work beside this one (benchmarks/_tp_worker.py declares the op it checks).
.venv-torch/bin/pip install -q --no-deps torchvision
