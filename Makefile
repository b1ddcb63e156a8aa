PY := .venv/bin/python

.PHONY: setup demo test test-slow test-lowest wheel lint bench clean

setup:
	bash scripts/bootstrap.sh

## The main job end to end: ACSL sparsity training of a small CNN on Fashion-MNIST.
demo: setup
	bash scripts/ensure_data.sh
	$(PY) examples/demo.py

## The default (fast) test suite. .ci/run calls exactly this. Two pytest-xdist
## workers: most tests are bound by Python and graph building on one core.
test: setup
	bash scripts/ensure_data.sh
	$(PY) -m pytest -q -n 2

## Slow tests: examples' --quick mode, keras.applications coverage, large property runs.
test-slow: setup
	bash scripts/ensure_data.sh
	$(PY) -m pytest -q -m slow

## The lowest versions pyproject.toml allows, on a fast subset, in their own venv
## (build/venv-lowest); acsl_tf itself comes from this checkout.
LOWEST := tensorflow-cpu==2.18.0 keras==3.6.0 numpy==1.26.4 ai-edge-litert==1.0.1 \
	tf2onnx==1.16.1 onnxruntime==1.17.0
LOWEST_TESTS := tests/test_graph.py tests/test_profile.py tests/test_shrink.py \
	tests/test_shrink_layers.py tests/test_wrapper.py tests/test_export_tflite.py \
	tests/test_export_onnx.py
test-lowest:
	test -x build/venv-lowest/bin/python || $${PYTHON:-python3} -m venv build/venv-lowest
	build/venv-lowest/bin/python -m pip install -q $(LOWEST) "pytest>=8" "hypothesis>=6.100"
	PYTHONPATH=$(CURDIR) build/venv-lowest/bin/python -m pytest -q $(LOWEST_TESTS)

## Build the wheel into dist/ (what `pip install acsl_tf` installs).
wheel: setup
	$(PY) -m pip wheel . --no-deps -w dist

lint: setup
	$(PY) -m ruff check acsl_tf tests examples benchmarks

clean:
	rm -rf .venv build dist *.egg-info
