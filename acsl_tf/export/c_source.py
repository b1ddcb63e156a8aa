"""TFLite flatbuffer -> C++ source for TensorFlow Lite for Microcontrollers."""

from __future__ import annotations

import hashlib
import os
import re
import typing

from acsl_tf import _io, _validation
from acsl_tf.export import tflite as _tflite

_CPP_KEYWORDS = frozenset(
    "alignas alignof and asm auto bool break case catch char class const constexpr continue "
    "default delete do double else enum explicit export extern false float for friend goto if "
    "inline int long mutable namespace new noexcept not nullptr operator or private protected "
    "public register return short signed sizeof static struct switch template this throw true "
    "try typedef typeid typename union unsigned using virtual void volatile while".split()
)


class CSourcePaths(typing.NamedTuple):
    """Paths written by :func:`to_c_source`."""

    header: str
    source: str


def resolver_method(op_name: str) -> str:
    """The ``tflite::MicroMutableOpResolver`` method registering a builtin op,
    e.g. ``"CONV_2D" -> "AddConv2D"``, ``"FULLY_CONNECTED" -> "AddFullyConnected"``."""
    parts = op_name.split("_")
    return "Add" + "".join(p if p[:1].isdigit() else p[:1] + p[1:].lower() for p in parts)


def estimate_arena_bytes(info: dict, alignment: int = 16) -> int:
    """Peak bytes of simultaneously live activation tensors, in execution order.

    Activation tensors are the model inputs and every op output; a tensor is
    live from the op producing it (or the start, for inputs) to its last
    consumer (or the end, for model outputs). Sizes are rounded up to
    ``alignment``. This is an estimate of the TFLM tensor arena: TFLM's memory
    planner can share buffers the same way, but also needs per-tensor metadata
    and kernel scratch buffers, so add a margin and measure with
    ``tflite::RecordingMicroInterpreter``.
    """
    ops = info["op_details"]
    tensors = info["tensors"]
    n = len(ops)
    first, last = {}, {}
    for t in info["input_indices"]:
        first[t], last[t] = 0, 0
    for i, op in enumerate(ops):
        for t in op["outputs"]:
            first.setdefault(t, i)
            last[t] = max(last.get(t, i), i)
        for t in op["inputs"]:
            if t in first:
                last[t] = max(last[t], i)
    for t in info["output_indices"]:
        if t in first:
            last[t] = n
    if not first:
        return 0

    def size(t):
        b = tensors[t]["bytes"]
        return -(-b // alignment) * alignment

    peak = 0
    for i in range(max(n, 1)):
        live = sum(size(t) for t in first if first[t] <= i <= last[t])
        peak = max(peak, live)
    return int(peak)


def model_id(content: bytes) -> int:
    """The identifier that ties a generated ``.h``/``.cc`` pair to one
    flatbuffer: the first 64 bits of its SHA-256, as an unsigned integer."""
    return int.from_bytes(hashlib.sha256(bytes(content)).digest()[:8], "big")


def _written_id(text: str, name: str):
    m = re.search(re.escape(name) + r"_model_id =+ 0x([0-9a-f]{16})ULL", text)
    return int(m.group(1), 16) if m else None


def check_c_source(header_path, source_path, *, name: str | None = None) -> int:
    """Check that a ``.h``/``.cc`` pair written by :func:`to_c_source` belongs
    together, i.e. both carry the model identifier of the array in the ``.cc``.

    The compiler makes the same check (a ``static_assert`` in the ``.cc``);
    this function finds a mismatched pair without compiling, e.g. after an
    interrupted export.

    Args:
        header_path: The ``<name>.h`` file.
        source_path: The ``<name>.cc`` file.
        name: The symbol prefix (default: the header's file name stem).

    Returns:
        The model identifier (see :func:`model_id`).

    Raises:
        ValueError: the files do not carry the same identifier, or the array
            in the ``.cc`` does not match it.
    """
    header_path, source_path = os.fspath(header_path), os.fspath(source_path)
    name = name or os.path.splitext(os.path.basename(header_path))[0]
    with open(header_path, encoding="utf-8") as f:
        h_text = f.read()
    with open(source_path, encoding="utf-8") as f:
        cc_text = f.read()
    h_id, cc_id = _written_id(h_text, name), _written_id(cc_text, name)
    m = re.search(r"_data\[\] = \{(.*?)\};", cc_text, re.S)
    data = bytes(int(t, 16) for t in re.findall(r"0x([0-9a-f]{2})", m.group(1))) if m else b""
    if h_id is None or cc_id is None or h_id != cc_id or model_id(data) != cc_id:
        raise ValueError(
            f"{header_path!r} and {source_path!r} do not come from the same export (an export "
            "was interrupted, or one file was edited or copied from elsewhere). Run "
            "`acsl_tf.export.to_c_source` again to write both. Received: header model id="
            f"{'none' if h_id is None else hex(h_id)}, source model id="
            f"{'none' if cc_id is None else hex(cc_id)}"
        )
    return cc_id


def to_c_source(
    tflite_path_or_bytes, out_dir, *, name: str = "model", overwrite: bool = True
) -> CSourcePaths:
    """Write a TFLite model as ``<name>.h`` / ``<name>.cc`` for TFLite Micro.

    The ``.cc`` defines ``alignas(16) const unsigned char <name>_data[]`` (the
    flatbuffer; TFLM needs 16-byte alignment) and ``<name>_data_len``. The
    header declares them and adds:

    - ``<name>_model_id``: the first 64 bits of the flatbuffer's SHA-256. The
      ``.cc`` repeats it in a ``static_assert``, so a header and a source from
      different exports (e.g. after an export killed between the two renames)
      do not compile together; :func:`check_c_source` makes the same check
      from Python;

    - ``<name>_op_count`` and a template ``<name>_register_ops(resolver)`` that
      calls ``resolver.AddConv2D()`` etc. for exactly the builtin ops the model
      uses, for ``tflite::MicroMutableOpResolver<<name>_op_count>``;
    - ``<name>_arena_size_estimate``: the peak bytes of simultaneously live
      activation tensors (an estimate; see :func:`estimate_arena_bytes`).

    Args:
        tflite_path_or_bytes: Path to a ``.tflite`` file or its bytes.
        out_dir: Directory to write into; created (with its parents) when it
            does not exist.
        name: C identifier used for the file names and symbols.
        overwrite: Replace existing files (the default, as ``model.save``).

    Returns:
        ``CSourcePaths(header, source)``.

    Raises:
        ValueError: ``name`` is not a C identifier, or the bytes are not TFLite.
        FileNotFoundError: missing input file.
        NotADirectoryError: ``out_dir`` exists and is not a directory.
        FileExistsError: an output file exists and ``overwrite=False``.

    Example:
    ```python
    report = acsl_tf.export.to_tflite(model, "m.tflite", quantization="int8",
                                      representative_data=x[:200])
    h, cc = acsl_tf.export.to_c_source("m.tflite", "firmware/src", name="kws_model")
    # C++:  tflite::MicroMutableOpResolver<kws_model_op_count> resolver;
    #       kws_model_register_ops(resolver);
    ```
    """
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
        or (name in _CPP_KEYWORDS)
    ):
        raise ValueError(
            "`name` must be a C identifier (letters, digits, underscores; not starting with a "
            f"digit; not a keyword). Received: name={name!r}"
        )
    content = _tflite._read_tflite(tflite_path_or_bytes)
    out_dir = _validation.path(
        out_dir,
        "out_dir",
        allow_empty=False,
        type_error=ValueError,
        expected="a directory path (str or os.PathLike), e.g. 'firmware/src'",
    )
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(
            "`out_dir` exists and is not a directory. Pass a directory to write "
            f"{name}.h and {name}.cc into. Received: out_dir={out_dir!r}"
        )
    h_path = os.path.join(out_dir, f"{name}.h")
    cc_path = os.path.join(out_dir, f"{name}.cc")
    if os.path.isdir(out_dir):
        _io.check_writable(h_path, overwrite=overwrite)
        _io.check_writable(cc_path, overwrite=overwrite)

    info = _tflite.inspect_tflite(content)
    ops = [op for op in info["ops"] if op != "DELEGATE"]
    custom = [op for op in ops if op.startswith("CUSTOM") or not re.fullmatch(r"[A-Z0-9_]+", op)]
    arena = estimate_arena_bytes(info)
    guard = f"{name.upper()}_H_"
    mid = f"0x{model_id(content):016x}ULL"
    io_lines = [
        f"//   input  {t.name}: {t.dtype}{t.shape}"
        + (f" scale={t.scale:.9g} zero_point={t.zero_point}" if t.scale else "")
        for t in info["inputs"]
    ] + [
        f"//   output {t.name}: {t.dtype}{t.shape}"
        + (f" scale={t.scale:.9g} zero_point={t.zero_point}" if t.scale else "")
        for t in info["outputs"]
    ]
    register = "\n".join(
        f"  if (static_cast<int>(resolver.{resolver_method(op)}()) != 0) return {k + 1};"
        for k, op in enumerate(ops)
        if op not in custom
    )
    header = f"""// Generated by acsl_tf.export.to_c_source. TFLite model for TFLite Micro.
// Size: {len(content)} bytes. Ops: {", ".join(ops)}.
{chr(10).join(io_lines)}
#ifndef {guard}
#define {guard}

#include <cstddef>

// Identifies the flatbuffer (first 64 bits of its SHA-256). {name}.cc checks it
// with a static_assert, so a header and a source from different exports do not
// compile together.
constexpr unsigned long long {name}_model_id = {mid};

// The flatbuffer, 16-byte aligned (defined in {name}.cc).
extern const unsigned char {name}_data[];
extern const unsigned int {name}_data_len;

// Number of distinct builtin ops, for tflite::MicroMutableOpResolver<{name}_op_count>.
constexpr int {name}_op_count = {len(ops)};

// ESTIMATE of the tensor arena: peak bytes of simultaneously live activation
// tensors in execution order (16-byte aligned). TFLM also needs per-tensor
// metadata and kernel scratch buffers: add a margin and measure the real value
// with tflite::RecordingMicroInterpreter.
constexpr size_t {name}_arena_size_estimate = {arena};

// Registers exactly the ops the model uses; returns 0 on success.
// Usage:
//   tflite::MicroMutableOpResolver<{name}_op_count> resolver;
//   {name}_register_ops(resolver);
template <typename OpResolver>
int {name}_register_ops(OpResolver& resolver) {{
{register}
  return 0;
}}
"""
    if custom:
        header += f"// Custom ops to register by hand: {', '.join(custom)}\n"
    header += f"\n#endif  // {guard}\n"

    hex_lines = []
    for start in range(0, len(content), 12):
        chunk = content[start : start + 12]
        hex_lines.append("  " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    source = (
        f"// Generated by acsl_tf.export.to_c_source.\n"
        f'#include "{name}.h"\n\n'
        f"static_assert({name}_model_id == {mid},\n"
        f'              "{name}.h and {name}.cc come from different exports; run "\n'
        f'              "acsl_tf.export.to_c_source again to write both.");\n\n'
        f"alignas(16) const unsigned char {name}_data[] = {{\n"
        + "\n".join(hex_lines)
        + f"\n}};\nconst unsigned int {name}_data_len = {len(content)};\n"
    )
    os.makedirs(out_dir, exist_ok=True)
    # Both temporary files are written before either rename; the model id in
    # both files makes a pair torn by a kill between the renames fail to compile.
    _io.atomic_write_group(
        [(cc_path, source.encode("utf-8")), (h_path, header.encode("utf-8"))],
        overwrite=overwrite,
    )
    return CSourcePaths(header=h_path, source=cc_path)
