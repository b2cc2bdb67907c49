"""Common-mode correction: remove the systematics that neighbouring stars share.

Model (per star i and cadence t, flux in e-/s)::

    raw_i(t) = true_i(t) * (1 + m(x_i, y_i, t)) + A_i * b(x_i, y_i, t) + noise

``m`` is a multiplicative common mode (pointing jitter, focus: a fraction of the flux)
and ``b`` an additive one (scattered light / background error, e-/s per pixel, times
the aperture area ``A_i`` in pixels). Both vary across the CCD, so they are estimated
*locally*: for every star, from its K nearest quiet reference stars (never itself).

Why this design (and not one global median or a per-star regression):

* scattered light is spatial and additive: in relative flux it is ``A_i b / F_i``, i.e.
  ten times larger for a star ten times fainter. Writing each reference's relative
  residual as ``r_k(t) = m(t) + b(t) * u_k`` with ``u_k = A_k / F_k`` [px per e-/s], a
  weighted least-squares line through the neighbours at each cadence separates the two
  terms (bright stars pin ``m``, faint stars give the lever arm for ``b``); the target's
  systematic is then ``m + b * u_i``. All stars and cadences are done at once with five
  sparse-matrix products ``W @ (w * ...)`` (W = n_stars x n_refs neighbour matrix).
* the target never enters its own estimate, and no coefficient is fitted to the target
  by default, so its variability cannot be absorbed (measured: amplitude preserved to
  < 1 % on injected sinusoids, see tests/test_analytics_common_mode.py). An optional
  per-star scale fit (``fit_scale=True``, two coefficients with a Gaussian prior centred
  on 1) handles stars whose response differs from their neighbours'.
* references are cleaned iteratively: points more than ``clip`` sigma from the model are
  dropped, and references whose residual scatter (point-to-point or on 6-h bins) is a
  high outlier among references are removed (variables, blends), then the model is
  recomputed.

The prediction's own uncertainty (from the 2x2 normal equations) is added in quadrature
to ``flux_err``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from tasks.qc import (
    MAD_TO_SIGMA,
    for_row_blocks,
    high_outliers,
    nan_robust_std,
    nanmedian,
    thread_map,
)


def normalise_by_median(
    flux: np.ndarray, flux_err: np.ndarray, good: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each star's median over its good points [e-/s], and flux, flux_err relative to it.

    Arrays are (n_stars, n_cadences); the relative values are ``flux / median - 1`` and
    ``flux_err / median`` (NaN rows where the median is not positive).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = nanmedian(np.where(good, flux, np.nan), axis=1)
    pos = np.where(med > 0, med, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return med, flux / pos[:, None] - 1.0, flux_err / pos[:, None]


@dataclass
class CommonModeResult:
    """Output of :func:`correct_common_mode` (arrays are (n_stars, n_cadences) unless noted).

    ``flux``/``flux_err`` corrected [e-/s]; ``mult`` the multiplicative term m (fraction);
    ``add`` the additive term in the aperture [e-/s]; ``add_per_px`` b [e-/s/px];
    ``uncorrected`` True where no estimate was possible (flux left raw);
    ``is_reference``/``n_refs``/``radius`` [px] per star.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    mult: np.ndarray
    add: np.ndarray
    add_per_px: np.ndarray
    uncorrected: np.ndarray
    is_reference: np.ndarray
    n_refs: np.ndarray
    radius: np.ndarray
    gain: np.ndarray | None = None


def _median_rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from tasks.qc import masked_row_median

    return masked_row_median(a, mask)


