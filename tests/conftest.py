import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TF 2.21's oneDNN CPU kernels segfault on some small graphs (e.g. two 1x1
# stride-2 convolutions on 96x96 inputs; reproduced in a clean tensorflow-cpu
# install). The plain Eigen kernels are stable; use them for the tests.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
