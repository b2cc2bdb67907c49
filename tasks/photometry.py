"""Forced aperture photometry as a sparse matrix-vector product.

Apertures at fixed positions are a sparse matrix ``W`` (stars x pixels) whose entries are
the fraction of each pixel inside each aperture. A frame's fluxes are then ``W @ image``
and their variances ``W² @ sigma²``: one pass over the image for every star at once.

Circular apertures use sub-pixel sampling (``subpixels`` x ``subpixels`` samples per
pixel, pixel centres at integer coordinates): the same definition as photutils'
``method="subpixel"``, computed for all stars at once with a closed-form count of the
samples inside each chord of the circle. Arbitrary pixel masks (e.g. a SPOC pipeline
aperture) use weights of exactly 1.

Units: images in e-/s, fluxes in e-/s, positions in 0-based (column, row) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lakehouse.schemas import SATURATION_E_PER_S, Quality
from tasks.background import BackgroundMesh
from tasks.ffi import science_bounds


@dataclass(frozen=True)
class Apertures:
    """Aperture weights of many stars on one image grid.

    ``weights`` is CSR (n_stars x n_pixels) over the row-major flattened image; ``dcol``
    and ``drow`` hold the same pattern with values w·(column − x) and w·(row − y) for
    flux-weighted centroids; ``area`` is Σw per star [px]; ``edge`` is True where the
    aperture reaches outside the science pixels; ``outside`` where the centre itself does.
    """

    x: np.ndarray
    y: np.ndarray
    weights: sp.csr_matrix
    dcol: sp.csr_matrix
    drow: sp.csr_matrix
    area: np.ndarray
    edge: np.ndarray
    outside: np.ndarray

    @property
    def n_stars(self) -> int:
        """Number of apertures."""
        return len(self.x)


def circular_weights(
    x: np.ndarray, y: np.ndarray, radius: np.ndarray | float, subpixels: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel-sampled overlap of circles with the pixel grid.

    Returns ``(star_index, row, col, weight)`` of every pixel with a non-zero weight
    (0 < weight <= 1), for circles centred at column ``x`` and row ``y`` [px] with
    ``radius`` [px]. A pixel's weight is the fraction of its ``subpixels``² sample points
    (at ``c - 0.5 + (k + 0.5)/subpixels``) inside the circle.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), x.shape)
    n = len(x)
    s = int(subpixels)
    half = int(np.ceil(np.max(r) + 1)) if n else 1
    offs = np.arange(-half, half + 1)
    npx = len(offs)
    row = np.rint(y).astype(np.int64)[:, None] + offs[None, :]  # (n, npx)
    col = np.rint(x).astype(np.int64)[:, None] + offs[None, :]
    k = (np.arange(s) + 0.5) / s - 0.5
    # sample rows: (n, npx*s)
    sy = (row[:, :, None] + k[None, None, :]).reshape(n, npx * s)
    h2 = r[:, None] ** 2 - (sy - y[:, None]) ** 2
    h = np.sqrt(np.clip(h2, 0.0, None))
    lo = np.where(h2 >= 0, x[:, None] - h, np.inf)
    hi = np.where(h2 >= 0, x[:, None] + h, -np.inf)
    # samples of column c at c - 0.5 + (j + 0.5)/s, j = 0..s-1; count j with lo <= . <= hi
    c = col[:, None, :]  # (n, 1, npx)
    with np.errstate(invalid="ignore"):
        jlo = np.ceil((lo[:, :, None] - c + 0.5) * s - 0.5)
        jhi = np.floor((hi[:, :, None] - c + 0.5) * s - 0.5)
    jlo = np.clip(jlo, 0, s)
    jhi = np.clip(jhi, -1, s - 1)
    counts = np.clip(jhi - jlo + 1, 0, None)  # (n, npx*s, npx)
    counts = counts.reshape(n, npx, s, npx).sum(axis=2)  # (n, rows, cols)
    w = counts / (s * s)
    idx, ri, ci = np.nonzero(w)
    return idx, row[idx, ri], col[idx, ci], w[idx, ri, ci]


def build_apertures(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray | float,
    subpixels: int = 5,
) -> Apertures:
    """Circular apertures at columns ``x``, rows ``y`` [px] on a (rows, cols) image."""
    idx, rows, cols, w = circular_weights(x, y, radius, subpixels)
    return _assemble(shape, np.asarray(x, float), np.asarray(y, float), idx, rows, cols, w)


def mask_apertures(shape: tuple[int, int], masks: list[np.ndarray]) -> Apertures:
    """Apertures from boolean pixel masks of ``shape`` (weight exactly 1 per pixel).

    For cutouts (target pixel files, TESScut): every pixel of ``shape`` counts as science.
    """
    idx, rows, cols = [], [], []
    for i, m in enumerate(masks):
        r, c = np.nonzero(m)
        idx.append(np.full(len(r), i))
        rows.append(r)
        cols.append(c)
    idx_a, rows_a, cols_a = (np.concatenate(a) for a in (idx, rows, cols))
    x = np.array([np.mean(np.nonzero(m)[1]) for m in masks], dtype=float)
    y = np.array([np.mean(np.nonzero(m)[0]) for m in masks], dtype=float)
    bounds = (0, shape[0], 0, shape[1])
    return _assemble(shape, x, y, idx_a, rows_a, cols_a, np.ones(len(idx_a)), bounds)


def _assemble(shape, x, y, idx, rows, cols, w, bounds=None) -> Apertures:
    nrows, ncols = shape
    n = len(x)
    r0, r1, c0, c1 = bounds if bounds is not None else science_bounds(shape)
    in_array = (rows >= 0) & (rows < nrows) & (cols >= 0) & (cols < ncols)
    in_science = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    edge = np.zeros(n, dtype=bool)
    np.logical_or.at(edge, idx[~in_science], True)
    idx, rows, cols, w = idx[in_array], rows[in_array], cols[in_array], w[in_array]
    flat = rows * ncols + cols
    mat_shape = (n, nrows * ncols)
    weights = sp.csr_matrix((w, (idx, flat)), shape=mat_shape)
    dcol = sp.csr_matrix((w * (cols - x[idx]), (idx, flat)), shape=mat_shape)
    drow = sp.csr_matrix((w * (rows - y[idx]), (idx, flat)), shape=mat_shape)
    area = np.asarray(weights.sum(axis=1)).ravel()
    outside = (np.rint(y) < r0) | (np.rint(y) >= r1) | (np.rint(x) < c0) | (np.rint(x) >= c1)
    return Apertures(x, y, weights, dcol, drow, area, edge, outside)


@dataclass(frozen=True)
class Measurement:
    """Photometry of all stars on one frame (arrays of length n_stars).

    flux, flux_err, bkg in e-/s (bkg = sky inside the aperture); x, y = flux-weighted
    centroid [px]; quality = pipeline bits (``lakehouse.schemas.Quality``), without DQUALITY.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    bkg: np.ndarray
    x: np.ndarray
    y: np.ndarray
    quality: np.ndarray


