PY := .venv/bin/python
# TF 2.21 oneDNN CPU kernels segfault on some small graphs; see README (Known issues).
export TF_ENABLE_ONEDNN_OPTS ?= 0

.PHONY: setup demo test test-slow lint bench clean

setup:
	bash scripts/bootstrap.sh

## The main job end to end: ACSL sparsity training of a small CNN on Fashion-MNIST.
demo: setup
	bash scripts/ensure_data.sh
	$(PY) examples/demo.py

## The default (fast) test suite. .ci/run calls exactly this.
test: setup
	bash scripts/ensure_data.sh
	$(PY) -m pytest -q

## Slow tests: examples' --quick mode, keras.applications coverage, large property runs.
test-slow: setup
	bash scripts/ensure_data.sh
	$(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check acsl_tf tests examples benchmarks

clean:
	rm -rf .venv build dist *.egg-info
