"""The compiled per-star kernel of ShiftedApertures.measure gives the numpy path's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import photometry
from tasks.background import estimate_background
from tasks.photometry import ShiftedApertures

SHAPE = (286, 344)  # a 256x256 science area with the FFI margins


def _scene(dtype):
    rng = np.random.default_rng(11)
    image = rng.normal(80.0, 3.0, SHAPE).astype(dtype)
    uncert = np.full(SHAPE, 3.0, dtype=dtype)
    n = 80
    x = rng.uniform(-2.0, 346.0, n)  # apertures off the array and in the margins too
    y = rng.uniform(-2.0, 288.0, n)
    radius = rng.choice([1.5, 2.0, 2.5, 3.5], n)
    rows = np.clip(np.rint(y).astype(int), 0, SHAPE[0] - 1)
    cols = np.clip(np.rint(x).astype(int), 0, SHAPE[1] - 1)
    for i, value in ((3, np.nan), (5, 2e5), (8, np.inf)):
        image[rows[i], cols[i]] = value
    uncert[rows[11], cols[11]] = np.nan
    return image, uncert, x, y, radius


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.0137, -0.0291), (0.5, -0.5), (1.5, -2.25)])
@pytest.mark.parametrize("with_errors", [True, False])
def test_kernel_matches_numpy_path(monkeypatch, dtype, dx, dy, with_errors):
    if photometry._window_kernel() is None:
        pytest.skip("numba is not installed")
    image, uncert, x, y, radius = _scene(dtype)
    mesh = estimate_background(np.nan_to_num(image, nan=80.0, posinf=80.0), box=32)
    placed = ShiftedApertures(SHAPE, x, y, radius)
    err = uncert if with_errors else None
    fast = placed.measure(image, err, mesh, dx, dy)
    monkeypatch.setenv("TESS_FFI_NUMBA", "0")
    assert photometry._window_kernel() is None
    ref = placed.measure(image, err, mesh, dx, dy)
    np.testing.assert_array_equal(fast.quality, ref.quality)
    assert np.any(fast.quality != 0)  # the scene does flag stars (edge, NaN, saturated)
    for field in ("flux", "flux_err", "bkg", "x", "y"):  # the kernel may reorder its sums
        np.testing.assert_allclose(
            getattr(fast, field), getattr(ref, field), rtol=1e-10, atol=1e-9, equal_nan=True
        )
