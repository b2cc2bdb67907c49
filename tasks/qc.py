"""Quality control of one CCD's photometry: the dense light-curve matrix, ``epoch_qc``, ``star_qc``.

Everything here works on a dense ``(n_stars, n_cadences)`` representation of the
``photometry`` table (:class:`LightCurveMatrix`, built by :func:`pivot_photometry` with one
vectorised scatter, no per-row Python), so per-cadence statistics are reductions along
axis 0 and per-star statistics reductions along axis 1.

Thresholds are never fixed amplitude cuts. An "outlier" is a value beyond
``median + k * robust sigma`` of its own empirical distribution (over the cadences of the
sector, or over the stars of the CCD), with ``k`` set by a false-alarm probability and the
number of trials (:func:`bonferroni_k`): with ``alpha = 0.01`` and 1000 cadences,
``k = 4.4``, so a clean sector has < 1 % chance of losing even one cadence by chance.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import special, stats

from lakehouse.schemas import (
    BAD_EPOCH_FLAGS,
    BAD_QUALITY_BITS,
    EpochFlag,
)

#: 1 / Phi^-1(3/4): MAD -> Gaussian sigma
MAD_TO_SIGMA = 1.482602218505602
#: Gaussian sigma of a TESS point-spread function used for the crowding estimate [px]
#: (TESS PSF: ~50 % of the energy in the central pixel, ~90 % within 2 px)
PSF_SIGMA_PX = 0.75
#: DQUALITY bits of scattered light (Straylight 2048, Straylight2 4096)
SCATTERED_LIGHT_DQUALITY = 2048 | 4096
#: science area of a real FFI [rows, cols]
SCIENCE_SIZE_FULL = 2048
SCIENCE_COL0 = 44


@dataclass
class LightCurveMatrix:
    """Photometry of one CCD as dense arrays (stars x cadences).

    ``flux``, ``flux_err``, ``bkg`` in e-/s (NaN where the star has no row on that cadence),
    ``quality`` the photometry bits (``present`` False where no row), ``btjd`` [d] per
    cadence, ``star_id``/``x``/``y``/``ref_flux``/``aperture_radius`` per star.
    """

    star_id: np.ndarray
    cadence: np.ndarray
    btjd: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    quality: np.ndarray
    present: np.ndarray
    bkg: np.ndarray | None = None
    cx: np.ndarray | None = None
    cy: np.ndarray | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    ref_flux: np.ndarray | None = None
    aperture_radius: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(n_stars, n_cadences)."""
        return self.flux.shape

    def good_points(self) -> np.ndarray:
        """Boolean (n, T): a row exists, quality has no bad bit, flux and error are finite."""
        return (
            self.present
            & ((self.quality & BAD_QUALITY_BITS) == 0)
            & np.isfinite(self.flux)
            & np.isfinite(self.flux_err)
            & (self.flux_err > 0)
        )


def _as_polars(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    return table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)


