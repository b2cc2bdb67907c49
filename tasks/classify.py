"""Detection, classification and ranking of variable stars.

:func:`analyze` is the whole per-star analysis of a set of light curves sharing one time
grid (all stars of a CCD, or one external file): features (:mod:`tasks.features`),
periodograms and event statistics (:mod:`tasks.periods`), calibrated significances,
``var_type`` and the physical period.

Purity (no fixed amplitude cuts). Every detection statistic is turned into a
Gaussian-equivalent significance [sigma] and compared with one threshold
``K = isf(detection_alpha)`` (default alpha = 1e-5 per statistic, K = 4.26):

* Lomb-Scargle: the Baluev (2008) false-alarm probability of the highest peak. On a CCD it
  is calibrated on the stars themselves: under the null the FAP of the highest peak is
  uniform, so ``-ln FAP`` is Exp(1) with median ln 2; residual red noise makes every FAP
  too small by a common factor ``lambda = median(-ln FAP) / ln 2`` (> 1), and the
  calibrated FAP is ``FAP ** (1 / lambda)``.
* reduced chi2, dip (box matched filter), flare filter: on a CCD, the *empirical
  distribution of the constant stars of the same CCD*: the median and the lower-half
  sigma (median - 15.9th percentile, blind to the variable tail), per brightness decile
  for chi2. For a single file (no population) the theoretical nulls are used: chi2
  p-value, and Bonferroni-corrected Gaussian tails for the dip and flare statistics.

Classes (``VAR_TYPES``) and periods:

* eclipses (dip significant and asymmetric, dip >> bump): BLS. A secondary eclipse at
  any phase (significant) -> EA at the BLS period; odd and even events of different depth
  -> EA at twice the BLS period; alike and no secondary -> an EB with equal eclipses (EA,
  2 x P) if deeper than 3 %, else a planet-like TRANSIT at the BLS period.
* periodic (LS significant): the alternate-cycle F-test at twice the LS period decides
  whether successive minima differ (EW/EA: period doubled). Otherwise priors on period and
  amplitude: contact binaries (EW, 0.25-1 d orbital, double-humped) appear at P/2 in the LS
  periodogram with LS periods 0.125-0.5 d; delta Scuti stars (DSCT) pulsate with periods
  below ~0.2 d and small amplitudes; spots (ROT) from ~0.5 d up.
* flares (flare filter significant, bump >> dip, not periodic): FLARE, no period.
* anything else significant: OTHER.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import stats

from tasks import features as feat
from tasks import periods as per
from tasks.common_mode import normalise_by_median
from tasks.qc import gaussian_sigma_from_logp, lower_sigma

#: default false-alarm probability per star and statistic
DETECTION_ALPHA = 1e-5
#: box widths of the dip/bump filter [d]
BOX_WIDTHS_D = (0.02, 0.04, 0.0625, 0.1, 0.17, 0.25, 0.4)
#: e-folding time of the flare template [d]
FLARE_TAU_D = 0.03
#: transits deeper than this are taken as an EB with equal eclipses [fraction]
MAX_TRANSIT_DEPTH = 0.03
#: at most this many stars get a full BLS search
MAX_BLS = 300
#: longest LS period [d] read as half the orbit of a contact binary (EW: P_orb <= 1 d)
MAX_EW_LS_PERIOD = 0.5
#: stars closer than this to the science-area edge are calibrated separately [px]
EDGE_MARGIN_PX = 10.0
#: an unconfirmed single event (dip or flare) must also reach this depth/error, the
#: conventional single-event threshold of transit searches (7.1 sigma, Jenkins et al. 2002)
MIN_EVENT_SNR = 7.1
#: running-median window removed before the dip/bump/BLS search of slow variables [d]
DETREND_D = 2.0


@dataclass
class Analysis:
    """Per-star results of :func:`analyze` (arrays of length n_stars)."""

    columns: dict[str, np.ndarray]
    var_type: np.ndarray
    period: np.ndarray
    period_source: np.ndarray
    amplitude: np.ndarray
    score: np.ndarray
    detection: np.ndarray
    event_times: list[np.ndarray] = field(default_factory=list)
    threshold: float = np.nan


def _nanmedian(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis)


def empirical_sigma(values: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Significance [sigma] of each value against the bulk of its group.

    ``(v - median) / lower_sigma`` where both come from the group's empirical
    distribution (the lower half is the constant-star population). Groups with fewer than
    20 members use the whole sample.
    """
    v = np.asarray(values, float)
    out = np.full(v.shape, np.nan)
    if groups is None:
        groups = np.zeros(v.shape, int)
    ok_all = np.isfinite(v)
    med_all = np.median(v[ok_all]) if ok_all.any() else np.nan
    sig_all = lower_sigma(v[ok_all]) if ok_all.any() else np.nan
    for g in np.unique(groups):
        sel = groups == g
        ok = sel & ok_all
        if ok.sum() >= 20:
            med, sig = np.median(v[ok]), lower_sigma(v[ok])
        else:
            med, sig = med_all, sig_all
        if not np.isfinite(sig) or sig <= 0:
            sig = sig_all if np.isfinite(sig_all) and sig_all > 0 else 1.0
        out[sel] = (v[sel] - med) / sig
    return out


