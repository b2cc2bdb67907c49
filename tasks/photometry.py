"""Forced aperture photometry as a sparse matrix-vector product.

Apertures at fixed positions are a sparse matrix ``W`` (stars x pixels) whose entries are
the fraction of each pixel inside each aperture. A frame's fluxes are then ``W @ image``
and their variances ``W² @ sigma²``. Only the aperture pixels are read (gathered) from
the frame, in float64, and summed per star: the cost of a frame grows with the number of
aperture pixels, not with the image size, and no full-size temporary is made.

Circular apertures use sub-pixel sampling (``subpixels`` x ``subpixels`` samples per
pixel, pixel centres at integer coordinates): the same definition as photutils'
``method="subpixel"``, computed for all stars at once with a closed-form count of the
samples inside each chord of the circle.
Arbitrary pixel masks (e.g. a SPOC pipeline aperture) use weights of exactly 1.

Per frame the apertures follow the pointing offset. `ShiftedApertures` places a star
list's apertures at any offset, exactly as `build_apertures` would, from per-radius tables
of sub-pixel sample counts built once per process, so a frame needs almost no geometry.

Units: images in e-/s, fluxes in e-/s, positions in 0-based (column, row) pixels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def _kernel(self) -> _Kernel:
        return _Kernel.of(self)


class _Kernel:
    """Arrays for the gather-based sums of one aperture set.

    ``pix`` are the flat pixel indices of the non-zero weights (intp, for fast gathers),
    ordered by star; ``sel_*`` are (n_stars x nnz) CSR selectors whose products with the
    gathered pixel values give Σ w·v, Σ w²·v, Σ w(c − x)·v and Σ w(r − y)·v per star.
    """

    def __init__(self, npix: int, indptr, pix, w, wdc, wdr) -> None:
        nnz, n = len(pix), len(indptr) - 1
        shape = (n, nnz)
        pos = np.arange(nnz, dtype=indptr.dtype)
        self.npix = int(npix)
        self.pix = pix
        self.sel_w = _csr(w, pos, indptr, shape)
        self.sel_w2 = _csr(w * w, pos, indptr, shape)
        self.sel_dc = _csr(wdc, pos, indptr, shape)
        self.sel_dr = _csr(wdr, pos, indptr, shape)
        ones = np.ones(nnz)
        self.sum_dc = self.sel_dc @ ones  # Σ w(c − x) per star [px²]
        self.sum_dr = self.sel_dr @ ones

    @classmethod
    def of(cls, ap: Apertures) -> _Kernel:
        """The kernel of apertures whose three matrices share one sparsity pattern."""
        w = ap.weights
        for m in (ap.dcol, ap.drow):
            if not (np.array_equal(m.indptr, w.indptr) and np.array_equal(m.indices, w.indices)):
                raise ValueError("weights, dcol and drow must share one sparsity pattern")
        pix = w.indices.astype(np.intp)
        return cls(w.shape[1], w.indptr, pix, w.data, ap.dcol.data, ap.drow.data)

    def gather(self, image: np.ndarray | None) -> np.ndarray:
        """Aperture pixel values of ``image`` as float64 (zeros for None)."""
        if image is None:
            return np.zeros(len(self.pix))
        flat = np.ravel(image)
        if flat.size != self.npix:
            raise ValueError(f"image of {flat.size} pixels, apertures are on {self.npix}")
        return np.take(flat, self.pix).astype(np.float64, copy=False)


def _window_half(radius: np.ndarray, subpixels: int) -> np.ndarray:
    """Half-width [px] of the pixel window that holds every sample inside the circle.

    Samples of pixel offset ``o`` lie within ``|o| - (0.5 - 0.5/s)`` of the rounded centre,
    which itself is within 0.5 px of the true centre.
    """
    return np.floor(radius + 1.0 - 0.5 / subpixels + 1e-9).astype(np.int64).clip(0)


def _chords(
    x: np.ndarray, y: np.ndarray, r: np.ndarray, half: int, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample ranges of circles on each sample row of their (2·half+1)² pixel windows.

    Returns ``lo``, ``hi`` (n, npx·s) int16: the samples ``L`` of a row with
    ``lo <= L < hi`` are inside or on the circle (sample ``L`` sits at column
    ``x0 - half - 0.5 + (L + 0.5)/s``; pixel ``j`` of the window holds ``s·j .. s·j+s-1``),
    and the windows' centre pixels ``x0 = rint(x)``, ``y0 = rint(y)``.
    """
    n = len(x)
    npx = 2 * half + 1
    x0 = np.rint(x).astype(np.int64)
    y0 = np.rint(y).astype(np.int64)
    offs = np.arange(-half, half + 1)
    k = (np.arange(s) + 0.5) / s - 0.5
    # sample rows (n, npx*s) and the chord of the circle on each
    sy = ((y0[:, None] + offs[None, :]).astype(np.float64)[:, :, None] + k).reshape(n, npx * s)
    h2 = r[:, None] ** 2 - (sy - y[:, None]) ** 2
    inside = h2 >= 0.0
    h = np.sqrt(np.where(inside, h2, 0.0))
    # inside or on the circle: lo <= (L + 0.5)/s - 0.5 <= hi, L relative to s·(x0 - half)
    u = (x - x0)[:, None] + (half + 0.5)
    span = npx * s
    lo = np.clip(np.ceil((u - h) * s - 0.5), 0, span)
    hi = np.clip(np.floor((u + h) * s - 0.5) + 1.0, 0, span)  # exclusive
    lo = np.where(inside, lo, 0).astype(np.int16)
    hi = np.maximum(np.where(inside, hi, 0).astype(np.int16), lo)
    return lo, hi, x0, y0


