"""The ingest-ccd flow end to end on simulated SPOC FFIs: tables, re-runs and resumption."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.ingest import ingest_ccd
from lakehouse.schemas import FRAMES, PHOTOMETRY, STARS
from lakehouse.sql import run_query
from lakehouse.store import Lakehouse
from tasks.simulate import simulate_sector

N_CADENCES = 24


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small simulated CCD: 192x192 science pixels, 24 real sector-1 cadences."""
    out = tmp_path_factory.mktemp("ffi")
    return simulate_sector(
        out,
        sector=1,
        camera=1,
        ccd=1,
        n_cadences=N_CADENCES,
        n_stars=150,
        science_size=192,
        seed=7,
    )


@pytest.fixture(scope="module")
def clean_lake(sim, tmp_path_factory):
    """The lake of one uninterrupted run."""
    lake = tmp_path_factory.mktemp("lake-clean")
    summary = ingest_ccd(1, 1, 1, source=str(sim.paths[0].parent), lake=str(lake), batch_size=5)
    return lake, summary


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def _tables(lake) -> dict[str, pa.Table]:
    lh = Lakehouse(str(lake))
    return {
        "frames": _sorted(lh.read("frames"), ["cadence"]),
        "stars": _sorted(lh.read("stars"), ["star_id"]),
        "photometry": _sorted(lh.read("photometry"), ["star_id", "cadence"]),
    }


def test_tables_follow_the_contract(clean_lake, sim):
    lake, summary = clean_lake
    t = _tables(lake)
    assert t["frames"].schema.equals(FRAMES)
    assert t["stars"].schema.equals(STARS)
    assert t["photometry"].schema.equals(PHOTOMETRY)
    n_stars = t["stars"].num_rows
    assert summary["frames"] == N_CADENCES and summary["stars"] == n_stars > 50
    assert t["photometry"].num_rows == n_stars * N_CADENCES
    # one row per (star, cadence)
    keys = pc.add(pc.multiply(t["photometry"]["star_id"], 100000), t["photometry"]["cadence"])
    assert pc.count_distinct(keys).as_py() == t["photometry"].num_rows


def test_frames_carry_real_timing_and_quality(clean_lake, sim):
    """btjd is mid-exposure from TSTART/TSTOP; DQUALITY and cadence come from the headers."""
    import polars as pl

    lake, _ = clean_lake
    frames = _tables(lake)["frames"].to_pandas()
    truth = pl.read_parquet(sim.frames_truth_path).to_pandas().sort_values("cadence")
    np.testing.assert_array_equal(frames["cadence"].to_numpy(), truth["cadence"].to_numpy())
    np.testing.assert_allclose(frames["btjd"], (frames["tstart"] + frames["tstop"]) / 2)
    np.testing.assert_allclose(frames["btjd"], truth["btjd"], atol=1e-7)
    np.testing.assert_array_equal(frames["dquality"], truth["dquality"])
    assert np.all(np.diff(frames["btjd"]) > 0)
    # photometry inherits the frame's DQUALITY bits
    phot = _tables(lake)["photometry"]
    flagged = set(frames.loc[frames["dquality"] != 0, "cadence"])
    for cad in flagged:
        q = phot.filter(pc.equal(phot["cadence"], cad))["quality"].to_numpy()
        dq = int(frames.loc[frames["cadence"] == cad, "dquality"].iloc[0])
        assert np.all(q & dq == dq)


