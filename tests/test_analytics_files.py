"""``tess-ffi features PATH --json`` on real TESS light curves and the other readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tess_ffi.cli_analysis import register

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def features(app, path) -> dict:
    result = runner.invoke(app, ["features", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("name", "period", "var_type"),
    [
        ("tess2018234235059-s0002-0000000402026209-0121-s_lc.fits", 1.33823, "TRANSIT"),  # WASP-4 b
        ("tess2019279210107-s0017-0000000026801525-0161-s_lc.fits", 3.896651, "EA"),  # IT Cas
        ("tess2019357164649-s0020-0000000011491822-0165-s_lc.fits", 9.946591, "EA"),  # RR Lyn
    ],
)
def test_published_periods_of_real_light_curves(app, data_dir, name, period, var_type):
    out = features(app, data_dir / name)
    assert out["format"] == "spoc"
    assert out["period_days"] == pytest.approx(period, rel=0.01)
    assert out["var_type"] == var_type
    assert out["amplitude"] > 0
    # quality flags of the file were applied, not dropped silently
    assert out["n_good"] < out["n_points"]


def test_toi_216_transits_are_found(app, data_dir):
    out = features(
        app, data_dir / "hlsp_tess-data-alerts_tess_phot_00055652896-s01_tess_v1_lc.fits"
    )
    times = np.sort(np.asarray(out["transit_times"], float))
    assert out["var_type"] == "TRANSIT"
    assert len(times) == 2
    assert times[0] == pytest.approx(1331.28, abs=0.1)
    assert times[1] == pytest.approx(1348.87, abs=0.1)
    assert times[1] - times[0] == pytest.approx(17.6, abs=0.1)


def test_csv_with_nans_and_quality_flags(app, tmp_path):
    rng = np.random.default_rng(2)
    t = 1325.3 + np.arange(1100) / 48.0
    flux = 1000 * (1 + 0.02 * np.sin(2 * np.pi * t / 2.75)) + rng.normal(0, 2, t.size)
    err = np.full(t.size, 2.0)
    quality = np.zeros(t.size, int)
    flux[100:110] = np.nan  # gaps
    flux[500] = 5000.0  # a flagged outlier must not matter
    quality[500] = 1
    path = tmp_path / "star.csv"
    rows = ["time,flux,flux_err,quality"] + [
        f"{a},{b},{c},{d}" for a, b, c, d in zip(t, flux, err, quality, strict=True)
    ]
    path.write_text("\n".join(rows).replace("nan", ""))
    out = features(app, path)
    assert out["format"] == "csv"
    assert out["n_good"] == t.size - 11
    assert out["period_days"] == pytest.approx(2.75, rel=0.01)
    assert out["var_type"] == "ROT"
    assert out["amplitude"] == pytest.approx(0.02, rel=0.15)


def test_target_pixel_file_photometry_matches_spoc_sap(data_dir):
    from astropy.io import fits

    from tasks.lightcurve_files import read_light_curve

    lc = read_light_curve(data_dir / "tic273589987_s15_tp_first100.fits")
    assert lc.format == "tpf" and lc.meta["aperture"] == "pipeline"
    with fits.open(data_dir / "tic273589987_s15_lc_first100.fits") as h:
        sap = np.asarray(h[1].data["SAP_FLUX"], float)
    ok = lc.good & np.isfinite(sap)
    np.testing.assert_allclose(lc.flux[ok], sap[ok], rtol=1e-5)


def test_tesscut_cutout_is_read_with_background_subtracted(data_dir):
    from tasks.lightcurve_files import read_light_curve

    lc = read_light_curve(data_dir / "tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits")
    assert lc.format == "tesscut"
    assert lc.meta["aperture"] == "threshold" and lc.meta["aperture_pixels"] >= 1
    assert "median of" in lc.meta["background"]
    assert lc.good.sum() > 1000 and np.all(np.isfinite(lc.flux[lc.good]))


def test_bad_input_exits_with_code_2(app, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a light curve")
    result = runner.invoke(app, ["features", str(junk), "--json"])
    assert result.exit_code == 2
    assert "unknown format" in result.output
    missing = runner.invoke(app, ["features", str(tmp_path / "nope.fits")])
    assert missing.exit_code == 2
