"""The ``acsl-tf`` command line.

End-to-end runs go through ``python -m acsl_tf`` in subprocesses (each imports
TensorFlow, so there are few of them); argument parsing and error reporting are
tested in-process through :func:`acsl_tf.cli.main`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf import cli

# shrink measures how exact it is and warns about same-padded convs; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:shrink of:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (16, 16, 3)
PLAN_API = hasattr(acsl_tf.ShrinkPlan, "load") and hasattr(acsl_tf.ShrinkPlan, "save")


def _tiny_model():
    """Conv + BatchNorm blocks with a residual add and a dense head; known gammas."""
    inp = keras.Input(INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv3")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inp, out, name="tiny")
    rng = np.random.default_rng(0)
    for name, n in (("bn1", 8), ("bn2", 8), ("bn3", 16)):
        bn = model.get_layer(name)
        gamma = np.linspace(0.01, 1.0, n).astype("float32")
        rng.shuffle(gamma)
        bn.gamma.assign(gamma)
        bn.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny model, calibration inputs and a float32 TFLite file of it."""
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(7)
    model = _tiny_model()
    calib = np.random.default_rng(1).random((24,) + INPUT_SHAPE, dtype=np.float32)
    acsl_tf.recalibrate_batchnorm(model, calib)  # moving statistics that match the data
    model_path = d / "tiny.keras"
    model.save(model_path)
    np.save(d / "calib.npy", calib)
    tflite_path = d / "tiny.tflite"
    acsl_tf.export.to_tflite(model, tflite_path, representative_data=calib[:8])
    return {
        "dir": d,
        "model": model,
        "keras": model_path,
        "calib": d / "calib.npy",
        "tflite": tflite_path,
    }


