"""The user's side on a demo-like lake: status, catalog, download, export (ML + lightkurve),
plots, the HTML report in headless Chromium, and the ``load_lightcurve`` API."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lakehouse.store import Lakehouse
from tess_ffi.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """simulate -> ingest-ccd -> find-variables: a small demo lake (built once)."""
    from flows.find_variables import find_variables
    from flows.ingest import ingest_ccd
    from tasks.simulate import simulate_sector

    root = tmp_path_factory.mktemp("user")
    ffi, lake = root / "ffi", root / "lake"
    simulate_sector(
        ffi, sector=1, camera=1, ccd=1, n_cadences=80, n_stars=260, science_size=192, seed=11
    )
    ingest_ccd(1, 1, 1, source=str(ffi), lake=str(lake), batch_size=20)
    summary = find_variables(1, 1, 1, lake=str(lake))
    assert summary["candidates"] >= 3, summary
    return {"root": root, "ffi": ffi, "lake": str(lake), "lk": Lakehouse(str(lake))}


def invoke(args: list[str]):
    return runner.invoke(app, args, catch_exceptions=False)


def top_ids(demo, n: int) -> list[int]:
    cand = demo["lk"].read("candidates").sort_by("rank")
    return [int(v) for v in cand.column("star_id").to_pylist()[:n]]


# --------------------------------------------------------------------------- help + codes


@pytest.mark.parametrize("command", ["download", "status", "catalog", "export", "plot", "report"])
def test_help_has_examples(command):
    res = invoke([command, "--help"])
    assert res.exit_code == 0
    assert "Example" in res.output


def test_bad_arguments_exit_2(demo, tmp_path):
    lake = demo["lake"]
    assert runner.invoke(app, ["report", "-s", "1", "-c", "1", "-d", "5"]).exit_code == 2
    assert invoke(["plot", "--lake", lake]).exit_code == 2  # neither --star nor --top
    assert invoke(["plot", "--lake", lake, "--top", "2"]).exit_code == 2  # no partition
    res = invoke(["plot", "--lake", lake, "--star", "11199999", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "11199999" in res.output
    assert invoke(["plot", "--lake", lake, "--star", "42"]).exit_code == 2  # not an id
    bad = runner.invoke(app, ["export", "--name", "x", "--min-completeness", "1.5"])
    assert bad.exit_code == 2
    assert invoke(["export", "--name", "../x", "--lake", lake]).exit_code == 2


def test_work_failures_exit_1(demo, tmp_path):
    empty = str(tmp_path / "empty-lake")
    res = invoke(["report", "-s", "1", "-c", "1", "-d", "1", "--lake", empty])
    assert res.exit_code == 1 and res.output.startswith("error: ")
    res = invoke(["catalog", "--lake", empty])
    assert res.exit_code == 1
    res = invoke(["export", "--name", "n", "--lake", empty, "--out", str(tmp_path)])
    assert res.exit_code == 1 and "find-variables" in res.output


# --------------------------------------------------------------------------- status, catalog


def test_status_counts_and_time_span(demo):
    res = invoke(["status", "--lake", demo["lake"], "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    frames = demo["lk"].read("frames")
    t = frames.column("btjd").to_numpy()
    assert (row["sector"], row["camera"], row["ccd"]) == (1, 1, 1)
    assert row["frames"] == frames.num_rows == 80
    assert row["btjd_start"] == pytest.approx(t.min()) and row["btjd_stop"] == pytest.approx(
        t.max()
    )
    assert row["days"] == pytest.approx(t.max() - t.min(), abs=1e-3)
    n_stars = demo["lk"].read("stars").num_rows
    assert row["stars"] == n_stars == row["analysed_stars"]
    assert row["photometry_rows"] == n_stars * 80
    assert row["candidates"] == demo["lk"].read("candidates").num_rows
    table = invoke(["status", "--lake", demo["lake"]])
    assert table.exit_code == 0 and "photometry_rows" in table.output
    assert (
        invoke(["status", "--lake", demo["lake"], "-s", "2", "-f", "json"]).output.strip() == "[]"
    )


def test_status_of_empty_lake_and_unfinished_run(tmp_path):
    lake = tmp_path / "lake"
    (lake / "_staging" / "s0001-1-1" / "abc123").mkdir(parents=True)
    res = invoke(["status", "--lake", str(lake)])
    assert res.exit_code == 0
    assert "no data yet" in res.output and "s0001-1-1" in res.output and "abc123" in res.output


def test_catalog_lists_stars_with_tic_column(demo):
    res = invoke(["catalog", "--lake", demo["lake"], "--format", "json"])
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert len(rows) == demo["lk"].read("stars").num_rows
    assert {"star_id", "tic_id", "ra", "dec", "tmag", "var_type", "completeness"} <= set(rows[0])
    cands = json.loads(
        invoke(["catalog", "--lake", demo["lake"], "--candidates", "-f", "json"]).output
    )
    assert [r["star_id"] for r in cands][:3] == top_ids(demo, 3)
    bright = json.loads(
        invoke(["catalog", "--lake", demo["lake"], "--max-tmag", "10", "-f", "json"]).output
    )
    assert bright and all(r["tmag"] <= 10 for r in bright)
    none = invoke(["catalog", "--lake", demo["lake"], "--with-tic"])  # simulated: no TIC ids
    assert none.exit_code == 1 and "no star matches" in none.output


# --------------------------------------------------------------------------- download


def test_download_from_mast_keeps_verified_files_and_resumes(tmp_path, monkeypatch):
    from tests.mast_server import MastServer, make_tiny_sector

    served = tmp_path / "served"
    make_tiny_sector(served, sector=1, cameras=(1,), ccds=(1, 2), n_frames=4)
    out = tmp_path / "ffi"
    with MastServer(served) as srv:
        monkeypatch.setenv("TESS_FFI_MAST_URL", srv.url)
        names = sorted(p.name for p in served.glob("*-s0001-1-1-*_ffic.fits"))
        srv.fail_times(names[1], status=503, times=1)  # transient: retried
        res = invoke(["download", "-s", "1", "-c", "1", "-d", "1", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "4 fetched" in res.output
        assert sorted(p.name for p in out.iterdir()) == names  # no .part left, CCD 1 only
        for n in names:
            assert (out / n).read_bytes() == (served / n).read_bytes()
        assert srv.count(names[1]) == 2
        again = invoke(["download", "-s", "1", "-c", "1", "-d", "1", "--out", str(out)])
        assert again.exit_code == 0 and "0 fetched, 4 already there" in again.output
        assert srv.count(names[0]) == 1
        listed = invoke(
            ["download", "-s", "1", "-c", "1", "-d", "2", "--list", "--cadence-skip", "2"]
        )
        assert listed.exit_code == 0
        assert len([ln for ln in listed.stdout.splitlines() if ln.endswith("_ffic.fits")]) == 2
        ccd2 = sorted(p.name for p in served.glob("*-s0001-1-2-*_ffic.fits"))
        srv.not_found(ccd2[0])
        gone = invoke(["download", "-s", "1", "-c", "1", "-d", "2", "--out", str(tmp_path / "d2")])
        assert gone.exit_code == 1
        assert gone.output.startswith("error: ") and "404" in gone.output
        assert not list((tmp_path / "d2").glob("*.part"))


def test_download_copies_from_a_folder(demo, tmp_path):
    out = tmp_path / "copy"
    args = ["download", "-s", "1", "-c", "1", "-d", "1", "--source", str(demo["ffi"])]
    res = invoke([*args, "--out", str(out), "--max-frames", "3", "--cadence-skip", "5"])
    assert res.exit_code == 0, res.output
    src = sorted(p.name for p in demo["ffi"].glob("*_ffic.fits"))[::5][:3]
    assert sorted(p.name for p in out.iterdir()) == src
    missing = invoke([*args[:-2], "-d", "2", "--source", str(demo["ffi"]), "--out", str(out)])
    assert missing.exit_code == 1 and "no FFIs" in missing.output


# --------------------------------------------------------------------------- export (ML)


def test_export_ml_features_and_full_length_timeseries(demo, tmp_path):
    import pandas as pd
    import polars as pl

    lk = demo["lk"]
    res = invoke(
        ["export", "--lake", demo["lake"], "--name", "ds", "--out", str(tmp_path),
         "--min-completeness", "0.5"]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = tmp_path / "ds"
    feats = pl.read_parquet(ds / "features.parquet")
    csv = pd.read_csv(ds / "features.csv")
    assert len(csv) == feats.height > 0
    assert {"star_id", "ls_period", "stetson_j", "completeness", "median_snr", "var_type",
            "is_candidate"} <= set(feats.columns)  # fmt: skip
    assert feats["is_candidate"].sum() == feats["var_type"].is_not_null().sum() > 0
    npz = np.load(ds / "timeseries_s0001-1-1.npz")
    n_frames = lk.read("frames").num_rows
    assert npz["flux"].shape == npz["mask_bits"].shape == (feats.height, n_frames)
    assert npz["btjd"].shape == npz["cadence"].shape == (n_frames,)  # never truncated
    assert np.all(np.diff(npz["btjd"]) > 0)
    assert np.array_equal(npz["good"], npz["mask_bits"] == 0)
    assert sorted(npz["star_id"]) == sorted(feats["star_id"].to_list())
    # one star's row equals the lightcurves table, point by point
    sid = int(npz["star_id"][3])
    lc = pl.from_arrow(lk.read("lightcurves")).filter(pl.col("star_id") == sid).sort("cadence")
    assert np.allclose(npz["flux"][3], lc["flux"].to_numpy(), equal_nan=True)
    assert np.array_equal(npz["mask_bits"][3], lc["mask_bits"].to_numpy())
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["stars"] == feats.height and "btjd" in manifest["npz_arrays"]
    # stricter cuts select fewer stars; an existing name needs --overwrite
    again = ["export", "--lake", demo["lake"], "--name", "ds", "--out", str(tmp_path)]
    assert invoke(again).exit_code == 2
    strict = invoke([*again, "--overwrite", "--min-snr", "200"])
    assert strict.exit_code == 0
    qc = pl.from_arrow(lk.read("star_qc"))
    assert (
        pl.read_parquet(ds / "features.parquet").height
        == qc.filter(pl.col("median_snr") >= 200).height
    )
    nothing = invoke([*again, "--overwrite", "--min-snr", "1e12"])
    assert nothing.exit_code == 1 and "no star passes" in nothing.output


def test_timeseries_arrays_fill_missing_points():
    import pyarrow as pa

    from lakehouse.schemas import LcMask
    from tasks.export import timeseries_arrays

    lc = pa.table(
        {
            "star_id": [7, 7, 5],
            "cadence": [10, 12, 11],
            "flux": [1.0, 3.0, 5.0],
            "flux_err": [0.1, 0.1, 0.1],
            "flux_raw": [1.1, 3.1, 5.1],
            "mask_bits": [0, 4, 0],
        }
    )
    a = timeseries_arrays(lc, np.array([5, 7]), np.array([10, 11, 12]), np.array([1.0, 2.0, 3.0]))
    assert np.array_equal(a["flux"][1], [1.0, np.nan, 3.0], equal_nan=True)
    assert np.array_equal(a["flux"][0], [np.nan, 5.0, np.nan], equal_nan=True)
    assert a["mask_bits"][1].tolist() == [0, int(LcMask.NO_FLUX), 4]
    assert a["good"].tolist() == [[False, True, False], [True, False, False]]


# --------------------------------------------------------------------------- lightkurve


def test_lightkurve_round_trip(demo, tmp_path):
    import lightkurve as lk
    from astropy import units as u

    from tess_ffi.api import load_lightcurve

    ids = top_ids(demo, 2)
    res = invoke(
        ["export", "--lake", demo["lake"], "--name", "lk", "--out", str(tmp_path),
         "--format", "lightkurve", *[f"--star={s}" for s in ids]]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "lk").glob("*_lc.fits"))
    assert len(files) == 2
    path = next(f for f in files if str(ids[0]) in f.name)
    ours = load_lightcurve(ids[0], demo["lake"])
    lc_all = lk.read(path, quality_bitmask="none")
    assert isinstance(lc_all, lk.TessLightCurve)
    assert lc_all.time.format == "btjd" and lc_all.time.scale == "tdb"
    assert np.allclose(lc_all.time.value, ours["btjd"])
    assert np.allclose(lc_all.flux.value, ours["flux"], equal_nan=True)
    assert np.allclose(lc_all.flux_err.value, ours["flux_err"], equal_nan=True)
    assert lc_all.flux.unit == u.electron / u.s
    assert np.array_equal(lc_all.quality.value, ours["quality"])
    assert np.array_equal(np.asarray(lc_all["mask_bits"]), ours["mask_bits"])
    assert lc_all.meta["SECTOR"] == 1 and lc_all.meta["CAMERA"] == 1 and lc_all.meta["CCD"] == 1
    assert lc_all.meta["RA_OBJ"] == pytest.approx(ours.meta["ra"])
    assert lc_all.meta["TESSMAG"] == pytest.approx(ours.meta["tmag_est"])
    assert lc_all.meta["LABEL"] == f"tess-ffi {ids[0]}"
    # lightkurve's default mask drops exactly SPOC's default-bad cadences
    default = lk.read(path)
    bitmask = lk.utils.TessQualityFlags.DEFAULT_BITMASK
    assert len(default) == int(np.sum((ours["quality"] & bitmask) == 0))
    # and the usual lightkurve calls work on it
    pg = default.remove_nans().normalize().to_periodogram()
    assert pg.period_at_max_power.value > 0


def test_load_lightcurve_formats_and_fallback(demo, tmp_path):
    import polars as pl

    from tess_ffi.api import load_lightcurve, load_lightcurves

    sid = top_ids(demo, 1)[0]
    t = load_lightcurve(sid, demo["lake"])
    assert t.colnames == ["cadence", "btjd", "flux", "flux_err", "flux_raw", "quality", "mask_bits"]
    assert str(t["btjd"].unit) == "d" and t["flux"].unit.to_string() == "electron / s"
    assert len(t) == 80 and np.all(np.diff(t["btjd"]) > 0)
    assert t.meta["star_id"] == sid and t.meta["candidate_rank"] == 1
    df = load_lightcurve(sid, demo["lake"], format="polars", good_only=True)
    assert isinstance(df, pl.DataFrame) and (df["mask_bits"] == 0).all()
    assert df.height == int(np.sum(t["mask_bits"] == 0))
    many = load_lightcurves(top_ids(demo, 3), demo["lake"])
    assert many["star_id"].n_unique() == 3 and many.height == 240
    with pytest.raises(ValueError, match="no light curve"):
        load_lightcurve(11199999, demo["lake"])
    # a lake that has only photometry (find-variables not run): raw flux, quality-based mask
    raw = tmp_path / "raw-lake"
    for table in ("photometry", "stars", "frames"):
        shutil.copytree(Path(demo["lake"]) / table, raw / table)
    r = load_lightcurve(sid, str(raw))
    assert np.allclose(r["flux"], r["flux_raw"], equal_nan=True)
    assert np.all(r["mask_bits"] & 16)  # UNCORRECTED
    # plots still show the raw points (UNCORRECTED is not a bad measurement)
    from tasks.plots import lightcurve_figure, load_series

    series = load_series(Lakehouse(str(raw)), [sid])[sid]
    assert not series.corrected and series.good.sum() >= 70
    lo, hi = lightcurve_figure(series).axes[1].get_ylim()
    assert np.isfinite([lo, hi]).all() and lo < 1 < hi


# --------------------------------------------------------------------------- plots


def test_plot_star_writes_the_four_pngs(demo, tmp_path):
    from PIL import Image

    sid = next(
        s for s, p in zip(*_cand_cols(demo, "star_id", "period_days"), strict=True)
        if p is not None
    )  # fmt: skip
    res = invoke(["plot", "--lake", demo["lake"], "--star", str(sid), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for kind in ("lightcurve", "periodogram", "phase", "vsx"):
        png = tmp_path / f"star-{sid}-{kind}.png"
        assert str(png) in res.output
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 300


def _cand_cols(demo, *names):
    cand = demo["lk"].read("candidates").sort_by("rank")
    return [cand.column(n).to_pylist() for n in names]


def test_make_candidate_plots_top_n(demo, tmp_path):
    from tasks.plots import make_candidate_plots

    out = make_candidate_plots(demo["lake"], 1, 1, 1, 3, tmp_path / "p")
    assert list(out) == top_ids(demo, 3)
    for sid, paths in out.items():
        assert {"lightcurve", "periodogram", "vsx"} <= set(paths)
        assert all(p.exists() and p.name.startswith(f"star-{sid}-") for p in paths.values())
    res = invoke(
        ["plot", "--lake", demo["lake"], "--top", "2", "-s", "1", "-c", "1", "-d", "1",
         "--kind", "vsx", "--out", str(tmp_path / "q")]
    )  # fmt: skip
    assert res.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == sorted(
        f"star-{s}-vsx.png" for s in top_ids(demo, 2)
    )


def _eclipsing_series(var_type="EA", events=True):
    from tasks.plots import StarSeries

    t = np.arange(1325.0, 1352.0, 0.02)
    period, t_min = 2.5, 1326.1
    ph = np.mod((t - t_min) / period + 0.5, 1.0) - 0.5
    flux = 1000.0 * (1 - 0.3 * np.exp(-0.5 * (ph / 0.02) ** 2))
    flux -= 1000.0 * 0.1 * np.exp(-0.5 * ((np.abs(ph) - 0.5) / 0.02) ** 2)
    ev = [t_min + k * period / 2 for k in range(1, 4)] if events else []  # starts at a secondary
    return StarSeries(
        star_id=11100007,
        t=t,
        flux=flux,
        flux_err=np.full(t.size, 1.0),
        flux_raw=flux * (1 + 0.01 * (t - t[0]) / 27),
        mask_bits=np.zeros(t.size, int),
        period=period,
        var_type=var_type,
        event_times=ev,
        label="test",
    ), t_min


@pytest.mark.parametrize("events", [True, False])
def test_epoch_is_the_primary_minimum(events):
    from tasks.plots import choose_epoch, relative

    s, t_min = _eclipsing_series(events=events)
    t0 = choose_epoch(s.t, relative(s.flux, s.good), s.period, s.var_type, s.event_times)
    k = (t0 - t_min) / s.period
    assert abs(k - round(k)) * s.period < 0.03  # at a primary minimum, not the secondary
    assert s.t.min() <= t0 < s.t.min() + s.period


def test_epoch_of_a_pulsator_is_a_maximum():
    from tasks.plots import choose_epoch

    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(1325.0, 1331.0, 400))
    period, t_max = 0.1188, 1325.4136
    ph = 2 * np.pi * (t - t_max) / period
    y = 1 + 0.02 * np.cos(ph) + 0.006 * np.cos(2 * ph + 0.7) + rng.normal(0, 0.004, t.size)
    model = 1 + 0.02 * np.cos(ph) + 0.006 * np.cos(2 * ph + 0.7)
    t0 = choose_epoch(t, y, period, "DSCT")
    grid = np.linspace(0, period, 2000)
    true = grid[np.argmax(np.interp(grid, (t - t_max) % period, model, period=period))]
    d = ((t0 - t_max - true) / period + 0.5) % 1 - 0.5
    assert abs(d) < 0.03  # phase 0 within 3 % of the true maximum


def test_vsx_and_phase_axes():
    from tasks.plots import binned_median, phase_figure, phase_fold, vsx_figure

    s, _ = _eclipsing_series()
    fig = vsx_figure(s)
    ax_t, ax_p = fig.axes[:2]
    assert ax_p.get_xlim() == (0.0, 2.0)
    for ax in (ax_t, ax_p):
        lo, hi = ax.get_ylim()
        assert lo > hi  # magnitudes inverted: brighter up
        assert "magnitude" in ax.get_ylabel()
    assert "BTJD" in ax_t.get_xlabel() and ax_p.get_xlabel() == "phase"
    assert "BJD 24" in ax_p.get_title()
    ph_fig = phase_figure(s)
    assert ph_fig.axes[0].get_xlim() == (-0.5, 0.5)
    assert "P = 2.5 d" in ph_fig.axes[0].get_xlabel()
    ph = phase_fold(np.array([0.0, 1.25, 2.5, 3.75]), 2.5, 0.0)
    assert np.allclose(ph, [0.0, 0.5, 0.0, 0.5])
    c, m = binned_median(np.array([0.1, 0.15, 0.6]), np.array([1.0, 3.0, 5.0]), 2)
    assert np.allclose(c, [0.25, 0.75]) and np.allclose(m, [2.0, 5.0])


def test_magnitude_zero_point_matches_the_catalog():
    from tasks.catalog import TMAG10_FLUX
    from tasks.export import TMAG10_FLUX as ours
    from tasks.export import flux_to_tmag

    assert ours == TMAG10_FLUX
    assert flux_to_tmag(np.array([TMAG10_FLUX, TMAG10_FLUX / 100])) == pytest.approx([10.0, 15.0])
    assert np.isnan(flux_to_tmag(np.array([0.0, -1.0]))).all()


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def report(demo):
    path = demo["root"] / "site" / "report.html"
    res = invoke(
        ["report", "--lake", demo["lake"], "-s", "1", "-c", "1", "-d", "1", "--top", "4",
         "--out", str(path)]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return path


def test_report_is_self_contained(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    srcs = re.findall(r'src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "http://" not in text and "https://" not in text


@pytest.fixture(scope="module")
def served(report):
    """The report's folder over HTTP on 127.0.0.1 (what a person opening it gets)."""
    broken = report.parent / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>b</title></head>'
        '<body><img src="missing.png" alt="m"><a href="#nowhere">x</a>'
        "<script>console.error('boom')</script></body></html>"
    )
    handler = functools.partial(_QuietHandler, directory=str(report.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_report_in_headless_chromium(report, served, demo):
    from tests import browser

    if browser.executable() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: make test installs Debian's chromium")
        pytest.skip("chromium not installed (make test installs it)")
    with browser.Chromium() as chrome:
        page = chrome.check(f"{served}/{report.name}")
        control = chrome.check(f"{served}/broken.html")
    assert page.console_errors == []
    n_cand = demo["lk"].read("candidates").num_rows
    top = min(4, n_cand)
    # QC + thumbnails + 3-4 plots of each of the top candidates, all decoded
    assert len(page.images) >= 1 + top + 3 * top
    assert page.broken_images == []
    assert all(i["width"] >= 100 for i in page.images)
    assert page.broken_anchors == []
    assert "sector 1" in page.title
    for heading in ("Summary", "QC over time", f"Candidates ({n_cand})", "Plots of the top"):
        assert heading in page.text
    # the same checks do catch a broken page
    assert any("boom" in e for e in control.console_errors)
    assert any("404" in e for e in control.console_errors)
    assert len(control.broken_images) == 1 and control.broken_anchors == ["nowhere"]


# --------------------------------------------------------------------------- README


def test_readme_pictures_exist():
    text = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"docs/images/report.png", "docs/images/vsx.png"} <= set(pictures)
    for p in pictures:
        assert (ROOT / p).is_file(), p


def test_find_variables_makes_plots_of_the_top_candidates(demo, tmp_path):
    """`find-variables --plots N` re-runs the analysis and draws the top N candidates."""
    res = invoke(
        ["find-variables", "-s", "1", "-c", "1", "-d", "1", "--lake", demo["lake"],
         "--plots", "2", "--plots-dir", str(tmp_path / "fv")]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "fv").iterdir()}
    cand = demo["lk"].read("candidates").sort_by("rank").to_pylist()[:2]
    for row in cand:
        sid, periodic = row["star_id"], row["period_days"] is not None
        assert f"star-{sid}-vsx.png" in names and f"star-{sid}-lightcurve.png" in names
        # a phase plot exactly when there is a period to fold at (flares have none)
        assert (f"star-{sid}-phase.png" in names) == periodic, (row, sorted(names))
    assert len(names) == 2 * 3 + sum(r["period_days"] is not None for r in cand)
