"""The science benchmark runs end to end on tiny inputs and writes its results' keys.

No recovery threshold is asserted on the tiny run (120 cadences on a 256x256 CCD are too
short for the long-period types); only that every section is there and fractions are sane.
"""

from __future__ import annotations

import json

from bench import science


def test_science_bench_quick(tmp_path):
    out = tmp_path / "results_science.json"
    assert science.main(["--quick", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    for key in ("per_type", "variables", "constant", "headline", "goals", "pass", "config"):
        assert key in res
    assert set(res["per_type"]) == set(science.TYPES)
    assert res["config"]["quick"] is True
    assert res["variables"]["n_injected"] == science.QUICK["n_variables"]
    assert res["n_truth_matched"] > 0.8 * res["n_truth_stars"]
    for r in res["per_type"].values():
        assert r["n_bright_recovered"] <= r["n_bright"] <= r["n_matched"] <= r["n_injected"]
        if r["recovered_fraction"] is not None:
            assert 0.0 <= r["recovered_fraction"] <= 1.0
    h = res["headline"]
    assert 0.0 <= h["recovered_fraction"] <= 1.0
    assert 0.0 <= h["constant_flagged_fraction"] <= 1.0
    assert 0.5 < h["precision_ratio"] < 5.0
    assert list(tmp_path.glob("tess-ffi-science-*")) == []  # work folder removed
