"""Tests of benchmarks/compression.py: aggregation, table and plots on
synthetic records (fast), and the smoke mode end to end (slow)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import compression as cb  # noqa: E402
from compression_configs import METHODS, MODES, SPECIAL  # noqa: E402


def _rec(
    task,
    method,
    seed,
    metric,
    target=None,
    finetune="plain",
    params=1000,
    flops=10_000,
    base_params=1000,
    base_flops=10_000,
    metric_name="accuracy",
    **extra,
):
    r = dict(
        mode="full",
        task=task,
        method=method,
        seed=seed,
        target=target,
        finetune=finetune,
        metric=metric,
        metric_name=metric_name,
        higher_is_better=metric_name != "mae",
        params=params,
        flops=flops,
        params_reduction=1 - params / base_params,
        flops_reduction=1 - flops / base_flops,
        metric_pruned=None if target is None else metric - 0.1,
    )
    r.update(extra)
    return r


def _synthetic():
    recs = []
    for s, (b, a, n) in enumerate([(0.90, 0.85, 0.80), (0.92, 0.87, 0.84), (0.91, 0.86, 0.82)]):
        recs.append(
            _rec(
                "classification",
                "baseline",
                s,
                b,
                tflite_bytes=4096,
                int8_bytes=1024,
                latency_ms_float32=1.0,
                latency_ms_int8=0.5,
            )
        )
        exp = dict(tflite_bytes=3072, latency_ms_float32=0.25) if s == 0 else {}
        recs.append(_rec("classification", "acsl", s, a, 0.5, params=400, flops=5000, **exp))
        recs.append(_rec("classification", "ns", s, n, 0.5, params=500, flops=5000))
    recs.append(
        _rec("classification", "acsl", 0, 0.88, 0.5, finetune="distill", params=400, flops=5000)
    )
    recs.append(_rec("counting", "baseline", 0, 3.0, metric_name="mae"))
    recs.append(_rec("counting", "l1", 0, 4.5, 0.7, params=100, flops=3000, metric_name="mae"))
    recs.append(
        dict(
            mode="full",
            task="classification",
            method="tfmot",
            seed=0,
            target=0.7,
            finetune="plain",
            metric=None,
            metric_name="accuracy",
            kernel_sparsity=0.6,
            unpruned_bytes=2048,
            tflite_bytes=2048,
            sparse_bytes=1024,
            unpruned_latency_ms=1.0,
            latency_ms_float32=1.1,
            sparse_latency_ms=1.2,
            params=5000,
        )
    )
    return recs


def test_aggregate_mean_spread_and_reductions():
    rows = cb.aggregate(_synthetic())
    by = {(r["task"], r["method"], r["target"], r["finetune"]): r for r in rows}
    a = by["classification", "acsl", 0.5, "plain"]
    assert a["n"] == 3 and a["seeds"] == [0, 1, 2]
    assert a["metric_mean"] == pytest.approx(0.86)
    assert a["metric_std"] == pytest.approx(0.01)  # sample std of .85, .87, .86
    assert a["metric_ci"] == pytest.approx(4.303 * 0.01 / 3**0.5)  # 95% t, 2 df
    assert a["params_reduction"] == pytest.approx(0.6)
    assert a["flops_reduction"] == pytest.approx(0.5)
    assert a["metric_pruned_mean"] == pytest.approx(0.76)
    ns = by["classification", "ns", 0.5, "plain"]
    assert ns["metric_std"] == pytest.approx(0.02)
    d = by["classification", "acsl", 0.5, "distill"]
    assert d["n"] == 1 and d["metric_std"] == 0.0 and d["metric_ci"] == 0.0
    base = by["classification", "baseline", None, "plain"]
    assert base["tflite_bytes"] == 4096 and base["latency_ms_int8"] == 0.5
    # tfmot records are reported separately; baseline rows come first per task.
    assert all(r["method"] != "tfmot" for r in rows)
    assert rows[0]["method"] == "baseline" and rows[0]["task"] == "classification"
    assert rows[-1]["task"] == "counting"
    assert len(cb.tfmot_rows(_synthetic())) == 1


def test_summary_markdown_table():
    md = cb.summary_markdown(_synthetic(), title="T")
    lines = md.splitlines()
    assert lines[0] == "# T"
    acsl = next(line for line in lines if line.startswith("| 50% | acsl |"))
    cells = [c.strip() for c in acsl.strip("|").split("|")]
    assert cells[2] == "86.0 ± 2.5"  # 95% t half-width
    assert cells[3] == "0,1,2"
    assert cells[4] == ""  # no sparsity-trained metric in these records
    assert cells[5] == ""  # nor what the sparsity training left removable
    assert cells[6] == "76.0"
    assert cells[7] == "60.0%" and cells[8] == "50.0%"
    assert cells[9] == "400"
    # the MAE task prints raw values, with no ± for a single seed
    l1 = next(line for line in lines if line.startswith("| 70% | l1 |"))
    assert "| 4.50 |" in l1 and "±" not in l1
    # distillation and tfmot sections
    drow = next(line for line in lines if "| 88.0 |" in line)
    assert drow == "| 50% | acsl | 86.0 ± 2.5 | 88.0 | 0,1,2 / 0 |"
    assert "## tfmot prune_low_magnitude" in md
    # tfmot next to the same seed's ACSL model
    assert "| classification | 0 | 60.0% | 2 | 2 | 1 | 3 | 1.000 | 1.100 | 1.200 | 0.250 |" in md
    assert cb.summary_markdown([], title="E").splitlines()[-1] == "No records."


def test_headline_and_paired_tables():
    recs = _synthetic()
    head = cb.headline_markdown(recs).splitlines()
    assert head[0] == "| task (metric) | target FLOPs red. | unpruned | acsl | ns | l1 | seeds |"
    row = next(line for line in head if line.startswith("| classification"))
    assert row == "| classification (accuracy %) | 50% | 91.0 ± 2.5 | 86.0 ± 2.5 | 82.0 ± 5.0 |  | 3 |"
    row = next(line for line in head if line.startswith("| counting"))
    assert row == "| counting (MAE, lower is better) | 70% | 3.00 |  |  | 4.50 | 1 |"
    assert cb.headline_markdown([]) == ""
    # a method over fewer seeds than the row's most says how many
    fewer = recs + [_rec("classification", "l1", 0, 0.80, 0.5)]
    row = next(
        line for line in cb.headline_markdown(fewer).splitlines() if "| classification" in line
    )
    assert row.endswith("| 86.0 ± 2.5 | 82.0 ± 5.0 | 80.0 (n=1) | 3 |")
    longer = recs + [_rec("classification", "baseline_long", 0, 0.95)]
    head = cb.headline_markdown(longer).splitlines()
    assert head[0].startswith("| task (metric) | target FLOPs red. | unpruned | unpruned, same epochs | acsl |")
    row = next(line for line in head if line.startswith("| classification"))
    assert row.startswith("| classification (accuracy %) | 50% | 91.0 ± 2.5 | 95.0 | 86.0 ± 2.5 |")
    paired = cb.paired_markdown(recs).splitlines()
    # acsl - ns per seed: 85-80, 87-84, 86-82 points; acsl better in all three,
    # and the paired interval 4.0 ± 4.303 * 1 / sqrt(3) excludes zero
    assert paired[2] == (
        "| classification | 50% | +5.0 (s0), +3.0 (s1), +4.0 (s2) | +4.0 [+1.5, +6.5] | 3/3 "
        "| acsl better |"
    )
    # an interval that includes zero is no win, whatever the seed count says
    mixed = [
        _rec("classification", m, s, v, 0.5)
        for s, (a, b) in enumerate([(0.85, 0.80), (0.80, 0.84), (0.86, 0.82)])
        for m, v in (("acsl", a), ("ns", b))
    ]
    assert cb.paired_markdown(mixed).splitlines()[2].endswith("| 2/3 | no difference shown |")
    worse = [dict(r, method={"acsl": "ns", "ns": "acsl"}[r["method"]]) for r in recs
             if r["method"] in ("acsl", "ns") and r["finetune"] == "plain"]
    assert cb.paired_markdown(worse).splitlines()[2].endswith("| 0/3 | ns better |")
    # for MAE, lower is better: a positive difference still means acsl better
    mae = [
        _rec("counting", "acsl", 0, 4.0, 0.5, metric_name="mae"),
        _rec("counting", "ns", 0, 5.5, 0.5, metric_name="mae"),
        _rec("counting", "ns", 1, 5.5, 0.5, metric_name="mae"),  # no acsl in seed 1
    ]
    assert cb.paired_markdown(mae).splitlines()[2] == (
        "| counting | 50% | +1.50 (s0) | +1.50 | 1/1 | one seed |"
    )
    assert cb.paired_markdown(mae[1:]) == ""
    assert "seed by seed" in cb.summary_markdown(recs)
    # the same pairing on the sparsity-trained models (before shrinking); a
    # seed whose record lacks the field is left out, and MAE keeps its sign
    stage = [
        _rec("counting", "acsl", 0, 3.0, 0.5, metric_name="mae", metric_sparse=6.0),
        _rec("counting", "ns", 0, 3.2, 0.5, metric_name="mae", metric_sparse=5.0),
        _rec("counting", "acsl", 1, 3.0, 0.5, metric_name="mae", metric_sparse=7.0),
        _rec("counting", "ns", 1, 3.1, 0.5, metric_name="mae", metric_sparse=5.5),
        _rec("counting", "acsl", 2, 3.0, 0.5, metric_name="mae"),
        _rec("counting", "ns", 2, 3.1, 0.5, metric_name="mae", metric_sparse=5.5),
    ]
    half = 12.706 * 0.25  # differences -1.0 and -1.5: mean -1.25, standard error 0.25
    assert cb.paired_markdown(stage, key="metric_sparse").splitlines()[2] == (
        f"| counting | 50% | -1.00 (s0), -1.50 (s1) | -1.25 [{-1.25 - half:+.2f}, "
        f"{-1.25 + half:+.2f}] | 0/2 | no difference shown |"
    )
    assert cb.paired_markdown(stage).splitlines()[2].startswith(
        "| counting | 50% | +0.20 (s0), +0.10 (s1), +0.10 (s2) |"
    )
    md = cb.summary_markdown(stage)
    assert "`acsl` against `ns`, the sparsity-trained models before shrinking" in md
    # metric_pruned is metric - 0.1 in these records: the difference is the same
    assert "`acsl` against `ns`, right after `shrink`, before fine-tuning" in md
    assert cb.paired_markdown(stage, key="metric_pruned") == cb.paired_markdown(stage)


def test_t_quantiles_and_intervals():
    assert cb.t975(1) == 12.706 and cb.t975(4) == 2.776 and cb.t975(11) == 2.228
    assert cb.t975(1000) == 1.96
    with pytest.raises(ValueError, match="df"):
        cb.t975(0)
    m, h = cb.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and h == pytest.approx(2.776 * (2.5**0.5) / 5**0.5)
    assert cb.mean_ci([7.0]) == (7.0, 0.0)


def test_summary_reports_the_worst_sparsity_trained_seed(tmp_path):
    recs = [
        _rec("segmentation", "baseline", s, 0.7, metric_name="mean_iou") for s in (0, 1)
    ] + [
        _rec("segmentation", "acsl", s, 0.6, 0.5, metric_name="mean_iou", metric_sparse=v)
        for s, v in ((0, 0.65), (1, 0.31))
    ] + [
        _rec("counting", "acsl", s, 3.0, 0.5, metric_name="mae", metric_sparse=v)
        for s, v in ((0, 3.5), (1, 9.25))
    ]
    md = cb.summary_markdown(recs)
    seg = next(line for line in md.splitlines() if line.startswith("| 50% | acsl |") and "31.0" in line)
    assert "| 0,1 | 31.0 |" in seg  # the lowest mIoU of the two seeds
    cnt = next(line for line in md.splitlines() if line.startswith("| 50% | acsl |") and "9.25" in line)
    assert "| 0,1 | 9.25 |" in cnt  # the highest (worst) MAE
    pytest.importorskip("matplotlib")
    paths = cb.plot(recs, str(tmp_path), suffix="_ranked")
    assert sorted(os.path.basename(p) for p in paths) == ["counting_ranked.png", "segmentation_ranked.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_controller_comparison_and_summary_section(tmp_path):
    new = [_rec("counting", "acsl", 0, 4.0, 0.85, metric_name="mae")]
    old = [_rec("counting", "acsl", 0, 5.0, 0.85, metric_name="mae")]
    text = cb.controller_markdown(new, old).splitlines()
    assert text[2] == "| acsl | counting | 85% | +1.00 (s0) | +1.00 | 1/1 | one seed |"
    assert cb.controller_markdown(new, []) == ""
    out = str(tmp_path)
    cb.write_record(cb.record_path(out, "full", "counting", 0, "acsl", 0.85), new[0])
    ep = os.path.join(out, "epoch_controller")
    cb.write_record(cb.record_path(ep, "full", "counting", 0, "acsl", 0.85), old[0])
    pytest.importorskip("matplotlib")
    md = open(cb.write_summary(out, "full")).read()
    assert "## Budget controller: rate (current) vs epoch (earlier)" in md
    assert "| acsl | counting | 85% | +1.00 (s0) |" in md


def test_docs_embedding(tmp_path):
    summary = cb.summary_markdown(_synthetic(), title="T")
    readme_block, bench_block = cb.docs_blocks(summary)
    assert readme_block.startswith("| task (metric) |") and "seed by seed" in readme_block
    assert "## classification" not in readme_block
    assert bench_block.startswith("## Results\n")
    assert "\n### classification: accuracy %" in bench_block and "\n# T" not in bench_block
    doc = "intro\n<!-- compression:start -->\nold\n<!-- compression:end -->\ntail\n"
    new = cb.embed(doc, "NEW")
    assert new == "intro\n<!-- compression:start -->\n\nNEW\n\n<!-- compression:end -->\ntail\n"
    assert cb.embed(new, "NEW") == new  # idempotent
    with pytest.raises(ValueError, match="markers"):
        cb.embed("no markers", "x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text(summary)
    readme, bench = tmp_path / "README.md", tmp_path / "B.md"
    readme.write_text(doc)
    bench.write_text(doc)
    cb.update_docs(str(out), str(readme), str(bench))
    assert readme_block in readme.read_text() and bench_block in bench.read_text()


def test_plot_writes_one_png_per_task(tmp_path):
    paths = cb.plot(_synthetic(), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["classification.png", "counting.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_records_round_trip_and_paths(tmp_path):
    out = str(tmp_path)
    p = cb.record_path(out, "full", "counting", 2, "acsl", 0.85, "distill")
    assert p.endswith(os.path.join("runs", "full", "counting", "seed2", "acsl_t85_distill.json"))
    assert cb.record_path(out, "full", "counting", 2, "baseline").endswith("seed2/baseline.json")
    recs = _synthetic()
    for i, r in enumerate(recs):
        cb.write_record(cb.record_path(out, "full", r["task"], r["seed"], f"m{i}"), r)
    loaded = cb.load_records(out, "full")
    assert len(loaded) == len(recs)
    assert sorted(json.dumps(r, sort_keys=True) for r in loaded) == sorted(
        json.dumps(r, sort_keys=True) for r in recs
    )
    assert cb.load_records(out, "smoke") == []


def test_tfmot_worker_builds_the_task_architectures():
    import _tfmot_worker as worker
    import keras

    from acsl_tf import workflow as wf

    for task in ("classification", "segmentation", "counting"):
        ref = wf.make_task(task, size="tiny").build_model()
        model, shape = worker.build_task_model(keras, task, "tiny")
        assert shape == tuple(ref.input_shape[1:])
        assert model.count_params() == ref.count_params()
        assert [type(x).__name__ for x in model.layers] == [type(x).__name__ for x in ref.layers]
    tf_keras = pytest.importorskip("tf_keras")  # the `bench` extra
    model, _ = worker.build_task_model(tf_keras, "counting", "tiny")
    assert isinstance(model, tf_keras.Model)
    assert model.count_params() == wf.make_task("counting", size="tiny").build_model().count_params()
    # the Keras 3 modules are restored afterwards
    import acsl_tf.models._blocks as blocks

    assert blocks.keras is keras


def test_configs_are_consistent():
    for mode in MODES.values():
        for m in mode["methods"]:
            assert m in METHODS or m in SPECIAL
        assert mode["export_target"] in mode["targets"]
        assert set(mode["tasks"]) <= {"classification", "segmentation", "counting"}
        for cfg in mode["tasks"].values():
            assert cfg.get("base_schedule", "constant") in ("constant", "cosine")
    for name in ("smoke", "full"):
        assert set(MODES[name]["tasks"]) == {"classification", "segmentation", "counting"}
    assert len(MODES["ranked"]["seeds"]) >= 5 and MODES["ranked"]["per_target_sparsity"]
    assert METHODS["ns"]["sparsity"] == "ns" and METHODS["l1"]["sparsity"] is None
    assert METHODS["cap"]["criterion"] == "cap"


def test_main_rejects_unknown_method():
    with pytest.raises(ValueError, match="Unknown method"):
        cb.main(["--mode", "smoke", "--methods", "magic", "--summary-only"])


@pytest.mark.slow
def test_smoke_mode_end_to_end_and_resumes(tmp_path):
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    argv = ["--mode", "smoke", "--tasks", "classification", "--out-dir", out, "--work-dir", work]
    assert cb.main(argv) == 0
    recs = cb.load_records(out, "smoke")
    methods = sorted(r["method"] for r in recs)
    assert methods == sorted(MODES["smoke"]["methods"])
    for r in recs:
        assert 0.0 <= r["metric"] <= 1.0
        if r["method"] not in ("baseline", "baseline_long"):
            assert r["target"] == 0.5
            assert r["flops_reduction"] >= 0.5 - 1e-6
            assert r["params"] < next(b["params"] for b in recs if b["method"] == "baseline")
            assert r["tflite_bytes"] > 0 and r["latency_ms_int8"] > 0
            if r["method"] != "dcp":  # plans by shrink record the groups cut to one channel
                assert isinstance(r["collapsed_groups"], int) and r["collapsed_groups"] >= 0
    by = {r["method"]: r for r in recs}
    assert by["baseline_long"]["params"] == by["baseline"]["params"]
    assert by["baseline_long"]["seconds_train"] > 0
    assert os.path.exists(os.path.join(out, "summary_smoke.md"))
    # every run records the fingerprint of the one baseline
    ids = {r["baseline_id"] for r in recs}
    assert len(ids) == 1
    base_id = ids.pop()
    assert cb._check_recorded_baseline(out, "smoke", "classification", 0, base_id, 0.0)
    assert not cb._check_recorded_baseline(out, "smoke", "classification", 0, "other", 0.0)
    # resumable: a second call finds every record and writes nothing new
    mtimes = {p: os.path.getmtime(p) for p in _json_files(out)}
    assert (
        cb.run_task_seed(
            "classification",
            0,
            mode="smoke",
            methods=MODES["smoke"]["methods"],
            targets=[0.5],
            out_dir=out,
            work_dir=work,
        )
        == 0
    )
    assert {p: os.path.getmtime(p) for p in _json_files(out)} == mtimes
    # a baseline store is filled from the work dir's baseline and read first
    store = str(tmp_path / "store")
    os.remove(cb.record_path(out, "smoke", "classification", 0, "baseline"))
    cb.run_task_seed(
        "classification",
        0,
        mode="smoke",
        methods=["baseline"],
        targets=[0.5],
        out_dir=out,
        work_dir=work,
        baseline_store=store,
    )
    stored = cb._load_model(os.path.join(store, "smoke", "classification", "seed0.keras"))
    assert cb.weights_fingerprint(stored) == base_id
    again = json.load(open(cb.record_path(out, "smoke", "classification", 0, "baseline")))
    assert again["baseline_id"] == base_id


def _json_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".json")]


@pytest.mark.slow
def test_per_target_sparsity_training_and_cosine_baseline(tmp_path, monkeypatch):
    """Per-target mode: one sparsity-trained model per target, each aimed at it."""
    smoke = dict(MODES["smoke"], per_target_sparsity=True, targets=(0.3, 0.5))
    smoke["tasks"] = dict(smoke["tasks"])
    smoke["tasks"]["classification"] = dict(smoke["tasks"]["classification"], base_schedule="cosine")
    monkeypatch.setitem(MODES, "smoke", smoke)
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    n = cb.run_task_seed(
        "classification", 0, mode="smoke", methods=("baseline", "acsl"), targets=[0.3, 0.5],
        out_dir=out, work_dir=work, export=False,
    )
    assert n == 3
    recs = {(r["method"], r["target"]): r for r in cb.load_records(out, "smoke")}
    assert recs["acsl", 0.3]["sparsity_target"] == 0.3
    assert recs["acsl", 0.5]["sparsity_target"] == 0.5
    cached = sorted(f for f in os.listdir(os.path.join(work, "smoke", "classification", "seed0"))
                    if f.startswith("acsl_sparse"))
    assert cached == ["acsl_sparse_rate_t30.keras", "acsl_sparse_rate_t50.keras"]
    assert recs["baseline", None]["budget"]["base_schedule"] == "cosine"


def test_update_docs_per_mode(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary_ranked.md").write_text(cb.summary_markdown(_synthetic(), title="R"))
    readme, bench = tmp_path / "README.md", tmp_path / "B.md"
    start, end = cb.doc_markers("ranked")
    assert (start, end) == ("<!-- compression-ranked:start -->", "<!-- compression-ranked:end -->")
    assert cb.doc_markers("full")[0] == "<!-- compression:start -->"
    full_block = "<!-- compression:start -->\nFULL\n<!-- compression:end -->\n"
    for p in (readme, bench):
        p.write_text(f"top\n{full_block}{start}\nold\n{end}\n")
    cb.update_docs(str(out), str(readme), str(bench), mode="ranked")
    text = readme.read_text()
    assert "FULL" in text and "old" not in text and "| classification (accuracy %) | 50% |" in text
    assert "## Results" in bench.read_text()
    with pytest.raises(FileNotFoundError):
        cb.update_docs(str(out), str(readme), str(bench), mode="smoke")


# --------------------------------------------------------------------------- DCP / DKP


def test_dcp_settings_merge_and_resolve(monkeypatch):
    from compression_configs import DCP_DEFAULTS

    for mode, mcfg in MODES.items():
        for task in mcfg["tasks"]:
            s = cb.dcp_settings(mode, task)
            assert set(s) == set(DCP_DEFAULTS)
            cfg = mcfg["tasks"][task]
            want = (mcfg.get("dcp") or {}).get("aux_epochs") or cfg["sparsity_epochs"]
            assert s["aux_epochs"] == want
    # None resolves to the task's sparsity budget; the task's dict wins over the mode's
    smoke = dict(MODES["smoke"], dcp=dict(n_samples=8))
    smoke["tasks"] = dict(smoke["tasks"])
    smoke["tasks"]["counting"] = dict(smoke["tasks"]["counting"], dcp=dict(n_samples=4, steps=0))
    monkeypatch.setitem(MODES, "smoke", smoke)
    s = cb.dcp_settings("smoke", "counting")
    assert s["n_samples"] == 4 and s["steps"] == 0
    assert s["aux_epochs"] == smoke["tasks"]["counting"]["sparsity_epochs"]
    assert s["aux_lr"] == smoke["tasks"]["counting"]["sparsity_lr"]
    assert cb.dcp_settings("smoke", "classification")["n_samples"] == 8
    assert cb.dcp_cache_stem(s) == "dcp_heads3_e1_lr0.01_w1"
    # an entry of the mode's dict named after a task: that task's settings
    smoke["dcp"] = dict(n_samples=8, counting=dict(n_samples=6, per_step=0.25))
    assert cb.dcp_settings("smoke", "classification")["n_samples"] == 8
    s = cb.dcp_settings("smoke", "counting")
    assert s["n_samples"] == 4 and s["per_step"] == 0.25  # the task's own dict last
    assert cb.dcp_settings("full", "segmentation")["per_step"] == 0.0625
    assert cb.dcp_settings("full", "classification")["per_step"] == 1  # as published
    smoke["dcp"] = dict(n_sample=8)
    with pytest.raises(ValueError, match="Unknown DCP settings"):
        cb.dcp_settings("smoke", "classification")
    smoke["dcp"] = dict(classification=dict(steps=-1))
    with pytest.raises(ValueError, match="'steps'"):
        cb.dcp_settings("smoke", "classification")
    for bad in (dict(max_heads=0), dict(per_step=0), dict(per_step=1.5), dict(per_step=True)):
        smoke["dcp"] = bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            cb.dcp_settings("smoke", "classification")


def test_dcp_configs():
    assert METHODS["dcp"]["prune"] == "dcp" and METHODS["dcp"]["sparsity"] is None
    assert METHODS["dkp"]["prune"] == "dkp"
    assert "dcp" in MODES["full"]["methods"] and "dcp" in MODES["smoke"]["methods"]
    assert "dcp" not in MODES["ranked"]["methods"]  # run with --methods dcp
    for mode in MODES.values():
        assert "dkp" not in mode.get("distill_methods", ())  # its masks need the plain model


def test_dcp_stagewise_and_eps_configs(monkeypatch, tmp_path):
    assert METHODS["dcp_stagewise"]["prune"] == "dcp"
    assert METHODS["dcp_stagewise"]["options"] == {"schedule": "stagewise"}
    assert METHODS["dcp_eps"]["prune"] == "dcp"
    assert METHODS["dcp_eps"]["options"] == {"stopping": "epsilon"}
    for m in ("dcp_stagewise", "dcp_eps"):
        assert METHODS[m]["sparsity"] is None and METHODS[m]["criterion"] == "dcp"
        for mode in MODES.values():  # run on request only
            assert m not in mode["methods"] and m not in mode.get("distill_methods", ())
    s = cb.dcp_settings("smoke", "classification")
    assert s["stage_epochs"] == 1 and s["epsilon"] == 0.002
    smoke = dict(MODES["smoke"])
    monkeypatch.setitem(MODES, "smoke", smoke)
    smoke["dcp"] = dict(stage_epochs=0, epsilon=0)
    s = cb.dcp_settings("smoke", "classification")
    assert s["stage_epochs"] == 0 and s["epsilon"] == 0
    for bad in (
        dict(stage_epochs=-1),
        dict(stage_epochs=1.0),
        dict(epsilon=-0.1),
        dict(epsilon=1.0),
        dict(epsilon="0.01"),
        dict(epsilon=True),
    ):
        smoke["dcp"] = bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            cb.dcp_settings("smoke", "classification")
    # the command line accepts them
    argv = ["--mode", "smoke", "--methods", "dcp_stagewise,dcp_eps", "--summary-only",
            "--out-dir", str(tmp_path)]
    assert cb.main(argv) == 0


def test_calibration_batch_takes_at_most_one_epoch():
    import types

    import numpy as np

    def batches():
        i = 0
        while True:  # a repeated pipeline
            yield np.full((4, 2), i, np.float32), np.full((4,), i)
            i += 1

    task = types.SimpleNamespace(train_ds=batches, steps_per_epoch=3, batch_size=4)
    x, y = cb.calibration_batch(task, 6)
    assert x.shape == (6, 2) and y.tolist() == [0, 0, 0, 0, 1, 1]
    x, y = cb.calibration_batch(task, 100)  # capped at one epoch: no repeats
    assert len(x) == 12 and sorted(set(y.tolist())) == [0, 1, 2]


def test_method_criterion_builds_taylor_on_the_task_data():
    from compression_configs import METHODS, TAYLOR_SAMPLES

    from acsl_tf import workflow as wf
    from acsl_tf.pruning.criteria import TaylorCriterion

    task = wf.make_task("counting", size="tiny")
    assert cb.method_criterion(METHODS["fpgm"], task) == "fpgm"
    assert cb.method_criterion(METHODS["l1"], task) == "l1"
    crit = cb.method_criterion(METHODS["taylor"], task)
    assert isinstance(crit, TaylorCriterion)
    n = min(TAYLOR_SAMPLES, task.steps_per_epoch * task.batch_size)
    x0, y0 = cb.calibration_batch(task, n)
    assert crit.x.shape == x0.shape and np.array_equal(crit.x, x0) and np.array_equal(crit.y, y0)
    model = task.build_model()
    small = wf.prune(model, target_flops=0.5, criterion=crit)
    from acsl_tf.pruning.profile import profile

    reduction = 1 - profile(small).total_flops / profile(model).total_flops
    assert 0.5 <= reduction < 0.6


def test_dkp_layers_and_zero_fraction():
    import numpy as np

    from acsl_tf.models import vgg_small

    model = vgg_small((28, 28, 1), 10, width=0.25)
    names = cb.dkp_layers(model)
    assert names and all(model.get_layer(n).__class__.__name__ == "Conv2D" for n in names)
    k = model.get_layer(names[0]).kernel
    k.assign(np.zeros(k.shape, np.float32))
    total = sum(int(np.prod(model.get_layer(n).kernel.shape)) for n in names)
    assert cb.kernel_zero_fraction(model, names) == pytest.approx(int(np.prod(k.shape)) / total)


def test_summary_with_dcp_and_dkp_records():
    recs = _synthetic() + [
        _rec("classification", "dcp", 0, 0.84, 0.5, params=450, flops=4900, metric_sparse=0.8),
        _rec(
            "classification", "dkp", 0, 0.83, 0.5, kernel_sparsity_finetuned=0.5,
            model_sparsity=0.45, dense_bytes=4096, sparse_bytes=2048,
        ),
    ]
    md = cb.summary_markdown(recs)
    assert "| dcp |" in md.splitlines()[6]  # a column of the overview
    assert "## DKP: kernels zeroed" in md
    assert "| classification | 50% | 83.0 | 0 | 50.0% | 45.0% | 4 | 2 |" in md
    assert cb.dkp_markdown(_synthetic()) == ""
    assert "auxiliary heads" not in cb.summary_markdown(_synthetic())


@pytest.mark.slow
def test_smoke_dcp_classification_and_counting(tmp_path):
    """``--methods baseline,dcp`` end to end on the tiny classification and
    counting tasks; then DKP from the same cached heads' fine-tuning."""
    import math

    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    argv = ["--mode", "smoke", "--tasks", "classification,counting", "--methods",
            "baseline,dcp", "--no-export", "--out-dir", out, "--work-dir", work]
    assert cb.main(argv) == 0
    recs = {(r["task"], r["method"]): r for r in cb.load_records(out, "smoke")}
    assert sorted(recs) == [
        ("classification", "baseline"), ("classification", "dcp"),
        ("counting", "baseline"), ("counting", "dcp"),
    ]
    for task in ("classification", "counting"):
        base, r = recs[task, "baseline"], recs[task, "dcp"]
        assert r["target"] == 0.5 and r["criterion"] == "dcp" and r["finetune"] == "plain"
        # uniform keep fraction: at least the target, a coarse step above it at tiny widths
        assert 0.5 - 1e-6 <= r["flops_reduction"] <= 0.65
        assert r["params"] < base["params"] and r["flops"] < base["flops"]
        for key in ("metric", "metric_pruned", "metric_sparse"):
            assert math.isfinite(r[key])
            if task == "classification":
                assert 0.0 <= r[key] <= 1.0
            else:
                assert r[key] >= 0.0
        assert r["aux_points"] and r["seconds_select"] > 0
        assert all(0 < kept < size for _, size, kept in r["widths"])
        assert r["dcp"] == cb.dcp_settings("smoke", task)
    assert recs["counting", "dcp"]["metric_name"] == "mae"
    assert len(recs["counting", "dcp"]["aux_points"]) == 3  # pixel heads at 3 stage boundaries
    # DKP starts from the same cached fine-tuning with the heads
    n = cb.run_task_seed(
        "classification", 0, mode="smoke", methods=("dkp",), targets=[0.5],
        out_dir=out, work_dir=work, export=False,
    )
    assert n == 1
    dkp = next(r for r in cb.load_records(out, "smoke") if r["method"] == "dkp")
    assert dkp["metric_sparse"] == recs["classification", "dcp"]["metric_sparse"]
    assert dkp["params"] == recs["classification", "baseline"]["params"]
    assert dkp["flops_reduction"] == 0.0
    assert dkp["kernel_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert dkp["kernel_sparsity_finetuned"] == pytest.approx(dkp["kernel_sparsity"])
    assert dkp["sparse_bytes"] < dkp["dense_bytes"]


@pytest.mark.slow
def test_smoke_dcp_stagewise_classification(tmp_path):
    """``--methods baseline,dcp_stagewise`` end to end on the tiny
    classification task."""
    import math

    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    argv = ["--mode", "smoke", "--tasks", "classification", "--methods",
            "baseline,dcp_stagewise", "--no-export", "--out-dir", out, "--work-dir", work]
    assert cb.main(argv) == 0
    recs = {r["method"]: r for r in cb.load_records(out, "smoke")}
    assert sorted(recs) == ["baseline", "dcp_stagewise"]
    r = recs["dcp_stagewise"]
    assert r["target"] == 0.5 and r["criterion"] == "dcp" and r["schedule"] == "stagewise"
    assert r["stopping"] == "target"
    assert 0.5 - 1e-6 <= r["flops_reduction"] <= 0.65
    assert r["params"] < recs["baseline"]["params"]
    for key in ("metric", "metric_pruned", "metric_sparse"):
        assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    stages = r["stages"]
    assert [st["head"] for st in stages][-1] == "output"
    assert len(stages) == len(r["aux_points"]) + 1  # a stage per head, then the output
    assert all(st["epochs"] == 1 for st in stages)
    reductions = [st["flops_reduction"] for st in stages]
    assert reductions == sorted(reductions)
    assert reductions[-1] == pytest.approx(r["flops_reduction"], abs=1e-6)
    assert sum(len(st["groups"]) for st in stages) == len(r["widths"])
    assert r["dcp"] == cb.dcp_settings("smoke", "classification")
    assert r["seconds_stage_finetune"] > 0


def test_export_records_an_int8_parity_failure(monkeypatch):
    from acsl_tf import workflow as wf
    from acsl_tf.export import ParityError

    calls = []

    def fake(model, task, out_dir, *, name, runs, progress, int8=True):
        calls.append(int8)
        if int8:
            raise ParityError(
                "The TFLite model (int8) does not reproduce the Keras model: relative error "
                "0.216 > tolerance 0.1. Nothing was written to 'x'.",
                report=None,
            )
        return {"tflite_bytes": 10, "latency_ms_float32": 1.0}

    monkeypatch.setattr(wf, "export_and_measure", fake)
    out = cb._export(None, None, "w", "m", 5)
    assert calls == [True, False]
    assert out["tflite_bytes"] == 10 and "int8_bytes" not in out
    assert out["int8_parity_error"].endswith("relative error 0.216 > tolerance 0.1.")


def test_stop_at_is_the_next_occurrence_of_that_time_of_day():
    import calendar

    noon = float(calendar.timegm((2026, 11, 30, 12, 0, 0)))
    assert cb._parse_stop_at("13:30", now=noon) == noon + 5400
    # 00:35 has passed at noon: it means tomorrow's.
    assert cb._parse_stop_at("00:35", now=noon) == noon + 86400 - 11 * 3600 - 25 * 60
    for bad in ("25:00", "12:60", "noon", "12"):
        with pytest.raises(ValueError, match="HH:MM"):
            cb._parse_stop_at(bad, now=noon)


def test_removable_column_shows_the_worst_seed():
    recs = [
        _rec("classification", "acsl", seed, 0.9, target=0.5, sparse_removable=rem)
        for seed, rem in ((0, 0.51), (1, 0.42), (2, 0.49))
    ]
    md = cb.summary_markdown(recs, title="T")
    row = next(line for line in md.splitlines() if line.startswith("| 50% | acsl |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "42.0%"


def test_backfill_removable_reads_the_cached_sparse_model(tmp_path):
    import acsl_tf
    from tests._models import small_cnn

    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    opts = cb.task_budget_options("ranked", "classification")
    rec = _rec("classification", "acsl", 0, 0.9, target=0.5, mode="ranked")
    rec.update(budget_options=opts, sparsity_target=0.5)
    cb.write_record(cb.record_path(out, "ranked", "classification", 0, "acsl", 0.5), rec)
    # A baseline-only record and a record without its cached model stay as they are.
    cb.write_record(
        cb.record_path(out, "ranked", "classification", 1, "acsl", 0.5), dict(rec, seed=1)
    )
    wrapped = acsl_tf.prune_low_correlation(small_cnn(filters=(8, 12)), penalty=1e-3)
    for wr in acsl_tf.get_wrappers(wrapped):
        g = np.ones(wr.layer.gamma.shape, "float32")
        g[: g.shape[0] // 2] = 0.0
        wr.layer.gamma.assign(g)
    path = cb.sparse_cache_path(
        os.path.join(work, "ranked", "classification", "seed0"),
        "acsl",
        cb.controller_tag(opts),
        0.5,
    )
    assert path.endswith("acsl_sparse_rate_p0_k0_s0.5_t50.keras")
    os.makedirs(os.path.dirname(path))
    wrapped.save(path)
    assert cb.backfill_removable(out, work, "ranked") == 1
    recs = {r["seed"]: r for r in cb.load_records(out, "ranked")}
    expected = acsl_tf.plan_shrink(wrapped, threshold=cb.SPARSE_THRESHOLD).flops_reduction
    assert recs[0]["sparse_removable"] == pytest.approx(expected) and expected > 0.3
    assert "sparse_removable" not in recs[1]


def test_dcp_recon_selects_with_lambda_zero_on_the_same_heads():
    import keras

    from acsl_tf import dcp

    assert METHODS["dcp_recon"]["prune"] == "dcp"
    assert METHODS["dcp_recon"]["options"] == {"aux_weight": 0.0}
    for mode in MODES.values():  # run on request only
        assert "dcp_recon" not in mode["methods"]
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = inp
    for i, c in enumerate((8, 8, 16)):
        x = keras.layers.Conv2D(c, 3, padding="same", name=f"c{i}")(x)
        x = keras.layers.BatchNormalization(name=f"b{i}")(x)
        x = keras.layers.ReLU(name=f"r{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="fc")(x))
    aux = dcp.with_auxiliary_heads(model, at=["r0", "r1"], task="classification")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((16, 12, 12, 3)).astype("float32")
    ys = rng.integers(0, 4, 16)
    settings = cb.dcp_settings("smoke", "classification")
    fields = {}
    for name in ("dcp", "dcp_recon"):
        small, fields[name], cbs = cb.prune_dcp(
            "dcp", model, aux, xs, ys, 0.5, settings, options=METHODS[name]["options"]
        )
        assert cbs == [] and small.count_params() < model.count_params()
    assert fields["dcp"]["selection_aux_weight"] == settings["aux_weight"] == 1.0
    assert fields["dcp_recon"]["selection_aux_weight"] == 0.0
    assert fields["dcp_recon"]["dcp"] == fields["dcp"]["dcp"]  # same heads' settings


def test_summary_pairs_dcp_l1_and_the_beta_variants_seed_by_seed():
    recs = []
    for s, (a, n, d, b) in enumerate([(0.85, 0.80, 0.83, 0.86), (0.87, 0.84, 0.86, 0.86)]):
        recs.append(_rec("classification", "baseline", s, 0.9))
        recs.append(_rec("classification", "acsl", s, a, 0.5))
        recs.append(_rec("classification", "ns", s, n, 0.5))
        recs.append(_rec("classification", "dcp", s, d, 0.5))
        recs.append(_rec("classification", "acsl_beta", s, b, 0.5))
    text = cb.summary_markdown(recs)
    other = text.split("## Other pairs, seed by seed", 1)[1].split("\n## ", 1)[0]
    assert "`dcp` against `ns`:" in other and "`dcp` against `acsl`:" in other
    assert "| classification | 50% | +3.0 (s0), +2.0 (s1) | +2.5 [" in other  # dcp - ns
    assert "| classification | 50% | -2.0 (s0), -1.0 (s1) | -1.5 [" in other  # dcp - acsl
    assert "`acsl_beta` against `acsl`:" in other and "+1.0 (s0), -1.0 (s1)" in other
    assert "`l1` against" not in other and "`ns_beta`" not in other  # absent methods
    # the README's overview block keeps ACSL against NS only
    readme, _ = cb.docs_blocks(text)
    assert "Other pairs" not in readme and "dcp - ns" not in readme


def test_plot_bands_only_with_three_seeds_and_y_range_from_the_data():
    # acsl: 3 seeds; acsl_clip: 2 seeds far apart (their 95% t interval
    # must not set the y range)
    recs = [_rec("segmentation", "baseline", s, 0.7, metric_name="mean_iou") for s in (0, 1, 2)]
    recs += [
        _rec("segmentation", "acsl", s, v, 0.5, flops=5_000, metric_name="mean_iou")
        for s, v in ((0, 0.60), (1, 0.62), (2, 0.64))
    ]
    recs += [
        _rec("segmentation", "acsl_clip", s, v, 0.5, flops=5_000, metric_name="mean_iou")
        for s, v in ((0, 0.3), (1, 0.9))
    ]
    recs += [
        _rec("segmentation", "acsl_center", s, 0.5, 0.5, flops=5_000, metric_name="mean_iou")
        for s in (0, 1, 2)
    ]
    rows = [r for r in cb.aggregate(recs) if r["finetune"] == "plain"]
    series, (lo, hi) = cb.plot_series(rows, "flops_reduction", 100.0)
    by = {sr["method"]: sr for sr in series}
    assert set(by) == {"acsl", "acsl_clip", "acsl_center"}
    assert by["acsl"]["main"] and not by["acsl_clip"]["main"]
    assert by["acsl_clip"]["band"] is None and by["acsl_clip"]["n"] == 2
    # a variant gets no band even with 3 seeds
    assert by["acsl_center"]["band"] is None and by["acsl_center"]["n"] == 3
    low, high = by["acsl"]["band"]
    assert by["acsl"]["xs"] == [50.0] and by["acsl"]["ys"] == pytest.approx([62.0])
    half = 100 * cb.mean_ci([0.60, 0.62, 0.64])[1]
    assert low == pytest.approx([62.0 - half]) and high == pytest.approx([62.0 + half])
    # the range holds the means (50-62), the baseline (70) and acsl's band,
    # padded 8%; acsl_clip's interval (+-381 points) stays out of it
    assert 100 * cb.mean_ci([0.3, 0.9])[1] > 300
    bottom, span = 50.0, 70.0 - 50.0
    assert lo == pytest.approx(bottom - 0.08 * span) and hi == pytest.approx(70.0 + 0.08 * span)


def test_every_acsl_option_is_paired_against_acsl():
    from compression_configs import METHODS, OPTION_VARIANTS

    pairs = set(cb.OTHER_PAIRS)
    missing = [m for m in OPTION_VARIANTS + ("acsl_galloc",) if (m, "acsl") not in pairs]
    assert missing == []
    assert all(a in METHODS and b in METHODS for a, b in pairs)


def test_weights_fingerprint_tells_weights_apart():
    import keras

    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    a = cb.weights_fingerprint(m)
    assert len(a) == 16 and a == cb.weights_fingerprint(m)
    w = m.get_weights()
    w[1] = w[1] + 1e-7
    m.set_weights(w)
    assert cb.weights_fingerprint(m) != a


def test_pairs_across_retrained_baselines_are_marked_and_listed():
    def rec(method, seed, metric, base, **kw):
        return _rec("segmentation", method, seed, metric, target=0.5, baseline_metric=base, **kw)

    recs = [
        rec("acsl", 0, 0.70, 0.72),
        rec("ns", 0, 0.68, 0.72),
        rec("acsl", 1, 0.71, 0.73),
        rec("ns", 1, 0.70, 0.735),  # retrained baseline, other weights
        rec("acsl", 2, 0.69, 0.71, baseline_id="aa"),
        rec("ns", 2, 0.66, 0.71, baseline_id="bb"),  # same metric, other weights
    ]
    lines = cb.paired_markdown(recs).splitlines()
    assert "+2.0 (s0), +1.0 (s1\u2020), +3.0 (s2\u2020)" in lines[2]
    assert lines[-1].startswith("\u2020 the two runs of this seed")
    assert "\u2020" not in cb.paired_markdown(recs[:2])
    assert cb.same_baseline(recs[0], recs[1]) and not cb.same_baseline(recs[2], recs[3])
    assert not cb.same_baseline(recs[4], recs[5])
    assert cb.same_baseline(dict(baseline_id="x", baseline_metric=1.0), dict(baseline_id="x"))
    drift = cb.baseline_drift_markdown(recs).splitlines()
    assert drift[0].startswith("| task | seed | baselines |")
    assert drift[2:] == [
        "| segmentation | 1 | 2 | 0.7300 (1 runs), 0.7350 (1 runs) | 0.0050 |",
        "| segmentation | 2 | 2 | 0.7100 (1 runs), 0.7100 (1 runs) | 0.0000 |",
    ]
    assert cb.baseline_drift_markdown(recs[:2]) == ""


def test_collapsed_groups_are_read_from_the_warning_and_listed():
    import warnings

    from acsl_tf import LayerCollapseWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("something else", UserWarning, stacklevel=1)
        groups = tuple((f"conv{i}", 16, 1) for i in range(6))
        warnings.warn(LayerCollapseWarning("cut 6 of 17 groups", groups), stacklevel=1)
    assert cb.collapsed_groups(caught) == 6
    assert cb.collapsed_groups(caught[:1]) == 0
    recs = [
        _rec("segmentation", "l1", 3, 0.16, 0.5, collapsed_groups=6),
        _rec("segmentation", "l1", 4, 0.16, 0.5, collapsed_groups=5),
        _rec("segmentation", "taylor", 3, 0.7, 0.85, collapsed_groups=0),
        _rec("counting", "l1", 3, 9.0, 0.5, collapsed_groups=2, metric_name="mae"),
    ]
    line = cb.collapse_line(recs, "segmentation")
    assert line.endswith("groups per seed, runs recorded since the field exists): `l1` 50%: 6 (s3), 5 (s4).")
    assert cb.collapse_line(recs[2:3], "segmentation") == ""
    assert "`l1` 50%: 6 (s3), 5 (s4)." in cb.summary_markdown(recs)