def brightness_groups(median_flux: np.ndarray, n_groups: int = 10) -> np.ndarray:
    """Decile index (0..n_groups-1) of each star's median flux (NaN -> group 0)."""
    f = np.asarray(median_flux, float)
    ok = np.isfinite(f)
    out = np.zeros(f.shape, int)
    if ok.sum() >= n_groups:
        edges = np.quantile(f[ok], np.linspace(0, 1, n_groups + 1)[1:-1])
        out[ok] = np.searchsorted(edges, f[ok])
    return out


def _running_median(y: np.ndarray, ok: np.ndarray, window: int) -> np.ndarray:
    """Centred running median along axis 1 ignoring masked points (Polars, no row loop)."""
    n, t = y.shape
    pad = window // 2 + 1
    arr = np.full((n, t + 2 * pad), np.nan)
    arr[:, pad : pad + t] = np.where(ok, y, np.nan)
    s = pl.Series("y", arr.ravel()).fill_nan(None)
    med = s.rolling_median(window_size=window, center=True, min_samples=3).to_numpy()
    med = np.asarray(med, float).reshape(n, t + 2 * pad)[:, pad : pad + t]
    return np.where(np.isfinite(med), med, 0.0)


def _widths_in_cadences(dt: float, widths_d=BOX_WIDTHS_D) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(w / dt)) for w in widths_d}))