def pivot_photometry(
    photometry: pa.Table | pl.DataFrame,
    stars: pa.Table | pl.DataFrame | None = None,
    frames: pa.Table | pl.DataFrame | None = None,
) -> LightCurveMatrix:
    """Pivot long ``photometry`` rows into a :class:`LightCurveMatrix`.

    Stars are the union of ``stars.star_id`` and the photometry's star ids (sorted);
    cadences the union of ``frames.cadence`` and the photometry's cadences (sorted). The
    cadence time is ``frames.btjd`` where known, else the median photometry ``btjd``.
    """
    ph = _as_polars(photometry)
    st = _as_polars(stars) if stars is not None else None
    fr = _as_polars(frames) if frames is not None else None

    ids = ph.get_column("star_id").unique()
    if st is not None and st.height:
        ids = pl.concat([ids, st.get_column("star_id")]).unique()
    star_id = np.sort(ids.to_numpy()).astype(np.int64)
    cads = ph.get_column("cadence").unique()
    if fr is not None and fr.height:
        cads = pl.concat([cads, fr.get_column("cadence").cast(cads.dtype)]).unique()
    cadence = np.sort(cads.to_numpy()).astype(np.int32)
    n, t = len(star_id), len(cadence)

    # rows that already fill the matrix in star-major or cadence-major order (the usual
    # layouts) are reshaped; anything else is scattered through one flat index
    sid = ph.get_column("star_id").to_numpy()
    cad = ph.get_column("cadence").to_numpy()
    layout, flat = "scatter", None
    if sid.size == n * t and _in_layout(sid, cad, star_id, cadence, star_major=True):
        layout = "stars"
    elif sid.size == n * t and _in_layout(sid, cad, star_id, cadence, star_major=False):
        layout = "cadences"
    else:
        flat = np.searchsorted(star_id, sid).astype(np.int64) * t + np.searchsorted(cadence, cad)

    def place(values: np.ndarray, fill, dtype) -> np.ndarray:
        if layout == "stars":
            return values.astype(dtype).reshape(n, t)
        if layout == "cadences":
            out = np.empty((n, t), dtype=dtype)
            out[...] = values.reshape(t, n).T
            return out
        out = np.full((n, t), fill, dtype=dtype)
        out.reshape(-1)[flat] = values
        return out

    def dense(col: str, fill: float = np.nan, dtype=np.float64) -> np.ndarray:
        if col not in ph.columns:
            return np.full((n, t), fill, dtype=dtype)
        return place(ph.get_column(col).fill_null(fill).to_numpy(), fill, dtype)

    flux = dense("flux")
    flux_err = dense("flux_err")
    quality = place(ph.get_column("quality").fill_null(0).to_numpy(), 0, np.int64)
    present = place(np.ones(sid.size, bool), False, bool)

    btjd = np.full(t, np.nan)
    known = np.zeros(t, bool)
    if fr is not None and fr.height and "btjd" in fr.columns:
        fj = np.searchsorted(cadence, fr.get_column("cadence").to_numpy())
        fb = fr.get_column("btjd").to_numpy().astype(float)
        ok = np.isfinite(fb)
        known[fj[ok]] = True
    if not known.all():  # cadences without a frame time: median photometry time
        ph_t = ph.group_by("cadence").agg(pl.col("btjd").median()).sort("cadence")
        btjd[np.searchsorted(cadence, ph_t.get_column("cadence").to_numpy())] = ph_t.get_column(
            "btjd"
        ).to_numpy()
    if known.any():
        btjd[fj[ok]] = fb[ok]

    x = y = ref_flux = radius = None
    if st is not None and st.height:
        si = np.searchsorted(star_id, st.get_column("star_id").to_numpy())
        x, y, ref_flux, radius = (np.full(n, np.nan) for _ in range(4))
        for arr, col in ((x, "x"), (y, "y"), (ref_flux, "ref_flux"), (radius, "aperture_radius")):
            if col in st.columns:
                arr[si] = st.get_column(col).cast(pl.Float64).fill_null(np.nan).to_numpy()
    return LightCurveMatrix(
        star_id=star_id,
        cadence=cadence,
        btjd=btjd,
        flux=flux,
        flux_err=flux_err,
        quality=quality,
        present=present,
        bkg=dense("bkg") if "bkg" in ph.columns else None,
        cx=dense("x") if "x" in ph.columns else None,
        cy=dense("y") if "y" in ph.columns else None,
        x=x,
        y=y,
        ref_flux=ref_flux,
        aperture_radius=radius,
    )


#: threads for the row-block passes over the (stars x cadences) matrix
N_JOBS = max(1, min(4, os.cpu_count() or 1))
#: elements per row block (~8 MB of float64): temporaries stay small and are reused
BLOCK_ELEMENTS = 1 << 20