def aperture_sums(
    apertures: Apertures, image: np.ndarray, variance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted sums Σ w·image [e-/s] and, if given, Σ w²·variance [(e-/s)²], per aperture.

    Accumulates in float64. Non-finite pixels contribute NaN to the stars whose apertures
    contain them.
    """
    img = np.asarray(image, dtype=np.float64).ravel()
    sums = apertures.weights @ img
    var = None
    if variance is not None:
        var = apertures.weights.power(2) @ np.asarray(variance, dtype=np.float64).ravel()
    return sums, var


def measure(
    apertures: Apertures,
    image: np.ndarray,
    uncert: np.ndarray,
    background: BackgroundMesh,
) -> Measurement:
    """Forced photometry of one calibrated frame.

    ``image`` and ``uncert`` are the FFI's flux and 1σ uncertainty HDUs [e-/s]. The sky
    level per pixel is read from ``background`` at each star and multiplied by the
    aperture area; its error adds in quadrature (area · σ_sky). Centroids are
    flux-weighted over the background-subtracted aperture pixels.
    """
    img = np.asarray(image, dtype=np.float64).ravel()
    err = np.asarray(uncert, dtype=np.float64).ravel()
    bad_pix = ~(np.isfinite(img) & np.isfinite(err))
    n_bad = apertures.weights @ bad_pix.astype(np.float64)
    if bad_pix.any():
        img = np.where(bad_pix, 0.0, img)
        err = np.where(bad_pix, 0.0, err)
    n_sat = apertures.weights @ (img > SATURATION_E_PER_S).astype(np.float64)

    sky, sky_err = background.at(apertures.x, apertures.y)
    raw = apertures.weights @ img
    bkg = sky * apertures.area
    flux = raw - bkg
    var = apertures.weights.power(2) @ (err * err) + (sky_err * apertures.area) ** 2
    flux_err = np.sqrt(var)

    # centroid over background-subtracted pixels: Σ w (I - sky)(c - x) / Σ w (I - sky)
    sum_dc = apertures.dcol @ img
    sum_dr = apertures.drow @ img
    # the sky term of Σ w·sky·(c - x) is sky·Σ w(c - x)
    ones = np.ones_like(img)
    sum_dc -= sky * (apertures.dcol @ ones)
    sum_dr -= sky * (apertures.drow @ ones)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = apertures.x + np.where(flux > 0, sum_dc / flux, 0.0)
        cy = apertures.y + np.where(flux > 0, sum_dr / flux, 0.0)

    quality = np.zeros(apertures.n_stars, dtype=np.int32)
    quality[apertures.edge] |= int(Quality.EDGE)
    quality[apertures.outside] |= int(Quality.OUTSIDE)
    quality[n_sat > 0] |= int(Quality.SATURATED)
    nonfinite = n_bad > 0
    quality[nonfinite] |= int(Quality.NONFINITE)
    quality[~nonfinite & ~(flux > 0)] |= int(Quality.NEGATIVE)
    flux = np.where(nonfinite, np.nan, flux)
    flux_err = np.where(nonfinite, np.nan, flux_err)
    return Measurement(flux, flux_err, bkg, cx, cy, quality)


def pointing_offset(
    image: np.ndarray,
    background: BackgroundMesh,
    x: np.ndarray,
    y: np.ndarray,
    radius: float = 2.0,
    iterations: int = 3,
) -> tuple[float, float]:
    """Pointing offset (dx, dy) [px] of a frame vs reference positions of bright stars.

    Flux-weighted centroids in apertures that follow the current estimate; the offset is
    the median centroid shift, iterated so the aperture's pull towards its own centre
    vanishes. Use a few hundred bright, unsaturated, isolated stars.
    """
    dx = dy = 0.0
    shape = image.shape
    if len(x) == 0:
        return dx, dy
    for _ in range(iterations):
        ap = build_apertures(shape, x + dx, y + dy, radius)
        m = measure(ap, image, np.zeros_like(image), background)
        good = (m.quality == 0) & np.isfinite(m.x) & np.isfinite(m.y)
        if good.sum() < 3:
            break
        dx = float(np.median(m.x[good] - x[good]))
        dy = float(np.median(m.y[good] - y[good]))
    return dx, dy