def analyze(
    t: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    good: np.ndarray,
    good_flare: np.ndarray | None = None,
    median_flux: np.ndarray | None = None,
    population: bool = True,
    detection_alpha: float = DETECTION_ALPHA,
    max_bls: int = MAX_BLS,
    n_jobs: int = 2,
    edge: np.ndarray | None = None,
) -> Analysis:
    """Features, periods, significances, classes and periods of light curves on one grid.

    ``t`` (T,) BTJD [d]; ``y`` (n, T) relative flux (flux / median - 1); ``s`` its 1-sigma
    error; ``good`` the points to use; ``good_flare`` the points for the flare search
    (default ``good``: isolated one-point outliers may be flare peaks); ``median_flux``
    [e-/s] for the brightness groups. ``population=True`` calibrates the nulls on the rows
    themselves (a CCD); False uses theoretical nulls (one external light curve).
    ``edge`` (n,) True for stars near the science-area edge: they form their own
    calibration groups (one-sided neighbourhoods and background extrapolation give them
    larger systematics than interior stars of the same brightness).
    """
    n, tn = y.shape
    good = good & np.isfinite(y) & np.isfinite(s) & (s > 0)
    good_flare = good if good_flare is None else (good_flare & np.isfinite(y) & (s > 0))
    cols: dict[str, np.ndarray] = feat.compute_features(t, y, s, good, n_jobs=n_jobs)
    dt = float(np.median(np.diff(np.sort(t[np.isfinite(t)])))) if tn > 1 else 1.0
    baseline = float(np.nanmax(t) - np.nanmin(t)) if tn > 1 else 1.0
    c = per.noise_scale(y, s, good)
    s_eff = s * c[:, None]

    # ---------------------------------------------------------------- Lomb-Scargle
    grid = per.frequency_grid(t[np.any(good, axis=0)] if good.any() else t)
    groups = brightness_groups(median_flux if median_flux is not None else np.ones(n))
    if edge is not None:
        groups = np.where(np.asarray(edge, bool), -1, groups)
    ls = per.lombscargle_batch(t, y, s, good, grid, groups=groups if population else None)
    tvar = per.weighted_time_variance(t, s, good)
    log_fap = per.baluev_log10_fap(ls["power_w"], ls["n_points"], grid.fmax, tvar)
    cols["ls_period"] = 1.0 / ls["freq"]
    cols["ls_power"] = ls["power"]
    cols["ls_log10_fap"] = log_fap
    cols["ls_period_2"] = 1.0 / ls["freq2"]
    cols["ls_power_2"] = ls["power2"]
    amp = np.full(n, np.nan)

    def amplitude_block(start):
        sl = slice(start, start + 1000)
        amp[sl] = per.harmonic_fit(t, y[sl], s[sl], good[sl], ls["freq"][sl], 1)[0][:, 0]

    _thread_map(amplitude_block, range(0, n, 1000), n_jobs)
    cols["ls_amplitude"] = amp

    # ---------------------------------------------------------------- events
    widths = _widths_in_cadences(dt)
    box = per.box_statistics(y, s_eff, good, widths)
    n_trials = sum(tn / w for w in widths)
    tau = max(FLARE_TAU_D / dt, 1.0)
    length = int(np.ceil(3 * tau)) + 1

    # ---------------------------------------------------------------- significances
    if population:
        lam = _nanmedian(-log_fap * np.log(10.0)) / np.log(2.0)
        lam = max(float(lam), 1.0) if np.isfinite(lam) else 1.0
        sig_ls = gaussian_sigma_from_logp(log_fap / lam)
        with np.errstate(divide="ignore", invalid="ignore"):
            sig_chi2 = empirical_sigma(np.log(cols["reduced_chi2"]), groups)
    else:
        lam = 1.0
        sig_ls = gaussian_sigma_from_logp(log_fap)
        dof = np.maximum(cols["n_good"] - 1, 1)
        chi = cols["reduced_chi2"] / np.maximum(c, 1.0) ** 2
        sig_chi2 = gaussian_sigma_from_logp(stats.chi2.logsf(chi * dof, dof) / np.log(10))
    k_thr = float(stats.norm.isf(detection_alpha))

    # stars with slow variability (or one external file): box statistics and BLS on the
    # light curve minus its running median over DETREND_D, so that trends and spots do
    # not pose as dips (eclipses up to ~0.6 d are kept: they fill < 1/3 of the window)
    y_box = y
    if population:
        slow = np.flatnonzero((np.nan_to_num(sig_ls) > k_thr) | (np.nan_to_num(sig_chi2) > k_thr))
    else:
        slow = np.arange(n)
    if slow.size:
        y_box = y.copy()
        win = max(round(DETREND_D / dt) | 1, 5)
        y_box[slow] = y[slow] - _running_median(y[slow], good[slow], win)
        sub_box = per.box_statistics(y_box[slow], s_eff[slow], good[slow], widths)
        for key in box:
            box[key][slow] = sub_box[key]
    cols["dip_sigma"] = box["dip"]
    if population:
        sig_dip = empirical_sigma(box["dip"], groups)
        sig_bump = empirical_sigma(box["bump"], groups)
    else:
        sig_dip = _bonferroni_sigma(box["dip"], n_trials)
        sig_bump = _bonferroni_sigma(box["bump"], n_trials)

    # flares: re-filter the stars with a candidate bump after removing slow variability
    window = max(round(0.5 / dt) | 1, 5)
    sub = np.flatnonzero(
        (np.nan_to_num(sig_ls) > k_thr)
        | (np.nan_to_num(sig_chi2) > k_thr)
        | (np.nan_to_num(sig_bump) > k_thr)
    )
    # periodic stars: their harmonic model first, so that the crests of a wave shorter than
    # ~2 windows do not pose as flares (flares are short: the fit hardly sees them)
    periodic = sub[np.nan_to_num(sig_ls[sub]) > k_thr]
    flare_freq = ls["freq"].copy()
    base = np.zeros((n, tn))  # the slow part under the flares (0: none)

    def fit_base(rows, periodic_rows):  # sorted star indices; periodic_rows within rows
        base[rows] = 0.0
        for start in range(0, periodic_rows.size, 1000):
            r = periodic_rows[start : start + 1000]
            base[r] = per.harmonic_fit(t, y[r], s[r], good[r], flare_freq[r], 3)[2]
        base[rows] += _running_median(y[rows] - base[rows], good_flare[rows], window)

    def flare_statistics(rows=slice(None)):  # the flare filter's peak, and of the mirror
        zz = np.where(good_flare[rows], (y[rows] - base[rows]) / s_eff[rows], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return tuple(
                np.nanmax(per.flare_filter(z, good_flare[rows], tau, length), axis=1)
                for z in (zz, -zz)
            )

    def calibrated(stat):
        return empirical_sigma(stat, groups) if population else _bonferroni_sigma(stat, tn)

    if sub.size:
        fit_base(sub, periodic)
    flare_sig, neg_sig = flare_statistics()
    sig_flare = calibrated(flare_sig)
    # a periodogram peak a few per cent off drifts in phase over a few cycles and leaves
    # crests that pose as flares too: periodic stars that look flaring are measured again
    # at their refined frequency (few stars: the refinement costs ~10 ms per star)
    recheck = periodic[np.nan_to_num(sig_flare[periodic]) > k_thr]
    if recheck.size:

        def refined_freq(i):
            m = good[i]
            return 1.0 / per.refine_ls_period(t[m], y[i][m], s[i][m], ls["freq"][i], baseline, 61)

        flare_freq[recheck] = _thread_map(refined_freq, recheck, n_jobs)
        fit_base(recheck, recheck)
        flare_sig[recheck], neg_sig[recheck] = flare_statistics(recheck)
        sig_flare = calibrated(flare_sig)
    cols["flare_sigma"] = flare_sig

    cols["sig_ls"] = sig_ls
    cols["sig_chi2"] = sig_chi2
    cols["sig_flare"] = sig_flare
    cols["sig_bls"] = np.full(n, np.nan)
    for k in (
        "bls_period",
        "bls_t0",
        "bls_duration",
        "bls_depth",
        "bls_snr",
        "bls_depth_odd",
        "bls_depth_even",
        "bls_secondary_depth",
    ):
        cols[k] = np.full(n, np.nan)
    cols["bls_n_events"] = np.zeros(n, np.int32)
    cols["n_flares"] = np.zeros(n, np.int32)

    sig_ls_ok = np.nan_to_num(sig_ls) > k_thr
    sig_dip_ok = np.nan_to_num(sig_dip) > k_thr
    asym_dip = box["dip"] > 1.5 * np.maximum(box["bump"], 0)
    eclipse_like = (sig_dip_ok | (box["dip"] > MIN_EVENT_SNR)) & asym_dip
    flare_like = (
        (np.nan_to_num(sig_flare) > k_thr)
        & (flare_sig > MIN_EVENT_SNR)
        & (flare_sig > 1.5 * np.maximum(neg_sig, 1.0))
        & ~eclipse_like
    )

    # ---------------------------------------------------------------- BLS on eclipse-like
    bls_rows = np.flatnonzero(eclipse_like)
    if bls_rows.size > max_bls:
        bls_rows = bls_rows[np.argsort(-box["dip"][bls_rows])[:max_bls]]
    bls_results = _run_bls(t, y_box, s_eff, good, bls_rows, baseline, dt, n_jobs)
    for i, r in bls_results.items():
        if r is None:
            continue
        cols["bls_period"][i] = r.period
        cols["bls_t0"][i] = r.t0
        cols["bls_duration"][i] = r.duration
        cols["bls_depth"][i] = r.depth
        cols["bls_snr"][i] = r.snr
        cols["bls_n_events"][i] = r.n_events
        cols["bls_depth_odd"][i] = r.depth_odd
        cols["bls_depth_even"][i] = r.depth_even
        cols["bls_secondary_depth"][i] = r.secondary_depth
        # a BLS detection (>= 2 events, depth/error >= 7.1 with the red-noise factor) is as
        # significant as the larger of the calibrated dip and the box SNR after the
        # look-elsewhere correction over the trial periods
        if r.snr >= MIN_EVENT_SNR and r.n_events >= 2:
            cols["sig_bls"][i] = np.nanmax(
                [sig_dip[i], _bonferroni_sigma(np.array([r.snr]), r.n_trials)[0]]
            )
        else:
            cols["sig_bls"][i] = 0.0
    sig_bls = np.nan_to_num(cols["sig_bls"])
    # a single unconfirmed dip must also pass the mirror test (much deeper than any bump)
    single_dip = eclipse_like & asym_dip & (box["dip"] > MIN_EVENT_SNR) & ~(sig_bls > k_thr)
    # excess chi2 alone only counts when the excess is time-correlated (von Neumann eta
    # low): white excess noise (e.g. a badly centred aperture) is not variability
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_log_eta = -np.log(cols["von_neumann_eta"])
    if population:
        sig_eta = empirical_sigma(neg_log_eta, groups)
    else:
        # eta of n white-noise points: mean 2, sd ~ 2 / sqrt(n)
        sig_eta = (2.0 - cols["von_neumann_eta"]) / (2.0 / np.sqrt(np.maximum(cols["n_good"], 2)))
    cols["sig_chi2"] = sig_chi2 = np.minimum(np.nan_to_num(sig_chi2), np.nan_to_num(sig_eta))

    # ---------------------------------------------------------------- decide
    sigs = np.column_stack(
        [
            np.nan_to_num(sig_ls),
            sig_bls,
            np.nan_to_num(sig_chi2),
            np.where(flare_like, np.nan_to_num(sig_flare), 0.0),
            np.where(single_dip, np.nan_to_num(sig_dip), 0.0),
        ]
    )
    names = np.array(["ls", "bls", "chi2", "flare", "dip"])
    above = sigs > k_thr
    is_var = above.any(axis=1) & (cols["n_good"] >= feat.MIN_POINTS)
    cols["is_variable"] = is_var
    score = np.where(is_var, sigs.max(axis=1), 0.0)
    detection = np.array([",".join(names[row]) for row in above], dtype=object)

    var_type = np.full(n, "", dtype=object)
    period = np.full(n, np.nan)
    source = np.full(n, "none", dtype=object)
    amplitude = np.full(n, np.nan)
    events: list[np.ndarray] = [np.array([]) for _ in range(n)]

    def classify(i):
        return _classify_one(
            i,
            t,
            y[i],
            s_eff[i],
            good[i],
            good_flare[i],
            cols,
            bls_results.get(i),
            eclipse_like[i],
            flare_like[i],
            sig_ls_ok[i],
            dt,
            baseline,
            k_thr,
            base[i],
            tau,
            length,
        )

    cand = np.flatnonzero(is_var)  # candidates only: a few per cent of the stars
    for i, (vt, p, src, a, ev) in zip(cand, _thread_map(classify, cand, n_jobs), strict=True):
        var_type[i], period[i], source[i], amplitude[i], events[i] = vt, p, src, a, ev
        if vt == "FLARE":
            cols["n_flares"][i] = len(ev)
    return Analysis(
        columns=cols,
        var_type=var_type,
        period=period,
        period_source=source,
        amplitude=amplitude,
        score=score,
        detection=detection,
        event_times=events,
        threshold=k_thr,
    )


def _bonferroni_sigma(stat: np.ndarray, n_trials: float) -> np.ndarray:
    """Significance of a maximum of ~n_trials N(0,1) statistics (Bonferroni) [sigma]."""
    x = np.asarray(stat, float)
    log10_p = (stats.norm.logsf(x) + np.log(max(n_trials, 1.0))) / np.log(10.0)
    out = gaussian_sigma_from_logp(np.minimum(log10_p, 0.0))
    out[~np.isfinite(x)] = np.nan
    return out


def _thread_map(fn, items, n_jobs: int) -> list:
    """``[fn(x) for x in items]`` on ``n_jobs`` threads (order kept).

    For per-star work whose heavy parts release the GIL (astropy's BLS kernel, numpy);
    the results do not depend on the number of threads. Warning filters changed by the
    workers' own ``catch_warnings`` blocks are restored afterwards.
    """
    items = list(items)
    if n_jobs <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with warnings.catch_warnings(), ThreadPoolExecutor(min(n_jobs, len(items))) as pool:
        return list(pool.map(fn, items))


def _run_bls(t, y, s, good, rows, baseline, dt, n_jobs: int = 1) -> dict[int, per.BoxResult | None]:
    bin_n = max(1, round((10.0 / 1440.0) / dt))  # BLS on <= 10-min bins

    def one(i):  # per-star BLS (astropy), only on eclipse-like stars
        m = good[i]
        tt, yy, ss = t[m], y[i][m], s[i][m]
        if bin_n > 1:
            tt, yy, ss = bin_light_curve(tt, yy, ss, bin_n * dt)
        return per.bls_search(tt, yy, ss, max_period=0.7 * baseline)

    rows = [int(i) for i in rows]
    return dict(zip(rows, _thread_map(one, rows, n_jobs), strict=True))


def bin_light_curve(
    t: np.ndarray, y: np.ndarray, s: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance weighted bins of ``width`` [d]; returns bin times, values, errors."""
    k = np.floor((t - t[0]) / width).astype(np.int64)
    _, inv = np.unique(k, return_inverse=True)
    w = 1.0 / s**2
    sw = np.bincount(inv, weights=w)
    return (
        np.bincount(inv, weights=w * t) / sw,
        np.bincount(inv, weights=w * y) / sw,
        1.0 / np.sqrt(sw),
    )


def _classify_one(
    i,
    t,
    y,
    s,
    good,
    good_flare,
    cols,
    bls,
    eclipse_like,
    flare_like,
    ls_ok,
    dt,
    baseline,
    k_thr,
    base,
    tau,
    length,
):
    """Type, period [d], period source, amplitude (fraction) and event times of one star."""
    if eclipse_like and bls is not None and bls.snr >= MIN_EVENT_SNR and bls.n_events >= 2:
        m = good
        args = (t[m], y[m], s[m], bls.period, bls.t0, bls.duration)
        bottom = per.central_depth(*args)
        odd_even = (per.central_depth(*args, parity=1), per.central_depth(*args, parity=0))
        return _classify_eclipse(bls, cols, i, bottom, odd_even)
    if eclipse_like and bls is not None and bls.n_events >= 1 and not ls_ok:
        ok = good
        ses = per.box_filter_row(y, s, ok, max(1, round(bls.duration / dt)))
        ev = per.event_times(t, ses, k_thr, 2 * bls.duration)
        if len(ev) >= 1:
            depth = float(bls.depth)
            vt = "TRANSIT" if depth < MAX_TRANSIT_DEPTH else "EA"
            p = float(np.ptp(ev)) if len(ev) == 2 else np.nan
            return vt, p, "events" if np.isfinite(p) else "none", depth, np.sort(ev)
    if flare_like and not (ls_ok and cols["sig_ls"][i] > cols["sig_flare"][i]):
        z = np.where(good_flare, (y - base) / s, np.nan)
        ff = per.flare_filter(z[None, :], good_flare[None, :], tau, length)[0]
        ev = per.event_times(t, ff, k_thr, 5 * tau * dt)
        amp = float(np.nanmax(np.where(good_flare, y - base, np.nan)))
        return "FLARE", np.nan, "none", amp, np.sort(ev)
    if ls_ok:
        return _classify_periodic(i, t, y, s, good, cols, baseline)
    amp = 0.5 * float(cols["robust_amplitude"][i])
    return "OTHER", np.nan, "none", amp, np.array([])


def _classify_eclipse(bls: per.BoxResult, cols, i, bottom=(np.nan, np.nan), odd_even=None):
    """EA or TRANSIT and the orbital period of a BLS detection.

    ``bottom`` (depth, error) at mid-eclipse (`tasks.periods.central_depth`): V-shaped
    eclipses of a binary have a box depth below their true depth, so the EB-or-planet
    depth test uses the bottom when it is significantly deeper than MAX_TRANSIT_DEPTH.
    ``odd_even`` the bottoms of the odd and of the even events: the odd/even test compares
    them when both are measured (box depths of few events also differ by how the cadences
    happen to sample each ingress and egress), with errors times the red-noise ``beta``.
    """
    sec_sig = bls.secondary_depth / bls.secondary_err if bls.secondary_err > 0 else 0.0
    oe_err = np.hypot(bls.depth_odd_err, bls.depth_even_err)
    oe_sig = abs(bls.depth_odd - bls.depth_even) / oe_err if oe_err > 0 else 0.0
    if odd_even is not None and np.all(np.isfinite(odd_even)):
        (d_odd, e_odd), (d_even, e_even) = odd_even
        oe_sig = abs(d_odd - d_even) / (bls.beta * np.hypot(e_odd, e_even))
    # trials: ~1/q phases for the secondary, 2 for odd/even
    q = bls.duration / bls.period
    sec_thr = float(stats.norm.isf(1e-3 / max(1.0 / q, 1.0)))
    oe_thr = float(stats.norm.isf(1e-3 / 2))
    events = np.sort(bls.event_times)
    period, _ = per.linear_ephemeris(events, bls.period) if events.size >= 2 else (bls.period, 0)
    if not (np.isfinite(period) and abs(period / bls.period - 1) < 0.02):
        period = bls.period
    deepest = np.nanmax([bls.depth, bls.depth_odd, bls.depth_even])
    v_shaped = bool(bottom[0] - bottom[1] > MAX_TRANSIT_DEPTH)  # NaN compares False
    if np.isfinite(sec_sig) and sec_sig > sec_thr and bls.secondary_cycles >= 2:
        return "EA", period, "bls", bls.depth, events
    if bls.n_events >= 4 and np.isfinite(oe_sig) and oe_sig > oe_thr:
        return "EA", 2 * period, "2*bls", deepest, events
    if deepest < MAX_TRANSIT_DEPTH and not v_shaped:
        return "TRANSIT", period, "bls", bls.depth, events
    if np.isfinite(oe_sig) and oe_sig > oe_thr:
        return "EA", 2 * period, "2*bls", deepest, events
    return "EA", 2 * period, "2*bls", bls.depth, events


def _classify_periodic(i, t, y, s, good, cols, baseline):
    m = good
    f1 = 1.0 / cols["ls_period"][i]
    p1 = per.refine_ls_period(t[m], y[m], s[m], f1, baseline)
    f1 = 1.0 / p1
    alt = per.alternate_cycle_sigma(t, y[None, :], s[None, :], good[None, :], np.array([f1]))[0]
    _, _, model = per.harmonic_fit(t, y[None, :], s[None, :], good[None, :], np.array([f1]), 3)
    semi = 0.5 * float(np.ptp(model[0][good])) if good.any() else np.nan
    ptp = 2 * semi
    second_sig = _second_peak_independent(cols, i)
    # alternating minima are looked for in contact-binary territory only (LS period below
    # MAX_EW_LS_PERIOD): at longer periods spot evolution also makes cycles differ
    can_double = (2 * p1 <= baseline / 1.5) and p1 < MAX_EW_LS_PERIOD
    if can_double and np.isfinite(alt) and alt > stats.norm.isf(1e-4):
        p = 2 * p1
        vt = "EW" if p <= 1.5 else "EA"
        return vt, p, "2*ls", semi, np.array([])
    if p1 < 0.125:
        return "DSCT", p1, "ls", semi, np.array([])
    if p1 < 0.2:
        if ptp >= 0.04 and not second_sig:
            return "EW", 2 * p1, "2*ls", semi, np.array([])
        return "DSCT", p1, "ls", semi, np.array([])
    if p1 < 0.5 and not second_sig:
        return "EW", 2 * p1, "2*ls", semi, np.array([])
    return "ROT", p1, "ls", semi, np.array([])


def _second_peak_independent(cols, i) -> bool:
    """True when the second LS peak is strong and not a harmonic/alias of the first."""
    p1, p2 = cols["ls_period"][i], cols["ls_period_2"][i]
    pw1, pw2 = cols["ls_power"][i], cols["ls_power_2"][i]
    if not (np.isfinite(p2) and np.isfinite(pw2)) or pw2 < 0.25 * pw1:
        return False
    ratio = max(p1, p2) / min(p1, p2)
    near_int = abs(ratio - round(ratio)) < 0.02
    return not near_int


def blend_mask(
    x: np.ndarray,
    y: np.ndarray,
    period: np.ndarray,
    flux_amplitude: np.ndarray,
    candidate: np.ndarray,
    radius: float = 6.0,
    tolerance: float = 0.003,
) -> np.ndarray:
    """True for candidates that are light from a brighter-amplitude neighbour's variability.

    Two candidates closer than ``radius`` [px] with periods equal within ``tolerance``
    (relative) share one signal; the one with the smaller amplitude in e-/s (``flux_amplitude``)
    is the contaminated one.
    """
    from scipy.spatial import cKDTree

    idx = np.flatnonzero(candidate & np.isfinite(period) & np.isfinite(x) & np.isfinite(y))
    out = np.zeros(len(x), bool)
    if idx.size < 2:
        return out
    tree = cKDTree(np.column_stack([x[idx], y[idx]]))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return out
    a, b = idx[pairs[:, 0]], idx[pairs[:, 1]]
    pa_, pb = period[a], period[b]
    same = np.abs(pa_ - pb) / np.minimum(pa_, pb) < tolerance
    fa, fb = np.abs(flux_amplitude[a]), np.abs(flux_amplitude[b])
    out[a[same & (fa < fb)]] = True
    out[b[same & (fb <= fa)]] = True
    return out


# ---------------------------------------------------------------------------------------
# one CCD: analysis of the corrected light curves -> features and candidates tables
# ---------------------------------------------------------------------------------------
def analyze_ccd(c, detection_alpha: float = DETECTION_ALPHA, max_bls: int = MAX_BLS):
    """Run :func:`analyze` on a :class:`tasks.common_mode.CorrectedCCD`.

    Uses the points with ``mask_bits == 0`` (flares: also the OUTLIER-flagged points) of
    the corrected flux normalised by its median. Returns (Analysis, median_flux [e-/s],
    blend mask).
    """
    from lakehouse.schemas import LcMask

    m = c.matrix
    good = c.mask_bits == 0
    good_flare = (c.mask_bits & ~int(LcMask.OUTLIER)) == 0
    med, y, s = normalise_by_median(c.flux, c.flux_err, good)
    ok = np.isfinite(np.where(med > 0, med, np.nan))[:, None]
    t = np.where(np.isfinite(m.btjd), m.btjd, np.nanmedian(m.btjd))
    edge = np.asarray(c.star["edge_distance"]) < EDGE_MARGIN_PX
    res = analyze(
        t,
        y,
        s,
        good & ok,
        good_flare & ok,
        median_flux=med,
        population=True,
        detection_alpha=detection_alpha,
        max_bls=max_bls,
        edge=edge,
    )
    x = m.x if m.x is not None else np.full(len(med), np.nan)
    yy = m.y if m.y is not None else np.full(len(med), np.nan)
    flux_amp = res.amplitude * med
    blends = blend_mask(x, yy, res.period, flux_amp, res.columns["is_variable"])
    return res, med, blends


def features_table(res: Analysis, star_id, median_flux, sector: int, camera: int, ccd: int):
    """``features`` rows (schema FEATURES) from an :class:`Analysis`."""
    import pyarrow as pa

    from lakehouse.schemas import FEATURES

    n = len(star_id)
    cols = dict(res.columns)
    cols.update(
        sector=np.full(n, sector),
        camera=np.full(n, camera),
        ccd=np.full(n, ccd),
        star_id=np.asarray(star_id),
        median_flux=np.asarray(median_flux, float),
    )
    arrays = []
    for f in FEATURES:
        v = np.asarray(cols[f.name])
        if v.dtype.kind == "f" and pa.types.is_integer(f.type):
            v = np.nan_to_num(v).astype(np.int64)
        arrays.append(pa.array(v, type=f.type, from_pandas=v.dtype.kind == "f"))
    return pa.Table.from_arrays(arrays, schema=FEATURES)


def candidates_table(
    res: Analysis, star_id, sector: int, camera: int, ccd: int, exclude: np.ndarray | None = None
):
    """``candidates`` rows (schema CANDIDATES): detected stars, rank 1 = highest score."""
    import pyarrow as pa

    from lakehouse.schemas import CANDIDATES

    star_id = np.asarray(star_id)
    sel = np.asarray(res.columns["is_variable"], bool)
    if exclude is not None:
        sel &= ~exclude
    idx = np.flatnonzero(sel)
    order = np.lexsort((star_id[idx], -res.score[idx]))
    idx = idx[order]
    k = idx.size
    ev = [np.sort(np.asarray(res.event_times[i], float)).tolist() for i in idx]
    cols = {
        "sector": np.full(k, sector),
        "camera": np.full(k, camera),
        "ccd": np.full(k, ccd),
        "rank": np.arange(1, k + 1),
        "star_id": star_id[idx],
        "score": res.score[idx],
        "period_days": res.period[idx],
        "var_type": res.var_type[idx].astype(str),
        "amplitude": res.amplitude[idx],
        "period_source": res.period_source[idx].astype(str),
        "detection": res.detection[idx].astype(str),
        "n_events": np.array([len(e) for e in ev], dtype=np.int64),
        "event_times": ev,
    }
    arrays = []
    for f in CANDIDATES:
        v = cols[f.name]
        if f.name == "event_times":
            arrays.append(pa.array(v, type=f.type))
        else:
            v = np.asarray(v)
            arrays.append(pa.array(v, type=f.type, from_pandas=v.dtype.kind == "f"))
    return pa.Table.from_arrays(arrays, schema=CANDIDATES)
