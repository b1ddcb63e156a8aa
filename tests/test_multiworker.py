"""Multi-worker sparsity training (MultiWorkerMirroredStrategy, 2 local worker
processes on 127.0.0.1): the launcher, the data sharding, the strategy
check, equivalence with a single-process run on the same global batches,
and checkpoint/resume after a worker is killed.

Every job runs in worker processes started by
:func:`acsl_tf.distributed.launch_local_workers`, which bounds it in time and
kills every worker's process group when it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from acsl_tf import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "scripts", "multiworker_train.py")
PS = os.path.join(HERE, "scripts", "multiworker_ps.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
ENV.pop("TF_CONFIG", None)
JOB_TIMEOUT = 300.0

# Tolerances of the 2-worker run against the single process (float32 state;
# measured differences: affinity <= 1.2e-7, strength <= 3.6e-7, gamma and the
# BatchNorm moving means <= 1.2e-7, controller measurements <= 1e-7 relative).
ATOL_STATE = 1e-5
RTOL_CONTROLLER = 1e-5
# Markers of a loopback gRPC cluster that could not start (then the tests skip).
_CLUSTER_FAILURES = (
    "Failed to bind",
    "Address already in use",
    "Could not start gRPC server",
    "failed to connect to all addresses",
    "Connection refused",
)


# ---------------------------------------------------------------------- helpers


def _run_single(out_path, *extra):
    proc = subprocess.run(
        [sys.executable, TRAIN, "--mode", "single", "--out", str(out_path), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=JOB_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out_path) as f:
        return json.load(f)


def _run_job(args, **kwargs):
    """A 2-worker job of TRAIN; skips when the loopback cluster cannot start."""
    try:
        return distributed.launch_local_workers(
            TRAIN, 2, args, timeout=JOB_TIMEOUT, env=ENV, **kwargs
        )
    except distributed.WorkerJobError as e:
        _skip_if_cluster_failed(e.results)
        raise


def _skip_if_cluster_failed(results):
    joined = any("CLUSTER_READY" in r.stdout for r in results)
    text = "\n".join(r.stderr for r in results)
    if not joined and any(m in text for m in _CLUSTER_FAILURES):
        marker = next(m for m in _CLUSTER_FAILURES if m in text)
        pytest.skip(f"the loopback gRPC cluster (127.0.0.1) could not start: {marker!r}")


def _load_workers(out_dir):
    out = []
    for i in range(2):
        with open(os.path.join(out_dir, f"worker{i}.json")) as f:
            out.append(json.load(f))
    return out


def _assert_state_close(got, want, atol=ATOL_STATE):
    assert set(got) == set(want)
    for unit in want:
        g, w = got[unit], want[unit]
        assert g["step"] == w["step"]
        assert g["updates"] == w["updates"]
        for key in ("affinity", "strength", "gamma", "moving_mean", "budget_mask"):
            if key not in w:
                continue
            np.testing.assert_allclose(
                np.array(g[key]), np.array(w[key]), atol=atol, err_msg=f"{unit}.{key}"
            )
        np.testing.assert_allclose(g["budget_scale"], w["budget_scale"], rtol=RTOL_CONTROLLER)
        np.testing.assert_allclose(
            np.array(g["controller_state"]),
            np.array(w["controller_state"]),
            rtol=RTOL_CONTROLLER,
            atol=1e-12,
            err_msg=f"{unit}.controller_state",
        )
        # Both entries: the penalty sum and the samples of every replica.
        gp, wp = np.array(g["penalty_total"]), np.array(w["penalty_total"])
        np.testing.assert_allclose(wp, gp, rtol=1e-5)
        assert wp[1] == gp[1]


def _assert_controller_close(got, want):
    assert [h["step"] for h in got] == [h["step"] for h in want]
    for key in ("scale", "level", "kept_min", "reduction"):
        np.testing.assert_allclose(
            [h[key] for h in got],
            [h[key] for h in want],
            rtol=RTOL_CONTROLLER,
            atol=1e-12,
            err_msg=key,
        )


# ---------------------------------------------------------------------- cluster config


def test_free_ports_are_distinct_and_bindable():
    import socket

    ports = distributed.free_ports(3)
    assert len(set(ports)) == 3
    for p in ports:
        with socket.socket() as s:
            s.bind((distributed.LOOPBACK, p))


def test_free_ports_refuses_other_addresses():
    with pytest.raises(ValueError, match="loopback"):
        distributed.free_ports(1, host="0.0.0.0")
    with pytest.raises(ValueError, match=">= 1"):
        distributed.free_ports(0)


def test_local_cluster_configs():
    configs = distributed.local_cluster_configs(2, ports=[23001, 23002])
    assert configs == [
        {
            "cluster": {"worker": ["127.0.0.1:23001", "127.0.0.1:23002"]},
            "task": {"type": "worker", "index": i},
        }
        for i in range(2)
    ]
    fresh = distributed.local_cluster_configs(3)
    hosts = fresh[0]["cluster"]["worker"]
    assert len(set(hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    with pytest.raises(ValueError, match="distinct"):
        distributed.local_cluster_configs(2, ports=[5000, 5000])
    with pytest.raises(ValueError, match="2 distinct"):
        distributed.local_cluster_configs(2, ports=[5000])


def test_task_index():
    assert distributed.task_index("") == 0
    assert distributed.task_index({"task": {"type": "worker", "index": 3}}) == 3
    assert distributed.task_index(json.dumps({"task": {"index": 1}})) == 1
    with pytest.raises(ValueError, match="not valid JSON"):
        distributed.task_index("{oops")
    with pytest.raises(ValueError, match="non-negative integer"):
        distributed.task_index({"task": {"index": -1}})


def test_worker_backup_dir(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"task": {"type": "worker", "index": 1}}))
    assert distributed.worker_backup_dir("/ckpt") == os.path.join("/ckpt", "worker-1")


# ---------------------------------------------------------------------- launcher


def _script(tmp_path, body):
    path = tmp_path / "w.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_launcher_passes_tf_config_and_returns_outputs(tmp_path):
    script = _script(
        tmp_path,
        """
        import json, os, sys
        c = json.loads(os.environ["TF_CONFIG"])
        print(c["task"]["index"], len(c["cluster"]["worker"]), sys.argv[1:], os.environ["EXTRA"])
        """,
    )
    results = distributed.launch_local_workers(
        script, 3, ["a", "b"], timeout=60, worker_env=lambda i: {"EXTRA": f"x{i}"}
    )
    assert [r.stdout.split() for r in results] == [
        [str(i), "3", "['a',", "'b']", f"x{i}"] for i in range(3)
    ]
    assert all(r.returncode == 0 and not r.killed for r in results)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_launcher_kills_every_worker_when_one_fails(tmp_path):
    # Worker 0 starts a child in its process group and waits; worker 1 fails.
    script = _script(
        tmp_path,
        f"""
        import json, os, subprocess, sys, time
        i = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        if i == 1:
            time.sleep(0.5)
            sys.exit(3)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(os.path.join({str(tmp_path)!r}, "child.pid"), "w").write(str(child.pid))
        time.sleep(120)
        """,
    )
    t0 = time.monotonic()
    with pytest.raises(distributed.WorkerJobError, match="worker 1 exited with status 3") as e:
        distributed.launch_local_workers(script, 2, timeout=100)
    assert time.monotonic() - t0 < 30
    results = e.value.results
    assert results[1].returncode == 3 and not results[1].killed
    assert results[0].killed and results[0].returncode == -signal.SIGKILL
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_launcher_timeout_kills_all(tmp_path):
    script = _script(tmp_path, "import time\ntime.sleep(120)\n")
    t0 = time.monotonic()
    with pytest.raises(distributed.WorkerJobError, match="timed out after 1 s") as e:
        distributed.launch_local_workers(script, 2, timeout=1.0)
    assert time.monotonic() - t0 < 20
    assert e.value.timed_out
    assert all(r.killed and r.returncode == -signal.SIGKILL for r in e.value.results)
    results = distributed.launch_local_workers(script, 1, timeout=1.0, check=False)
    assert results[0].killed


def test_launcher_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        distributed.launch_local_workers(tmp_path / "missing.py", 2)
    script = _script(tmp_path, "pass\n")
    with pytest.raises(ValueError, match="timeout"):
        distributed.launch_local_workers(script, 2, timeout=0)
    with pytest.raises(TypeError, match="num_workers"):
        distributed.launch_local_workers(script, 2.0)


def test_launch_script_cli(tmp_path):
    script = _script(
        tmp_path,
        """
        import json, os, sys
        print("task", json.loads(os.environ["TF_CONFIG"])["task"]["index"], *sys.argv[1:])
        """,
    )
    cli = os.path.join(os.path.dirname(HERE), "scripts", "launch_local_workers.py")
    proc = subprocess.run(
        [sys.executable, cli, "--timeout", "60", "2", str(script), "--", "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[worker 0 out] task 0 --epochs 3" in proc.stdout
    assert "[worker 1 out] task 1 --epochs 3" in proc.stdout
    bad = subprocess.run(
        [sys.executable, cli, "2", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# ---------------------------------------------------------------------- data


def test_global_batch_dataset_fn_gives_each_replica_its_slice():
    import tensorflow as tf

    x = np.arange(20, dtype="int64")
    fn = distributed.global_batch_dataset_fn((x,), 8)
    seen = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        seen.append([b[0].numpy().tolist() for b in fn(ctx)])
    # Global batches [0..7], [8..15]; 16..19 do not fill one and are dropped.
    assert seen[0] == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert seen[1] == [[4, 5, 6, 7], [12, 13, 14, 15]]
    # One pipeline feeding two local replicas reads both halves, in replica order.
    one = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
    )
    assert [b[0].numpy().tolist() for b in fn(one)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
    ]
    odd = tf.distribute.InputContext(
        num_input_pipelines=3, input_pipeline_id=0, num_replicas_in_sync=3
    )
    with pytest.raises(ValueError, match="not a multiple of the 3 replicas"):
        fn(odd)
    with pytest.raises(ValueError, match="first dimensions differ"):
        distributed.global_batch_dataset_fn((x, x[:3]), 8)


# ---------------------------------------------------------------------- strategies


def test_check_strategy_accepts_the_synchronous_ones():
    import tensorflow as tf

    assert distributed.check_strategy() == "_DefaultDistributionStrategy"
    assert distributed.check_strategy(tf.distribute.OneDeviceStrategy("/cpu:0")) == (
        "OneDeviceStrategy"
    )
    assert distributed.check_strategy(tf.distribute.MirroredStrategy(["/cpu:0"])) == (
        "MirroredStrategy"
    )


def test_check_strategy_refuses_or_warns_by_class():
    # Stand-ins named like the real classes (those need a cluster or a TPU).
    class ParameterServerStrategyV2:
        pass

    class CentralStorageStrategy:
        pass

    class TPUStrategyV2:
        pass

    class SomethingElse:
        pass

    with pytest.raises(distributed.UnsupportedStrategyError, match="ClusterCoordinator"):
        distributed.check_strategy(ParameterServerStrategyV2())
    with pytest.raises(distributed.UnsupportedStrategyError, match="experimental"):
        distributed.check_strategy(CentralStorageStrategy())
    with pytest.raises(
        distributed.UnsupportedStrategyError,
        match="does not support SomethingElse. Supported strategies: no strategy, "
        "OneDeviceStrategy, MirroredStrategy, MultiWorkerMirroredStrategy",
    ):
        distributed.check_strategy(SomethingElse())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert distributed.check_strategy(TPUStrategyV2()) == "TPUStrategyV2"
    assert any("untested" in str(w.message) for w in caught)


def test_parameter_server_strategy_is_refused():
    """A real ParameterServerStrategy (in-process cluster on 127.0.0.1): Keras
    3's fit does not run under it, and check_strategy says so."""
    proc = subprocess.run(
        [sys.executable, PS], capture_output=True, text=True, env=ENV, timeout=JOB_TIMEOUT
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line and any(m in proc.stderr for m in _CLUSTER_FAILURES):
        pytest.skip("the loopback gRPC cluster (127.0.0.1) could not start")
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    result = json.loads(line[-1][len("RESULT ") :])
    assert result["strategy"].startswith("ParameterServerStrategy")
    assert result["check"] == "refused"
    assert "Supported strategies" in result["check_message"]
    assert result["fit"] == "failed"
    assert "ClusterCoordinator" in result["fit_error"]


# ---------------------------------------------------------------------- 2-worker training


@pytest.fixture(scope="module")
def equivalence_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiworker")
    t0 = time.monotonic()
    results = _run_job(["--mode", "worker", "--out-dir", str(tmp)])
    job_s = time.monotonic() - t0
    workers = _load_workers(tmp)
    single = _run_single(tmp / "single.json")
    return {"single": single, "workers": workers, "results": results, "job_s": job_s}


def test_two_workers_match_single_process(equivalence_runs):
    single, workers = equivalence_runs["single"], equivalence_runs["workers"]
    for r in equivalence_runs["results"]:
        assert "CLUSTER_READY 2" in r.stdout
    for w in workers:
        assert w["replicas"] == 2
        assert w["epochs_run"] == [0, 1, 2]
        # 3 epochs x 4 global batches: the counters count global steps.
        assert all(u["step"] == 12 and u["updates"] == 12 for u in w["state"].values())
        _assert_state_close(w["state"], single["state"])
        for epoch, state in single["epoch_states"].items():
            _assert_state_close(w["epoch_states"][epoch], state)
        np.testing.assert_allclose(w["history"]["loss"], single["history"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(
            w["history"]["penalty_loss"], single["history"]["penalty_loss"], rtol=1e-5
        )
    # The statistics moved: strengths left 1 and the gammas changed.
    strength = np.array(single["state"]["bn1"]["strength"])
    assert np.abs(strength - 1.0).max() > 0.05
    assert (
        np.abs(
            np.array(single["start_state"]["bn1"]["gamma"])
            - np.array(single["state"]["bn1"]["gamma"])
        ).max()
        > 1e-2
    )


def test_controller_acts_once_and_identically_on_every_worker(equivalence_runs):
    single, workers = equivalence_runs["single"], equivalence_runs["workers"]
    # update_every=2 over 12 steps: one check at each of steps 2, 4, ..., 12.
    assert [h["step"] for h in single["controller"]] == [2, 4, 6, 8, 10, 12]
    scales = [h["scale"] for h in single["controller"]]
    assert abs(scales[0] - 1.0) > 0.1  # the controller changed the strength
    for w in workers:
        _assert_controller_close(w["controller"], single["controller"])
    # Every worker computed exactly the same multiplier (bitwise).
    assert workers[0]["controller"] == workers[1]["controller"]
    assert [u["budget_scale"] for u in workers[0]["state"].values()] == [
        u["budget_scale"] for u in workers[1]["state"].values()
    ]
    assert workers[0]["history"]["acsl_budget_scale"] == workers[1]["history"]["acsl_budget_scale"]


@pytest.mark.slow
def test_resume_after_a_worker_is_killed(equivalence_runs, tmp_path):
    """Kill worker 1 after the first epoch's checkpoint, restart the job: it
    resumes at epoch 1 with the checkpointed state and ends where the
    uninterrupted run ends."""
    backup = tmp_path / "backup"
    out = tmp_path / "out"
    out.mkdir()
    pause = tmp_path / "paused.json"
    seen = {}

    def kill_when_paused(procs):
        if pause.exists() and "killed" not in seen:
            seen["files"] = {i: sorted(os.listdir(backup / f"worker-{i}")) for i in range(2)}
            seen["metadata"] = json.loads(
                (backup / "worker-0" / "training_metadata.json").read_text()
            )
            os.killpg(procs[1].pid, signal.SIGKILL)
            seen["killed"] = True

    args = ["--mode", "worker", "--out-dir", str(out), "--backup-dir", str(backup)]
    first = distributed.launch_local_workers(
        TRAIN,
        2,
        [*args, "--pause-epoch", "1", "--pause-file", str(pause)],
        timeout=JOB_TIMEOUT,
        env=ENV,
        worker_env=lambda i: {"ACSL_MW_PAUSE_WORKER": "1"},
        on_poll=kill_when_paused,
        check=False,
    )
    if "killed" not in seen:
        _skip_if_cluster_failed(first)
    assert seen.get("killed"), [r.stderr[-2000:] for r in first]
    assert first[1].returncode == -signal.SIGKILL
    assert first[0].returncode != 0  # it could not go on without worker 1
    assert not (out / "worker0.json").exists()
    for i in range(2):
        assert seen["files"][i] == ["latest.weights.h5", "training_metadata.json"]
    assert seen["metadata"]["epoch"] == 1

    _run_job(args)
    resumed = _load_workers(out)
    reference = equivalence_runs["workers"][0]
    for w in resumed:
        assert w["epochs_run"] == [1, 2]
        # The state the resumed run started from is the checkpoint of epoch 0.
        _assert_state_close(w["start_state"], reference["epoch_states"]["0"], atol=1e-6)
        _assert_state_close(w["state"], reference["state"], atol=1e-6)
        _assert_controller_close(
            w["controller"], [h for h in reference["controller"] if h["step"] > 4]
        )
    assert resumed[0]["controller"] == resumed[1]["controller"]
    # BackupAndRestore removes each worker's directory after a finished fit.
    assert not any((backup / f"worker-{i}").exists() for i in range(2))
    shutil.rmtree(backup, ignore_errors=True)


def test_wrapper_refuses_an_unsupported_strategy_when_built(monkeypatch):
    import tensorflow as tf

    import acsl_tf
    from tests._models import small_cnn

    class CentralStorageStrategy:  # stand-in named like the real class
        pass

    model = small_cnn()
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: CentralStorageStrategy())
    with pytest.raises(distributed.UnsupportedStrategyError, match="CentralStorage"):
        acsl_tf.prune_low_correlation(model, penalty=1e-3)
