"""Tests of tasks/simulate.py: the simulated sector in the real SPOC ``*_ffic.fits`` format."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

import tess_ffi
from tasks import simulate as sim

DATA = Path(tess_ffi.__file__).resolve().parent / "data"
NAME_RE = re.compile(r"^tess\d{13}-s(\d{4})-([1-4])-([1-4])-(\d{4})-s_ffic\.fits$")
N = 128  # science size of the small simulations
KW = dict(sector=1, camera=1, ccd=1, n_cadences=4, n_stars=240, science_size=N, seed=7)


def _catalog(sector: int, camera: int, ccd: int) -> pd.DataFrame:
    cat = pd.read_parquet(DATA / f"tess-s{sector:04d}-spoc-ffi-catalog.parquet")
    cat = cat[(cat.camera == camera) & (cat.ccd == ccd)].sort_values("start")
    return cat.reset_index(drop=True)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> sim.SimulationResult:
    return sim.simulate_sector(tmp_path_factory.mktemp("noisy"), **KW)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> sim.SimulationResult:
    return sim.simulate_sector(tmp_path_factory.mktemp("model"), add_noise=False, **KW)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> sim.SimulationResult:
    """Small frames over ~2.5 days: enough for two transits of every TRANSIT star."""
    return sim.simulate_sector(
        tmp_path_factory.mktemp("long"),
        n_cadences=120,
        n_stars=60,
        science_size=64,
        n_variables=12,
        seed=3,
        add_noise=False,
    )


def test_file_names_are_the_real_ones(noisy):
    cat = _catalog(1, 1, 1)
    names = [p.name for p in noisy.paths]
    assert names == [p.rsplit("/", 1)[-1] for p in cat.path[:4]]
    assert names[0] == "tess2018206192942-s0001-1-1-0120-s_ffic.fits"
    assert names == sorted(names)
    for name in names:
        m = NAME_RE.match(name)
        assert m is not None and m.groups() == ("0001", "1", "1", "0120")
    assert all(p.exists() for p in noisy.paths)
    assert not list(noisy.paths[0].parent.glob("*.part"))


def test_hdu_structure(noisy):
    with fits.open(noisy.paths[0]) as hdul:
        assert len(hdul) == 3
        h0, h1, h2 = hdul[0].header, hdul[1].header, hdul[2].header
        assert hdul[0].data is None
        for key, want in dict(
            TELESCOP="TESS", INSTRUME="TESS Photometer", SECTOR=1, CAMERA=1
        ).items():
            assert h0[key] == want
        assert h0["CCD"] == 1 and h0["FFIINDEX"] == sim.FFIINDEX_BASE and "DATA_REL" in h0
        assert h1["EXTNAME"] == "CAMERA.CCD 1.1 cal" and h2["EXTNAME"] == "CAMERA.CCD 1.1 uncert"
        assert h1["IMAGTYPE"] == "cal" and h2["IMAGTYPE"] == "uncert"
        assert h1["BUNIT"] == "electrons/s"
        for key in ("EXPOSURE", "TIMEDEL", "GAINA", "READNOID", "NREADOUT", "DEADC", "TIMEREF"):
            assert key in h1
        assert h1["EXPOSURE"] == pytest.approx(720 * 1.98 / 86400)
        for h in (h1, h2):
            assert h["BITPIX"] == -32
            assert (h["NAXIS2"], h["NAXIS1"]) == (N + 30, N + 88)
        img, unc = hdul[1].data, hdul[2].data
        assert img.dtype == np.dtype(">f4") and unc.dtype == np.dtype(">f4")
        assert img.shape == unc.shape == (N + 30, N + 88)
        science = img[:N, 44 : 44 + N]
        collateral = np.concatenate(
            [img[:, :44].ravel(), img[:, 44 + N :].ravel(), img[N:].ravel()]
        )
        assert np.median(science) > 20.0  # sky
        assert science.max() > 1000.0  # stars
        assert np.abs(collateral).max() < 6 * unc[:, :44].max()  # only read noise
        assert np.abs(np.median(collateral)) < 0.05
        assert np.all(unc > 0)


def test_times_match_the_tess_cloud_catalog(noisy):
    cat = _catalog(1, 1, 1)
    frames = pd.read_parquet(noisy.frames_truth_path)
    cadences = []
    for i, path in enumerate(noisy.paths):
        row = cat.iloc[i]
        want_start = Time(row.start, scale="utc").tdb.jd - 2457000
        want_stop = Time(row.stop, scale="utc").tdb.jd - 2457000
        h0, h1 = fits.getheader(path, 0), fits.getheader(path, 1)
        assert h1["TSTART"] == pytest.approx(want_start, abs=1e-6)
        assert h1["TSTOP"] == pytest.approx(want_stop, abs=1e-6)
        assert h1["BARYCORR"] == pytest.approx(row.barycorr, abs=1e-9)
        assert h1["DQUALITY"] == row.quality
        assert frames.tstart[i] == pytest.approx(h1["TSTART"], abs=1e-9)
        assert frames.btjd[i] == pytest.approx((h1["TSTART"] + h1["TSTOP"]) / 2, abs=1e-9)
        assert frames.cadence[i] == h0["FFIINDEX"]
        cadences.append(h0["FFIINDEX"])
    first = Time("2018-07-25T19:37:18", scale="utc").tdb.jd - 2457000
    assert fits.getheader(noisy.paths[0], 1)["TSTART"] == pytest.approx(first, abs=1e-6)
    assert cadences == list(range(sim.FFIINDEX_BASE, sim.FFIINDEX_BASE + 4))


def test_cadence_start_flags_and_gaps(tmp_path):
    """A run around sector 19's missing FFI: FFIINDEX skips it; DQUALITY bits are copied."""
    cat = _catalog(19, 1, 1)
    dt = pd.to_datetime(cat.start).diff().dt.total_seconds().to_numpy()
    gap = int(np.flatnonzero((dt > 3000) & (dt < 4000))[0])  # the 1-hour hole
    flagged = np.flatnonzero(cat.quality.to_numpy() & 32)
    start = gap - 2
    res = sim.simulate_sector(
        tmp_path, sector=19, n_cadences=4, n_stars=10, science_size=16, cadence_start=start
    )
    names = [p.name for p in res.paths]
    assert names == [p.rsplit("/", 1)[-1] for p in cat.path[start : start + 4]]
    idx = [fits.getval(p, "FFIINDEX", ext=0) for p in res.paths]
    assert np.diff(idx).tolist() == [1, 2, 1]
    assert [fits.getval(p, "DQUALITY", ext=1) for p in res.paths] == list(
        cat.quality[start : start + 4]
    )
    first_flagged = int(flagged[0])
    one = sim.simulate_sector(
        tmp_path / "flag",
        sector=19,
        n_cadences=1,
        n_stars=5,
        science_size=16,
        cadence_start=first_flagged,
    )
    assert fits.getval(one.paths[0], "DQUALITY", ext=1) & 32
    frames = pd.read_parquet(one.frames_truth_path)
    assert frames.dquality[0] == cat.quality[first_flagged]


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_wcs_is_the_real_ccd_solution_and_matches_truth(noisy):
    headers = [fits.getheader(p, 1) for p in noisy.paths]
    w = WCS(headers[0])
    assert w.wcs.ctype[0] == "RA---TAN-SIP" and w.sip is not None
    assert (headers[0]["CRPIX1"], headers[0]["CRPIX2"]) == (1045.0, 1001.0)
    # tesswcs corner of sector 1 camera 1 CCD 1 at pixel (0, 0)
    ra0, dec0 = w.all_pix2world([[0.0, 0.0]], 0)[0]
    assert ra0 == pytest.approx(313.776892406407, abs=1e-6)
    assert dec0 == pytest.approx(-47.871100850972965, abs=1e-6)
    wcs_keys = [k for k in headers[0] if k[:2] in ("CR", "CD", "A_", "B_", "AP", "BP")]
    for h in headers[1:]:
        assert all(h[k] == headers[0][k] for k in wcs_keys)
    truth = pd.read_parquet(noisy.truth_path)
    ra, dec = w.all_pix2world(truth.x, truth.y, 0)
    np.testing.assert_allclose(truth.ra, ra, atol=1e-9)
    np.testing.assert_allclose(truth.dec, dec, atol=1e-9)


