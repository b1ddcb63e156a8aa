"""acsl_tf.export.to_c_source: TFLite Micro C++ source that round-trips the bytes."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

from acsl_tf import _io  # noqa: E402
from acsl_tf.export import inspect_tflite, to_c_source, to_tflite  # noqa: E402
from acsl_tf.export.c_source import (  # noqa: E402
    check_c_source,
    estimate_arena_bytes,
    model_id,
    resolver_method,
)


def tiny_cnn():
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, y])
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def tflite_int8(tmp_path_factory):
    keras.utils.set_random_seed(2)
    rep = np.random.default_rng(0).random((16, 16, 16, 3), dtype=np.float32)
    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    to_tflite(tiny_cnn(), path, quantization="int8", representative_data=rep)
    return str(path)


def _parse_array(cc_text, name):
    m = re.search(
        r"alignas\(16\) const unsigned char " + name + r"_data\[\] = \{(.*?)\};", cc_text, re.S
    )
    assert m, "array definition not found"
    return bytes(int(tok, 16) for tok in re.findall(r"0x([0-9a-f]{2})", m.group(1)))


def test_c_source_round_trips_bytes_and_lists_ops(tflite_int8, tmp_path):
    h, cc = to_c_source(tflite_int8, tmp_path, name="kws_model")
    assert (h, cc) == (str(tmp_path / "kws_model.h"), str(tmp_path / "kws_model.cc"))
    content = open(tflite_int8, "rb").read()
    cc_text, h_text = open(cc).read(), open(h).read()
    assert _parse_array(cc_text, "kws_model") == content
    assert f"const unsigned int kws_model_data_len = {len(content)};" in cc_text
    assert '#include "kws_model.h"' in cc_text

    ops = inspect_tflite(tflite_int8)["ops"]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "MEAN"} <= set(ops)
    assert f"constexpr int kws_model_op_count = {len(ops)};" in h_text
    calls = re.findall(r"resolver\.(Add\w+)\(\)", h_text)
    assert calls == [resolver_method(op) for op in ops]
    assert "AddConv2D" in calls and "AddDepthwiseConv2D" in calls and "AddMaxPool2D" in calls
    m = re.search(r"kws_model_arena_size_estimate = (\d+);", h_text)
    assert m and "ESTIMATE" in h_text
    info = inspect_tflite(tflite_int8)
    arena = int(m.group(1))
    assert arena == estimate_arena_bytes(info)
    # Input, first conv output and the model input are live together; the sum of
    # every activation tensor bounds the estimate from above.
    activations = set(info["input_indices"]) | {
        t for op in info["op_details"] for t in op["outputs"]
    }
    sizes = [info["tensors"][t]["bytes"] for t in activations]
    assert max(sizes) <= arena <= sum(-(-s // 16) * 16 for s in sizes)
    assert arena >= 16 * 16 * 3 + 16 * 16 * 8  # int8 input + first conv output


def test_resolver_method_names():
    assert resolver_method("CONV_2D") == "AddConv2D"
    assert resolver_method("FULLY_CONNECTED") == "AddFullyConnected"
    assert resolver_method("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert resolver_method("RESIZE_NEAREST_NEIGHBOR") == "AddResizeNearestNeighbor"
    assert resolver_method("L2_NORMALIZATION") == "AddL2Normalization"
    assert resolver_method("QUANTIZE") == "AddQuantize"


def test_c_source_from_bytes_and_bad_inputs(tflite_int8, tmp_path):
    content = open(tflite_int8, "rb").read()
    h, cc = to_c_source(content, tmp_path)  # default name "model"
    assert os.path.basename(h) == "model.h" and _parse_array(open(cc).read(), "model") == content
    with pytest.raises(FileExistsError):
        to_c_source(content, tmp_path, overwrite=False)
    with pytest.raises(ValueError, match="C identifier"):
        to_c_source(content, tmp_path, name="2model")
    with pytest.raises(ValueError, match="C identifier"):
        to_c_source(content, tmp_path, name="my-model")
    with pytest.raises(ValueError, match="TFL3"):
        to_c_source(b"\x00" * 64, tmp_path, name="junk")
    with pytest.raises(FileNotFoundError):
        to_c_source(str(tmp_path / "none.tflite"), tmp_path, name="x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        to_c_source(content, tmp_path / "model.h", name="x")
    with pytest.raises(ValueError, match="out_dir"):
        to_c_source(content, "", name="x")
    assert sorted(os.listdir(tmp_path)) == ["model.cc", "model.h"]
    to_c_source(content, tmp_path)  # overwrites by default, as keras.Model.save


def test_c_source_creates_missing_output_directory(tflite_int8, tmp_path):
    out = tmp_path / "firmware" / "src"
    h, cc = to_c_source(tflite_int8, out, name="net")
    assert sorted(os.listdir(out)) == ["net.cc", "net.h"]
    assert check_c_source(h, cc) == model_id(open(tflite_int8, "rb").read())


def test_c_source_pair_carries_the_model_id(tflite_int8, tmp_path):
    content = open(tflite_int8, "rb").read()
    h, cc = to_c_source(content, tmp_path, name="net")
    mid = f"0x{model_id(content):016x}ULL"
    h_text, cc_text = open(h).read(), open(cc).read()
    assert f"constexpr unsigned long long net_model_id = {mid};" in h_text
    assert f"static_assert(net_model_id == {mid}," in cc_text
    assert check_c_source(h, cc) == model_id(content)


def _other_model(content):
    """Different flatbuffer bytes: the same model with one more trailing byte."""
    return content + b"\x00" * 16


def test_c_source_kill_between_renames_is_detected(tflite_int8, tmp_path, monkeypatch):
    """A process killed after the first rename leaves a new .cc beside the old .h;
    the pair no longer matches, which check_c_source and the compiler detect."""
    old = open(tflite_int8, "rb").read()
    new = _other_model(old)
    h, cc = to_c_source(old, tmp_path, name="net")
    renames = []
    real_replace = os.replace

    def replace_then_die(src, dst):
        if renames:
            raise KeyboardInterrupt  # stands for the kill between the two renames
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        to_c_source(new, tmp_path, name="net")
    monkeypatch.undo()
    assert renames == [cc]  # the source was replaced, the header was not
    assert sorted(os.listdir(tmp_path)) == ["net.cc", "net.h"]  # no temporary files left
    assert f"0x{model_id(new):016x}ULL" in open(cc).read()
    assert f"0x{model_id(old):016x}ULL" in open(h).read()
    with pytest.raises(ValueError, match="do not come from the same export"):
        check_c_source(h, cc)
    if shutil.which("g++"):
        result = subprocess.run(
            ["g++", "-std=c++17", "-fsyntax-only", "net.cc"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "come from different exports" in result.stderr
    # Running the export again repairs the pair.
    to_c_source(new, tmp_path, name="net")
    assert check_c_source(h, cc) == model_id(new)


def test_c_source_failure_before_renames_keeps_old_pair(tflite_int8, tmp_path, monkeypatch):
    old = open(tflite_int8, "rb").read()
    h, cc = to_c_source(old, tmp_path, name="net")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        to_c_source(_other_model(old), tmp_path, name="net")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["net.cc", "net.h"]
    assert check_c_source(h, cc) == model_id(old)


MAIN_CC = r"""
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include "net.h"

