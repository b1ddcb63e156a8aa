"""Tests of benchmarks/qat_tasks.py: the summary on synthetic records (fast)
and one record end to end in the compression benchmark's smoke setting."""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import compression as cb  # noqa: E402
import qat_tasks as qt  # noqa: E402


def _rec(seed, float_, ptq, longer_float, longer_ptq, qat_float, qat, task="classification"):
    def int8(v):
        return dict(metric=v, bytes=2048, latency_ms=0.1 + seed / 100)

    return dict(
        mode="ranked",
        task=task,
        seed=seed,
        method="acsl",
        target=0.85,
        metric_name="accuracy" if task == "classification" else "mae",
        higher_is_better=task == "classification",
        qat_epochs=1,
        qat_lr=1e-4,
        float=dict(metric=float_),
        ptq=int8(ptq),
        longer_float=dict(metric=longer_float),
        longer_ptq=int8(longer_ptq),
        qat_float=dict(metric=qat_float),
        qat=int8(qat),
        compression_record_metric=float_ + 0.001,
    )


def test_summary_gives_means_intervals_and_paired_differences():
    recs = [
        _rec(0, 0.90, 0.88, 0.905, 0.89, 0.90, 0.90),
        _rec(1, 0.91, 0.87, 0.915, 0.88, 0.91, 0.90),
        _rec(2, 0.92, 0.89, 0.925, 0.90, 0.92, 0.92),
    ]
    text = qt.summary_markdown(recs)
    # float32: mean 91.00, sd 1.0 -> half-width t(2) * 1 / sqrt(3) = 2.484
    assert "| float32, fine-tuned | 91.00 ± 2.48 |  |  |" in text
    assert "| PTQ int8 | 88.00 ± 2.48 | 2 | 0.110 |" in text
    # QAT - PTQ per seed: +2, +3, +3 (mean 2.67)
    assert "- QAT int8 - PTQ int8: +2.67" in text
    assert "(per seed: +2.00, +3.00, +3.00)" in text
    m, h = cb.mean_ci([2.0, 3.0, 3.0])
    assert f"[{m - h:+.2f}, {m + h:+.2f}]" in text
    # QAT - (float + PTQ): +1, +2, +2
    assert "- QAT int8 - (same epochs in float, then PTQ): +1.67" in text
    assert "at most 0.10 apart" in text


def test_summary_keeps_mae_unscaled_and_tasks_apart():
    recs = [
        _rec(0, 2.5, 2.7, 2.4, 2.6, 2.5, 2.55, task="counting"),
        _rec(0, 0.9, 0.88, 0.9, 0.89, 0.9, 0.9),
    ]
    text = qt.summary_markdown(recs)
    assert text.index("## classification") < text.index("## counting")
    assert "| float32, fine-tuned | 2.50 |" in text
    assert "- PTQ int8 - float32: +0.20" in text


def test_record_path_holds_mode_task_seed_method_and_target(tmp_path):
    p = qt.record_path(str(tmp_path), "ranked", "counting", 3, "ns", 0.85)
    assert p == os.path.join(str(tmp_path), "ranked", "counting", "seed3", "ns_t85.json")


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        qt.main(["--tasks", "detection", "--summary-only"])
    assert "unknown task 'detection'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qt.main(["--methods", "l1", "--summary-only"])
    assert "not a sparsity-trained method" in capsys.readouterr().err


