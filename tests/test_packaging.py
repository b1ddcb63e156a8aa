"""Packaging: metadata, the missing-backend error, the wheel, and a fresh install."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from acsl_tf import _keras

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# A tiny shrink run inside the installed package; prints the numbers the tests check.
TINY_SHRINK = """
import os, sys
import keras, acsl_tf
inp = keras.Input((8, 8, 3))
x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
x = keras.layers.BatchNormalization()(x)
x = keras.layers.ReLU()(x)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inp, keras.layers.Dense(2)(x))
small = acsl_tf.shrink(model, ratio=0.5)
print(acsl_tf.__file__)
print(model.count_params(), small.count_params())
print(os.path.isfile(os.path.join(os.path.dirname(acsl_tf.__file__), "py.typed")))
"""


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _source_copy(dest: Path) -> Path:
    """The files a build needs, copied out of the working tree (no build/ litter there)."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "acsl_tf",
        src / "acsl_tf",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return src


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


def test_license_is_an_spdx_expression():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # setuptools reads a string `license` as SPDX only from version 77 on.
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]


def test_console_script_and_typed_marker():
    assert PYPROJECT["project"]["scripts"] == {"acsl-tf": "acsl_tf.cli:main"}
    assert PYPROJECT["tool"]["setuptools"]["package-data"] == {"acsl_tf": ["py.typed"]}
    assert (ROOT / "acsl_tf" / "py.typed").is_file()
    assert (ROOT / "acsl_tf" / "__main__.py").is_file()


def test_minimum_versions_are_the_tested_ones():
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    # keras 3.5 lacks Model.export(verbose=); these are the versions `make test-lowest` runs.
    assert "keras>=3.6,<4" in deps and "numpy>=1.26" in deps
    assert extras["cpu"] == ["tensorflow-cpu>=2.18"]
    assert extras["tf"] == ["tensorflow>=2.18"]
    lowest = (ROOT / "Makefile").read_text()
    for pin in (
        "tensorflow-cpu==2.18.0",
        "keras==3.6.0",
        "numpy==1.26.4",
        "ai-edge-litert==1.0.1",
        "tf2onnx==1.16.1",
        "onnxruntime==1.17.0",
    ):
        assert pin in lowest
    for req in ("ai-edge-litert>=1.0.1", "tf2onnx>=1.16.1", "onnxruntime>=1.17"):
        assert req in extras["export"]


def test_readme_install_lines_name_real_extras():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    named = {
        part
        for line in section.splitlines()
        if 'pip install "acsl_tf[' in line
        for part in line.split('acsl_tf[', 1)[1].split("]", 1)[0].split(",")
    }
    assert {"cpu", "tf", "export", "plots", "dev"} <= named
    assert named <= set(PYPROJECT["project"]["optional-dependencies"])


# ---------------------------------------------------------------------------
# The backend check
# ---------------------------------------------------------------------------


def test_missing_tensorflow_is_named_with_the_install_command():
    # `None` in sys.modules makes `import tensorflow` fail as if it were not installed.
    code = "import sys; sys.modules['tensorflow'] = None; import acsl_tf"
    env = _env()
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: acsl_tf needs TensorFlow as the Keras backend, and ")
    assert 'pip install "acsl_tf[cpu]"' in last and 'pip install "acsl_tf[tf]"' in last
    assert last.endswith("Received: tensorflow=None")
    # Raised by our check, not from inside Keras.
    assert "keras/src" not in proc.stderr and "_keras.py" in proc.stderr


