"""Photometry core: real SPOC pixels, photutils agreement, pipeline quality bits."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from lakehouse.schemas import Quality
from tasks.background import estimate_background
from tasks.photometry import aperture_sums, build_apertures, mask_apertures, measure
from tasks.pixelfiles import read_pixel_file


def test_pipeline_aperture_sum_reproduces_spoc_sap_flux(data_dir):
    """Summing the TPF's FLUX over the SPOC aperture gives SAP_FLUX to 1e-6 (relative)."""
    tpf = read_pixel_file(data_dir / "tic273589987_s15_tp_first100.fits")
    assert tpf.kind == "tpf" and tpf.aperture is not None and tpf.aperture.sum() == 13
    with fits.open(data_dir / "tic273589987_s15_lc_first100.fits") as lc:
        sap = np.asarray(lc[1].data["SAP_FLUX"], dtype=float)
        sap_time = np.asarray(lc[1].data["TIME"], dtype=float)
    ap = mask_apertures(tpf.flux.shape[1:], [tpf.aperture])
    sums = np.array([aperture_sums(ap, img)[0][0] for img in tpf.flux])
    ok = np.isfinite(sap) & np.isfinite(sums)
    assert ok.sum() >= 95
    np.testing.assert_allclose(sums[ok], sap[ok], rtol=1e-6)
    np.testing.assert_allclose(tpf.time[ok], sap_time[ok], atol=1e-9)
    # errors from the uncertainty images, propagated in quadrature, are the SPOC errors' size
    var = np.array(
        [
            aperture_sums(ap, img, err**2)[1][0]
            for img, err in zip(tpf.flux, tpf.flux_err, strict=True)
        ]
    )
    assert np.all(np.sqrt(var[ok]) > 0)


@pytest.mark.parametrize(
    "name, sector, camera, ccd, n, shape, on_chip",
    [
        ("tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits", 19, 1, 3, 1155, (10, 10), 1),
        # astroquery's test cutout lies partly off the CCD (2CRV5P = -856): no WCS check
        ("tess-s0001-4-3_107.27_-70.0_5x5_astrocut.fits", 1, 4, 3, 1282, (5, 5), 0),
        ("tess-s0012-2-1_proxima_1x1_astrocut.fits", 12, 2, 1, 1289, (1, 1), 0),
        ("tess-s0001-4-2_84.291190_-80.469170_6x6_astrocut.fits", 1, 4, 2, 50, (6, 6), 1),
    ],
)
def test_tesscut_cutouts_parse(data_dir, name, sector, camera, ccd, n, shape, on_chip):
    """Real TESScut cutouts: times in BTJD, quality bits, WCS pointing at the requested target."""
    px = read_pixel_file(data_dir / name)
    assert px.kind == "tesscut"
    assert (px.sector, px.camera, px.ccd) == (sector, camera, ccd)
    assert px.flux.shape == (n, *shape)
    t = px.time[np.isfinite(px.time)]
    assert len(t) > 0.9 * n if n > 100 else len(t) > 0
    assert np.all(np.diff(t) > 0)
    # BTJD of the sector: sector 1 started at 1325.3, sector 19 ended near 1842
    assert 1320 < t[0] < 1900 and t[-1] - t[0] < 30
    assert px.quality.dtype.kind == "i" and np.all(px.quality >= 0)
    parts = name.split("_")
    if on_chip:
        ra, dec = float(parts[1]), float(parts[2])
        cy, cx = (np.array(shape) - 1) / 2
        pra, pdec = px.wcs.all_pix2world(cx, cy, 0)
        assert abs((pra - ra + 180) % 360 - 180) * np.cos(np.radians(dec)) < 2 * 21 / 3600 * 1.5
        assert abs(pdec - dec) < 2 * 21 / 3600 * 1.5


def test_tesscut_sector19_cadence_spacing(data_dir):
    """Sector 19 FFIs are 30-min: consecutive cutout times differ by 0.0208 d."""
    px = read_pixel_file(data_dir / "tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits")
    dt = np.diff(px.time[np.isfinite(px.time)])
    assert np.median(dt) == pytest.approx(30 / 1440, rel=1e-3)