def _range_counts(lo: np.ndarray, hi: np.ndarray, npx: int, s: int) -> np.ndarray:
    """Samples per pixel (n, npx, npx) from per-sample-row ranges ``[lo, hi)``."""
    n = len(lo)
    edges = (np.arange(npx, dtype=np.int16) * s)[None, None, :]
    a = np.clip(hi[:, :, None] - edges, 0, s)
    b = np.clip(lo[:, :, None] - edges, 0, s)
    return (a - b).reshape(n, npx, s, npx).sum(axis=2, dtype=np.int16)


def _circle_block(
    x: np.ndarray, y: np.ndarray, r: np.ndarray, half: int, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample counts (n, npx, npx) of circles in their (2·half+1)² windows, and the windows'
    first row/column (n,)."""
    lo, hi, x0, y0 = _chords(x, y, r, half, s)
    return _range_counts(lo, hi, 2 * half + 1, s), y0 - half, x0 - half


def circular_weights(
    x: np.ndarray, y: np.ndarray, radius: np.ndarray | float, subpixels: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel-sampled overlap of circles with the pixel grid.

    Returns ``(star_index, row, col, weight)`` of every pixel with a non-zero weight
    (0 < weight <= 1), for circles centred at column ``x`` and row ``y`` [px] with
    ``radius`` [px], ordered by star, then row, then column. A pixel's weight is the
    fraction of its ``subpixels``² sample points (at ``c - 0.5 + (k + 0.5)/subpixels``)
    inside the circle, as photutils' ``method="subpixel"`` (samples exactly on the circle,
    which only lattice-aligned centres produce, count as inside).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    r = np.ascontiguousarray(np.broadcast_to(np.asarray(radius, dtype=np.float64), x.shape))
    s = int(subpixels)
    n = len(x)
    empty = np.zeros(0, dtype=np.int64)
    if n == 0:
        return empty, empty, empty, np.zeros(0)
    halves = _window_half(r, s)
    idx_parts, row_parts, col_parts, cnt_parts = [], [], [], []
    for half in np.unique(halves):
        sel = np.flatnonzero(halves == half)
        counts, row0, col0 = _circle_block(x[sel], y[sel], r[sel], int(half), s)
        i, ri, ci = np.nonzero(counts)
        idx_parts.append(sel[i])
        row_parts.append(row0[i] + ri)
        col_parts.append(col0[i] + ci)
        cnt_parts.append(counts[i, ri, ci])
    idx = np.concatenate(idx_parts)
    rows = np.concatenate(row_parts)
    cols = np.concatenate(col_parts)
    cnt = np.concatenate(cnt_parts)
    if len(idx_parts) > 1:
        order = np.argsort(idx, kind="stable")  # groups are each star-major already
        idx, rows, cols, cnt = idx[order], rows[order], cols[order], cnt[order]
    return idx, rows, cols, cnt / float(s * s)


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
    """Apertures from (star, row, col, weight) entries; zero weights are dropped."""
    nrows, ncols = shape
    n = len(x)
    bounds = bounds if bounds is not None else science_bounds(shape)
    r0, r1, c0, c1 = bounds
    idx = np.asarray(idx, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64)
    if len(idx) > 1 and np.any(np.diff(idx) < 0):
        order = np.argsort(idx, kind="stable")
        idx, rows, cols, w = idx[order], rows[order], cols[order], w[order]
    nonzero = w != 0
    in_array = (rows >= 0) & (rows < nrows) & (cols >= 0) & (cols < ncols)
    in_science = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    edge = np.zeros(n, dtype=bool)
    edge[idx[nonzero & ~in_science]] = True
    keep = nonzero & in_array
    if not keep.all():
        idx, rows, cols, w = idx[keep], rows[keep], cols[keep], w[keep]
    return _from_entries(shape, x, y, idx, rows, cols, w, edge, bounds)


def _from_entries(shape, x, y, star, rows, cols, w, edge, bounds) -> Apertures:
    """Apertures from in-array, non-zero entries ordered by star, then row, then column."""
    n = len(x)
    nrows, ncols = shape
    flat = rows * ncols + cols
    mat_shape = (n, nrows * ncols)
    itype = np.int32 if max(mat_shape[1], len(flat)) < 2**31 else np.int64
    indptr = _indptr(star, n, itype)
    indices = flat.astype(itype)
    wdc = w * (cols - x[star])
    wdr = w * (rows - y[star])
    weights = _csr(w, indices, indptr, mat_shape)
    dcol = _csr(wdc, indices, indptr, mat_shape)
    drow = _csr(wdr, indices, indptr, mat_shape)
    area = np.bincount(star, weights=w, minlength=n)
    ap = Apertures(x, y, weights, dcol, drow, area, edge, _outside(x, y, bounds))
    # the three matrices share one pattern by construction: no need for the kernel's checks
    ap.__dict__["_kernel"] = _Kernel(mat_shape[1], indptr, flat.astype(np.intp), w, wdc, wdr)
    return ap


def _indptr(star: np.ndarray, n: int, dtype=np.int64) -> np.ndarray:
    indptr = np.zeros(n + 1, dtype=dtype)
    np.cumsum(np.bincount(star, minlength=n), out=indptr[1:])
    return indptr


def _outside(x: np.ndarray, y: np.ndarray, bounds) -> np.ndarray:
    r0, r1, c0, c1 = bounds
    ry, rx = np.rint(y), np.rint(x)
    return (ry < r0) | (ry >= r1) | (rx < c0) | (rx >= c1)


def _csr(data, indices, indptr, shape) -> sp.csr_matrix:
    """A CSR matrix on ``indices``/``indptr`` (each row's columns already ascending)."""
    m = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    m.has_sorted_indices = True
    return m


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

    def take(self, index: np.ndarray) -> Measurement:
        """The measurement of stars ``index`` (in that order)."""
        return Measurement(*(getattr(self, f)[index] for f in _MEASUREMENT_FIELDS))


_MEASUREMENT_FIELDS = ("flux", "flux_err", "bkg", "x", "y", "quality")


def aperture_sums(
    apertures: Apertures, image: np.ndarray, variance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted sums Σ w·image [e-/s] and, if given, Σ w²·variance [(e-/s)²], per aperture.

    Accumulates in float64 (inputs may be float32). Non-finite pixels contribute NaN to the
    stars whose apertures contain them.
    """
    k = apertures._kernel
    sums = k.sel_w @ k.gather(image)
    var = None
    if variance is not None:
        var = k.sel_w2 @ k.gather(variance)
    return sums, var


def measure(
    apertures: Apertures,
    image: np.ndarray,
    uncert: np.ndarray,
    background: BackgroundMesh,
) -> Measurement:
    """Forced photometry of one calibrated frame.

    ``image`` and ``uncert`` are the FFI's flux and 1σ uncertainty HDUs [e-/s] (float32 or
    float64; only the aperture pixels are read, sums accumulate in float64). The sky level
    per pixel is read from ``background`` at each star and multiplied by the aperture area;
    its error adds in quadrature (area · σ_sky). Centroids are flux-weighted over the
    background-subtracted aperture pixels.
    """
    ap = apertures
    return _measure(ap._kernel, ap.x, ap.y, ap.area, ap.edge, ap.outside, image, uncert, background)


def _measure(k, x, y, area, edge, outside, image, uncert, background) -> Measurement:
    sky, sky_err = background.at(x, y)
    img = k.gather(image)
    err = k.gather(uncert)
    bad_pix = ~(np.isfinite(img) & np.isfinite(err))
    n = len(x)
    sums = {"n_bad": np.zeros(n), "n_sat": np.zeros(n), "area": area}
    if bad_pix.any():
        img = np.where(bad_pix, 0.0, img)
        err = np.where(bad_pix, 0.0, err)
        sums["n_bad"] = k.sel_w @ bad_pix.astype(np.float64)
    sat_pix = img > SATURATION_E_PER_S
    if sat_pix.any():
        sums["n_sat"] = k.sel_w @ sat_pix.astype(np.float64)
    sums["raw"] = k.sel_w @ img
    sums["var"] = k.sel_w2 @ (err * err)
    sums["sdc"], sums["sdcw"] = k.sel_dc @ img, k.sum_dc
    sums["sdr"], sums["sdrw"] = k.sel_dr @ img, k.sum_dr
    return _photometry(sums, x, y, sky, sky_err, edge, outside)


def pointing_offset(
    image: np.ndarray,
    background: BackgroundMesh,
    x: np.ndarray,
    y: np.ndarray,
    radius: float = 2.0,
    iterations: int = 3,
    apertures: ShiftedApertures | None = None,
) -> tuple[float, float]:
    """Pointing offset (dx, dy) [px] of a frame vs reference positions of bright stars.

    Flux-weighted centroids in apertures that follow the current estimate; the offset is
    the median centroid shift, iterated so the aperture's pull towards its own centre
    vanishes. Use a few hundred bright, unsaturated, isolated stars. ``apertures``, the
    `ShiftedApertures` of the same stars and ``radius``, places the apertures faster
    (centres then rounded to its grid).
    """
    dx = dy = 0.0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0:
        return dx, dy
    for _ in range(iterations):
        if apertures is not None:
            m = apertures.measure(image, None, background, dx, dy)
        else:
            ap = build_apertures(image.shape, x + dx, y + dy, radius)
            m = measure(ap, image, None, background)
        good = (m.quality == 0) & np.isfinite(m.x) & np.isfinite(m.y)
        if good.sum() < 3:
            break
        dx = float(np.median(m.x[good] - x[good]))
        dy = float(np.median(m.y[good] - y[good]))
    return dx, dy


# --------------------------------------------------------------- shifted apertures
#: size of the centre cells of the `ShiftedApertures` tables [px]
POSITION_STEP = 1.0 / 200

_TABLES: dict[tuple[float, int, int], _Table] = {}
_TABLES_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Table:
    """Sample counts of one radius over a grid of centre cells, exact for any centre in a cell.

    Cell ``iy*m + ix`` covers centres within 1/(2m) px of ``p0 - 0.5 + (i + 0.5)/m`` on each
    axis (``p0`` = the window's centre pixel). ``base`` (m*m, S) counts, per window slot,
    the samples inside the circle for every centre in the cell (farther than ``margin``
    inside the circle at the cell centre); ``codes[ptr[c]:ptr[c + 1]]`` lists the other
    samples within ``margin`` of the circle, ``slot·s² + sub_row·s + sub_col``, to be
    decided exactly per star.
    """

    base: np.ndarray
    ptr: np.ndarray
    codes: np.ndarray
    half: int
    margin: float


def _count_table(radius: float, subpixels: int, m: int) -> _Table:
    """The `_Table` of one radius (built once per process)."""
    key = (float(radius), int(subpixels), int(m))
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
    if hit is not None:
        return hit
    s = int(subpixels)
    half = int(_window_half(np.array([radius]), s)[0])
    npx = 2 * half + 1
    span = npx * s
    # a centre moves at most 1/(m·sqrt 2) px within its cell: samples farther than
    # margin from the circle keep their side, the others are decided per star
    margin = 1.0 / m
    frac = (np.arange(m) + 0.5) / m - 0.5
    fy, fx = (a.ravel() for a in np.meshgrid(frac, frac, indexing="ij"))
    base_px = 1024.0  # even: rint(base_px + f) == base_px for every cell centre f
    dtype = np.uint8 if s * s <= 255 else np.uint16
    base = np.empty((m * m, npx * npx), dtype=dtype)
    codes, lengths = [], []
    chunk = max(1, 1_000_000 // span)
    rows = np.arange(span)
    for a in range(0, m * m, chunk):
        b = min(a + chunk, m * m)
        cx, cy = base_px + fx[a:b], base_px + fy[a:b]
        r_in = np.full(b - a, max(float(radius) - margin, 0.0))
        lo_i, hi_i, _, _ = _chords(cx, cy, r_in, half, s)
        lo_o, hi_o, _, _ = _chords(cx, cy, np.full(b - a, float(radius) + margin), half, s)
        base[a:b] = _range_counts(lo_i, hi_i, npx, s).reshape(b - a, -1)
        empty = hi_i == lo_i  # no sample well inside on this row: all of [lo_o, hi_o)
        lo_i = np.where(empty, hi_o, lo_i)
        hi_i = np.where(empty, hi_o, hi_i)
        # critical samples: [lo_o, lo_i) and [hi_i, hi_o) on every sample row
        starts = np.stack([lo_o, hi_i], axis=-1).astype(np.int64)  # (cells, rows, 2)
        ends = np.stack([lo_i, hi_o], axis=-1).astype(np.int64)
        n_each = np.maximum(ends - starts, 0)
        total = int(n_each.sum())
        row_of = np.broadcast_to(rows[None, :, None], n_each.shape)
        first = np.repeat(starts.ravel(), n_each.ravel())
        offset = np.arange(total) - np.repeat(
            np.cumsum(n_each.ravel()) - n_each.ravel(), n_each.ravel()
        )
        big_l = first + offset  # sample index along the row
        k = np.repeat(row_of.ravel(), n_each.ravel())  # sample row index
        slot = (k // s) * npx + big_l // s
        codes.append((slot * s * s + (k % s) * s + big_l % s).astype(np.int32))
        lengths.append(n_each.reshape(b - a, -1).sum(axis=1))
    ptr = np.zeros(m * m + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=ptr[1:])
    table = _Table(base, ptr, np.concatenate(codes), half, margin)
    for arr in (table.base, table.ptr, table.codes):
        arr.setflags(write=False)
    with _TABLES_LOCK:
        _TABLES.setdefault(key, table)
        return _TABLES[key]


class ShiftedApertures:
    """Circular apertures of a fixed star list, placed quickly at any pointing offset.

    ``at(dx, dy)`` and ``measure(..., dx, dy)`` use the apertures centred at
    ``(x + dx, y + dy)`` [px]: exactly those of `build_apertures` there (photutils'
    subpixel weights), without building them. Per radius, a table over a grid of
    sub-pixel centre cells (``step`` = 1/200 px) holds each window pixel's count of the
    samples that are inside the circle for every centre in the cell, and lists the few
    samples within ``step`` px of the circle, which are then decided for each star at its
    exact centre with the arithmetic of `circular_weights`. The tables are built once per
    process for each (radius, subpixels, step). With more than ``max_radii`` distinct radii
    the apertures are built with `build_apertures` instead.

    `measure` works on fixed square pixel windows (zero weights included), so a frame
    costs two gathers of the window pixels and a few dense row sums. Stars are processed
    in groups of one window size, in raster order; results are in the input order.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        x: np.ndarray,
        y: np.ndarray,
        radius: np.ndarray | float,
        subpixels: int = 5,
        step: float = POSITION_STEP,
        max_radii: int = 8,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        x = np.asarray(x, dtype=np.float64)
        self.radius = np.ascontiguousarray(
            np.broadcast_to(np.asarray(radius, dtype=np.float64), x.shape)
        )
        self.x = np.ascontiguousarray(x)
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.subpixels = int(subpixels)
        m = round(1.0 / step) if step > 0 else 0
        if m < 2 or m % 2 or abs(m * step - 1.0) > 1e-9:
            raise ValueError(f"step must be 1/m px for an even integer m >= 2, not {step}")
        self.m = m
        self.bounds = science_bounds(self.shape)
        n = len(self.x)
        radii, ridx = np.unique(self.radius, return_inverse=True)
        ridx = ridx.ravel()
        self.exact = len(radii) > max_radii
        self._groups: list[_Group] = []
        window = np.zeros(n, dtype=np.int64)  # the window group of each star
        if not self.exact and n:
            tables = [_count_table(float(r), self.subpixels, m) for r in radii]
            halves = np.array([t.half for t in tables])
            # one group per window size; small groups join the next larger window
            group_half = halves.copy()
            counts = np.bincount(ridx, minlength=len(radii))
            for h in sorted(set(halves.tolist())):
                larger = [q for q in set(group_half.tolist()) if q > h]
                members = group_half == h
                if larger and counts[members].sum() < max(64, n // 20):
                    group_half[members] = min(larger)
            window = group_half[ridx]
        # processing order: by window group, then row, then column
        self._order = np.lexsort((self.x, np.floor(self.y), window))
        self._inverse = np.empty_like(self._order)
        self._inverse[self._order] = np.arange(n)
        self._xs, self._ys = self.x[self._order], self.y[self._order]
        self._rs = self.radius[self._order]
        if not self.exact and n:
            sorted_window = window[self._order]
            for half in np.unique(group_half):
                start, stop = np.searchsorted(sorted_window, [half, half + 1])
                if stop == start:
                    continue
                members = np.flatnonzero(group_half == half)  # radii of this group
                local = np.full(len(radii), -1)
                local[members] = np.arange(len(members))
                group_tables = [tables[r] for r in members]
                table_of = local[ridx[self._order[start:stop]]]
                self._groups.append(
                    _Group(int(start), int(stop), group_tables, int(half), self.shape, table_of)
                )

    @property
    def n_stars(self) -> int:
        """Number of apertures."""
        return len(self.x)

    def at(self, dx: float = 0.0, dy: float = 0.0) -> Apertures:
        """Apertures at the reference positions shifted by (dx, dy) [px], in input order."""
        x, y = self.x + dx, self.y + dy
        if self.exact:
            return build_apertures(self.shape, x, y, self.radius, self.subpixels)
        ncols = self.shape[1]
        stars, flats, counts = [], [], []
        edge = np.zeros(self.n_stars, dtype=bool)
        for g in self._groups:
            p = self._place(g, dx, dy)
            i, j = np.nonzero(p["cnt"])
            stars.append(self._order[g.start + i])
            flats.append(p["flat"][i, j])
            counts.append(p["cnt"][i, j])
            edge[self._order[g.start : g.stop]] = p["edge"]
        if not stars:
            return _assemble(self.shape, x, y, [], [], [], [], self.bounds)
        star, flat, cnt = (np.concatenate(a) for a in (stars, flats, counts))
        order = np.argsort(star, kind="stable")  # each star's pixels stay in raster order
        rows, cols = np.divmod(flat[order], ncols)
        w = cnt[order] / float(self.subpixels**2)
        return _from_entries(self.shape, x, y, star[order], rows, cols, w, edge, self.bounds)

    def measure(
        self,
        image: np.ndarray,
        uncert: np.ndarray | None,
        background: BackgroundMesh,
        dx: float = 0.0,
        dy: float = 0.0,
    ) -> Measurement:
        """`measure` with the apertures at offset (dx, dy) [px]; results in input order.

        ``uncert`` None means zero pixel errors (e.g. for centroids only). Sums accumulate
        in float64 whatever the input dtype.
        """
        if self.exact:
            return measure(self.at(dx, dy), image, uncert, background)
        npix = self.shape[0] * self.shape[1]
        img = np.ravel(image)
        err = None if uncert is None else np.ravel(uncert)
        for a in (img, err):
            if a is not None and a.size != npix:
                raise ValueError(f"image of {a.size} pixels, apertures are on {npix}")
        n = self.n_stars
        sums = np.zeros((n, 7))  # raw, Σ w o_c v, Σ w o_r v, area, Σ w o_c, Σ w o_r, var
        n_bad = np.zeros(n, dtype=np.int64)
        n_sat = np.zeros(n, dtype=np.int64)
        fx, fy = np.zeros(n), np.zeros(n)
        edge = np.zeros(n, dtype=bool)
        s2 = float(self.subpixels**2)
        for g in self._groups:
            sl = slice(g.start, g.stop)
            p = self._place(g, dx, dy)
            fx[sl], fy[sl], edge[sl] = p["fx"], p["fy"], p["edge"]
            cnt = p["cnt"]
            w = cnt / s2  # (n_g, S) weights, exactly as in build_apertures
            v = np.take(img, p["flat"]).astype(np.float64, copy=False)
            e = None if err is None else np.take(err, p["flat"]).astype(np.float64, copy=False)
            out = sums[sl]
            _window_sums(w, v, e, g.moments, out)
            # non-finite pixels (NaN also in a zero-weight corner poisons the sums): redo
            # those stars with the bad pixels zeroed, counting only aperture pixels
            rows = np.flatnonzero(~np.isfinite(out[:, 0]) | ~np.isfinite(out[:, 6]))
            if len(rows):
                vr, er = v[rows], None if e is None else e[rows]
                fin = np.isfinite(vr) if er is None else np.isfinite(vr) & np.isfinite(er)
                n_bad[g.start + rows] = np.count_nonzero(~fin & (cnt[rows] > 0), axis=1)
                er = None if er is None else np.where(fin, er, 0.0)
                fixed = np.zeros((len(rows), 7))
                _window_sums(w[rows], np.where(fin, vr, 0.0), er, g.moments, fixed)
                out[rows] = fixed
            if np.nanmax(v, initial=-np.inf) > SATURATION_E_PER_S:
                rows = np.flatnonzero(np.any(v > SATURATION_E_PER_S, axis=1))
                hot = (v[rows] > SATURATION_E_PER_S) & (cnt[rows] > 0)
                n_sat[g.start + rows] = np.count_nonzero(hot, axis=1)
        # Σ w (c - x) v = (x0 - x) Σ w v + Σ w o_c v, likewise for rows and Σ w (c - x)
        s = {
            "raw": sums[:, 0],
            "area": sums[:, 3],
            "sdc": fx * sums[:, 0] + sums[:, 1],
            "sdr": fy * sums[:, 0] + sums[:, 2],
            "sdcw": fx * sums[:, 3] + sums[:, 4],
            "sdrw": fy * sums[:, 3] + sums[:, 5],
            "var": sums[:, 6],
            "n_bad": n_bad,
            "n_sat": n_sat,
        }
        xc, yc = self._xs + dx, self._ys + dy
        outside = _outside(xc, yc, self.bounds)
        sky, sky_err = background.at(xc, yc)
        m = _photometry(s, xc, yc, sky, sky_err, edge, outside)
        return m.take(self._inverse)

    def _place(self, g: _Group, dx: float, dy: float) -> dict[str, np.ndarray]:
        """Window pixels (flat indices, clamped into the array) and exact sample counts
        (zero off the array) of one window group at offset (dx, dy), in processing order."""
        m, s, h = self.m, self.subpixels, g.half
        nrows, ncols = self.shape
        r0, r1, c0, c1 = self.bounds
        x = self._xs[g.start : g.stop] + dx
        y = self._ys[g.start : g.stop] + dy
        x0 = np.rint(x).astype(np.int64)  # the window centres, as in circular_weights
        y0 = np.rint(y).astype(np.int64)
        ix = np.minimum(np.floor((x - x0 + 0.5) * m).astype(np.int64), m - 1)
        iy = np.minimum(np.floor((y - y0 + 0.5) * m).astype(np.int64), m - 1)
        cell = g.cell0 + iy * m + ix  # row of the group's stacked tables
        cnt = np.take(g.base, cell, axis=0)  # (n_g, S): samples inside for the whole cell
        # the samples near the circle: decided at the exact centre
        starts = g.ptr[cell]
        lens = g.ptr[cell + 1] - starts
        total = int(lens.sum())
        if total:
            star = np.repeat(np.arange(len(x)), lens)
            pos = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
            code = g.codes[pos]
            own = g.own_half[star]  # the window of the star's own radius (as _chords)
            slot, sub = np.divmod(code, s * s)
            ki, kj = np.divmod(sub, s)
            o_r, o_c = np.divmod(slot, 2 * own + 1)
            o_r -= own
            o_c -= own
            # the arithmetic of _chords, for these samples only
            kk = (ki + 0.5) / s - 0.5
            sy = (y0[star] + o_r).astype(np.float64) + kk
            h2 = self._rs[g.start : g.stop][star] ** 2 - (sy - y[star]) ** 2
            ok = h2 >= 0.0
            hh = np.sqrt(np.where(ok, h2, 0.0))
            u = (x - x0)[star] + (own + 0.5)
            big_l = (o_c + own) * s + kj
            ok &= (big_l >= np.ceil((u - hh) * s - 0.5)) & (big_l <= np.floor((u + hh) * s - 0.5))
            if ok.any():
                gslot = (o_r + h) * g.npx + (o_c + h)  # slot in the group's window
                add = np.bincount(star[ok] * g.n_slots + gslot[ok], minlength=cnt.size)
                cnt += add.reshape(cnt.shape).astype(cnt.dtype)
        flat = (y0 * ncols + x0)[:, None] + g.o_flat
        edge = np.zeros(len(x), dtype=bool)
        border = np.flatnonzero((y0 - h < r0) | (y0 + h >= r1) | (x0 - h < c0) | (x0 + h >= c1))
        if len(border):  # the few stars near the edges: check their pixels
            rows = y0[border, None] + g.o_r
            cols = x0[border, None] + g.o_c
            sci = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
            edge[border] = np.any((cnt[border] > 0) & ~sci, axis=1)
            off = ~((rows >= 0) & (rows < nrows) & (cols >= 0) & (cols < ncols))
            cnt[border] = np.where(off, 0, cnt[border])
            flat[border] = np.where(off, 0, flat[border])
        # column/row minus centre: (x0 - x) + o is exactly (x0 + o) - x
        return {"fx": x0 - x, "fy": y0 - y, "cnt": cnt, "flat": flat, "edge": edge}


def _window_sums(w, v, e, moments, out) -> None:
    """Per-star sums over window slots into ``out`` columns: Σ w v, Σ w o_c v, Σ w o_r v,
    Σ w, Σ w o_c, Σ w o_r, Σ w² e² (``moments`` = slot columns [1, o_c, o_r]).

    einsum, not ``@``: a multi-threaded BLAS call per group costs more than the sums when
    the cores are busy (two batches run in parallel).
    """
    wv = w * v
    for k in range(3):
        out[:, k] = np.einsum("ij,j->i", wv, moments[:, k])
        out[:, 3 + k] = np.einsum("ij,j->i", w, moments[:, k])
    if e is not None:
        we = w * e
        out[:, 6] = np.einsum("ij,ij->i", we, we)


class _Group:
    """Stars of one window size in a `ShiftedApertures` (a processing-order slice) and the
    `_Table` of each of their radii, stacked (``cell0`` = first row of each star's table)."""

    def __init__(self, start, stop, tables: list[_Table], half: int, shape, table_of):
        self.start, self.stop, self.half = start, stop, half
        self.npx = 2 * half + 1
        self.n_slots = self.npx**2
        m2 = len(tables[0].base)
        self.base, self.codes, self.ptr = _stacked(tables, half)
        table_of = np.asarray(table_of, dtype=np.int64)
        self.cell0 = table_of * m2
        self.own_half = np.array([t.half for t in tables], dtype=np.int64)[table_of]
        o = np.arange(-half, half + 1)
        self.o_r = np.repeat(o, len(o))  # slot row offsets [px]
        self.o_c = np.tile(o, len(o))  # slot column offsets [px]
        self.o_flat = self.o_r * shape[1] + self.o_c
        moments = np.column_stack([np.ones(len(self.o_r)), self.o_c, self.o_r])
        self.moments = np.asfortranarray(moments, dtype=np.float64)  # contiguous columns


_STACKS: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _stacked(tables: list[_Table], half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tables of a window group one after the other (cached: star sets of one catalog
    share them). Critical-sample codes stay in each radius's own window."""
    key = (tuple(id(t) for t in tables), half)
    with _TABLES_LOCK:
        hit = _STACKS.get(key)
    if hit is not None:
        return hit
    base = np.concatenate([_pad_table(t.base, t.half, half) for t in tables])
    ptrs, shift = [np.zeros(1, dtype=np.int64)], 0
    for t in tables:
        ptrs.append(t.ptr[1:] + shift)
        shift += len(t.codes)
    stack = (base, np.concatenate([t.codes for t in tables]), np.concatenate(ptrs))
    with _TABLES_LOCK:  # tables live as long as the process: their ids stay unique
        if len(_STACKS) > 64:
            _STACKS.clear()
        return _STACKS.setdefault(key, stack)


def _pad_table(table: np.ndarray, half: int, to: int) -> np.ndarray:
    """A count table of (2·half+1)² window slots re-laid on (2·to+1)² slots (zeros around)."""
    if half == to:
        return table
    out = np.zeros((len(table), (2 * to + 1) ** 2), dtype=table.dtype)
    out[:, _slot_map(half, to)] = table
    return out


def _slot_map(half: int, to: int) -> np.ndarray:
    """Slot index in a (2·to+1)² window of each slot of a (2·half+1)² window."""
    o = np.arange(-half, half + 1)
    big = 2 * to + 1
    return ((o[:, None] + to) * big + (o[None, :] + to)).ravel()


def _photometry(s: dict, x, y, sky, sky_err, edge, outside) -> Measurement:
    """Fluxes, errors, centroids and quality bits from per-star sums (see `measure`)."""
    area = s["area"]
    bkg = sky * area
    flux = s["raw"] - bkg
    flux_err = np.sqrt(s["var"] + (sky_err * area) ** 2)
    # centroid over background-subtracted pixels: Σ w (I - sky)(c - x) / Σ w (I - sky);
    # the sky term of Σ w·sky·(c - x) is sky·Σ w(c - x)
    sum_dc = s["sdc"] - sky * s["sdcw"]
    sum_dr = s["sdr"] - sky * s["sdrw"]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = x + np.where(flux > 0, sum_dc / flux, 0.0)
        cy = y + np.where(flux > 0, sum_dr / flux, 0.0)
    quality = np.zeros(len(x), dtype=np.int32)
    quality[edge] |= int(Quality.EDGE)
    quality[outside] |= int(Quality.OUTSIDE)
    quality[s["n_sat"] > 0] |= int(Quality.SATURATED)
    nonfinite = s["n_bad"] > 0
    quality[nonfinite] |= int(Quality.NONFINITE)
    quality[~nonfinite & ~(flux > 0)] |= int(Quality.NEGATIVE)
    flux = np.where(nonfinite, np.nan, flux)
    flux_err = np.where(nonfinite, np.nan, flux_err)
    return Measurement(flux, flux_err, bkg, cx, cy, quality)