def test_uncertainty_is_the_injected_noise(noisy, model):
    z = []
    for pn, pm in zip(noisy.paths, model.paths, strict=True):
        with fits.open(pn) as a, fits.open(pm) as b:
            np.testing.assert_array_equal(a[2].data, b[2].data)
            z.append(((a[1].data.astype(float) - b[1].data) / a[2].data).ravel())
    z = np.concatenate(z)
    assert z.std() == pytest.approx(1.0, abs=0.02)
    assert abs(z.mean()) < 0.02
    # the model itself has no noise: a noisy frame is not the model
    assert np.abs(z).max() > 3
    # physical noise level: variance = (model * t + NREADOUT * readnoise^2) / t^2, t = EXPOSURE
    with fits.open(model.paths[0]) as hdul:
        h1, img, unc = hdul[1].header, hdul[1].data.astype(float), hdul[2].data.astype(float)
    t_exp = h1["EXPOSURE"] * 86400.0
    assert t_exp == pytest.approx(h1["NREADOUT"] * h1["INT_TIME"])
    read_var = unc**2 * t_exp**2 - img * t_exp  # [e-^2] per pixel
    rn = [h1[f"READNOI{o}"] for o in "ABCD"]
    lo, hi = h1["NREADOUT"] * min(rn) ** 2, h1["NREADOUT"] * max(rn) ** 2
    assert np.all(read_var > lo * 0.999) and np.all(read_var < hi * 1.001)