def neighbour_matrix(
    x: np.ndarray,
    y: np.ndarray,
    ref_index: np.ndarray,
    k: int,
    noise: np.ndarray | None = None,
    noise_factor: float = 3.0,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse (n_stars x n_refs) matrix of ones linking each star to its k nearest references.

    A star that is itself a reference is not linked to itself. With ``noise`` (n,) (each
    star's relative noise), a star only takes references at most ``noise_factor`` times
    noisier than itself where enough exist (tiers of reference noise: a bright star reaches
    farther for bright references instead of inheriting faint stars' noise). Returns the
    matrix, the number of references per star and the distance to the farthest one [px].
    """
    n = len(x)
    n_ref = len(ref_index)
    if n_ref == 0:
        return sp.csr_matrix((n, 0)), np.zeros(n, np.int32), np.full(n, np.nan)
    own = np.full(n, -1)
    own[ref_index] = np.arange(n_ref)
    pos = np.column_stack([np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)])
    tier_of = np.zeros(n, int)
    members = [np.arange(n_ref)]
    if noise is not None:
        rn = np.nan_to_num(noise[ref_index], nan=np.inf)
        qs = [q for q in (0.1, 0.25, 0.5) if round(q * n_ref) >= 3 * (k + 1)]
        limits = [np.quantile(rn[np.isfinite(rn)], q) for q in qs] if np.isfinite(rn).any() else []
        members = [np.flatnonzero(rn <= lim) for lim in limits] + [np.arange(n_ref)]
        tn = np.nan_to_num(noise, nan=np.inf) * noise_factor
        tier_of = np.full(n, len(limits))
        for j in range(len(limits) - 1, -1, -1):
            tier_of[tn <= limits[j]] = j
    rows_all, cols_all, d_all = [], [], []
    for j, mem in enumerate(members):
        targets = np.flatnonzero(tier_of == j)
        if targets.size == 0 or mem.size == 0:
            continue
        kq = min(k + 1, mem.size)
        tree = cKDTree(np.column_stack([x[ref_index[mem]], y[ref_index[mem]]]))
        dist, idx = tree.query(pos[targets], k=kq)
        dist = dist.reshape(targets.size, kq)
        idx = mem[idx.reshape(targets.size, kq)]
        keep = idx != own[targets][:, None]
        keep &= np.cumsum(keep, axis=1) <= k  # at most k (self may not be among the hits)
        keep &= np.isfinite(dist) & (dist < 1e8)
        rows_all.append(np.broadcast_to(targets[:, None], idx.shape)[keep])
        cols_all.append(idx[keep])
        d_all.append((targets, np.where(keep, dist, -np.inf).max(axis=1), keep.sum(axis=1)))
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, int)
    cols = np.concatenate(cols_all) if cols_all else np.zeros(0, int)
    w = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n_ref))
    n_refs = np.zeros(n, np.int32)
    radius = np.full(n, np.nan)
    for targets, rad, cnt in d_all:
        n_refs[targets] = cnt
        radius[targets] = np.where(cnt > 0, rad, np.nan)
    return w, n_refs, radius


def correct_common_mode(
    flux: np.ndarray,
    flux_err: np.ndarray,
    good: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    aperture_area: np.ndarray,
    reference_ok: np.ndarray | None = None,
    n_neighbours: int = 30,
    n_iter: int = 2,
    clip: float = 5.0,
    additive: bool = True,
    fit_scale: bool = False,
    alpha: float = 0.05,
    regressors: np.ndarray | None = None,
    window: tuple[np.ndarray, np.ndarray] | None = None,
    noise_tiers: bool = False,
    n_jobs: int | None = None,
) -> CommonModeResult:
    """Remove the locally shared multiplicative and additive systematics.

    Parameters
    ----------
    flux, flux_err : (n, T) raw flux and 1-sigma error [e-/s]
    good : (n, T) points usable (quality, epochs)
    x, y : (n,) star positions [px]
    aperture_area : (n,) aperture area [px^2]
    reference_ok : (n,) stars allowed as references (e.g. not crowded, not at the edge)
    n_neighbours : references per star (K)
    n_iter : passes of reference cleaning
    clip : per-point rejection of reference residuals [sigma]
    additive : also fit the additive (scattered light) term
    fit_scale : fit two per-star coefficients (prior N(1, 0.5^2)) on the local terms
    alpha : family-wise false-alarm probability for rejecting a reference as variable
    window : per-cadence (lo, hi) bounds from :func:`time_windows`: the local fit is also
        averaged over those cadences (slow systematics; the noise of a star's estimate
        drops by ~sqrt(width))
    noise_tiers : pick references by noise tier as well (see :func:`neighbour_matrix`)
    regressors : (T, p) pointing regressors (:func:`pointing_regressors`); when given, each
        star's own pointing response is removed first (:func:`decorrelate_pointing`)
    n_jobs : threads for the row-block passes (default :data:`tasks.qc.N_JOBS`; the result
        does not depend on it)
    """
    n, t = flux.shape
    good = good & np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0)
    med = _median_rows(flux, good)
    valid = np.isfinite(med) & (med > 0) & np.isfinite(x) & np.isfinite(y)
    n_good = good.sum(axis=1)
    if reference_ok is None:
        reference_ok = np.ones(n, bool)
    ref_cand = valid & reference_ok & (n_good >= 0.5 * t)
    safe_med = np.where(valid, med, 1.0)
    pointing = None
    if regressors is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            rel0 = flux / safe_med[:, None] - 1.0
        pointing, _ = decorrelate_pointing(rel0, good & valid[:, None], regressors)
        del rel0
        flux = flux / (1.0 + pointing)
        flux_err = flux_err / np.abs(1.0 + pointing)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = flux / safe_med[:, None] - 1.0
        srel = flux_err / safe_med[:, None]
    area = np.where(np.isfinite(aperture_area) & (aperture_area > 0), aperture_area, 1.0)
    u_all = area / safe_med  # [px per e-/s]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        star_noise = _median_rows(srel, good)
    ref_index = np.flatnonzero(ref_cand)
    point_ok = good[ref_index].copy()
    noise_scale = np.ones(len(ref_index))
    active = np.ones(len(ref_index), bool)
    n_pass = max(1, n_iter)
    buffer = None
    for _ in range(n_pass - 1):
        # cleaning pass: residuals of every candidate reference against its (self-excluded)
        # prediction, block by block over the candidate references
        used = active.copy()
        w_mat, _, _ = neighbour_matrix(
            x, y, ref_index[used], n_neighbours, noise=star_noise if noise_tiers else None
        )
        rk = ref_index[used]
        terms = _ref_terms(
            rel, srel, rk, noise_scale[used], point_ok[used], u_all[rk], additive, n_jobs, buffer
        )
        w_ref = w_mat[ref_index]
        scale = np.full(len(ref_index), np.nan)
        binned = np.full(len(ref_index), np.nan)
        new_ok = np.zeros_like(point_ok)

        def clean(sl, w_ref=w_ref, terms=terms, scale=scale, binned=binned, new_ok=new_ok):
            rows = ref_index[sl]
            alpha_t, beta_t, var_m, cov_mb, var_b = _fit_rows(w_ref[sl], terms, t, additive)[0]
            u = u_all[rows, None]
            pred = alpha_t + beta_t * u
            pvar = var_m + 2 * u * cov_mb + u**2 * var_b
            with np.errstate(invalid="ignore"):
                z = (rel[rows] - pred) / np.sqrt(srel[rows] ** 2 + pvar)
            z = np.where(good[rows], z, np.nan)
            sc = nan_robust_std(z, axis=1)
            scale[sl] = sc
            binned[sl] = _binned_chi(z, 12)
            ns = np.where(np.isfinite(sc), np.maximum(sc, 1.0), 1.0)
            new_ok[sl] = good[rows] & (np.abs(np.nan_to_num(z, nan=np.inf)) < clip * ns[:, None])

        for_row_blocks(clean, len(ref_index), terms.shape[1], n_jobs)
        buffer = terms  # reused by the next pass (no fresh memory)
        del w_ref
        noise_scale = np.where(np.isfinite(scale), np.maximum(scale, 1.0), 1.0)
        point_ok = new_ok
        # rejection is final: a variable's own blended satellites could otherwise make its
        # residual look quiet on the next pass
        variable = high_outliers(scale, alpha) | high_outliers(binned, alpha)
        candidate = active & ~variable & np.isfinite(scale)
        if candidate.sum() >= 3:
            active = candidate

    # final model: the per-cadence fit (fast part) and, with a window, its time-averaged
    # version (slow part). Each part is applied with a gain g <= 1 so that a bright star
    # among faint neighbours does not inherit their noise: the Wiener gain
    # var(signal) / (var(signal) + var(noise)) from the prediction alone (its variance
    # over time and its formal noise); for the fast part also at most the slope of the
    # star on it (its real fast noise exceeds the formal one; slow stellar variability
    # hardly correlates with a fast series, so this cannot be biased by it).
    used = active.copy()
    w_mat, n_refs, radius = neighbour_matrix(
        x, y, ref_index[used], n_neighbours, noise=star_noise if noise_tiers else None
    )
    rk = ref_index[used]
    terms = _ref_terms(
        rel, srel, rk, noise_scale[used], point_ok[used], u_all[rk], additive, n_jobs, buffer
    )
    del buffer
    corrected = np.empty((n, t))
    err = np.empty((n, t))
    mult = np.empty((n, t))
    add = np.empty((n, t))
    add_px = np.empty((n, t))
    uncorrected = np.empty((n, t), bool)
    gain = np.empty(n)

    def final(sl):
        fits = _fit_rows(w_mat[sl], terms, t, additive, window)
        u = u_all[sl, None]

        def parts(fit):
            a, b, vm, cmb, vb = fit
            bad = ~np.isfinite(a) | ~np.isfinite(b)
            a, b = np.where(bad, 0.0, a), np.where(bad, 0.0, b)
            pv = np.where(bad, 0.0, vm + 2 * u * cmb + u**2 * vb)
            return a, b, pv, bad

        a_u, b_u, pvar_u, unc = parts(fits[0])
        if len(fits) > 1:
            a_s, b_s, pvar_s, bad_s = parts(fits[1])
            unc = unc & bad_s
        else:
            a_s, b_s, pvar_s = a_u, b_u, pvar_u
        g, r, sr = good[sl], rel[sl], srel[sl]
        pred_s = a_s + b_s * u
        pred_f = (a_u + b_u * u) - pred_s
        g_s = _wiener(pred_s, pvar_s, g)
        pvar_f = np.maximum(pvar_u - pvar_s, 0.0)
        g_f = np.minimum(_wiener(pred_f, pvar_f, g), _slope(r, sr, g, pred_f))
        if len(fits) == 1:
            g_f = np.zeros_like(g_s)
        a_t = g_s[:, None] * a_s + g_f[:, None] * (a_u - a_s)
        b_t = g_s[:, None] * b_s + g_f[:, None] * (b_u - b_s)
        pvar = g_s[:, None] ** 2 * pvar_s + g_f[:, None] ** 2 * pvar_f
        gain[sl] = g_s
        a_rel = b_t * u  # additive term in units of the star's median flux
        if fit_scale:
            a_t, a_rel = _fit_scales(r, sr, g, a_t, a_rel)
        med_b = safe_med[sl, None]
        ad = a_rel * med_b  # e-/s in the aperture
        ad_px = ad / area[sl, None]
        f, fe = flux[sl], flux_err[sl]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = (f - ad) / (1.0 + a_t)
            e = np.sqrt(fe**2 + (med_b**2) * np.maximum(pvar, 0.0)) / np.abs(1.0 + a_t)
        invalid = ~valid[sl]
        corr[invalid] = f[invalid]
        e[invalid] = fe[invalid]
        corrected[sl] = corr
        err[sl] = e
        # report the pointing term inside the multiplicative one: raw = true (1 + m) + add
        if pointing is None:
            mult[sl] = (1.0 + a_t) * 1.0 - 1.0
            add[sl] = ad
            add_px[sl] = ad_px
        else:
            p1 = 1.0 + pointing[sl]
            mult[sl] = (1.0 + a_t) * p1 - 1.0
            add[sl] = ad * p1
            add_px[sl] = ad_px * p1
        uncorrected[sl] = unc | invalid[:, None]

    for_row_blocks(final, n, terms.shape[1], n_jobs)
    is_ref = np.zeros(n, bool)
    is_ref[ref_index[used]] = True
    return CommonModeResult(
        flux=corrected,
        flux_err=err,
        mult=mult,
        add=add,
        add_per_px=add_px,
        uncorrected=uncorrected,
        is_reference=is_ref,
        n_refs=n_refs,
        radius=radius,
        gain=gain,
    )


def time_windows(
    t: np.ndarray, width: int, breaks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive index bounds (lo, hi) of a centred window of ``width`` cadences per cadence.

    Windows do not cross a data gap (> 3 median spacings) nor a ``breaks`` position (index
    where a new segment starts, e.g. scattered-light flag changes).
    """
    n = len(t)
    dt = np.diff(t)
    med = np.nanmedian(dt) if dt.size else 1.0
    new = np.zeros(n, bool)
    new[0] = True
    new[1:] = ~(dt <= 3 * med)
    if breaks is not None:
        new[np.asarray(breaks, int)] = True
    seg = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:] - 1, [n - 1]])
    h = max(width // 2, 0)
    idx = np.arange(n)
    lo = np.maximum(idx - h, starts[seg])
    hi = np.minimum(idx + h, ends[seg])
    return lo, hi


def window_sum(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of ``a`` (n, T) over cadences lo..hi (inclusive) for every cadence (cumsum)."""
    c = np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(a, axis=1)], axis=1)
    return c[:, hi + 1] - c[:, lo]


def _binned_chi(z: np.ndarray, width: int) -> np.ndarray:
    """Robust std of the means of ``width`` successive cadences x sqrt(width) (~1 for white)."""
    n, t = z.shape
    nb = t // width
    if nb < 4:
        return np.full(n, np.nan)
    zz = z[:, : nb * width].reshape(n, nb, width)
    cnt = np.isfinite(zz).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(zz, axis=2) / cnt
        stat = mean * np.sqrt(cnt)
    stat = np.where(cnt >= width // 2, stat, np.nan)
    return nan_robust_std(stat, axis=1)


def _ref_terms(
    rel: np.ndarray,
    srel: np.ndarray,
    rows: np.ndarray,
    scale: np.ndarray,
    ok_ref: np.ndarray,
    u_ref: np.ndarray,
    additive: bool,
    n_jobs: int | None = None,
    buffer: np.ndarray | None = None,
) -> np.ndarray:
    """Per-reference terms of the normal equations of :func:`_fit_rows`, side by side.

    References are the rows ``rows`` of ``rel`` (relative flux) and ``srel`` (its error,
    multiplied by the per-reference ``scale``); ``ok_ref`` their usable points, ``u_ref``
    their aperture area / median flux [px per e-/s]. Returns (n_ref, k T): the blocks
    ``w, w r, w u, w u^2, w u r`` (k = 5; only the first two without ``additive``) with
    ``w = 1/s^2`` on usable points and 0 elsewhere, written into ``buffer`` (a previous
    result, no longer needed) when it is large enough.
    """
    t = rel.shape[1]
    k = 5 if additive else 2
    size = len(rows) * k * t
    if buffer is not None and buffer.flags.c_contiguous and buffer.size >= size:
        out = buffer.reshape(-1)[:size].reshape(len(rows), k * t)
    else:
        out = np.empty((len(rows), k * t))

    def fill(sl):
        r_ref = rel[rows[sl]]
        s_ref = srel[rows[sl]] * scale[sl, None]
        ok = ok_ref[sl]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            wgt = np.where(ok, 1.0 / s_ref**2, 0.0)
        wgt[~np.isfinite(wgt)] = 0.0
        rr = np.where(ok, np.nan_to_num(r_ref), 0.0)
        out[sl, :t] = wgt
        out[sl, t : 2 * t] = wgt * rr
        if additive:
            u = u_ref[sl, None]
            out[sl, 2 * t : 3 * t] = wgt * u
            out[sl, 3 * t : 4 * t] = wgt * u * u
            out[sl, 4 * t :] = wgt * u * rr

    for_row_blocks(fill, len(rows), k * t, n_jobs)
    return out


def _fit_rows(
    w_rows: sp.csr_matrix,
    terms: np.ndarray,
    t: int,
    additive: bool,
    window: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Weighted least squares ``r = m + b u`` over each star's neighbours, per cadence.

    ``w_rows`` (stars x references) links a block of stars to their references, ``terms``
    from :func:`_ref_terms`, ``t`` the number of cadences. Returns a list of solutions
    (m, b, var(m), cov(m, b), var(b)), each (stars, t): the per-cadence fit and, with
    ``window`` = (lo, hi) inclusive cadence bounds, a second fit whose normal equations are
    also summed over those cadences (local in space and time: the slow part of the
    systematics with ~sqrt(width) less noise).
    """
    s = w_rows @ terms
    sums = [s[:, j * t : (j + 1) * t] for j in range(terms.shape[1] // t)]
    out = [_solve(sums, additive)]
    if window is not None:
        out.append(_solve([window_sum(a, *window) for a in sums], additive))
    return out


def _solve(sums: list[np.ndarray], additive: bool):
    """Solve the 2x2 (or 1x1) normal equations of :func:`_local_fit` element-wise."""
    s0, t0 = sums[0], sums[1]
    if additive:
        s1, s2, t1 = sums[2], sums[3], sums[4]
        det = s0 * s2 - s1 * s1
        with np.errstate(invalid="ignore", divide="ignore"):
            well = (det > 1e-6 * s0 * s2) & (s0 > 0)
            m = np.where(well, (s2 * t0 - s1 * t1) / det, t0 / s0)
            b = np.where(well, (s0 * t1 - s1 * t0) / det, 0.0)
            var_m = np.where(well, s2 / det, 1.0 / s0)
            cov = np.where(well, -s1 / det, 0.0)
            var_b = np.where(well, s0 / det, 0.0)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            m = t0 / s0
            var_m = 1.0 / s0
        b = np.zeros_like(m)
        cov = np.zeros_like(m)
        var_b = np.zeros_like(m)
    none = s0 <= 0
    m[none] = np.nan
    b[none] = np.nan
    return m, b, var_m, cov, var_b


def _wiener(pred: np.ndarray, pvar: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per-star gain 1 - noise variance / total variance of a prediction, in [0, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tot = np.nanvar(np.where(good, pred, np.nan), axis=1)
        noise = nanmedian(np.where(good, pvar, np.nan), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(tot > 0, 1.0 - noise / tot, 0.0)
    return np.clip(np.nan_to_num(g), 0.0, 1.0)


def _slope(rel: np.ndarray, srel: np.ndarray, good: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-star weighted regression slope of ``rel`` on ``pred``, clipped to [0, 1]."""
    w = np.where(good, 1.0 / np.maximum(srel, 1e-30) ** 2, 0.0)
    w[~np.isfinite(w)] = 0.0
    sw = np.maximum(w.sum(axis=1, keepdims=True), 1e-300)

    def centred(v):
        v = np.where(good, np.nan_to_num(v), 0.0)
        return v - (w * v).sum(axis=1, keepdims=True) / sw

    y, p = centred(rel), centred(pred)
    den = (w * p * p).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(den > 0, (w * p * y).sum(axis=1) / den, 0.0)
    return np.clip(np.nan_to_num(k), 0.0, 1.0)


def _fit_scales(
    rel: np.ndarray,
    srel: np.ndarray,
    good: np.ndarray,
    m: np.ndarray,
    a_rel: np.ndarray,
    prior_sigma: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Per star, fit ``rel = c + p m + q a`` with p, q ~ N(1, prior_sigma^2); returns p m, q a."""
    wgt = np.where(good, 1.0 / np.maximum(srel, 1e-12) ** 2, 0.0)
    wgt[~np.isfinite(wgt)] = 0.0
    r = np.where(good, np.nan_to_num(rel), 0.0)
    sw = wgt.sum(axis=1, keepdims=True)
    sw = np.where(sw > 0, sw, 1.0)

    def centred(v: np.ndarray) -> np.ndarray:
        return v - (wgt * v).sum(axis=1, keepdims=True) / sw

    mc, ac, rc = centred(m), centred(a_rel), centred(r)
    lam = 1.0 / prior_sigma**2
    h11 = (wgt * mc * mc).sum(1) + lam
    h22 = (wgt * ac * ac).sum(1) + lam
    h12 = (wgt * mc * ac).sum(1)
    g1 = (wgt * mc * rc).sum(1) + lam
    g2 = (wgt * ac * rc).sum(1) + lam
    det = h11 * h22 - h12**2
    p = (h22 * g1 - h12 * g2) / det
    q = (h11 * g2 - h12 * g1) / det
    return p[:, None] * m, q[:, None] * a_rel


def injection_amplitude_ratio(
    before: np.ndarray, after: np.ndarray, template: np.ndarray, good: np.ndarray
) -> np.ndarray:
    """Fitted amplitude of ``template`` in ``after`` divided by that in ``before`` (per star)."""
    w = good.astype(float)
    tc = template - (w * template).sum(1, keepdims=True) / np.maximum(w.sum(1, keepdims=True), 1)

    def amp(v: np.ndarray) -> np.ndarray:
        vv = np.where(good, v, 0.0)
        return (w * tc * vv).sum(1) / np.maximum((w * tc * tc).sum(1), 1e-300)

    with np.errstate(divide="ignore", invalid="ignore"):
        return amp(after) / amp(before)


def robust_scatter(rel: np.ndarray, good: np.ndarray) -> np.ndarray:
    """1.4826 x MAD per star of a relative light curve over ``good`` points (fraction)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = np.where(good, rel, np.nan)
        med = nanmedian(v, axis=1, keepdims=True)
        return MAD_TO_SIGMA * nanmedian(np.abs(v - med), axis=1)


# ---------------------------------------------------------------------------------------
# one CCD: quality control + correction + mask bits (used by flows/find_variables.py)
# ---------------------------------------------------------------------------------------
#: time window over which the local common-mode fit is averaged [d]
CM_WINDOW_D = 0.1875


@dataclass
class CorrectedCCD:
    """A CCD after QC and common-mode correction (arrays (n_stars, n_cadences) or per axis).

    ``mask_bits`` are :class:`lakehouse.schemas.LcMask` bits; ``epoch`` holds the
    ``epoch_qc`` columns per cadence, ``star`` the ``star_qc`` columns per star.
    """

    matrix: object  # tasks.qc.LightCurveMatrix
    flux: np.ndarray
    flux_err: np.ndarray
    mult: np.ndarray
    add: np.ndarray
    mask_bits: np.ndarray
    epoch: dict
    star: dict
    science_size: int


def isolated_outliers(
    rel: np.ndarray, srel: np.ndarray, good: np.ndarray, alpha: float = 0.01
) -> np.ndarray:
    """Single-cadence outliers whose two neighbours sit at the star's normal level.

    A point is flagged when it is beyond ``k`` sigma of the star's median *and* of the mean
    of its two neighbours, while both neighbours are within 3 sigma of the median; sigma is
    the larger of the point's error and the star's robust scatter, ``k`` from
    :func:`tasks.qc.bonferroni_k` over the star's points. Eclipses, pulsations and the
    decay of a flare have deviant neighbours and are never flagged.
    """
    from tasks.qc import bonferroni_k

    n, t = rel.shape
    out = np.zeros((n, t), bool)
    if t < 3:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = np.where(good, rel, np.nan)
        med = nanmedian(v, axis=1)
        spread = nan_robust_std(v, axis=1)
    k = bonferroni_k(max(t, 1), alpha)
    sig = np.maximum(srel, spread[:, None])
    dev = np.abs(v - med[:, None]) / sig
    prev, nxt = dev[:, :-2], dev[:, 2:]
    mid = dev[:, 1:-1]
    pair = 0.5 * (v[:, :-2] + v[:, 2:])
    dmid = np.abs(v[:, 1:-1] - pair) / (sig[:, 1:-1] * np.sqrt(1.5))
    with np.errstate(invalid="ignore"):
        flag = (mid > k) & (dmid > k) & (prev < 3) & (nxt < 3)
    out[:, 1:-1] = np.nan_to_num(flag, nan=False).astype(bool)
    return out


def correct_ccd(
    m,
    frames=None,
    science_size: int | None = None,
    n_neighbours: int = 30,
    alpha: float = 0.01,
    fit_scale: bool = False,
    pointing: bool = True,
) -> CorrectedCCD:
    """QC, common-mode correction and mask bits of one CCD.

    ``m`` a :class:`tasks.qc.LightCurveMatrix` (with star positions and aperture radii),
    ``frames`` the ``frames`` partition as a Polars DataFrame (or None), ``science_size``
    [px] (inferred from the star positions when None).
    """
    import polars as pl

    from lakehouse.schemas import BAD_QUALITY_BITS, LcMask
    from tasks import qc

    n, t = m.shape
    fr = frames if (frames is None or isinstance(frames, pl.DataFrame)) else pl.from_arrow(frames)
    pre = qc.epoch_flags_pre(m, fr, alpha=alpha)
    epoch_bad = qc.epoch_bad(pre["flags"])
    point_ok = m.good_points()
    good = point_ok & ~epoch_bad[None, :]

    x = m.x if m.x is not None else nanmedian(np.where(point_ok, m.cx, np.nan), axis=1)
    y = m.y if m.y is not None else nanmedian(np.where(point_ok, m.cy, np.nan), axis=1)
    radius = m.aperture_radius if m.aperture_radius is not None else np.full(n, 2.0)
    radius = np.where(np.isfinite(radius), radius, np.nanmedian(radius))
    if science_size is None:
        science_size = qc.infer_science_size(x, y)
    edge = qc.edge_distance(x, y, science_size)
    raw_med = qc.masked_row_median(m.flux, point_ok)
    ref_flux = m.ref_flux if m.ref_flux is not None else raw_med
    ref_flux = np.where(np.isfinite(ref_flux), ref_flux, raw_med)
    crowd = qc.crowding(x, y, ref_flux, radius)
    crowd_ok = np.isfinite(crowd)
    crowd_cut = np.quantile(crowd[crowd_ok], 0.9) if crowd_ok.any() else np.inf
    ref_ok = (edge > radius + 2.0) & (crowd <= crowd_cut)
    area = np.pi * radius**2

    regressors = None
    if pointing and np.isfinite(pre["dx"]).sum() > 10 and np.isfinite(pre["dy"]).sum() > 10:
        regressors = pointing_regressors(pre["dx"], pre["dy"])
    from lakehouse.schemas import EpochFlag

    t_fill = np.where(np.isfinite(m.btjd), m.btjd, np.nanmedian(m.btjd))
    dt = float(np.nanmedian(np.diff(t_fill))) if t > 1 else 1.0
    stray = (pre["flags"] & int(EpochFlag.SCATTERED_LIGHT)) != 0
    breaks = np.flatnonzero(np.diff(stray.astype(int)) != 0) + 1
    width = max(round(CM_WINDOW_D / dt) | 1, 1) if dt > 0 else 1
    window = time_windows(t_fill, width, breaks)
    cm = correct_common_mode(
        m.flux,
        m.flux_err,
        good,
        x,
        y,
        area,
        reference_ok=ref_ok,
        n_neighbours=n_neighbours,
        fit_scale=fit_scale,
        regressors=regressors,
        window=window,
    )

    cmed = np.empty(n)
    outlier = np.empty((n, t), bool)
    resid_norm = np.empty((n, t))  # corrected relative flux / error (NaN: not good, outlier)
    rel_good = np.empty((n, t))  # corrected relative flux (NaN: not good)

    def normalised(sl):  # row-wise: blocks of stars on several threads
        g = good[sl]
        cmed[sl], rel, srel = normalise_by_median(cm.flux[sl], cm.flux_err[sl], g)
        out = isolated_outliers(rel, srel, g, alpha)
        outlier[sl] = out
        with np.errstate(invalid="ignore", divide="ignore"):
            resid_norm[sl] = np.where(g & ~out, rel / srel, np.nan)
        rel_good[sl] = np.where(g, rel, np.nan)

    for_row_blocks(normalised, n, t)
    post = qc.epoch_flags_post(resid_norm, rel_good, cmed, pre["flags"], alpha)
    resid_norm = rel_good = None  # free before the star statistics
    flags = post["flags"]
    epoch_bad = qc.epoch_bad(flags)

    bits = np.zeros((n, t), np.int32)
    no_flux = ~m.present | ~np.isfinite(m.flux) | ~np.isfinite(m.flux_err) | ~(m.flux_err > 0)
    bits[no_flux] |= int(LcMask.NO_FLUX)
    bits[m.present & ((m.quality & BAD_QUALITY_BITS) != 0)] |= int(LcMask.QUALITY)
    bits[:, epoch_bad] |= int(LcMask.EPOCH)
    bits[outlier] |= int(LcMask.OUTLIER)
    bits[cm.uncorrected & m.present] |= int(LcMask.UNCORRECTED)
    final_good = bits == 0

    st = qc.star_statistics(m.flux, cm.flux, m.flux_err, final_good)
    st["completeness"] = final_good.sum(axis=1) / max(t, 1)
    st["edge_distance"] = edge
    st["crowding"] = crowd
    st["is_reference"] = cm.is_reference
    st["cm_n_refs"] = cm.n_refs
    st["cm_radius"] = cm.radius
    st["cm_gain"] = cm.gain
    st["n_cadences"] = np.full(n, t, np.int32)

    epoch = {
        **{k: v for k, v in pre.items() if k != "flags"},
        "ensemble_scatter": post["ensemble_scatter"],
        "ensemble_chi": post["ensemble_chi"],
        "cm_mult": qc._nanmedian_cols(cm.mult, mask=good),
        "cm_add": qc._nanmedian_cols(cm.add_per_px, mask=good),
        "flags": flags,
    }
    return CorrectedCCD(
        matrix=m,
        flux=cm.flux,
        flux_err=cm.flux_err,
        mult=cm.mult,
        add=cm.add,
        mask_bits=bits,
        epoch=epoch,
        star=st,
        science_size=int(science_size),
    )


#: rows per record batch of the ``lightcurves`` table (whole stars per batch)
LC_BATCH_ROWS = 1 << 20


def lightcurves_table(c: CorrectedCCD, sector: int, camera: int, ccd: int):
    """``lightcurves`` rows (one per photometry row) as a pyarrow Table (schema LIGHTCURVES).

    Rows are star-major (star_id, then cadence), in record batches of whole stars of about
    ``LC_BATCH_ROWS`` rows, built straight from the matrices; NaN floats become nulls.
    """
    import pyarrow as pa

    from lakehouse.schemas import LIGHTCURVES

    m = c.matrix
    n, t = m.shape
    types = {f.name: f.type for f in LIGHTCURVES}
    matrices = {
        "flux": c.flux,
        "flux_err": c.flux_err,
        "flux_raw": m.flux,
        "cm_mult": c.mult,
        "cm_add": c.add,
        "mask_bits": c.mask_bits,
    }
    step = max(1, LC_BATCH_ROWS // max(t, 1))
    batches = []
    for a in range(0, n, step):
        b = min(a + step, n)
        sel = m.present[a:b].ravel()
        per_star = m.present[a:b].sum(axis=1)
        k = int(per_star.sum())
        cols = {
            "sector": np.full(k, sector, np.int16),
            "camera": np.full(k, camera, np.int8),
            "ccd": np.full(k, ccd, np.int8),
            "star_id": np.repeat(m.star_id[a:b], per_star),
            "cadence": np.tile(m.cadence, b - a)[sel],
            "btjd": np.tile(m.btjd, b - a)[sel],
            **{name: v[a:b].ravel()[sel] for name, v in matrices.items()},
        }
        batches.append(
            pa.RecordBatch.from_arrays(
                [pa.array(cols[f], type=types[f], from_pandas=True) for f in LIGHTCURVES.names],
                schema=LIGHTCURVES,
            )
        )
    return pa.Table.from_batches(batches, schema=LIGHTCURVES)


def pointing_regressors(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """(T, 5) regressors of the pointing offset [px]: dx, dy, dx^2, dy^2, dx*dy (centred)."""
    dx = np.nan_to_num(dx - np.nanmedian(dx))
    dy = np.nan_to_num(dy - np.nanmedian(dy))
    r = np.column_stack([dx, dy, dx * dx, dy * dy, dx * dy])
    return r - r.mean(axis=0)


def decorrelate_pointing(
    rel: np.ndarray,
    good: np.ndarray,
    regressors: np.ndarray,
    quiet: np.ndarray | None = None,
    chunk: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-star response to the pointing offset, fitted on first differences, shrunk.

    Each star's relative flux ``rel`` (n, T) responds to the pointing (dx, dy) in its own
    way (its aperture is not exactly centred on its light: a linear term of either sign),
    which no neighbour average can remove. The coefficients are fitted on *successive
    differences* of ``rel`` and of the ``regressors`` (T, p), where the white frame-to-frame
    jitter dominates and slow stellar variability hardly enters, with each star's own
    difference scatter as noise and a Gaussian prior N(0, tau^2) whose width tau is
    estimated from the ``quiet`` stars (empirical Bayes), so that a star whose variability
    dominates its differences gets coefficients shrunk to ~0. Returns the model to
    subtract (n, T) (fraction) and the coefficients (n, p).
    """
    n, _ = rel.shape
    p = regressors.shape[1]
    dr = np.diff(regressors, axis=0)  # (T-1, p)
    pair = good[:, 1:] & good[:, :-1]
    dv = np.where(pair, np.diff(np.nan_to_num(rel), axis=1), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sig = nan_robust_std(np.where(pair, dv, np.nan), axis=1)
    sig = np.where(np.isfinite(sig) & (sig > 0), sig, np.inf)
    coef = np.zeros((n, p))
    cov_diag = np.full((n, p), np.inf)
    xtx = np.zeros((n, p, p))
    xty = np.zeros((n, p))

    def normal_equations(start):  # chunks of stars on several threads
        sl = slice(start, start + chunk)
        w = pair[sl].astype(float)
        xtx[sl] = np.einsum("nt,tp,tq->npq", w, dr, dr)
        xty[sl] = np.einsum("nt,tp,nt->np", w, dr, dv[sl])

    thread_map(normal_equations, range(0, n, chunk))
    s2 = sig**2
    ok = np.isfinite(s2) & (pair.sum(axis=1) > 3 * p)
    eye = np.eye(p)[None]
    # first pass: nearly unregularised (tiny ridge), to learn the population width tau
    a0 = xtx[ok] + 1e-9 * np.trace(xtx[ok], axis1=1, axis2=2)[:, None, None] * eye
    c0 = np.linalg.solve(a0, xty[ok][..., None])[..., 0]
    e0 = np.sqrt(np.einsum("npp->np", np.linalg.inv(a0)) * s2[ok, None])
    q = np.ones(ok.sum(), bool) if quiet is None else quiet[ok]
    best = q & np.all(e0 < nanmedian(e0[q], axis=0), axis=1)
    if best.sum() < 10:
        best = q
    var_c = np.nanvar(c0[best], axis=0) - nanmedian(e0[best] ** 2, axis=0)
    robust = (MAD_TO_SIGMA * np.nanmedian(np.abs(c0[best] - np.nanmedian(c0[best], 0)), 0)) ** 2
    tau2 = np.maximum(np.minimum(np.where(var_c > 0, var_c, robust), robust * 4 + 1e-30), 1e-30)
    a = xtx[ok] / s2[ok, None, None] + eye / tau2[None, :, None]
    b = xty[ok] / s2[ok, None]
    coef[ok] = np.linalg.solve(a, b[..., None])[..., 0]
    cov_diag[ok] = np.einsum("npp->np", np.linalg.inv(a))
    model = coef @ regressors.T
    return model, coef