def _run(*args, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run(
        [sys.executable, "-m", "acsl_tf", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(proc):
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


# ---------------------------------------------------------------------------
# End to end (subprocesses)
# ---------------------------------------------------------------------------


def test_profile_json_matches_the_library(files):
    proc = _ok(_run("profile", files["keras"], "--json", cwd=files["dir"]))
    data = json.loads(proc.stdout)
    model = files["model"]
    prof = acsl_tf.profile(model)
    assert data["params"] == model.count_params() == prof.total_params == 2_140
    assert data["flops"] == prof.total_flops
    assert data["macs"] == prof.total_macs
    assert [r["name"] for r in data["layers"]] == [r.name for r in prof.layers]
    assert data["layers"][0] == {
        "name": "conv1",
        "class": "Conv2D",
        "output_shape": [None, 16, 16, 8],
        "params": 216,
        "macs": 16 * 16 * 8 * 27,
        "flops": 2 * 16 * 16 * 8 * 27,
    }
    groups = acsl_tf.plan_shrink(model, ratio=0.0).groups
    assert [(g["id"], g["size"], g["prunable"]) for g in data["groups"]] == [
        (g.id, g.size, g.prunable) for g in groups
    ]
    prunable = sorted(g["size"] for g in data["groups"] if g["prunable"])
    assert prunable == [8, 16]  # conv1/bn1 + conv2/bn2 share one group (the residual add)
    fixed = {g["size"]: g["reason"] for g in data["groups"] if not g["prunable"]}
    assert set(fixed) == {3, 4} and all(fixed.values())  # the input and the output
    assert data["groups_error"] is None
    assert "loading" in proc.stderr  # progress goes to stderr, stdout is pure JSON


def test_shrink_target_flops_saves_the_reported_model(files, tmp_path):
    out = tmp_path / "small.keras"
    proc = _ok(_run("shrink", files["keras"], "--target-flops", "0.5", "-o", out, cwd=tmp_path))
    assert "params -" in proc.stdout and "FLOPs -" in proc.stdout
    assert f"saved {out}" in proc.stdout
    small = keras.models.load_model(out, compile=False)
    expected = acsl_tf.shrink(files["model"], target_flops=0.5)
    assert small.count_params() == expected.count_params() < files["model"].count_params()
    after = acsl_tf.profile(small).total_flops
    assert after <= 0.5 * acsl_tf.profile(files["model"]).total_flops
    assert f"{files['model'].count_params():,}->{small.count_params():,}" in proc.stdout.replace(
        " ", ""
    )
    x = np.load(files["calib"])[:4]
    assert small.predict(x, verbose=0).shape == (4, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["small.keras"]  # no temp files left


@pytest.mark.skipif(not PLAN_API, reason="needs ShrinkPlan.save / ShrinkPlan.load")
def test_shrink_save_plan_then_apply_it(files, tmp_path):
    plan_path = tmp_path / "plan.json"
    proc = _ok(
        _run(
            "shrink",
            files["keras"],
            "--ratio",
            "0.5",
            "--save-plan",
            plan_path,
            "--json",
            cwd=tmp_path,
        )
    )
    planned = json.loads(proc.stdout)
    assert planned["output"] is None and plan_path.is_file()
    assert planned["channels_before"] == 24 and planned["channels_removed"] == 12
    out = tmp_path / "from_plan.keras"
    proc = _ok(
        _run("shrink", files["keras"], "--plan", plan_path, "-o", out, "--json", cwd=tmp_path)
    )
    applied = json.loads(proc.stdout)
    expected = acsl_tf.shrink(files["model"], ratio=0.5)
    small = keras.models.load_model(out, compile=False)
    assert applied["params_after"] == planned["params_after"] == expected.count_params()
    assert small.count_params() == expected.count_params()
    x = np.load(files["calib"])[:4]
    np.testing.assert_allclose(
        small.predict(x, verbose=0), expected.predict(x, verbose=0), atol=1e-5
    )


def test_export_int8_tflite_json(files, tmp_path):
    out = tmp_path / "tiny_int8.tflite"
    proc = _ok(
        _run(
            "export",
            files["keras"],
            "--quantization",
            "int8",
            "--data",
            files["calib"],
            "-o",
            out,
            "--json",
            cwd=tmp_path,
        )
    )
    report = json.loads(proc.stdout)
    assert report["format"] == "tflite" and report["quantization"] == "int8"
    assert report["passed"] is True and report["verified"] is True
    assert report["inputs"][0]["dtype"] == "int8" and report["outputs"][0]["dtype"] == "int8"
    assert report["inputs"][0]["shape"][1:] == list(INPUT_SHAPE)
    assert out.stat().st_size == report["size_bytes"] > 0
    assert "CONV_2D" in report["ops"]
    out_float = acsl_tf.export.run_tflite(out.read_bytes(), np.load(files["calib"])[:2])
    assert out_float[0].shape == (2, 4)


def test_export_c_source_quiet(files, tmp_path):
    out_dir = tmp_path / "firmware" / "src"  # created by the command
    proc = _ok(
        _run("export", files["keras"], "--format", "c", "-o", out_dir, "--quiet", cwd=tmp_path)
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny.cc", "tiny.h"]
    header = (out_dir / "tiny.h").read_text()
    source = (out_dir / "tiny.cc").read_text()
    assert "tiny_data_len" in header and "tiny_register_ops" in header
    assert "alignas(16) const unsigned char tiny_data[]" in source
    assert f"saved {out_dir / 'tiny.h'}" in proc.stdout
    assert "] loading" not in proc.stderr and "] converting" not in proc.stderr  # --quiet


def test_bench_text(files, tmp_path):
    proc = _ok(_run("bench", files["tflite"], "--runs", "7", "--warmup", "1", cwd=tmp_path))
    line = proc.stdout.strip()
    assert line.startswith(f"{files['tflite']}: median ") and "(7 runs, 1 thread(s))" in line
    median = float(line.split("median ")[1].split(" ms")[0])
    assert median > 0
    proc = _ok(_run("bench", files["tflite"], "--runs", "3", "--clock", "cpu", cwd=tmp_path))
    assert "(3 runs, 1 thread(s), thread CPU time)" in proc.stdout


def test_error_is_one_line_with_exit_code_1(files, tmp_path):
    proc = _run("profile", tmp_path / "missing.keras", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("acsl-tf")]
    assert lines == [
        "acsl-tf profile: error: FileNotFoundError: The model file is missing. Pass the path of a "
        "model saved with model.save('model.keras'). "
        f"Received: model={str(tmp_path / 'missing.keras')!r}"
    ]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# In-process: commands through cli.main
# ---------------------------------------------------------------------------


def test_export_onnx_in_process(files, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert (
        cli.main(
            ["export", str(files["keras"]), "--format", "onnx", "-o", str(out), "--json", "--quiet"]
        )
        == 0
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["format"] == "onnx" and report["passed"] is True
    assert report["extra"]["opset"] == 17
    assert "Conv" in report["ops"] and out.stat().st_size == report["size_bytes"]


def test_existing_output_fails_before_loading(files, tmp_path, capsys):
    out = tmp_path / "small.keras"
    out.write_bytes(b"keep me")
    rc = cli.main(["shrink", str(files["keras"]), "--ratio", "0.5", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == (
        "acsl-tf shrink: error: FileExistsError: The output file already exists. Pass "
        f"--overwrite to replace it. Received: output={str(out)!r}"
    )
    assert out.read_bytes() == b"keep me"
    rc = cli.main(
        ["shrink", str(files["keras"]), "--ratio", "0.5", "-o", str(out), "--overwrite", "-q"]
    )
    assert rc == 0
    assert keras.models.load_model(out, compile=False).count_params() < 2_140


def test_debug_prints_the_traceback(tmp_path, capsys):
    rc = cli.main(["--debug", "bench", str(tmp_path / "none.tflite")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("acsl-tf bench: error: FileNotFoundError: ")


def test_library_errors_are_reported_in_one_line(files, tmp_path, capsys):
    rc = cli.main(
        [
            "shrink",
            str(files["keras"]),
            "--ratio",
            "0.5",
            "--criterion",
            "nope",
            "-o",
            str(tmp_path / "x.keras"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1
    assert err.startswith("acsl-tf shrink: error: ValueError: ") and "criterion='nope'" in err
    assert not (tmp_path / "x.keras").exists()


def test_profile_lambda_model_needs_unsafe_flag_and_lists_fixed_groups(tmp_path, capsys):
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    assert cli.main(["profile", path, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("acsl-tf profile: error: ValueError: ") and err.count("\n") == 1
    assert "pass --unsafe-deserialization if you trust the file" in err
    assert cli.main(["profile", path, "-q", "--json", "--unsafe-deserialization"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == model.count_params() == 112 + 290
    assert [g["size"] for g in data["groups"]] == [3, 4, 4, 2]
    assert not any(g["prunable"] for g in data["groups"])
    reasons = [g["reason"] for g in data["groups"]]
    assert "input" in reasons[0] and "output" in reasons[-1]
    assert all("'double' (Lambda)" in r for r in reasons[1:3])


def test_data_file_forms(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "one.npz", inputs=x)
    np.savez(tmp_path / "named.npz", x=x, y=np.zeros(2))
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    for name in ("a.npy", "one.npz", "named.npz"):
        np.testing.assert_array_equal(cli._load_data(str(tmp_path / name)), x)
    with pytest.raises(ValueError, match=r"one array or an array named 'x'.*\['a', 'b'\]"):
        cli._load_data(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="Received: data="):
        cli._load_data(str(tmp_path / "none.npy"))
    # The message names the option the file came from.
    with pytest.raises(ValueError, match="Received: recalibrate="):
        cli._load_data(str(tmp_path / "bad.npz"), option="recalibrate")


# ---------------------------------------------------------------------------
# Argument parsing (no TensorFlow work)
# ---------------------------------------------------------------------------


def _parse(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    cli.validate(parser, args)
    return args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shrink", "m.keras", "-o", "s.keras"], "exactly one of"),
        (
            ["shrink", "m.keras", "--ratio", "0.3", "--threshold", "0.1", "-o", "s.keras"],
            "got --ratio, --threshold",
        ),
        (["shrink", "m.keras", "--ratio", "1.5", "-o", "s.keras"], "expected a number in [0, 1)"),
        (["shrink", "m.keras", "--ratio", "abc", "-o", "s.keras"], "expected a number in [0, 1)"),
        (["shrink", "m.keras", "--threshold", "-1", "-o", "s.keras"], "expected a number >= 0"),
        (["shrink", "m.keras", "--ratio", "0.3"], "give -o OUT.keras"),
        (["shrink", "m.keras", "--ratio", "0.3", "-o", "s.h5"], "must end in .keras"),
        (
            ["shrink", "m.keras", "--plan", "p.json", "--criterion", "l1", "-o", "s.keras"],
            "drop --criterion",
        ),
        (
            ["shrink", "m.keras", "--ratio", "0.3", "--min-channels", "0", "-o", "s.keras"],
            "expected an integer >= 1",
        ),
        (["export", "m.keras", "-o", "m.tflite", "--quantization", "int8"], "needs --data"),
        (
            ["export", "m.keras", "-o", "m.onnx", "--format", "onnx", "--quantization", "float16"],
            "not onnx",
        ),
        (["export", "m.keras", "-o", "m.tflite", "--float-io"], "int8 only"),
        (["export", "m.keras", "-o", "m.tflite", "--name", "net"], "--format c only"),
        (["export", "m.keras", "-o", "m.tflite", "--format", "bmp"], "invalid choice"),
        (["export", "m.keras"], "required: -o/--output"),
        (["bench", "a.tflite", "b.tflite", "c.tflite"], "one or two .tflite files"),
        (["bench", "a.tflite", "--runs", "0"], "expected an integer >= 1"),
        (["bench", "a.tflite", "--threads", "2", "--clock", "cpu"], "use it with --threads 1"),
        (["bench", "a.tflite", "--clock", "tsc"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "usage: acsl-tf" in capsys.readouterr().err


def test_options_before_or_after_the_command():
    args = _parse(["--json", "-q", "profile", "m.keras"])
    assert (args.json, args.quiet, args.debug) == (True, True, False)
    args = _parse(["profile", "m.keras", "--json", "--debug"])
    assert (args.json, args.quiet, args.debug) == (True, False, True)
    args = _parse(["profile", "m.keras"])
    assert (args.json, args.quiet, args.debug, args.max_rows) == (False, False, False, None)


def test_shrink_arguments():
    args = _parse(
        [
            "shrink",
            "m.keras",
            "--target-flops",
            "0.5",
            "--criterion",
            "l1",
            "--round-to",
            "8",
            "--ignore",
            "conv1",
            "--ignore",
            "conv2",
            "-o",
            "s.keras",
        ]
    )
    assert args.target_flops == 0.5 and args.ratio is None and args.plan is None
    assert (args.criterion, args.round_to, args.min_channels) == ("l1", 8, 1)
    assert args.ignore == ["conv1", "conv2"] and args.output == "s.keras"
    assert args.func is cli._cmd_shrink
    args = _parse(["shrink", "m.keras", "--threshold", "0", "--save-plan", "p.json"])
    assert args.threshold == 0.0 and args.output is None and args.save_plan == "p.json"


def test_export_and_bench_defaults():
    args = _parse(["export", "m.keras", "-o", "m.tflite"])
    assert (args.format, args.quantization, args.data, args.opset) == ("tflite", "none", None, 17)
    assert (args.no_verify, args.overwrite, args.float_io, args.tolerance) == (
        False,
        False,
        False,
        None,
    )
    args = _parse(["bench", "a.tflite", "b.tflite"])
    assert (args.tflite, args.threads, args.runs, args.warmup, args.rounds, args.clock) == (
        ["a.tflite", "b.tflite"],
        1,
        None,
        10,
        10,
        "wall",
    )


@pytest.mark.parametrize(
    "model, name, expected",
    [
        ("dir/small.keras", None, "small"),
        ("my-net.v2.keras", None, "my_net_v2"),
        ("3layers.keras", None, "model_3layers"),
        ("x.keras", "kws", "kws"),
    ],
)
def test_c_name(model, name, expected):
    args = _parse(
        ["export", model, "--format", "c", "-o", "out"] + (["--name", name] if name else [])
    )
    assert cli._c_name(args) == expected


def test_help_texts_have_examples():
    parser = cli.build_parser()
    text = parser.format_help()
    assert "examples:" in text and "exit codes: 0 success, 1 error" in text
    for command in ("profile", "shrink", "export", "bench"):
        assert f"acsl-tf {command} " in text


def test_help_of_each_command(capsys):
    for command, needle in (
        ("profile", "--max-rows N"),
        ("shrink", "--target-flops F"),
        ("export", "--quantization {none,float16,dynamic,int8}"),
        ("bench", "--threads N"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert needle in out and "examples:" in out and f"acsl-tf {command}" in out


# ---------------------------------------------------------------------------
# shrink --recalibrate
# ---------------------------------------------------------------------------


def test_shrink_recalibrate_re_estimates_the_batchnorm_statistics(files, tmp_path):
    shifted = np.load(files["calib"]) * 3.0 + 1.0  # inputs the moving statistics never saw
    data = tmp_path / "shifted.npy"
    np.save(data, shifted)
    out = tmp_path / "small.keras"
    proc = _ok(
        _run(
            "shrink",
            files["keras"],
            "--ratio",
            "0.5",
            "--recalibrate",
            data,
            "--recalibrate-steps",
            "3",
            "-o",
            out,
            "--json",
            cwd=tmp_path,
        )
    )
    report = json.loads(proc.stdout)
    assert report["recalibrate"] == str(data) and report["recalibrated_batches"] == 1
    small = keras.models.load_model(out, compile=False)
    expected = acsl_tf.shrink(files["model"], ratio=0.5, recalibrate=shifted)
    plain = acsl_tf.shrink(files["model"], ratio=0.5)
    for name in ("bn1", "bn2", "bn3"):
        got = np.array(small.get_layer(name).moving_mean)
        want = np.array(expected.get_layer(name).moving_mean)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, np.array(plain.get_layer(name).moving_mean))


def test_shrink_recalibrate_in_process_reports_and_fails_cleanly(files, tmp_path, capsys):
    x = np.load(files["calib"])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "small.keras"
    model = str(files["keras"])
    argv = ["shrink", model, "--ratio", "0.5", "-q", "--recalibrate"]
    assert cli.main([*argv, str(tmp_path / "x.npy"), "-o", str(out)]) == 0
    assert "BatchNorm statistics re-estimated on 1 batch(es) of" in capsys.readouterr().out
    assert out.is_file()
    np.save(tmp_path / "gray.npy", x[..., :1])
    bad_out = tmp_path / "bad.keras"
    assert cli.main([*argv, str(tmp_path / "gray.npy"), "-o", str(bad_out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acsl-tf shrink: error: ValueError: ")
    assert "(None, 16, 16, 3)" in err and "(24, 16, 16, 1)" in err
    assert not bad_out.exists()
    missing = str(tmp_path / "none.npy")
    assert cli.main([*argv, missing, "-o", str(bad_out)]) == 1
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and f"Received: recalibrate={missing!r}" in err
    assert not bad_out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["shrink", "m.keras", "--ratio", "0.3", "--recalibrate-steps", "2", "-o", "s.keras"],
            "--recalibrate-steps needs --recalibrate DATA.npy",
        ),
        (
            ["shrink", "m.keras", "--ratio", "0.3", "--recalibrate", "x.npy", "--save-plan", "p"],
            "--recalibrate applies to the shrunk model: give -o OUT.keras",
        ),
        (
            ["shrink", "m.keras", "--ratio", "0.3", "--recalibrate", "x.npy"]
            + ["--recalibrate-steps", "0", "-o", "s.keras"],
            "expected an integer >= 1",
        ),
    ],
)
def test_shrink_recalibrate_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_shrink_recalibrate_arguments():
    args = _parse(
        ["shrink", "m.keras", "--ratio", "0.3", "--recalibrate", "x.npy", "-o", "s.keras"]
    )
    assert args.recalibrate == "x.npy" and args.recalibrate_steps is None
    args = _parse(
        ["shrink", "m.keras", "--ratio", "0.3", "--recalibrate", "x.npy"]
        + ["--recalibrate-steps", "5", "-o", "s.keras"]
    )
    assert args.recalibrate_steps == 5
    args = _parse(["shrink", "m.keras", "--ratio", "0.3", "-o", "s.keras"])
    assert args.recalibrate is None and args.recalibrate_steps is None
