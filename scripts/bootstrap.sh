#!/usr/bin/env bash
# Create ./.venv (if missing) and install acsl_tf with everything the demo,
# the tests and the benchmarks need. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.acsl_tf-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # CPU wheel on Linux x86_64 (avoids GBs of CUDA wheels); the abstract
  # `tensorflow` requirement elsewhere.
  if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ]; then
    TF="tensorflow-cpu==2.21.0"
  else
    TF="tensorflow>=2.16"
  fi
  .venv/bin/python -m pip install -q "$TF"
  .venv/bin/python -m pip install -q -e ".[export,dev]"
  touch "$stamp"
fi