def for_row_blocks(fn, n_rows: int, row_len: int, n_jobs: int | None = None) -> None:
    """Call ``fn(slice)`` on consecutive blocks of rows, on ``n_jobs`` threads.

    ``fn`` must only write its own rows of its outputs (row-wise computations give the same
    result whatever the blocks). Numpy releases the GIL in its loops, so blocks of a few MB
    use several cores and keep temporaries small. RuntimeWarnings (all-NaN rows) are off.
    """
    n_jobs = N_JOBS if n_jobs is None else max(1, int(n_jobs))
    step = max(1, BLOCK_ELEMENTS // max(int(row_len), 1))
    blocks = [slice(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if n_jobs == 1 or len(blocks) < 2:
            for b in blocks:
                fn(b)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(n_jobs, len(blocks))) as pool:
            for _ in pool.map(fn, blocks):
                pass


def thread_map(fn, items, n_jobs: int | None = None) -> list:
    """``[fn(x) for x in items]`` on ``n_jobs`` threads (default :data:`N_JOBS`), in order.

    For independent pieces of work whose heavy parts release the GIL (numpy loops, BLAS,
    compiled extensions); the results do not depend on the number of threads.
    """
    items = list(items)
    n_jobs = N_JOBS if n_jobs is None else max(1, int(n_jobs))
    if n_jobs == 1 or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with warnings.catch_warnings(), ThreadPoolExecutor(min(n_jobs, len(items))) as pool:
        return list(pool.map(fn, items))


def _in_layout(
    sid: np.ndarray,
    cad: np.ndarray,
    star_id: np.ndarray,
    cadence: np.ndarray,
    star_major: bool,
    block: int = 1 << 20,
) -> bool:
    """True when rows (``sid``, ``cad``) are every (star, cadence) pair exactly once, in
    star-major (all cadences of the first star, ...) or cadence-major order (checked block
    by block: no full-size temporaries)."""
    n, t = len(star_id), len(cadence)
    for a in range(0, sid.size, block):
        k = np.arange(a, min(a + block, sid.size))
        i, j = (k // t, k % t) if star_major else (k % n, k // n)
        if not (
            np.array_equal(sid[a : a + block], star_id[i])
            and np.array_equal(cad[a : a + block], cadence[j])
        ):
            return False
    return True


# ------------------------------------------------------------------------ robust stats
def bonferroni_k(n_trials: int, alpha: float = 0.01) -> float:
    """One-sided Gaussian threshold [sigma] with family-wise false-alarm ``alpha`` over n trials."""
    return float(stats.norm.isf(alpha / max(int(n_trials), 1)))


def nanmedian(a: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """Median ignoring NaN; for 2-D arrays along an axis by one sort (much faster than
    numpy's per-row fallback when rows contain NaN). All-NaN rows give NaN, no warning."""
    a = np.asarray(a, dtype=float)
    if axis is None or a.ndim != 2:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(a, axis=axis, keepdims=keepdims)
    x = a if axis in (1, -1) else a.T
    srt = np.sort(x, axis=1)  # NaN sort last
    cnt = (~np.isnan(x)).sum(axis=1)
    r = np.arange(x.shape[0])
    lo = np.maximum((cnt - 1) // 2, 0)
    hi = np.maximum(cnt // 2, 0)
    if x.shape[1] == 0:
        med = np.full(x.shape[0], np.nan)
    else:
        med = 0.5 * (srt[r, lo] + srt[r, np.minimum(hi, x.shape[1] - 1)])
        med[cnt == 0] = np.nan
    if keepdims:
        med = med[:, None] if axis in (1, -1) else med[None, :]
    return med


def nan_robust_std(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    """1.4826 x median absolute deviation, ignoring NaN (same units as ``a``)."""
    med = nanmedian(a, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * nanmedian(np.abs(a - med), axis=axis)


def lower_sigma(a: np.ndarray) -> float:
    """Gaussian sigma from the lower half of a distribution: median - 15.87th percentile.

    Insensitive to a contaminating upper tail (variables among constant stars, bad cadences
    among good ones), so it measures the width of the "null" population.
    """
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    if a.size < 3:
        return np.nan
    p16, p50 = np.percentile(a, [15.865525393145708, 50.0])
    return float(p50 - p16)


def high_outliers(values: np.ndarray, alpha: float = 0.01, floor: np.ndarray | float = 0.0):
    """Boolean mask of values above ``median + k * sigma`` (k from :func:`bonferroni_k`).

    ``sigma`` = max(1.4826 MAD, ``floor``): the floor is a known sampling noise (e.g. a
    binomial or Poisson error), so a population with zero MAD does not flag tiny deviations.
    """
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    if ok.sum() < 5:
        return np.zeros(v.shape, dtype=bool)
    med = np.median(v[ok])
    sig = np.maximum(MAD_TO_SIGMA * np.median(np.abs(v[ok] - med)), floor)
    k = bonferroni_k(int(ok.sum()), alpha)
    with np.errstate(invalid="ignore"):
        return ok & (v > med + k * sig)


# ------------------------------------------------------------------------ epoch QC
def epoch_flags_pre(
    m: LightCurveMatrix,
    frames: pl.DataFrame | None = None,
    alpha: float = 0.01,
) -> dict[str, np.ndarray]:
    """Per-cadence statistics and flags known before the common-mode correction.

    Returns arrays of length n_cadences: ``n_stars``, ``frac_good``, ``bkg_median``
    [e-/s/px], ``dx``, ``dy``, ``pointing_offset`` [px], ``ensemble_median``,
    ``ensemble_scatter_raw`` (fractions) and ``flags`` (EpochFlag bits DQUALITY,
    LOW_COMPLETENESS, POINTING, SCATTERED_LIGHT, NO_DATA).
    """
    n, t = m.shape
    good = m.good_points()
    n_stars = m.present.sum(axis=0).astype(np.int32)
    n_good = good.sum(axis=0)
    frac_good = n_good / max(n, 1)
    flags = np.zeros(t, dtype=np.int64)
    flags[n_good == 0] |= EpochFlag.NO_DATA

    dq = np.zeros(t, dtype=np.int64)
    bkg_med = np.full(t, np.nan)
    dx = np.full(t, np.nan)
    dy = np.full(t, np.nan)
    if frames is not None and frames.height:
        fj = np.searchsorted(m.cadence, frames.get_column("cadence").to_numpy())
        if "dquality" in frames.columns:
            dq[fj] = frames.get_column("dquality").fill_null(0).to_numpy()
        for arr, col in ((bkg_med, "bkg_median"), (dx, "dx"), (dy, "dy")):
            if col in frames.columns:
                arr[fj] = frames.get_column(col).cast(pl.Float64).fill_null(np.nan).to_numpy()
    else:
        # DQUALITY is in the low 16 bits of every photometry row of the cadence
        dq = np.bitwise_or.reduce(np.where(m.present, m.quality & 0xFFFF, 0), axis=0)
    if not np.isfinite(bkg_med).any() and m.bkg is not None and m.aperture_radius is not None:
        area = np.pi * m.aperture_radius[:, None] ** 2
        bkg_med = nanmedian(np.where(good, m.bkg / area, np.nan), axis=0)
    if not np.isfinite(dx).any() and m.cx is not None and m.x is not None:
        dx = nanmedian(np.where(good, m.cx - m.x[:, None], np.nan), axis=0)
        dy = nanmedian(np.where(good, m.cy - m.y[:, None], np.nan), axis=0)

    from lakehouse.schemas import DEFAULT_BAD_DQUALITY

    flags[(dq & DEFAULT_BAD_DQUALITY) != 0] |= EpochFlag.DQUALITY
    usable = (flags & (EpochFlag.DQUALITY | EpochFlag.NO_DATA)) == 0

    # completeness: low outlier, with a binomial floor on the scatter
    p = np.nanmedian(frac_good[usable]) if usable.any() else 0.0
    floor = np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))
    low = high_outliers(np.where(usable, -frac_good, np.nan), alpha, floor)
    flags[low] |= EpochFlag.LOW_COMPLETENESS

    # pointing: distance from the sector's median pointing
    offset = np.hypot(dx - np.nanmedian(dx[usable]), dy - np.nanmedian(dy[usable]))
    if np.isfinite(offset[usable]).sum() >= 5:
        flags[high_outliers(np.where(usable, offset, np.nan), alpha, 1e-3)] |= EpochFlag.POINTING

    # scattered light: sky background a high outlier, or SPOC stray-light bits
    if np.isfinite(bkg_med[usable]).sum() >= 5:
        sky_floor = 0.01 * max(float(np.nanmedian(np.abs(bkg_med[usable]))), 1e-6)
        flags[high_outliers(np.where(usable, bkg_med, np.nan), alpha, sky_floor)] |= (
            EpochFlag.SCATTERED_LIGHT
        )
    flags[(dq & SCATTERED_LIGHT_DQUALITY) != 0] |= EpochFlag.SCATTERED_LIGHT

    med = masked_row_median(m.flux, good)
    bright = np.flatnonzero(_bright_half(med))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(
            good[bright] & (med[bright, None] > 0), m.flux[bright] / med[bright, None] - 1.0, np.nan
        )
    ens_med = _nanmedian_cols(rel)
    ens_scatter = _nan_robust_std_cols(rel)
    return {
        "n_stars": n_stars,
        "frac_good": frac_good,
        "bkg_median": bkg_med,
        "dx": dx,
        "dy": dy,
        "pointing_offset": offset,
        "ensemble_median": ens_med,
        "ensemble_scatter_raw": ens_scatter,
        "flags": flags,
    }


def _bright_half(median_flux: np.ndarray) -> np.ndarray:
    """Stars at or above the median of positive median fluxes (where noise is smallest)."""
    ok = np.isfinite(median_flux) & (median_flux > 0)
    if not ok.any():
        return ok
    return ok & (median_flux >= np.median(median_flux[ok]))


def _column_blocks(fn, a: np.ndarray, rows=None, mask: np.ndarray | None = None) -> np.ndarray:
    """``fn`` (a per-column statistic along axis 0) of ``a[rows]`` (NaN where ``mask`` is
    False), evaluated on blocks of columns (small temporaries; several threads)."""
    if rows is not None:
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
    n_rows = a.shape[0] if rows is None else len(rows)
    t = a.shape[1]
    out = np.full(t, np.nan)
    if n_rows == 0:
        return out

    def block(cb):
        x = a[:, cb] if rows is None else a[rows, cb]
        if mask is not None:
            x = np.where(mask[:, cb] if rows is None else mask[rows, cb], x, np.nan)
        out[cb] = fn(x)

    with np.errstate(all="ignore"):
        for_row_blocks(block, t, n_rows)
    return out


def _nanmedian_cols(a: np.ndarray, rows=None, mask: np.ndarray | None = None) -> np.ndarray:
    return _column_blocks(lambda x: nanmedian(x, axis=0), a, rows, mask)


def _nan_robust_std_cols(a: np.ndarray, rows=None, mask: np.ndarray | None = None) -> np.ndarray:
    return _column_blocks(lambda x: nan_robust_std(x, axis=0), a, rows, mask)


def masked_row_median(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of each row of ``a`` (n, T) over the points where ``mask`` is True (NaN for
    rows without any; same units as ``a``), computed on blocks of rows."""
    out = np.empty(a.shape[0])

    def block(sl):
        out[sl] = nanmedian(np.where(mask[sl], a[sl], np.nan), axis=1)

    for_row_blocks(block, a.shape[0], a.shape[1])
    return out


def epoch_flags_post(
    resid_norm: np.ndarray,
    rel_corr: np.ndarray,
    median_flux: np.ndarray,
    flags: np.ndarray,
    alpha: float = 0.01,
) -> dict[str, np.ndarray]:
    """Per-cadence scatter after the common-mode correction and the SCATTER flag.

    ``resid_norm`` (n, T) = corrected relative flux / its error (NaN where not good; a
    star's own variability is included, so the robust std across stars is used);
    ``rel_corr`` (n, T) the corrected flux/median - 1. Returns ``ensemble_scatter``
    (fraction, bright half of the stars), ``ensemble_chi`` (~1 on a clean cadence) and the
    updated ``flags``.
    """
    chi = _nan_robust_std_cols(resid_norm)
    scatter = _nan_robust_std_cols(rel_corr, rows=_bright_half(median_flux))
    flags = flags.copy()
    usable = (flags & (EpochFlag.DQUALITY | EpochFlag.NO_DATA)) == 0
    n_stars = np.isfinite(resid_norm).sum(axis=0)
    # sampling error of a robust std of n unit normals ~ 1.17 / sqrt(2 n)
    floor = 1.17 / np.sqrt(2.0 * np.maximum(np.median(n_stars[usable]) if usable.any() else 1, 1))
    flags[high_outliers(np.where(usable, chi, np.nan), alpha, floor)] |= EpochFlag.SCATTER
    return {"ensemble_scatter": scatter, "ensemble_chi": chi, "flags": flags}


def epoch_bad(flags: np.ndarray) -> np.ndarray:
    """True where a cadence is bad (any bit of BAD_EPOCH_FLAGS)."""
    return (np.asarray(flags) & BAD_EPOCH_FLAGS) != 0


def epoch_reasons(flags: np.ndarray) -> list[str]:
    """Comma-separated lower-case EpochFlag names per cadence ("" when no flag)."""
    names = [(int(f), f.name.lower()) for f in EpochFlag]
    uniq, inv = np.unique(np.asarray(flags, dtype=np.int64), return_inverse=True)
    text = [",".join(name for bit, name in names if int(u) & bit) for u in uniq]
    return [text[k] for k in inv]


# ------------------------------------------------------------------------ star QC
def infer_science_size(x: np.ndarray, y: np.ndarray) -> int:
    """Science-area size N [px] (N x N, columns from 44) from the star positions.

    Real FFIs have N = 2048; simulated ones may be smaller. Catalog stars lie inside the
    science area, so N is taken as the smallest size that contains every star.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return SCIENCE_SIZE_FULL
    extent = max(float(np.max(y[ok])) + 1.0, float(np.max(x[ok])) - SCIENCE_COL0 + 1.0)
    return int(min(SCIENCE_SIZE_FULL, np.ceil(extent)))


def edge_distance(x: np.ndarray, y: np.ndarray, science_size: int) -> np.ndarray:
    """Distance [px] from each star to the nearest edge of the N x N science area.

    Science rows 0..N-1, columns 44..N+43 (pixel centres at integers, edges at -0.5, N-0.5).
    """
    col_lo, col_hi = SCIENCE_COL0 - 0.5, SCIENCE_COL0 + science_size - 0.5
    row_lo, row_hi = -0.5, science_size - 0.5
    return np.minimum.reduce([x - col_lo, col_hi - x, y - row_lo, row_hi - y])


def crowding(
    x: np.ndarray,
    y: np.ndarray,
    ref_flux: np.ndarray,
    aperture_radius: np.ndarray,
    psf_sigma: float = PSF_SIGMA_PX,
) -> np.ndarray:
    """Neighbours' flux inside each star's aperture divided by the star's own flux in it.

    Each star is a circular Gaussian of ``psf_sigma`` [px]; the fraction of a star at
    distance d inside a circle of radius r is the non-central chi-square CDF
    ``ncx2.cdf((r/s)^2, 2, (d/s)^2)`` (Marcum Q). Pairs come from a KD-tree, so the work
    is O(n log n) and vectorised over pairs.
    """
    from scipy.spatial import cKDTree

    n = len(x)
    out = np.zeros(n)
    f = np.where(np.isfinite(ref_flux) & (ref_flux > 0), ref_flux, 0.0)
    r = np.where(np.isfinite(aperture_radius), aperture_radius, 2.0)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return out
    idx = np.flatnonzero(ok)
    tree = cKDTree(np.column_stack([x[idx], y[idx]]))
    reach = float(np.nanmax(r)) + 5.0 * psf_sigma
    pairs = tree.query_pairs(reach, output_type="ndarray")
    own = f * stats.ncx2.cdf((r / psf_sigma) ** 2, 2, 0.0)
    if len(pairs):
        a, b = idx[pairs[:, 0]], idx[pairs[:, 1]]
        d2 = (x[a] - x[b]) ** 2 + (y[a] - y[b]) ** 2
        nc = d2 / psf_sigma**2
        into_a = f[b] * stats.ncx2.cdf((r[a] / psf_sigma) ** 2, 2, nc)
        into_b = f[a] * stats.ncx2.cdf((r[b] / psf_sigma) ** 2, 2, nc)
        np.add.at(out, a, into_a)
        np.add.at(out, b, into_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(own > 0, out / own, np.inf)


def star_statistics(
    raw: np.ndarray,
    corrected: np.ndarray,
    flux_err: np.ndarray,
    good: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-star precision statistics (fractions unless stated).

    ``raw``/``corrected`` (n, T) in e-/s; ``flux_err`` the *photometric* error (before the
    correction adds its own), so that ``precision_ratio`` = robust scatter of the corrected
    flux / photometric noise measures what the correction achieved (1 = photon limited);
    ``good`` (n, T) the points used.
    Returns ``n_good``, ``median_flux`` [e-/s], ``robust_scatter_raw``, ``robust_scatter``,
    ``p2p_scatter``, ``expected_noise``, ``precision_ratio``, ``median_snr``.
    """
    n = raw.shape[0]
    med, rs_raw, rs, p2p, expected, snr = (np.empty(n) for _ in range(6))

    def block(sl):  # per-star statistics: blocks of rows on several threads
        g, r, c, e = good[sl], raw[sl], corrected[sl], flux_err[sl]
        with np.errstate(all="ignore"):
            md = nanmedian(np.where(g, r, np.nan), axis=1)
            mdc = nanmedian(np.where(g, c, np.nan), axis=1)
            pos = np.where(md > 0, md, np.nan)
            posc = np.where(mdc > 0, mdc, np.nan)
            rel_raw = np.where(g, r / pos[:, None] - 1, np.nan)
            rel = np.where(g, c / posc[:, None] - 1, np.nan)
            med[sl] = md
            rs_raw[sl] = nan_robust_std(rel_raw, axis=1)
            rs[sl] = nan_robust_std(rel, axis=1)
            p2p[sl] = _p2p_scatter(rel, g)
            expected[sl] = nanmedian(np.where(g, e, np.nan), axis=1) / posc
            snr[sl] = nanmedian(np.where(g, c / e, np.nan), axis=1)

    for_row_blocks(block, n, raw.shape[1])
    with np.errstate(all="ignore"):
        ratio = rs / expected
    return {
        "n_good": good.sum(axis=1).astype(np.int32),
        "median_flux": med,
        "robust_scatter_raw": rs_raw,
        "robust_scatter": rs,
        "p2p_scatter": p2p,
        "expected_noise": expected,
        "precision_ratio": ratio,
        "median_snr": snr,
    }


def _p2p_scatter(rel: np.ndarray, good: np.ndarray) -> np.ndarray:
    """1.4826 MAD of differences of successive good points / sqrt(2), per star."""
    n, _ = rel.shape
    ii, jj = np.nonzero(good)
    vals = rel[ii, jj]
    same = ii[1:] == ii[:-1]
    d = (vals[1:] - vals[:-1])[same]
    rows = ii[1:][same]
    out = np.full(n, np.nan)
    if d.size == 0:
        return out
    df = pl.DataFrame({"i": rows, "d": d})
    agg = df.group_by("i").agg((pl.col("d") - pl.col("d").median()).abs().median().alias("mad"))
    out[agg.get_column("i").to_numpy()] = (
        agg.get_column("mad").to_numpy() * MAD_TO_SIGMA / np.sqrt(2.0)
    )
    return out


def gaussian_sigma_from_logp(log10_p: np.ndarray) -> np.ndarray:
    """One-sided Gaussian-equivalent significance [sigma] of a log10 p-value (stable tails)."""
    lp = np.asarray(log10_p, dtype=float) * np.log(10.0)
    lp = np.minimum(lp, np.log(0.5))
    out = np.full(lp.shape, np.nan)
    ok = np.isfinite(lp)
    # -ndtri(p) = isf; for tiny p use the asymptotic inverse of log Phi(-z)
    direct = ok & (lp > -700)
    out[direct] = -special.ndtri(np.exp(lp[direct]))
    deep = ok & ~direct
    if deep.any():
        z = np.sqrt(-2 * lp[deep])
        for _ in range(6):  # Newton on log_ndtr(-z) = lp
            f = special.log_ndtr(-z) - lp[deep]
            dfdz = -np.exp(stats.norm.logpdf(z) - special.log_ndtr(-z))
            z = z - f / dfdz
        out[deep] = z
    return out


# ------------------------------------------------------------------------ tables
def _table(schema: pa.Schema, cols: dict, n: int, sector: int, camera: int, ccd: int) -> pa.Table:
    cols = {
        "sector": np.full(n, sector),
        "camera": np.full(n, camera),
        "ccd": np.full(n, ccd),
        **cols,
    }
    arrays = []
    for f in schema:
        v = cols[f.name]
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            arrays.append(pa.array(v, type=f.type, from_pandas=True))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def epoch_qc_table(c, sector: int, camera: int, ccd: int) -> pa.Table:
    """``epoch_qc`` rows of a :class:`tasks.common_mode.CorrectedCCD` (schema EPOCH_QC)."""
    from lakehouse.schemas import EPOCH_QC

    m = c.matrix
    e = c.epoch
    flags = e["flags"].astype(np.int32)
    cols = {
        "cadence": m.cadence,
        "btjd": m.btjd,
        **{
            k: e[k]
            for k in (
                "n_stars",
                "frac_good",
                "bkg_median",
                "dx",
                "dy",
                "pointing_offset",
                "ensemble_median",
                "ensemble_scatter_raw",
                "ensemble_scatter",
                "ensemble_chi",
                "cm_mult",
                "cm_add",
            )
        },
        "flags": flags,
        "bad": epoch_bad(flags),
        "bad_reason": epoch_reasons(flags),
    }
    return _table(EPOCH_QC, cols, len(m.cadence), sector, camera, ccd)


def star_qc_table(c, sector: int, camera: int, ccd: int) -> pa.Table:
    """``star_qc`` rows of a :class:`tasks.common_mode.CorrectedCCD` (schema STAR_QC)."""
    from lakehouse.schemas import STAR_QC

    m = c.matrix
    cols = {"star_id": m.star_id, **{k: c.star[k] for k in STAR_QC.names if k in c.star}}
    return _table(STAR_QC, cols, len(m.star_id), sector, camera, ccd)
