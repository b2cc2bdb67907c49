"""The data-quality gate: the suites catch corrupted data, and a failing suite blocks
publication (the previous version stays what ``tess-ffi sql`` returns)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from expectations.gate import (
    Gate,
    ValidationFailed,
    failure_message,
    validate_partition,
    validate_tables,
)
from expectations.suites import PartitionContext
from flows.ingest import ingest_ccd
from lakehouse.schemas import CANDIDATES, FEATURES, star_id_base
from lakehouse.store import Lakehouse
from tasks import ingestion
from tasks.simulate import simulate_sector
from tess_ffi.cli import app

runner = CliRunner()
N_FRAMES = 8


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("ffi-gx")
    return simulate_sector(
        out, sector=1, camera=1, ccd=1, n_cadences=N_FRAMES, n_stars=60, science_size=96, seed=5
    )


@pytest.fixture(scope="module")
def lake(sim, tmp_path_factory) -> Path:
    """A lake with one clean ingest of the simulated CCD."""
    path = tmp_path_factory.mktemp("lake-gx") / "lake"
    ingest_ccd(1, 1, 1, source=str(sim.paths[0].parent), lake=str(path), batch_size=4)
    return path


def _ctx(lh: Lakehouse) -> PartitionContext:
    return PartitionContext.from_tables(
        1,
        1,
        1,
        frames=lh.read("frames"),
        stars=lh.read("stars"),
        rejected=lh.read("rejected_frames"),
    )


def _failed(report) -> set[str]:
    return {f["description"] for f in report.failed}


def _sql(lake: Path, query: str) -> list[dict]:
    res = runner.invoke(app, ["sql", query, "--lake", str(lake), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_published_tables_pass_their_suites(lake):
    reports = validate_partition(str(lake), 1, 1, 1, docs=False)
    assert {r.table for r in reports} >= {
        "frames",
        "stars",
        "rejected_frames",
        "photometry",
        "photometry_coverage",
    }
    assert all(r.success for r in reports), failure_message(reports)
    assert all(Path(r.json_path).is_file() for r in reports)
    assert str(lake / "_reports") in reports[0].json_path


def test_corrupted_photometry_is_caught(lake, tmp_path):
    """Polars input; each corruption is named in the report."""
    import polars as pl

    lh = Lakehouse(str(lake))
    ctx = _ctx(lh)
    ph = pl.from_arrow(lh.read("photometry")).sort("cadence", "star_id")
    bad = pl.concat(
        [
            ph,
            ph.head(1),  # a duplicated (star_id, cadence)
            ph.head(1).with_columns(cadence=pl.lit(99999, pl.Int32)),  # not a frame
        ]
    ).with_row_index("i")
    good = bad.filter(pl.col("quality") == 0)["i"]
    i = pl.col("i")
    bad = bad.with_columns(
        flux=pl.when(i == good[0]).then(float("nan")).otherwise(pl.col("flux")),
        flux_err=pl.when(i == good[1]).then(-1.0).otherwise(pl.col("flux_err")),
        quality=pl.when(i == good[2]).then(pl.lit(1 << 30, pl.Int32)).otherwise(pl.col("quality")),
        btjd=pl.when(i == good[3]).then(pl.col("btjd") + 1.0).otherwise(pl.col("btjd")),
    ).drop("i")
    gate = Gate(lh, run_id="unit-photometry")
    chunk, coverage = gate.validate_chunks("photometry", [("one", bad)], ctx)
    assert not chunk.success and chunk.failed_chunks == ["one"]
    assert {
        "(star_id, cadence) unique",
        "cadence is a frame of the partition",
        "flux not null/NaN where quality == 0",
        "quality has only documented bits",
        "btjd is the frame's btjd (increasing with cadence)",
    } <= _failed(chunk)
    assert any(d.startswith("flux_err > 0") for d in _failed(chunk))
    assert not coverage.success
    assert {"every cadence of photometry is a published frame"} <= _failed(coverage)
    assert any(d.startswith("every frame has all") for d in _failed(coverage))
    # a readable report: JSON and a Data Docs page of the failing chunk
    saved = json.loads(Path(chunk.json_path).read_text())
    assert saved["success"] is False and saved["failed"]
    assert Path(urlparse(chunk.data_docs).path).is_file()
    message = failure_message([chunk, coverage])
    assert "\n" not in message and "photometry" in message and "s0001-1-1" in message
    assert chunk.json_path in message


def test_frames_time_order_and_bits(lake):
    lh = Lakehouse(str(lake))
    ctx = _ctx(lh)
    frames = lh.read("frames").sort_by("cadence")
    btjd = frames["btjd"].to_numpy().copy()
    btjd[[2, 3]] = btjd[[3, 2]]  # not increasing with cadence any more
    dq = frames["dquality"].to_numpy().copy()
    dq[0] |= 1 << 20  # not a DQUALITY bit
    bad = frames.set_column(
        frames.schema.get_field_index("btjd"), "btjd", pa.array(btjd)
    ).set_column(frames.schema.get_field_index("dquality"), "dquality", pa.array(dq, pa.int32()))
    report = Gate(lh, run_id="unit-frames").validate("frames", bad.to_pandas(), ctx)
    assert {
        "btjd increases with cadence",
        "dquality has only SPOC DQUALITY bits (1..2**15)",
    } <= _failed(report)
    # a column of the wrong type and a missing one
    stars = lh.read("stars")
    stars = stars.set_column(0, "sector", pc.cast(stars["sector"], pa.int64())).drop_columns("dec")
    report = Gate(lh, run_id="unit-stars").validate("stars", stars, ctx)
    assert {"columns of stars as in lakehouse/schemas.py", "sector is int16"} <= _failed(report)


def _candidates(ranks, periods) -> pa.Table:
    n = len(ranks)
    base = star_id_base(1, 1, 1)
    return pa.table(
        {
            "sector": [1] * n,
            "camera": [1] * n,
            "ccd": [1] * n,
            "rank": ranks,
            "star_id": [base + i for i in range(n)],
            "score": [9.0] * n,
            "period_days": periods,
            "var_type": ["EW"] * n,
            "amplitude": [0.1] * n,
            "period_source": ["ls"] * n,
            "detection": ["ls"] * n,
            "n_events": [0] * n,
            "event_times": [[] for _ in range(n)],
        }
    ).cast(CANDIDATES)


def test_analytics_gate_blocks_the_write(lake):
    """find-variables validates its tables before writing any of them."""
    from flows.find_variables import publish_task

    lh = Lakehouse(str(lake))
    good = _candidates([1, 2, 3], [1.5, None, 0.3])
    reports = validate_tables(lh, {"candidates": good}, (1, 1, 1))
    assert reports[0].success
    bad = _candidates([1, 2, 4], [1.5, -2.0, None])  # ranks not dense, a negative period
    features = pa.table({f.name: pa.nulls(2, f.type) for f in FEATURES})
    features = features.set_column(0, "sector", pa.array([1, 1], pa.int16()))
    with pytest.raises(ValidationFailed) as err:
        publish_task.fn(str(lake), {"candidates": bad, "features": features}, 1, 1, 1)
    message = str(err.value)
    assert "\n" not in message and "candidates" in message and "features" in message
    assert "rank dense: 1 .. 3" in message
    failed = {r.table: _failed(r) for r in err.value.reports if not r.success}
    assert "period_days > 0 when set" in failed["candidates"]
    assert "camera set" in failed["features"]
    assert not lh.has_table("candidates") and not lh.has_table("features")  # nothing written


def test_failing_suite_blocks_publication(lake, sim, monkeypatch):
    """A corrupted partition is not published: the previous version stays what
    ``tess-ffi sql`` returns, the staging is kept, the report says why."""
    lh = Lakehouse(str(lake))
    query = "SELECT count(*) AS n, sum(flux) AS f, sum(flux_err) AS e FROM photometry"
    before = _sql(lake, query)
    versions = {t: lh.version(t) for t in ("photometry", "stars", "frames", "rejected_frames")}
    real = ingestion.photometer_frame
    target = lh.read("frames").sort_by("cadence")["cadence"][3].as_py()  # in batch 1 of 3

    def corrupt(frame, stars, mask):
        cols, row = real(frame, stars, mask)
        if frame.meta.cadence == target:
            cols["flux_err"] = -np.abs(cols["flux_err"])  # impossible errors on one frame
        return cols, row

    monkeypatch.setattr(ingestion, "photometer_frame", corrupt)
    with pytest.raises(ValidationFailed) as err:  # batch size 3: a new run, recomputed
        ingest_ccd(1, 1, 1, source=str(sim.paths[0].parent), lake=str(lake), batch_size=3)
    message = str(err.value)
    assert "\n" not in message and "s0001-1-1" in message and "not published" in message
    assert "photometry:" in message and "flux_err > 0 where quality == 0" in message
    report_path = Path(message.rsplit("report ", 1)[1])
    report = json.loads(report_path.read_text())
    assert report["table"] == "photometry" and not report["success"]
    assert report["failed_chunks"] == ["batch-00001"]
    assert Path(urlparse(report["data_docs"]).path).is_file()  # the Data Docs page
    assert {t: lh.version(t) for t in versions} == versions  # nothing published
    assert _sql(lake, query) == before  # readers still see the previous version
    assert list((lake / "_staging" / "s0001-1-1").iterdir())  # staging kept for a retry
    res = runner.invoke(app, ["validate", "-s", "1", "-c", "1", "-d", "1", "--lake", str(lake)])
    assert res.exit_code == 0, res.output  # the published version is still valid
    assert "photometry" in res.output and "index.html" in res.output


def test_validate_command_flags_a_corrupted_published_partition(lake):
    """``tess-ffi validate`` re-runs the suites on what is published (here: written around
    the gate on purpose) and fails with a one-line reason."""
    lh = Lakehouse(str(lake))
    ph = lh.read("photometry")
    dup = pa.concat_tables([ph, ph.slice(0, 5)])
    lh.write_partition("photometry", dup, 1, 1, 1)
    res = runner.invoke(app, ["validate", "-s", "1", "-c", "1", "-d", "1", "--lake", str(lake)])
    assert res.exit_code == 1
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "photometry" in err[0] and "(star_id, cadence) unique" in err[0]
    res = runner.invoke(app, ["validate", "-s", "1", "-c", "1", "-d", "2", "--lake", str(lake)])
    assert res.exit_code == 1 and "nothing of s0001-1-2 is published" in res.output
    res = runner.invoke(app, ["validate", "-s", "0", "-c", "1", "-d", "1", "--lake", str(lake)])
    assert res.exit_code == 2


def test_manifest_suite(tmp_path):
    """The platform's ingest_manifest has a suite too (timestamps, statuses, attempts)."""
    from dataclasses import asdict

    from lakehouse.manifest import ManifestRow
    from lakehouse.schemas import INGEST_MANIFEST

    rows = [ManifestRow(1, 1, 1, "done", "ingest-ccd", 1), ManifestRow(1, 1, 2, "?", "x", -1)]
    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=INGEST_MANIFEST)
    gate = Gate(None, run_id="manifest", reports=tmp_path)
    ctx = PartitionContext(1, 1, 1)
    assert gate.validate("ingest_manifest", table.slice(0, 1), ctx).success
    report = gate.validate("ingest_manifest", table, ctx)
    assert {"attempts >= 0"} <= _failed(report)
    assert any(d.startswith("status in") for d in _failed(report))
