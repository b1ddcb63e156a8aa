#!/usr/bin/env bash
# Create ./.venv (if missing) and install acsl_tf with everything the demo,
# the tests and the benchmarks need. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The stamp's name carries a version: bump it when this script installs
# something new, so existing venvs pick it up (2: the jax extra).
stamp=.venv/.acsl_tf-installed-2
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # CPU wheel on Linux x86_64 (avoids GBs of CUDA wheels); the abstract
  # `tensorflow` requirement elsewhere.
  if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ]; then
    TF="tensorflow-cpu==2.21.0"
  else
    TF="tensorflow>=2.18"
  fi
  .venv/bin/python -m pip install -q "$TF"
  # jax: the JAX backend's tests (tests/test_backends.py) run in CI too; it
  # coexists with tensorflow-cpu 2.21 in this venv (it adds only jax and jaxlib,
  # and no conflict to `pip check`).
  .venv/bin/python -m pip install -q -e ".[export,dev,jax]"
  touch "$stamp"
fi
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('tf_keras', 'tensorflow_model_optimization', 'tree')))" || .venv/bin/python -m pip install -q --no-deps "tf_keras==$(.venv/bin/python -c 'import tensorflow as t; print(t.__version__.rsplit(".", 1)[0])').*" tensorflow-model-optimization==0.8.1 dm-tree  # acsl_tf.interop (QAT): tf_keras + tfmot; --no-deps keeps the CPU TensorFlow wheel
