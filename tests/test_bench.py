"""The benchmark runs end to end on tiny inputs, and the fast photometry is photutils'.

No timing is asserted (machines are noisy): only that every section produces its keys
and that the photometry the pipeline uses gives photutils' sums.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.background import BackgroundEstimator, estimate_background
from tasks.photometry import ShiftedApertures, aperture_sums, build_apertures, measure

SHAPE = (286, 344)  # a 256x256 science area with the FFI margins


def _scene(seed: int = 5):
    rng = np.random.default_rng(seed)
    image = rng.normal(80.0, 3.0, SHAPE)
    uncert = np.full(SHAPE, 3.0)
    n = 60
    x = rng.uniform(40.0, 310.0, n)  # some apertures reach outside the science area
    y = rng.uniform(-2.0, 258.0, n)
    radius = rng.choice([1.5, 2.0, 2.5, 3.5], n)
    return image, uncert, x, y, radius


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.0137, -0.0291), (0.41, -0.73), (1.5, 0.5)])
def test_shifted_apertures_are_photutils_exact(dx, dy):
    """Apertures placed from the tables are build_apertures' exactly, and photutils' sums."""
    from photutils.aperture import CircularAperture, aperture_photometry

    image, uncert, x, y, radius = _scene()
    placed = ShiftedApertures(SHAPE, x, y, radius)
    fast = placed.at(dx, dy)
    exact = build_apertures(SHAPE, x + dx, y + dy, radius)
    diff = fast.weights - exact.weights
    assert diff.count_nonzero() == 0
    np.testing.assert_array_equal(fast.edge, exact.edge)
    np.testing.assert_array_equal(fast.outside, exact.outside)
    sums, _ = aperture_sums(fast, image)
    ref = np.array(
        [
            aperture_photometry(
                image,
                CircularAperture([(x[i] + dx, y[i] + dy)], r=radius[i]),
                method="exact",
            )["aperture_sum"][0]
            for i in range(len(x))
        ]
    )
    np.testing.assert_allclose(sums, ref, rtol=3e-5)  # tables: bilinear between exact nodes
    # the pipeline's window path gives the same fluxes, errors, centroids and bits
    mesh = estimate_background(image, box=32)
    a = placed.measure(image, uncert, mesh, dx, dy)
    b = measure(exact, image, uncert, mesh)
    np.testing.assert_allclose(a.flux + a.bkg, sums, rtol=1e-12)
    for field in ("flux", "flux_err", "bkg", "x", "y"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(a.quality, b.quality)


def test_shifted_measure_flags_nonfinite_and_saturated_pixels():
    image, uncert, x, y, radius = _scene(7)
    image[round(y[3]), round(x[3])] = np.nan
    image[round(y[5]), round(x[5])] = 2e5
    placed = ShiftedApertures(SHAPE, x, y, radius)
    mesh = estimate_background(image, box=32)
    a = placed.measure(image, uncert, mesh, 0.02, -0.01)
    b = measure(build_apertures(SHAPE, x + 0.02, y - 0.01, radius), image, uncert, mesh)
    np.testing.assert_array_equal(a.quality, b.quality)
    np.testing.assert_array_equal(np.isnan(a.flux), np.isnan(b.flux))
    assert np.isnan(a.flux[3]) and a.quality[5] != 0


def test_sampled_background_is_unbiased_on_a_gradient():
    """Every 4th row, symmetric about the box centre: a linear sky gradient gives no bias."""
    rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    sky = 50.0 + 0.03 * cols + 0.05 * rows
    full = estimate_background(sky, box=32)
    sampled = BackgroundEstimator(SHAPE, row_step=4).estimate(sky)
    np.testing.assert_allclose(sampled.level, full.level, atol=1e-9)


def test_bench_runs_on_tiny_inputs(tmp_path):
    from bench.run import main

    out = tmp_path / "results.json"
    res = main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work")])
    saved = json.loads(out.read_text())
    for key in (
        "photometry_speedup_vs_photutils",
        "photometry_speedup_vs_photutils_vectorized",
        "frame_cost_over_read_floor",
        "flow_frames_per_s",
        "flow_overhead_fraction",
        "peak_rss_mb",
        "find_variables_s_10k_x_1k",
        "lakehouse_bytes_per_photometry_row",
        "targets",
        "targets_stricter",
    ):
        assert key in saved, key
    assert saved["photometry_max_rel_diff_vs_photutils"] < 1e-4  # exact overlaps, tabulated
    for n, stage in saved["stages"].items():
        assert stage["stars"] == int(n)
        assert all(stage["ms"][k] > 0 for k in ("floor", "read", "background", "photometry"))
    runs = saved["flow"]["scaling"]["runs"]
    assert [r["frames"] for r in runs] == sorted(r["frames"] for r in runs)
    assert all(r["frames_measured"] == r["frames"] for r in runs)
    assert saved["lakehouse_bytes_per_photometry_row"] > 0
    assert res["quick"] is True
    assert not (tmp_path / "work").exists()  # the scratch folder is cleaned up