def test_check_backend_branches(monkeypatch):
    monkeypatch.setattr(_keras, "_KERAS_IMPORT_ERROR", ImportError("no module named 'jax'"))
    monkeypatch.setattr(_keras, "_module_missing", lambda name: name == "keras")
    with pytest.raises(ImportError, match=r'needs Keras 3, which is not installed.*keras=None'):
        _keras.check_backend()
    monkeypatch.setattr(_keras, "_module_missing", lambda name: False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(ImportError, match=r"no module named 'jax'.*KERAS_BACKEND='jax'"):
        _keras.check_backend()
    monkeypatch.setattr(_keras, "_KERAS_IMPORT_ERROR", None)
    monkeypatch.setattr(_keras.keras, "__version__", "2.15.0")
    with pytest.raises(ImportError, match=r"needs Keras 3.*'2.15.0'"):
        _keras.check_backend()


def test_check_backend_passes_here():
    assert _keras.check_backend() is None


# ---------------------------------------------------------------------------
# The wheel
# ---------------------------------------------------------------------------


def test_wheel_builds_without_warnings_and_installs(tmp_path):
    src = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    proc = _check(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(dist), "-v"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    log = proc.stdout + proc.stderr
    assert "Deprecat" not in log and "deprecat" not in log
    (wheel,) = dist.glob("acsl_tf-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert {"acsl_tf/py.typed", "acsl_tf/cli.py", "acsl_tf/__main__.py"} <= names
    sources = {p.relative_to(src).as_posix() for p in (src / "acsl_tf").rglob("*.py")}
    assert sources == {n for n in names if n.endswith(".py")}  # every module, nothing else
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    assert "License-Expression: Apache-2.0" in meta
    assert "acsl-tf = acsl_tf.cli:main" in entry.decode()

    # Install the wheel alone into a fresh venv; its dependencies come from this
    # environment through a .pth line (no download).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _check(
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
             str(wheel)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = env_dir / "bin" / "acsl-tf"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "acsl_tf.cli" in script.read_text()
    proc = _check(
        subprocess.run([str(py), "-c", TINY_SHRINK], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    )
    path, counts, typed = proc.stdout.strip().splitlines()[-3:]
    assert path.startswith(str(env_dir))  # the installed copy, not the checkout
    assert counts == "266 134"  # conv 216 + BN 32 + dense 18; half of the 8 channels go
    assert typed == "True"


@pytest.mark.slow
def test_fresh_venv_pip_install_then_cpu_extra(tmp_path):
    """`pip install .` gives the install hint; `pip install .[cpu]` runs a shrink.

    Downloads and installs TensorFlow (about a minute with a warm cache).
    """
    src = _source_copy(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip"]
    py = str(env_dir / "bin" / "python")
    run = dict(env=_env(), capture_output=True, text=True, timeout=900)
    _check(subprocess.run(pip + ["install", "-q", str(src)], **run))
    proc = subprocess.run([py, "-c", "import acsl_tf"], cwd=tmp_path, **run)
    assert proc.returncode == 1
    assert 'pip install "acsl_tf[cpu]"' in proc.stderr.strip().splitlines()[-1]
    _check(subprocess.run(pip + ["install", "-q", f"{src}[cpu]"], **run))
    proc = _check(subprocess.run([py, "-c", TINY_SHRINK], cwd=tmp_path, **run))
    path, counts, typed = proc.stdout.strip().splitlines()[-3:]
    assert path.startswith(str(env_dir)) and counts == "266 134" and typed == "True"
    proc = _check(subprocess.run([str(env_dir / "bin" / "acsl-tf"), "--version"], **run))
    assert proc.stdout.strip() == f"acsl-tf {PYPROJECT['project']['version']}"


def test_private_keras_modules_are_reached_only_through_the_compatibility_module():
    """Every access to Keras' private ``keras.src`` lives in acsl_tf/_keras.py,
    so a Keras upgrade that moves one has a single place to fix."""
    import re

    pattern = re.compile(r"\bkeras\.src\b")
    offenders = []
    for path in sorted((ROOT / "acsl_tf").rglob("*.py")):
        if path.name == "_keras.py" and path.parent.name == "acsl_tf":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_compatibility_accessors_reach_keras_internals():
    import keras

    assert callable(_keras.tensorflow_nn_module().conv)
    assert _keras.standardize_data_format(None) == keras.config.image_data_format()
    assert _keras.standardize_data_format("channels_first") == "channels_first"
    assert _keras.current_call_optimizer() is None  # no step is running
    inp = keras.Input((3,))
    assert _keras.is_functional(keras.Model(inp, keras.layers.Dense(2)(inp)))
    assert _keras.is_functional(keras.Sequential([keras.layers.Dense(2)]))
    assert not _keras.is_functional(keras.layers.Dense(2))
