"""Tests of benchmarks/coupled_strength.py: the summary on synthetic records
and the residual-stream widths it reads from cifar_resnet (fast), one tiny
run end to end (slow)."""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import coupled_strength as cs  # noqa: E402


def _rec(seed, variant, sparse, pruned, final, removable, widths=(8, 16, 30)):
    return dict(
        seed=seed,
        variant=variant,
        target=0.5,
        metric_sparse=sparse,
        metric_pruned=pruned,
        metric=final,
        sparse_removable=removable,
        stream_widths={str(i + 1): w for i, w in enumerate(widths)},
        stream_widths_before={"1": 8, "2": 16, "3": 32},
    )


def test_summary_paired_differences_and_widths():
    recs = [
        _rec(0, "plain", 0.90, 0.50, 0.88, 0.40),
        _rec(1, "plain", 0.91, 0.60, 0.89, 0.42),
        _rec(0, "coupled", 0.92, 0.70, 0.90, 0.48, widths=(6, 12, 20)),
        _rec(1, "coupled", 0.91, 0.64, 0.90, 0.50, widths=(6, 14, 22)),
        _rec(2, "coupled", 0.50, 0.10, 0.20, 0.90),  # no plain partner: not paired
    ]
    text = cs.summary_markdown(recs)
    # coupled - plain on seeds 0 and 1: pruned +0.20 and +0.04 -> +12.00 points,
    # t(1) = 12.706 * sd(0.16 * 100 / sqrt 2) / sqrt 2 = 101.65
    assert "| 50% | 2 | +1.00 [" in text
    assert "| +12.00 [-89.65, +113.65] |" in text
    assert "| +1.50 [-4.85, +7.85] |" in text  # fine-tuned: +2, +1
    # three coupled seeds in the per-variant row, widths averaged over them
    row = next(line for line in text.splitlines() if line.startswith("| 50% | coupled |"))
    assert "| 3 |" in row
    assert "6.7/8, 14.0/16, 24.0/32" in row
    assert cs.summary_markdown([]) == ""


def test_stream_widths_reads_every_stage_of_cifar_resnet():
    import acsl_tf
    from acsl_tf.models import cifar_resnet

    m = cifar_resnet(8, 10, (16, 16, 1), width=0.5)
    assert cs.stream_widths(m) == {1: 8, 2: 16, 3: 32}
    small = acsl_tf.shrink(m, keep={"stage2_block1_2_bn": list(range(5))})
    assert cs.stream_widths(small) == {1: 8, 2: 5, 3: 32}


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    argv = [
        "--seeds", "0", "--targets", "0.5", "--n-train", "512", "--base-epochs", "1",
        "--sparsity-epochs", "1", "--finetune-epochs", "1",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(out),
    ]  # fmt: skip
    assert cs.main(argv) == 0
    recs = cs.cb.load_records(str(out))
    assert sorted(r["variant"] for r in recs) == ["coupled", "plain"]
    coupled = next(r for r in recs if r["variant"] == "coupled")
    assert coupled["coupled_groups"] == 3  # one per residual stage
    for r in recs:
        assert 0.0 <= r["metric"] <= 1.0 and r["params"] < r["params_before"]
    assert "Paired differences" in (out / "summary.md").read_text()
    # resumable: a second call writes nothing new
    before = {p: p.stat().st_mtime for p in out.rglob("*.json")}
    cs.main(argv)
    assert {p: p.stat().st_mtime for p in out.rglob("*.json")} == before


def test_one_seed_has_no_interval_and_docs_embedding(tmp_path, monkeypatch):
    recs = [_rec(0, "plain", 0.9, 0.5, 0.88, 0.4), _rec(0, "coupled", 0.92, 0.7, 0.9, 0.5)]
    text = cs.summary_markdown(recs)
    assert "| 50% | 1 | +2.00 | +20.00 | +2.00 | +10.00 |" in text
    assert "±" not in text.split("Paired")[0].split("|---|")[-1]
    out = tmp_path / "out" / "runs" / "seed0"
    out.mkdir(parents=True)
    for r in recs:
        (out / f"{r['variant']}_t50.json").write_text(json.dumps(r))
    doc = tmp_path / "ACSL.md"
    doc.write_text(f"intro\n{cs.DOCS_START}\nold\n{cs.DOCS_END}\nrest\n")
    monkeypatch.setattr(cs, "DOC", str(doc))
    cs.main(["--summary-only", "--update-docs", "--out-dir", str(tmp_path / "out")])
    new = doc.read_text()
    assert "old" not in new and "| 50% | 1 | +2.00 |" in new and new.endswith("rest\n")