def _isolated_bright_constant_stars(truth: pd.DataFrame, n: int) -> pd.DataFrame:
    """Constant stars > 1000 e-/s, >= 12 px inside the science area, without a neighbour
    above 1 % of their flux within 8 px or above 30 % within 14 px."""
    x, y, f = truth.x.to_numpy(), truth.y.to_numpy(), truth.flux.to_numpy()
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    crowded = ((d < 8) & (f[None, :] > 0.01 * f[:, None])).any(axis=1)
    crowded |= ((d < 14) & (f[None, :] > 0.3 * f[:, None])).any(axis=1)
    inside = (x > 44 + 12) & (x < 44 + n - 13) & (y > 12) & (y < n - 13)
    return truth[truth.var_type.isna().to_numpy() & ~crowded & inside & (f > 1000)]


def _aperture_sum(img: np.ndarray, x: float, y: float, radius: float, n: int) -> float:
    """Circular aperture sum minus the median of a 7-10 px ring of science pixels."""
    rows, cols = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    rr = np.hypot(cols - x, rows - y)
    science = (rows < n) & (cols >= 44) & (cols < 44 + n)
    bkg = np.median(img[science & (rr > 7) & (rr < 10)])
    return float((img[rr <= radius].astype(float) - bkg).sum())


@pytest.mark.parametrize(
    ("psf", "radius", "lo", "hi"), [("gaussian", 4.0, 0.98, 1.01), ("prf", 5.0, 0.95, 1.01)]
)
def test_aperture_sum_equals_truth_flux(tmp_path, psf, radius, lo, hi):
    n = 256
    res = sim.simulate_sector(
        tmp_path, n_cadences=1, n_stars=200, science_size=n, psf=psf, add_noise=False, seed=7
    )
    truth = pd.read_parquet(res.truth_path)
    frames = pd.read_parquet(res.frames_truth_path)
    img = fits.getdata(res.paths[0], 1)
    stars = _isolated_bright_constant_stars(truth, n)
    assert len(stars) >= 3
    common = 1 + frames.common_mode[0]  # throughput drift (0.6-1.4 x this at the star)
    for s in stars.itertuples():
        measured = _aperture_sum(img, s.x + frames.dx[0], s.y + frames.dy[0], radius, n)
        assert lo * s.flux * min(common, 1) < measured < hi * s.flux * max(common, 1)


def test_render_is_exact_and_fast():
    rng = np.random.default_rng(0)
    x = rng.uniform(44 + 10, 44 + 2048 - 10, 10_000)
    y = rng.uniform(10, 2048 - 10, 10_000)
    flux = sim.tmag_to_flux(rng.uniform(7, 17, 10_000))
    for psf in ("gaussian", "prf"):
        t0 = time.perf_counter()
        img = sim.render_stars(x, y, flux, 2048, psf=psf)
        elapsed = time.perf_counter() - t0
        assert img.shape == (2048, 2048)
        assert img.sum() == pytest.approx(flux.sum(), rel=1e-9)
        assert elapsed < 1.0, f"{psf}: {elapsed:.2f} s for 10k stars"
    one = sim.render_stars(np.array([44.0 + 20.3]), np.array([30.0]), np.array([1000.0]), 64)
    row, col = np.unravel_index(np.argmax(one), one.shape)
    assert (row, col) == (30, 20)
    cols = np.arange(64)
    profile = one.sum(axis=0)
    centroid = (profile * cols).sum() / profile.sum()
    assert centroid == pytest.approx(20.3, abs=1e-3)
    width2 = (profile * (cols - centroid) ** 2).sum() / profile.sum()
    # pixel-integrated Gaussian: sigma^2 + 1/12 px^2
    assert width2 == pytest.approx(sim.GAUSSIAN_SIGMA_PX**2 + 1 / 12, rel=0.02)


