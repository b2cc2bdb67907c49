"""Period search: batched Lomb-Scargle, box-filter event statistics, BLS, harmonic tests.

Library choices:

* Lomb-Scargle: ``nifty-ls`` (Garrison et al. 2024), the NUFFT-based implementation of
  astropy's floating-mean periodogram, with a *batched* mode that evaluates many series
  sharing one time grid in one call. All stars of a CCD share the cadence grid; a star's
  masked points get weight 0 (``dy = inf``), which is exactly the periodogram of its good
  points (checked against astropy in the tests). Power is 'standard' normalised (0..1).
* False-alarm probability: Baluev (2008), the same formula as astropy's
  ``false_alarm_probability(method='baluev')``, evaluated in log space and vectorised over
  stars (each star with its own number of points and effective baseline).
* Box search: astropy's ``BoxLeastSquares`` (``compute_stats`` gives odd/even depths and
  per-event times). It is run only on stars whose box-filtered dip statistic is
  significant (a vectorised cumulative-sum matched filter over all stars), because a fine
  BLS grid costs ~0.2 s per star.
* Peaks: the second period reported is the best one *outside* the first peak's main lobe
  (|f - f1| > 1.5 / baseline), never a neighbouring bin of the same peak.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from tasks.qc import nanmedian

#: box widths of the dip / bump matched filter [cadences]
BOX_WIDTHS = (1, 2, 3, 5, 8, 12, 20)
#: BLS trial durations [d]
BLS_DURATIONS = (0.04, 0.06, 0.09, 0.13, 0.2)
#: shortest BLS period [d]
BLS_MIN_PERIOD = 0.22


@dataclass(frozen=True)
class FrequencyGrid:
    """Uniform frequency grid [1/d]: ``fmin + df * arange(nf)``."""

    fmin: float
    df: float
    nf: int

    @property
    def freq(self) -> np.ndarray:
        """The frequencies [1/d]."""
        return self.fmin + self.df * np.arange(self.nf)

    @property
    def fmax(self) -> float:
        """Highest frequency [1/d]."""
        return self.fmin + self.df * (self.nf - 1)


def frequency_grid(
    t: np.ndarray,
    samples_per_peak: int = 5,
    max_frequency: float = 50.0,
    min_cycles: float = 1.5,
) -> FrequencyGrid:
    """Grid from ``min_cycles`` cycles per baseline up to 0.98 x Nyquist (capped) [1/d].

    ``t`` [d]; Nyquist = 0.5 / median spacing; the spacing is 1/(samples_per_peak x baseline).
    """
    tt = np.sort(t[np.isfinite(t)])
    baseline = float(tt[-1] - tt[0])
    dt = float(np.median(np.diff(tt)))
    fmax = min(0.98 * 0.5 / dt, max_frequency)
    fmin = min_cycles / baseline
    df = 1.0 / (samples_per_peak * baseline)
    nf = max(int((fmax - fmin) / df) + 1, 2)
    return FrequencyGrid(fmin, df, nf)


def lombscargle_batch(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    grid: FrequencyGrid,
    groups: np.ndarray | None = None,
    chunk: int = 2000,
) -> dict[str, np.ndarray]:
    """Batched floating-mean Lomb-Scargle of every row; returns per-row peak summaries.

    ``t`` (T,) [d]; ``y``, ``s`` (n, T); masked points have zero weight. With ``groups``
    (n,) (e.g. brightness deciles of one CCD), each periodogram is *whitened* by the
    typical spectrum of its group: the median over the group's stars of their spectra
    (each first divided by its own median power), so that frequencies where the residual
    systematics of the CCD put power in every star (slow trends, orbit-length ramps) do not
    pose as periods. Peaks are searched in the whitened spectrum.

    Keys: ``freq``/``power`` best peak (parabolic refinement) [1/d] and its raw power,
    ``power_w`` its whitened power (for the false-alarm probability), ``freq2``/``power2``
    the best peak outside the first one's main lobe, ``n_points``.
    """
    import nifty_ls

    from tasks.qc import for_row_blocks

    n, _ = y.shape
    usable = good & np.isfinite(y) & np.isfinite(s) & (s > 0)
    n_pts = usable.sum(axis=1)
    out = {k: np.full(n, np.nan) for k in ("freq", "power", "power_w", "freq2", "power2")}
    out["n_points"] = n_pts
    order = np.argsort(t)
    ordered = bool(np.array_equal(order, np.arange(t.size)))  # the usual case: no reordering
    ts = np.ascontiguousarray(t[order], dtype=np.float64)
    baseline = float(ts[-1] - ts[0])
    lobe = 1.5 / baseline
    freq = grid.freq
    rows_ok = np.flatnonzero(n_pts >= 5)
    spec = np.zeros((rows_ok.size, grid.nf), np.float32)
    for start in range(0, rows_ok.size, chunk):
        rows = rows_ok[start : start + chunk]
        m, yr, sr = usable[rows], y[rows], s[rows]
        if not ordered:
            m, yr, sr = m[:, order], yr[:, order], sr[:, order]
        yy = np.ascontiguousarray(np.where(m, yr, 0.0))
        dy = np.ascontiguousarray(np.where(m, sr, np.inf))
        res = nifty_ls.lombscargle(
            ts, yy, dy, fmin=grid.fmin, fmax=grid.fmax, Nf=grid.nf, assume_sorted_t=True
        )
        p = np.asarray(res.power, dtype=float).reshape(len(rows), grid.nf)
        spec[start : start + len(rows)] = np.where(np.isfinite(p), p, 0.0)
        del res, p, yy, dy
    # whitening: one spectrum per group (row 0: none) and each row's group
    white = np.ones((1, grid.nf), np.float32)
    white_of = np.zeros(rows_ok.size, np.intp)
    if groups is not None and rows_ok.size >= 20:
        g_ok = np.asarray(groups)[rows_ok]
        level = np.ones((rows_ok.size, 1), np.float32)

        def level_block(sl):
            lv = np.median(spec[sl], axis=1, keepdims=True)
            level[sl] = np.where(lv > 0, lv, 1.0)

        for_row_blocks(level_block, rows_ok.size, grid.nf)
        shapes = [white[0]]
        for g in np.unique(g_ok):
            sel = g_ok == g
            if sel.sum() < 20:
                continue
            shape = np.median(spec[sel] / level[sel], axis=0)
            shape = shape / np.median(shape)
            white_of[sel] = len(shapes)
            shapes.append((1.0 / np.maximum(shape, 1.0)).astype(np.float32))
        white = np.stack(shapes)

    def peaks(sl):
        rows = rows_ok[sl]
        p = spec[sl].astype(float)
        pw = p * white[white_of[sl]]
        k1 = np.argmax(pw, axis=1)
        r = np.arange(len(rows))
        f1 = _parabolic(freq, pw, k1)
        out["freq"][rows] = f1
        out["power"][rows] = p[r, k1]
        out["power_w"][rows] = pw[r, k1]
        p2 = np.where(np.abs(freq[None, :] - f1[:, None]) > lobe, pw, -np.inf)
        k2 = np.argmax(p2, axis=1)
        out["freq2"][rows] = freq[k2]
        out["power2"][rows] = p[r, k2]

    for_row_blocks(peaks, rows_ok.size, grid.nf)
    return out


def _parabolic(freq: np.ndarray, p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through the peak bin and its neighbours [1/d]."""
    nf = p.shape[1]
    kk = np.clip(k, 1, nf - 2)
    r = np.arange(p.shape[0])
    a, b, c = p[r, kk - 1], p[r, kk], p[r, kk + 1]
    den = a - 2 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where((den < 0) & np.isfinite(den), 0.5 * (a - c) / den, 0.0)
    shift = np.clip(np.nan_to_num(shift), -0.5, 0.5)
    df = freq[1] - freq[0]
    return np.where((k == kk), freq[kk] + shift * df, freq[k])


