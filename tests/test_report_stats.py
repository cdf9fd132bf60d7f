"""The demo report's paired statistics: per-seed differences with a t interval.

Checked against scipy's paired t-test (its confidence interval), an independent computation, and
on the report's own layout (results per model, one summary per seed).
"""

import numpy as np
import pytest
from scipy import stats

from segros.apps.report import paired_difference, paired_differences, paired_table
from segros.eval.geneval import TAGS


def test_interval_matches_scipys_paired_t_test():
    a = [0.71, 0.74, 0.69, 0.73, 0.75]
    b = [0.70, 0.70, 0.68, 0.69, 0.71]
    d = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d["n"] == 5
    assert d["mean"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high))
    assert d["low"] > 0  # every seed positive, small spread: the interval excludes zero


def test_one_seed_has_no_interval():
    d = paired_difference([0.5], [0.4])
    assert d["mean"] == pytest.approx(0.1) and d["low"] is None and d["high"] is None


def summary(overall, position):
    return {"overall": overall, "tags": {t: (position if t == "position" else overall) for t in TAGS}}


def test_report_pairs_models_seed_by_seed_and_marks_intervals_excluding_zero():
    results = {
        "pretrained": [summary(0.70, 0.30), summary(0.71, 0.31), summary(0.72, 0.29)],
        "sft": [summary(0.69, 0.35), summary(0.70, 0.30), summary(0.68, 0.40)],
        "segros": [summary(0.72, 0.36), summary(0.73, 0.31), summary(0.71, 0.41)],
    }
    diffs = paired_differences(results)
    assert set(diffs) == {"segros - sft", "sft - pretrained", "segros - pretrained"}  # no reca ran
    assert diffs["segros - sft"]["overall"]["mean"] == pytest.approx(0.03)
    assert diffs["segros - sft"]["overall"]["high"] - diffs["segros - sft"]["overall"]["low"] < 1e-9
    header, rows = paired_table(diffs)
    row = dict(zip(header, next(r for r in rows if r[0] == "segros - sft"), strict=True))
    assert row["overall"].endswith("*") and row["overall"].startswith("+3.0")
    sft = dict(zip(header, next(r for r in rows if r[0] == "sft - pretrained"), strict=True))
    assert not sft["position"].endswith("*")  # +5, -1, +11: the interval covers zero


def test_demo_ablations_flag_runs_all_or_the_named_ones():
    import argparse

    from segros.apps import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert parser.parse_args([]).ablations is None
    assert parser.parse_args(["--ablations"]).ablations == []
    assert parser.parse_args(["--ablations", "segros_eta0"]).ablations == ["segros_eta0"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--ablations", "segros_nonsense"])