struct FakeResolver {
  std::string calls;
%(methods)s
};

int main() {
  if (net_data_len != %(length)d) { std::printf("bad length\n"); return 1; }
  if (reinterpret_cast<std::uintptr_t>(net_data) %% 16 != 0) { std::printf("unaligned\n"); return 2; }
  if (std::memcmp(net_data + 4, "TFL3", 4) != 0) { std::printf("bad identifier\n"); return 3; }
  FakeResolver r;
  if (net_register_ops(r) != 0) return 4;
  std::printf("%%s|%%d|%%zu\n", r.calls.c_str(), net_op_count, net_arena_size_estimate);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_c_source_compiles_with_gxx(tflite_int8, tmp_path):
    to_c_source(tflite_int8, tmp_path, name="net")
    ops = inspect_tflite(tflite_int8)["ops"]
    methods = "\n".join(
        f'  int {resolver_method(op)}() {{ calls += "{op},"; return 0; }}' for op in ops
    )
    length = os.path.getsize(tflite_int8)
    (tmp_path / "main.cc").write_text(MAIN_CC % {"methods": methods, "length": length})
    exe = tmp_path / "check"
    subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "-O0", "-o", str(exe), "main.cc", "net.cc"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.strip()
    calls, count, arena = out.split("|")
    assert calls == "".join(op + "," for op in ops)
    assert int(count) == len(ops)
    assert int(arena) == estimate_arena_bytes(inspect_tflite(tflite_int8))