def baluev_log10_fap(
    power: np.ndarray, n_points: np.ndarray, fmax: float, t_var: np.ndarray
) -> np.ndarray:
    """log10 false-alarm probability of a 'standard'-normalised LS peak (Baluev 2008).

    Same as astropy's ``fap_baluev`` (floating mean, dH=1, dK=3), vectorised, in log
    space so that very significant peaks do not underflow. ``fmax`` [1/d] the highest
    frequency searched, ``t_var`` [d^2] the weighted variance of each star's times.
    """
    z = np.clip(np.asarray(power, float), 1e-300, 1 - 1e-16)
    n = np.asarray(n_points, float)
    nh, nk = n - 1.0, n - 3.0
    # stars with fewer than 5 points give NaN here and are set to NaN below
    with np.errstate(divide="ignore", invalid="ignore"):
        log_gamma = 0.5 * np.log(2.0 / nh) + special.gammaln(nh / 2) - special.gammaln((nh - 1) / 2)
        w = fmax * np.sqrt(4 * np.pi * np.asarray(t_var, float))
        log_tau = log_gamma + np.log(w) + 0.5 * (nk - 1) * np.log1p(-z) + 0.5 * np.log(0.5 * nh * z)
        log_fap_s = 0.5 * nk * np.log1p(-z)
        tau = np.exp(log_tau)
        log_one_minus = np.where(tau < 1e-8, log_tau, np.log(-np.expm1(-tau)))
        log_fap = np.logaddexp(log_one_minus, log_fap_s - tau)
    out = np.minimum(log_fap, 0.0) / np.log(10.0)
    out[~np.isfinite(np.asarray(power, float)) | (n < 5)] = np.nan
    return out