def test_constant_stars_agree_with_truth_within_errors(clean_lake, sim):
    """Flux in e-/s, aperture-corrected: constant stars match the simulated flux (including
    its common-mode factor) within their errors, and faint stars scatter as their errors say."""
    import polars as pl

    from tasks.simulate import expected_flux

    lake, _ = clean_lake
    t = _tables(lake)
    truth = pl.read_parquet(sim.truth_path)
    frames_truth = pl.read_parquet(sim.frames_truth_path).sort("cadence")
    model = expected_flux(truth, frames_truth)  # (n_truth, n_cadences) [e-/s]
    stars = pl.from_arrow(t["stars"])
    matched = _match(stars, truth)
    const = matched.filter(pl.col("var_type").is_null() | (pl.col("var_type") == ""))
    phot = pl.from_arrow(t["photometry"])
    cadences = frames_truth["cadence"].to_list()
    ratios, z_std = [], []
    for row in const.iter_rows(named=True):
        lc = phot.filter(pl.col("star_id") == row["star_id"]).sort("cadence")
        assert lc["cadence"].to_list() == cadences
        good = (lc["quality"] == 0).to_numpy()
        if good.sum() < len(good) // 2:  # edge stars: flagged, not compared
            continue
        f, e = lc["flux"].to_numpy()[good], lc["flux_err"].to_numpy()[good]
        true = model[row["truth_index"]][good]
        ratios.append(np.median(f / true))
        if row["tmag"] > 13:  # photon-noise dominated: residuals must scatter like flux_err
            z_std.append(np.std((f - true) / e))
    assert len(ratios) >= 50 and len(z_std) >= 20
    assert abs(np.median(ratios) - 1) < 0.02
    assert 0.8 < np.median(z_std) < 1.3


def _match(stars, truth, max_px: float = 1.0):
    import polars as pl
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([truth["x"].to_numpy(), truth["y"].to_numpy()]))
    d, i = tree.query(np.column_stack([stars["x"].to_numpy(), stars["y"].to_numpy()]))
    ok = d < max_px
    matched = (
        truth.with_row_index("truth_index")[i[ok]]
        .select("truth_index", "x", "y", "tmag", "flux", "var_type")
        .rename({"x": "x_true", "y": "y_true"})
    )
    return pl.concat(
        [stars.filter(pl.Series(ok)).select("star_id", "x", "y"), matched], how="horizontal"
    )


def test_rerun_replaces_the_partition(clean_lake, sim):
    """A second run of the same CCD gives identical tables, not duplicates."""
    lake, _ = clean_lake
    before = _tables(lake)
    v_before = Lakehouse(str(lake)).version("photometry")
    ingest_ccd(1, 1, 1, source=str(sim.paths[0].parent), lake=str(lake), batch_size=5)
    after = _tables(lake)
    assert Lakehouse(str(lake)).version("photometry") == v_before + 1
    for name in before:
        assert after[name].equals(before[name]), name
    n = run_query("SELECT count(*) AS n FROM photometry", str(lake))["n"][0].as_py()
    assert n == before["photometry"].num_rows


def test_interrupted_run_resumes_to_identical_tables(clean_lake, sim, tmp_path, monkeypatch):
    """A run that dies mid-way (an I/O error: infrastructure, not a bad file, which would be
    a recorded skip, see tests/test_faults.py) resumes from its staged batches."""
    from tasks import ingestion

    lake, _ = clean_lake
    src = tmp_path / "ffi"
    shutil.copytree(sim.paths[0].parent, src)
    victim = sim.paths[13].name
    real_read = ingestion.read_frame

    def failing_read(path, *args, **kwargs):
        if str(path).endswith(victim):
            raise OSError("injected read error")
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(ingestion, "read_frame", failing_read)
    lake2 = tmp_path / "lake"
    with pytest.raises(Exception, match="injected read error"):
        ingest_ccd(1, 1, 1, source=str(src), lake=str(lake2), batch_size=5)
    lh = Lakehouse(str(lake2))
    assert not lh.has_table("photometry")  # nothing published by the failed run
    monkeypatch.setattr(ingestion, "read_frame", real_read)
    summary = ingest_ccd(1, 1, 1, source=str(src), lake=str(lake2), batch_size=5)
    assert 0 < summary["frames_measured_now"] < N_CADENCES  # finished batches were reused
    resumed, clean = _tables(lake2), _tables(lake)
    for name in clean:
        assert resumed[name].equals(clean[name]), name
    assert not lh.list_chunks(lh.path("_staging"))