def test_missing_sparse_model_is_reported_not_trained(tmp_path, capsys):
    ok = qt.run_one(
        "classification",
        0,
        "acsl",
        target=0.5,
        work_dir=str(tmp_path),
        out_dir=str(tmp_path / "out"),
        qat_epochs=1,
        qat_lr=1e-4,
        runs=2,
        mode="smoke",
    )
    assert ok is False
    assert "no sparsity-trained model" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_record_end_to_end_in_the_smoke_setting(tmp_path):
    pytest.importorskip("tensorflow_model_optimization")
    import keras

    from acsl_tf import workflow as wf

    cfg = cb.MODES["smoke"]["tasks"]["classification"]
    task = wf.make_task("classification", size=cfg["size"], seed=0, **cfg["overrides"])
    keras.utils.set_random_seed(0)
    model = task.build_model()
    wf.train(model, task, 1, lr=0.05, verbose=0)
    work = tmp_path / "work" / "smoke" / "classification" / "seed0"
    ctl = cb.controller_tag(cb.task_budget_options("smoke", "classification"))
    cb._save_model(model, cb.sparse_cache_path(str(work), "acsl", ctl, None))
    out = tmp_path / "out"
    assert qt.main(
        [
            "--mode", "smoke", "--tasks", "classification", "--seeds", "0",
            "--methods", "acsl", "--work-dir", str(tmp_path / "work"),
            "--out-dir", str(out), "--runs", "2",
        ]
    ) == 0  # fmt: skip
    with open(qt.record_path(str(out), "smoke", "classification", 0, "acsl", 0.5)) as f:
        rec = json.load(f)
    for key in ("float", "ptq", "longer_float", "longer_ptq", "qat_float", "qat"):
        assert 0.0 <= rec[key]["metric"] <= 1.0
    for key in ("ptq", "longer_ptq", "qat"):
        assert rec[key]["bytes"] > 1000 and rec[key]["latency_ms"] > 0
    assert rec["params"] < model.count_params()
    # int8 costs little on a trained model; the file matches its QAT model
    assert abs(rec["ptq"]["metric"] - rec["float"]["metric"]) < 0.1
    assert rec["qat"]["parity_relative_error"] < 0.1
    assert (out / "summary_smoke.md").exists()


def test_update_docs_embeds_the_summary_between_the_markers(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# Title\n\nintro\n\n## classification, ACSL\n\n| a |\n")
    doc = tmp_path / "QAT.md"
    doc.write_text(f"before\n{qt.DOCS_START}\nold\n{qt.DOCS_END}\nafter\n")
    qt.update_docs(str(summary), str(doc))
    text = doc.read_text()
    assert "old" not in text and "# Title" not in text
    assert "intro" in text and "\n### classification, ACSL\n" in text
    assert text.startswith("before\n") and text.endswith(f"{qt.DOCS_END}\nafter\n")
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        qt.update_docs(str(summary), str(doc))


def test_summary_reads_the_compression_record_when_the_run_did_not(tmp_path):
    rec = _rec(0, 0.90, 0.88, 0.905, 0.89, 0.90, 0.90)
    rec["compression_record_metric"] = None
    path = cb.record_path(str(tmp_path), "ranked", "classification", 0, "acsl", 0.85, "plain")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"metric": 0.8975}, f)
    assert qt.compression_metric(rec, str(tmp_path)) == 0.8975
    text = qt.summary_markdown([rec], compression_dir=str(tmp_path))
    assert "at most 0.25 apart" in text
    assert "apart" not in qt.summary_markdown([rec], compression_dir=str(tmp_path / "none"))


def test_summary_says_which_sign_is_better():
    acc = qt.summary_markdown([_rec(0, 0.9, 0.88, 0.9, 0.89, 0.9, 0.9)])
    mae = qt.summary_markdown([_rec(0, 2.5, 2.7, 2.4, 2.6, 2.5, 2.55, task="counting")])
    assert "Paired differences (positive is better)" in acc
    assert "Paired differences (negative is better)" in mae


def test_stop_time_ends_the_whole_run(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(qt, "run_one", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(cb, "_past_stop", lambda: len(calls) >= 1)
    args = ["--tasks", "classification,counting", "--seeds", "0,1", "--out-dir", str(tmp_path)]
    assert qt.main(args) == 0
    assert calls == [("classification", 0, "acsl")]  # one run, then the stop
    assert capsys.readouterr().out.count("stop time reached") == 1