def weighted_time_variance(t: np.ndarray, s: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Weighted variance of the times of each row's good points [d^2] (weights 1/s^2)."""
    w = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = (w * t[None, :]).sum(axis=1) / sw
        m2 = (w * t[None, :] ** 2).sum(axis=1) / sw
    return m2 - m1**2


def harmonic_fit(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    freq: np.ndarray,
    n_harm: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted fit of ``c + sum_k a_k sin(2 pi k f t) + b_k cos(...)`` per row.

    ``freq`` (n,) [1/d]. Returns the semi-amplitudes (n, n_harm), chi2 (n,) and the model
    (n, T) (in the units of ``y``). Vectorised: normal equations per row with einsum.
    """
    n, tt = y.shape
    ok = good & np.isfinite(y) & np.isfinite(s) & (s > 0) & np.isfinite(freq)[:, None]
    w = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0)
    yy = np.where(ok, y, 0.0)
    f = np.nan_to_num(freq)
    cols = [np.ones((n, tt))]
    for k in range(1, n_harm + 1):
        ph = 2 * np.pi * k * f[:, None] * (t[None, :] - np.nanmean(t))
        cols += [np.sin(ph), np.cos(ph)]
    x = np.stack(cols, axis=2)  # (n, T, p)
    a = np.einsum("nt,ntp,ntq->npq", w, x, x)
    b = np.einsum("nt,ntp,nt->np", w, x, yy)
    p = x.shape[2]
    a += 1e-12 * np.eye(p)[None] * np.maximum(np.trace(a, axis1=1, axis2=2), 1e-300)[:, None, None]
    coef = np.linalg.solve(a, b[..., None])[..., 0]
    model = np.einsum("ntp,np->nt", x, coef)
    chi2 = (w * (yy - model) ** 2).sum(axis=1)
    amps = np.hypot(coef[:, 1::2], coef[:, 2::2])
    return amps, chi2, model


def alternate_cycle_sigma(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    freq: np.ndarray,
    n_harm: int = 3,
) -> np.ndarray:
    """Significance [sigma] that successive cycles at ``freq`` alternate (true period 2/freq).

    Fits harmonics of ``freq/2`` up to ``2 n_harm`` (all) and only the even ones (the
    harmonics of ``freq``); the F-test of the odd terms (unequal minima or maxima of an EB,
    a primary/secondary difference) gives a p-value, returned as a one-sided Gaussian
    sigma. Errors are rescaled by the full model's reduced chi2 when it exceeds 1.
    """
    ok = good & np.isfinite(y)
    _, chi_even, _ = harmonic_fit(t, y, s, good, freq, n_harm)
    _, chi_all, _ = harmonic_fit(t, y, s, good, 0.5 * freq, 2 * n_harm)
    n = ok.sum(axis=1)
    dof_all = np.maximum(n - (4 * n_harm + 1), 1)
    extra = 2 * n_harm
    with np.errstate(invalid="ignore", divide="ignore"):
        fstat = ((chi_even - chi_all) / extra) / (chi_all / dof_all)
    logp = stats.f.logsf(np.maximum(fstat, 0), extra, dof_all)
    return _sigma_from_lnp(logp)


def _sigma_from_lnp(lnp: np.ndarray) -> np.ndarray:
    from tasks.qc import gaussian_sigma_from_logp

    return gaussian_sigma_from_logp(np.asarray(lnp) / np.log(10.0))


# ------------------------------------------------------------------ box-filter statistics
def noise_scale(y: np.ndarray, s: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per-row factor >= 1 by which the errors understate the point-to-point scatter."""
    from tasks.qc import _p2p_scatter, for_row_blocks

    out = np.empty(y.shape[0])

    def block(sl):  # rows are independent: blocks of rows on several threads
        p2p = _p2p_scatter(y[sl], good[sl])
        expected = nanmedian(np.where(good[sl], s[sl], np.nan), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = p2p / expected
        out[sl] = np.where(np.isfinite(c), np.maximum(c, 1.0), 1.0)

    for_row_blocks(block, y.shape[0], y.shape[1])
    return out


def box_statistics(
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    widths: tuple[int, ...] = BOX_WIDTHS,
    normalize: bool = True,
) -> dict[str, np.ndarray]:
    """Matched box filter over successive good cadences, every row at once.

    For a box of w cadences starting at j the depth estimate is
    ``-sum(y/s^2)/sum(1/s^2)`` with error ``1/sqrt(sum 1/s^2)``; its ratio is the single
    event statistic (N(0,1) for white noise with correct errors ``s``). With ``normalize``
    each width's statistic is divided by its own robust scatter over time when that exceeds
    1 (the red-noise factor beta of that star at that time scale). Returns per row
    ``dip`` (max of -SES), ``dip_index`` (centre cadence index), ``dip_width``
    [cadences] and ``bump`` (max of +SES over the same widths).
    """
    from tasks.qc import for_row_blocks

    n, t = y.shape
    dip = np.full(n, -np.inf)
    bump = np.full(n, -np.inf)
    dip_idx = np.zeros(n, int)
    dip_w = np.zeros(n, int)

    def block(sl):  # rows are independent: blocks of rows on several threads
        m = sl.stop - sl.start
        ss = s[sl]
        ok = good[sl] & np.isfinite(y[sl]) & np.isfinite(ss) & (ss > 0)
        w = np.where(ok, 1.0 / np.where(ok, ss, 1.0) ** 2, 0.0)
        cy = np.concatenate(
            [np.zeros((m, 1)), np.cumsum(w * np.where(ok, y[sl], 0.0), axis=1)], axis=1
        )
        cw = np.concatenate([np.zeros((m, 1)), np.cumsum(w, axis=1)], axis=1)
        cn = np.concatenate([np.zeros((m, 1), int), np.cumsum(ok, axis=1)], axis=1)
        rows = np.arange(m)
        b_dip, b_bump = dip[sl], bump[sl]
        b_idx, b_w = dip_idx[sl], dip_w[sl]
        for width in widths:
            if width > t:
                continue
            sy = cy[:, width:] - cy[:, :-width]
            sw = cw[:, width:] - cw[:, :-width]
            cnt = cn[:, width:] - cn[:, :-width]
            valid = (cnt >= max(1, (width + 1) // 2)) & (sw > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ses = np.where(valid, sy / np.sqrt(sw), np.nan)
            if normalize:
                beta = 1.482602218505602 * nanmedian(np.abs(ses), axis=1)
                beta = np.where(np.isfinite(beta), np.maximum(beta, 1.0), 1.0)
                ses = ses / beta[:, None]
            ses_f = np.nan_to_num(ses, nan=0.0)
            k_min = np.argmin(ses_f, axis=1)
            k_max = np.argmax(ses_f, axis=1)
            d = -ses_f[rows, k_min]
            better = d > b_dip
            b_dip[:] = np.where(better, d, b_dip)
            b_idx[:] = np.where(better, k_min + width // 2, b_idx)
            b_w[:] = np.where(better, width, b_w)
            b_bump[:] = np.maximum(b_bump, ses_f[rows, k_max])

    for_row_blocks(block, n, t)
    return {"dip": dip, "dip_index": dip_idx, "dip_width": dip_w, "bump": bump}


def flare_filter(z: np.ndarray, ok: np.ndarray, tau: float = 1.5, length: int = 5) -> np.ndarray:
    """Matched filter for a flare (jump then exponential decay, ``tau`` cadences).

    ``z`` (n, T) normalised residuals (N(0,1) for noise); returns the filter output
    (n, T), N(0,1) for noise, large at the first cadence of a flare.
    """
    from tasks.qc import for_row_blocks

    n, t = z.shape
    kern = np.exp(-np.arange(length) / tau)
    out = np.empty((n, t))

    def block(sl):  # rows are independent: blocks of rows on several threads
        okb = ok[sl]
        zz = np.where(okb, z[sl], 0.0)
        num = np.zeros(zz.shape)
        den = np.zeros(zz.shape)
        for k, wk in enumerate(kern):
            num[:, : t - k] += wk * zz[:, k:]
            den[:, : t - k] += wk**2 * okb[:, k:]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where(okb & (den > 0), num / np.sqrt(den), np.nan)

    for_row_blocks(block, n, t)
    return out


def event_times(
    t: np.ndarray, stat: np.ndarray, threshold: float, min_separation: float
) -> np.ndarray:
    """Times [d] of separate local maxima of ``stat`` above ``threshold``, strongest first.

    Maxima closer than ``min_separation`` [d] to a stronger one are dropped.
    """
    s = np.nan_to_num(np.asarray(stat, float), nan=-np.inf)
    idx = np.flatnonzero(s > threshold)
    if idx.size == 0:
        return np.array([])
    idx = idx[np.argsort(-s[idx])]
    kept: list[int] = []
    for i in idx:  # few points above threshold: a short loop over candidate events
        if all(abs(t[i] - t[j]) >= min_separation for j in kept):
            kept.append(int(i))
    return t[np.array(kept, dtype=int)]


def box_filter_row(y: np.ndarray, s: np.ndarray, ok: np.ndarray, width: int) -> np.ndarray:
    """Single event statistic (depth/error, positive for a dip) centred on each cadence."""
    w = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0)
    cy = np.concatenate([[0.0], np.cumsum(w * np.where(ok, y, 0.0))])
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cn = np.concatenate([[0], np.cumsum(ok)])
    out = np.full(y.size, np.nan)
    if width > y.size:
        return out
    sy = cy[width:] - cy[:-width]
    sw = cw[width:] - cw[:-width]
    cnt = cn[width:] - cn[:-width]
    with np.errstate(invalid="ignore", divide="ignore"):
        ses = np.where((cnt >= max(1, (width + 1) // 2)) & (sw > 0), -sy / np.sqrt(sw), np.nan)
    out[width // 2 : width // 2 + ses.size] = ses
    return out


# ------------------------------------------------------------------ BLS
@dataclass
class BoxResult:
    """Best box of a BLS search (periods, times, durations in d; depths as fractions)."""

    period: float
    t0: float
    duration: float
    depth: float
    depth_err: float
    snr: float
    depth_odd: float
    depth_odd_err: float
    depth_even: float
    depth_even_err: float
    secondary_depth: float
    secondary_err: float
    secondary_phase: float
    secondary_cycles: int
    n_events: int
    event_times: np.ndarray
    event_snr: np.ndarray
    beta: float = 1.0
    n_trials: int = 1


def bls_search(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    min_period: float = BLS_MIN_PERIOD,
    max_period: float | None = None,
    durations: tuple[float, ...] = BLS_DURATIONS,
    frequency_factor: float = 3.0,
) -> BoxResult | None:
    """astropy BoxLeastSquares on one star's good points, refined around the best period.

    ``t`` [d], ``y`` relative flux, ``s`` its error. ``max_period`` defaults to 0.7 x the
    baseline (at least two events). Returns None when the search is impossible.
    """
    from astropy.timeseries import BoxLeastSquares

    if t.size < 20:
        return None
    baseline = float(np.ptp(t))
    max_period = max_period or 0.7 * baseline
    durs = [d for d in durations if d < min_period]
    if max_period <= min_period or not durs:
        return None
    bls = BoxLeastSquares(t, y, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        periods = bls.autoperiod(
            durs,
            minimum_period=min_period,
            maximum_period=max_period,
            frequency_factor=frequency_factor,
        )
        res = bls.power(periods, durs, objective="likelihood")
    k = int(np.nanargmax(res.power))
    # refine: a fine grid (10x) around the best period
    p0 = float(res.period[k])
    df = frequency_factor * min(durs) / baseline**2
    fine_f = 1.0 / p0 + np.linspace(-2 * df, 2 * df, 41)
    fine_f = fine_f[fine_f > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res2 = bls.power(np.sort(1.0 / fine_f), durs, objective="likelihood")
    k2 = int(np.nanargmax(res2.power))
    period, duration, t0 = (
        float(res2.period[k2]),
        float(res2.duration[k2]),
        float(res2.transit_time[k2]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = bls.compute_stats(period, duration, t0)
        # the events' own mid-times fix the ephemeris better than the BLS grid: a period
        # 0.3 % off slides the boxes of later events off their eclipses, which then look
        # shallower (a false odd/even difference). Refit and recompute when it moves.
        has = np.asarray(st["per_transit_count"], int) > 0
        ev_t = refine_event_times(t, y, s, np.asarray(st["transit_times"], float)[has], duration)[0]
        p_fit, t_fit = linear_ephemeris(ev_t, period)
        if np.isfinite(p_fit) and 0 < abs(p_fit / period - 1.0) < 0.01 and np.isfinite(t_fit):
            # the reference epoch: the first one inside the data (t_fit may sit just before)
            t_ref = t_fit + np.ceil((t.min() - t_fit) / p_fit) * p_fit
            st_fit = bls.compute_stats(p_fit, duration, t_ref)
            if _depth_snr(st_fit) > _depth_snr(st):  # keep the ephemeris that fits better
                period, t0, st = p_fit, float(t_ref), st_fit
    depth, depth_err = (float(v) for v in st["depth"])
    odd, odd_err = (float(v) for v in st["depth_odd"])
    even, even_err = (float(v) for v in st["depth_even"])
    sec, sec_err, sec_phase, beta, sec_cycles = secondary_eclipse(t, y, s, period, duration, t0)
    depth_err, odd_err, even_err = depth_err * beta, odd_err * beta, even_err * beta
    times = np.asarray(st["transit_times"], float)
    counts = np.asarray(st["per_transit_count"], int)
    has = counts > 0
    ev_t, ev_snr, ev_depth = refine_event_times(t, y, s, times[has], duration)
    keep = np.isfinite(ev_t)
    # odd/even errors from the scatter of the single-event depths when that is larger
    # (sampling of a short event by the cadence grid and red noise vary event to event)
    epoch = np.round((ev_t[keep] - t0) / period).astype(int)
    dep = ev_depth[keep]
    for parity in (1, 0):
        sel = (epoch % 2) == parity
        if sel.sum() >= 2:
            emp = float(np.std(dep[sel], ddof=1) / np.sqrt(sel.sum()))
            if parity == 1:
                odd_err = max(odd_err, emp)
            else:
                even_err = max(even_err, emp)
    return BoxResult(
        period=period,
        t0=t0,
        duration=duration,
        depth=depth,
        depth_err=depth_err,
        snr=depth / depth_err if depth_err > 0 else np.nan,
        depth_odd=odd,
        depth_odd_err=odd_err,
        depth_even=even,
        depth_even_err=even_err,
        secondary_depth=sec,
        secondary_err=sec_err,
        secondary_phase=sec_phase,
        secondary_cycles=sec_cycles,
        n_events=int(keep.sum()),
        event_times=ev_t[keep],
        event_snr=ev_snr[keep],
        beta=beta,
        n_trials=len(periods),
    )


def _depth_snr(stats: dict) -> float:
    """Depth / error of an astropy BLS ``compute_stats`` result (-inf when undefined)."""
    depth, err = (float(v) for v in stats["depth"])
    return depth / err if err > 0 and np.isfinite(depth / err) else -np.inf


def secondary_eclipse(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    period: float,
    duration: float,
    t0: float,
) -> tuple[float, float, float, float, int]:
    """Deepest box of ``duration`` at any phase away from the primary (eccentric orbits too).

    Boxes of the primary's duration are slid over all phases more than 1.5 durations from
    it. Returns (depth, error, phase, beta, n_cycles): depth as a fraction of the out-of-eclipse
    level, phase in [0, 1) from ``t0``, and ``beta`` >= 1, the robust scatter of all those
    boxes' depth/error ratios: the factor by which correlated noise inflates a box's error
    (Winn et al. 2008's time-averaging beta), already applied to the returned error;
    ``n_cycles`` the number of orbital cycles with data inside that box.
    """
    phase = ((t - t0) / period) % 1.0
    qd = duration / period
    out_primary = np.minimum(phase, 1 - phase) > 0.75 * qd
    if out_primary.sum() < 10:
        return np.nan, np.nan, np.nan, 1.0, 0
    w = 1.0 / s**2
    base = np.sum(w[out_primary] * y[out_primary]) / np.sum(w[out_primary])
    nb = int(np.clip(np.ceil(4.0 / qd), 8, 4000))
    b = np.minimum((phase * nb).astype(int), nb - 1)
    sw = np.bincount(b, weights=w * out_primary, minlength=nb)
    sy = np.bincount(b, weights=w * (y - base) * out_primary, minlength=nb)
    width = max(round(qd * nb), 1)
    csw = np.concatenate([[0.0], np.cumsum(np.concatenate([sw, sw[:width]]))])
    csy = np.concatenate([[0.0], np.cumsum(np.concatenate([sy, sy[:width]]))])
    bw = csw[width : width + nb] - csw[:nb]
    by = csy[width : width + nb] - csy[:nb]
    centre = (np.arange(nb) + 0.5 * width) / nb % 1.0
    away = np.minimum(centre, 1 - centre) > 1.5 * qd
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(away & (bw > 0), -by / bw, np.nan)
        err = 1.0 / np.sqrt(bw)
        snr = depth / err
    if not np.isfinite(snr).any():
        return np.nan, np.nan, np.nan, 1.0, 0
    fin = snr[np.isfinite(snr)]
    beta = 1.482602218505602 * float(np.median(np.abs(fin - np.median(fin))))
    beta = max(beta, 1.0) if np.isfinite(beta) else 1.0
    k = int(np.nanargmax(snr))
    # how many orbital cycles contribute to that box (one cycle is not a repeating eclipse)
    dphi = np.abs((phase - centre[k] + 0.5) % 1.0 - 0.5)
    inside = out_primary & (dphi < 0.5 * qd)
    n_cyc = np.unique(np.floor((t[inside] - t0) / period - centre[k] + 0.5)).size
    return float(depth[k]), float(err[k] * beta), float(centre[k]), beta, int(n_cyc)


def refine_event_times(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, times: np.ndarray, duration: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mid-time [d], depth/error and depth (fraction) of each event (box scan within +-duration).

    For each predicted time, a box of ``duration`` is centred on a fine grid of trial
    times within one duration and the one with the highest depth/error is kept.
    """
    out_t = np.full(times.size, np.nan)
    out_s = np.full(times.size, np.nan)
    out_d = np.full(times.size, np.nan)
    w = 1.0 / s**2
    offsets = np.linspace(-duration, duration, 41)
    for k, tc in enumerate(times):  # a handful of events per star
        near = np.abs(t - tc) < 2 * duration
        if near.sum() < 2:
            continue
        tt, ww, yy = t[near], w[near], y[near]
        centres = tc + offsets
        inside = np.abs(tt[None, :] - centres[:, None]) < 0.5 * duration
        sw = (inside * ww).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = -(inside * ww * yy).sum(axis=1) / np.sqrt(sw)
        snr = np.where(sw > 0, snr, -np.inf)
        j = int(np.argmax(snr))
        if np.isfinite(snr[j]):
            out_t[k], out_s[k], out_d[k] = centres[j], snr[j], snr[j] / np.sqrt(sw[j])
    return out_t, out_s, out_d


def linear_ephemeris(times: np.ndarray, period: float) -> tuple[float, float]:
    """Least-squares period [d] and reference time from event times and a trial period."""
    times = np.sort(times[np.isfinite(times)])
    if times.size < 2:
        return period, float(times[0]) if times.size else np.nan
    epoch = np.round((times - times[0]) / period)
    if np.unique(epoch).size < 2:
        return period, float(times[0])
    slope, icpt = np.polyfit(epoch, times, 1)
    return float(slope), float(icpt)


def refine_ls_period(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, freq: float, baseline: float, n: int = 201
) -> float:
    """Refine a periodogram frequency: best 2-harmonic weighted fit on a fine local grid.

    ``freq`` [1/d] within +-1/baseline; two harmonics because a non-sinusoidal shape
    (spots, pulsation) pulls a one-term peak. Vectorised over the trial frequencies.
    Returns the period [d].
    """
    half = 1.0 / baseline
    f = np.linspace(max(freq - half, 0.5 * freq), freq + half, n)
    ok = np.isfinite(y) & np.isfinite(s) & (s > 0)
    yy = np.broadcast_to(np.where(ok, y, 0.0), (n, y.size))
    ss = np.broadcast_to(np.where(ok, s, 1.0), (n, y.size))
    gg = np.broadcast_to(ok, (n, y.size))
    _, chi2, _ = harmonic_fit(t, yy, ss, gg, f, 2)
    return float(1.0 / f[int(np.argmin(chi2))])


def central_depth(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    period: float,
    t0: float,
    duration: float,
    fraction: float = 1.0 / 3.0,
    parity: int | None = None,
) -> tuple[float, float]:
    """Depth (fraction) and its 1-sigma error at the bottom of a folded eclipse.

    The weighted mean of the points within ``fraction`` x ``duration`` [d] of mid-eclipse,
    below the weighted mean of the points more than one duration away. A box average
    (BLS ``depth``) underestimates a V-shaped eclipse; this is its minimum, and it does not
    depend on how the cadences sample ingress and egress. ``parity`` 1 or 0 uses only the
    odd or even events (epochs counted from ``t0``) for the bottom.
    """
    dphase = np.abs((t - t0 + 0.5 * period) % period - 0.5 * period)
    inner = dphase < 0.5 * fraction * duration
    if parity is not None:
        inner &= np.round((t - t0) / period).astype(np.int64) % 2 == parity
    outer = dphase > duration
    if inner.sum() < 2 or outer.sum() < 2:
        return np.nan, np.nan
    w = 1.0 / s**2
    mid = np.sum(w[inner] * y[inner]) / np.sum(w[inner])
    out = np.sum(w[outer] * y[outer]) / np.sum(w[outer])
    err = float(np.sqrt(1.0 / np.sum(w[inner]) + 1.0 / np.sum(w[outer])))
    return float(out - mid), err