def test_circular_apertures_match_photutils_exact():
    """The sparse apertures give photutils' exact-overlap sums (tables: ~1e-5 relative)."""
    from photutils.aperture import CircularAperture, aperture_photometry

    rng = np.random.default_rng(3)
    shape = (158, 216)
    img = rng.normal(50, 5, shape)
    x = rng.uniform(50, 160, 40)
    y = rng.uniform(5, 120, 40)
    r = rng.choice([1.5, 2.0, 2.5, 3.5], 40)
    ap = build_apertures(shape, x, y, r)
    sums, _ = aperture_sums(ap, img)
    ref = [
        aperture_photometry(img, CircularAperture([(x[i], y[i])], r=r[i]), method="exact")[
            "aperture_sum"
        ][0]
        for i in range(len(x))
    ]
    np.testing.assert_allclose(sums, ref, rtol=3e-5)
    np.testing.assert_allclose(ap.area, np.pi * r**2, rtol=1e-6)


def test_pointing_jitter_does_not_become_flux_noise():
    """A star and its aperture moving together by hundredths of a pixel: the flux is a
    smooth function of the position (pixel phase; removed with the pointing regressors),
    not noise. Sub-pixel sampling (5x5) jumped by ~1e-3 between neighbouring positions."""
    shape = (64, 120)
    d = np.linspace(0.0, 0.1, 41)
    fluxes = []
    for step in d:
        x0, y0 = 60.3 + step, 30.6 + 0.5 * step
        star = _gaussian_star(shape, x0, y0, 1.0, sigma=0.9)
        ap = build_apertures(shape, np.array([x0]), np.array([y0]), 2.0)
        fluxes.append(aperture_sums(ap, star)[0][0])
    rel = np.array(fluxes) / np.mean(fluxes)
    smooth = np.polyval(np.polyfit(d, rel, 2), d)
    assert np.std(rel - smooth) < 1e-5
    assert np.max(np.abs(np.diff(rel))) < 1e-4


def _gaussian_star(shape, x0, y0, flux, sigma=0.7):
    from scipy.special import erf

    cols = np.arange(shape[1])
    rows = np.arange(shape[0])
    fx = 0.5 * (
        erf((cols + 0.5 - x0) / (np.sqrt(2) * sigma))
        - erf((cols - 0.5 - x0) / (np.sqrt(2) * sigma))
    )
    fy = 0.5 * (
        erf((rows + 0.5 - y0) / (np.sqrt(2) * sigma))
        - erf((rows - 0.5 - y0) / (np.sqrt(2) * sigma))
    )
    return flux * np.outer(fy, fx)


def test_measure_flux_background_centroid_and_bits():
    """A star on a sky gradient: flux, centroid and errors; edge, NaN and negative bits."""
    shape = (286, 344)  # a 256x256 science area with the FFI margins
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    sky = 40.0 + 0.05 * cols + 0.02 * rows
    star = _gaussian_star(shape, 150.3, 100.6, 5000.0)
    image = sky + star
    uncert = np.full(shape, 2.0)
    image[200, 200] = np.nan
    xs = np.array([150.3, 200.0, 45.2, 250.0])
    ys = np.array([100.6, 200.0, 60.0, 30.0])
    ap = build_apertures(shape, xs, ys, np.array([3.5, 2.0, 2.0, 2.0]))
    mesh = estimate_background(image, box=32)
    m = measure(ap, image, uncert, mesh)
    assert m.flux[0] == pytest.approx(5000.0 * 0.9999, rel=0.01)
    assert m.x[0] == pytest.approx(150.3, abs=0.05) and m.y[0] == pytest.approx(100.6, abs=0.05)
    # pixel errors add as Σ w² σ² (fractional edge pixels count w², not w)
    sum_w2 = float(ap.weights.multiply(ap.weights).sum(axis=1)[0, 0])
    assert m.flux_err[0] == pytest.approx(2.0 * np.sqrt(sum_w2), rel=0.05)
    assert m.flux_err[0] >= 2.0 * np.sqrt(sum_w2)
    assert m.quality[0] == 0
    assert m.quality[1] & Quality.NONFINITE and np.isnan(m.flux[1])
    assert m.quality[2] & Quality.EDGE  # column 45.2 - 2 px reaches the virtual columns
    assert abs(m.flux[3]) < 5 * m.flux_err[3]  # empty sky: no star, flux consistent with 0