def test_truth_table(noisy):
    truth = pd.read_parquet(noisy.truth_path)
    assert len(truth) == 240
    assert noisy.n_variables == max(6, round(0.05 * 240)) == 12
    for col in ("sim_id", "x", "y", "ra", "dec", "tmag", "flux", "var_type", "period_days"):
        assert col in truth.columns
    assert truth.sim_id.tolist() == list(range(240))
    assert truth.tmag.is_monotonic_increasing and truth.tmag.between(7, 17).all()
    np.testing.assert_allclose(truth.flux, 15000 * 10 ** (-0.4 * (truth.tmag - 10)))
    assert truth.x.between(43.5, 44 + N - 0.5).all() and truth.y.between(-0.5, N - 0.5).all()
    variables = truth[truth.var_type.notna()]
    assert sorted(variables.var_type.value_counts().items()) == [
        (t, 2) for t in sorted(sim.VAR_TYPES)
    ]
    assert (variables.amplitude > 0).all() and variables.var_params.notna().all()
    periodic = variables[variables.var_type != "FLARE"]
    assert periodic.period_days.notna().all()
    assert truth[truth.var_type.isna()].amplitude.isna().all()


def test_variables_are_injected(long_run):
    truth = pd.read_parquet(long_run.truth_path)
    frames = pd.read_parquet(long_run.frames_truth_path)
    t = frames.btjd.to_numpy()
    variables = truth[truth.var_type.notna()]
    assert set(variables.var_type) == set(sim.VAR_TYPES)
    for v in variables.itertuples():
        params = json.loads(v.var_params)
        curve = sim.variability_model(v.var_type, params, t)
        assert np.ptp(curve) == pytest.approx(v.amplitude_sampled, rel=1e-9)
        assert v.amplitude_sampled > 0
        if v.var_type == "TRANSIT":
            assert 0.003 <= params["depth"] <= 0.02 and 1.0 <= v.period_days <= 8.0
            in_transit = np.abs(
                (t - params["t0"] + v.period_days / 2) % v.period_days - v.period_days / 2
            )
            events = np.unique(
                np.round((t - params["t0"]) / v.period_days)[in_transit < params["duration"] / 2]
            )
            assert len(events) >= 2
        if v.var_type == "DSCT":
            assert min(params["periods"]) >= 0.05
        if v.var_type in ("EA", "EW"):
            assert v.period_days > 0
    # most amplitudes are well above the per-point noise
    ratio = variables.amplitude / variables.noise_frac
    assert (ratio >= 5).mean() >= 0.6
    # the pixels follow the model: aperture flux of a strong variable
    # [e-/s] that is >= 6 px inside the science area and not blended with a brighter star;
    # fitted with the (smooth) scattered light as a nuisance regressor
    x, y, f = truth.x.to_numpy(), truth.y.to_numpy(), truth.flux.to_numpy()
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    unblended = ~((d < 6) & (f[None, :] > 0.5 * f[:, None])).any(axis=1)
    inside = (x >= 44 + 6) & (x <= 44 + 63 - 6) & (y >= 6) & (y <= 63 - 6)
    ok = variables[unblended[variables.index] & inside[variables.index]]
    # of those with a signal > 30 e-/s, the largest fractional amplitude: aperture sums
    # that follow the pointing jitter carry ~1e-3 systematics of their own
    signal = ok.amplitude_sampled * ok.flux
    assert signal.max() > 30
    strong = ok[signal > 30]
    v = strong.loc[strong.amplitude_sampled.idxmax()]
    images = [fits.getdata(p, 1) for p in long_run.paths]
    measured = np.array(
        [
            _aperture_sum(img, v.x + dx, v.y + dy, 3.0, 64)
            for img, dx, dy in zip(images, frames.dx, frames.dy, strict=True)
        ]
    )
    expected = sim.variability_model(v.var_type, json.loads(v.var_params), t) * v.flux
    design = np.column_stack([expected, np.ones_like(t), frames.scattered_light])
    coef, *_ = np.linalg.lstsq(design, measured, rcond=None)
    assert coef[0] == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(measured, design @ coef)[0, 1] > 0.99


def test_deterministic(tmp_path, noisy):
    again = sim.simulate_sector(tmp_path / "again", **KW)
    for a, b in zip(noisy.paths, again.paths, strict=True):
        with fits.open(a) as ha, fits.open(b) as hb:
            np.testing.assert_array_equal(ha[1].data, hb[1].data)
            np.testing.assert_array_equal(ha[2].data, hb[2].data)
            assert ha[1].header == hb[1].header
    pd.testing.assert_frame_equal(
        pd.read_parquet(noisy.truth_path), pd.read_parquet(again.truth_path)
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(noisy.frames_truth_path), pd.read_parquet(again.frames_truth_path)
    )
    other = sim.simulate_sector(tmp_path / "other", **{**KW, "seed": 8, "n_cadences": 1})
    assert not np.array_equal(fits.getdata(other.paths[0], 1), fits.getdata(noisy.paths[0], 1))


def test_synthetic_sector_timeline(tmp_path):
    res = sim.simulate_sector(
        tmp_path, sector=5, camera=2, ccd=3, n_cadences=2, n_stars=5, science_size=16
    )
    for p in res.paths:
        m = NAME_RE.match(p.name)
        assert m is not None and m.groups()[:3] == ("0005", "2", "3")
    tl = sim.sector_timeline(5, 2, 3)
    assert tl.synthetic.all() and (tl.dquality == 0).all()
    assert np.all(np.diff(tl.cadence) > 0)
    gaps = np.diff(tl.tstart.to_numpy())
    assert np.median(gaps) == pytest.approx(sim.TIMEDEL_D, abs=2e-5)
    assert 0.9 < gaps.max() < 1.2 and tl.orbit.nunique() == 2
    assert tl.barycorr.abs().max() < 0.006
    assert fits.getval(res.paths[0], "SECTOR", ext=0) == 5


def test_invalid_arguments(tmp_path):
    n_frames = len(_catalog(1, 1, 1))
    with pytest.raises(ValueError, match="FFIs"):
        sim.simulate_sector(tmp_path, n_cadences=2, cadence_start=n_frames - 1, science_size=16)
    with pytest.raises(ValueError, match="psf"):
        sim.simulate_sector(tmp_path, n_cadences=1, science_size=16, psf="moffat")
    with pytest.raises(ValueError, match="camera"):
        sim.simulate_sector(tmp_path, camera=5, n_cadences=1, science_size=16)
    assert not list(tmp_path.glob("*.fits"))


@pytest.mark.slow
def test_full_size_frame(tmp_path):
    t0 = time.perf_counter()
    res = sim.simulate_sector(tmp_path, n_cadences=1, n_stars=2000, science_size=2048)
    elapsed = time.perf_counter() - t0
    with fits.open(res.paths[0]) as hdul:
        assert hdul[1].data.shape == (2078, 2136) and hdul[2].data.shape == (2078, 2136)
    assert elapsed < 15.0
    truth = pd.read_parquet(res.truth_path)
    assert (truth.tmag <= 14).sum() >= 250  # rising luminosity function, a few hundred bright
    assert (truth.tmag > 14).sum() > (truth.tmag <= 14).sum()
    assert res.n_variables == 100


def test_real_header_tstart_is_date_obs_in_tdb():
    """The convention the simulator follows, checked on a real SPOC header: TSTART (BTJD) is
    DATE-OBS (UTC, barycentric correction already applied) converted to TDB, minus 2457000."""
    text = (sim.DATA_DIR / "eleanor_postcard_header_s0001-2-3_from_tessipack.txt").read_text()
    header = fits.Header.fromstring(text, sep="\n")
    date_obs = header["DATE-OBS"].rstrip("Z")
    btjd = Time(date_obs, format="isot", scale="utc").tdb.jd - 2457000
    assert btjd == pytest.approx(header["TSTART"], abs=5e-8)  # DATE-OBS has 1-ms precision
    assert abs(header["BARYCORR"]) > 1e-3  # so adding it again would be a visible error
